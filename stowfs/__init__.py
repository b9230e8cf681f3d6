"""stowfs: LLM conversations stored compressed and deduplicated in LMDB, shown as files.

Python API: ``stowfs.Store`` (open, put, get, remove, iterate, stats)."""
from .errors import StowError

__all__ = ["Store", "StowError"]
__version__ = "0.1.0"


def __getattr__(name):
    if name == "Store":
        from .store import Store
        return Store
    raise AttributeError(name)
