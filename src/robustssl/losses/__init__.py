"""Losses: NT-Xent (one implementation for every method)."""
from .ntxent import nt_xent

__all__ = ["nt_xent"]
