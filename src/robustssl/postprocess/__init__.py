"""Post-processing of a pretrained encoder: DynACL++'s k-means pseudo-labels and LP-AFT."""
from .kmeans import KMeansResult, kmeans, kmeans_plus_plus
from .lpaft import aft_settings, cluster_features, finetune_divergence, lp_aft, purity
from .run import POSTPROCESS, divergence_note, postprocess_run

__all__ = [
    "POSTPROCESS",
    "KMeansResult",
    "aft_settings",
    "cluster_features",
    "divergence_note",
    "finetune_divergence",
    "kmeans",
    "kmeans_plus_plus",
    "lp_aft",
    "postprocess_run",
    "purity",
]
