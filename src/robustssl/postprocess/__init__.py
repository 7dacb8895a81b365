"""Post-processing of a pretrained encoder: DynACL++'s k-means pseudo-labels and LP-AFT."""
from .kmeans import KMeansResult, kmeans, kmeans_plus_plus
from .lpaft import aft_settings, cluster_features, lp_aft, purity
from .run import POSTPROCESS, postprocess_run

__all__ = [
    "POSTPROCESS", "KMeansResult", "aft_settings", "cluster_features", "kmeans", "kmeans_plus_plus", "lp_aft",
    "postprocess_run", "purity",
]
