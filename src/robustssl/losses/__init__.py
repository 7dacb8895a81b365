"""Losses: NT-Xent, TRADES and EMP-SSL's coding rate (one implementation each, for every method and protocol)."""
from .ce import summed_ce
from .ntxent import nt_xent
from .tcr import emp_ssl_loss, total_coding_rate
from .trades import trades_attack_loss, trades_kl, trades_loss, trades_start

__all__ = ["emp_ssl_loss", "nt_xent", "summed_ce", "total_coding_rate", "trades_attack_loss", "trades_kl", "trades_loss", "trades_start"]
