"""Attacks: the one PGD engine (l_inf / l_2, any loss), and TRADES's KL attack run on it."""
from .pgd import NORMS, PGDConfig, pgd, random_delta
from .trades import trades_adversarial

__all__ = ["NORMS", "PGDConfig", "pgd", "random_delta", "trades_adversarial"]
