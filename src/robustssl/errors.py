"""The errors robustssl raises for things a user can fix.

Each message names the file or key at fault and what to do; the CLI prints it on one line
and exits with code 2. Everything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class RobustSSLError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(RobustSSLError, ValueError):
    """A configuration problem, phrased for the user."""


class RunError(RobustSSLError, RuntimeError):
    """A run folder or checkpoint that cannot be used as asked (missing, damaged, foreign, non-finite)."""
