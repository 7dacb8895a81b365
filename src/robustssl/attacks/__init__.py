"""Attacks: the one PGD engine (l_inf / l_2, any loss)."""
from .pgd import NORMS, PGDConfig, pgd, random_delta

__all__ = ["NORMS", "PGDConfig", "pgd", "random_delta"]
