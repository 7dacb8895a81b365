"""Losses: NT-Xent and TRADES (one implementation each, for every method and protocol)."""
from .ntxent import nt_xent
from .trades import trades_attack_loss, trades_kl, trades_loss, trades_start

__all__ = ["nt_xent", "trades_attack_loss", "trades_kl", "trades_loss", "trades_start"]
