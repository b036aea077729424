"""The statistics backends: which are available on this machine, and how one is chosen.

An alias of :mod:`diceloss.stats.dispatch` (the backends themselves live in :mod:`diceloss.stats`).

Example:
    >>> from diceloss import backends
    >>> backends.available()["reference"]
    'available'
"""

from .stats.dispatch import AUTO_ORDER, available, select_backend

__all__ = ["AUTO_ORDER", "available", "select_backend"]
