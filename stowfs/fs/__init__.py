"""The filesystem model of the mount, independent of any FUSE library (see model.py)."""
from .model import Filesystem, Notifier, render_stats
from .node import Attr, Node

__all__ = ["Filesystem", "Notifier", "render_stats", "Attr", "Node"]
