"""Attacks: the one PGD engine (l_inf / l_2, any loss), free adversarial training's perturbation
(the same ascent step), and TRADES's KL attack run on the engine."""
from .free import FreePerturbation
from .pgd import NORMS, PGDConfig, ascend, pgd, random_delta
from .trades import trades_adversarial

__all__ = ["NORMS", "FreePerturbation", "PGDConfig", "ascend", "pgd", "random_delta", "trades_adversarial"]
