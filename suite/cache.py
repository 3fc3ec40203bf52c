"""The user cache: one folder for everything depthbench keeps between runs.

``cache_root()`` is ``$XDG_CACHE_HOME/depthbench``, or ``~/.cache/depthbench`` without XDG. Under a
cache root (the user's, or a folder a run names) each kind of entry has one fixed place:

    base/                     trained base networks (``suite.run.train.train_base``)
    latency_tables.sqlite     measured segment latencies (``suite.measure.tables.TableCache``)
    importance/               dp-depth importance entries, one JSON file each
    tensorrt/                 TensorRT timing caches
"""

import os
from pathlib import Path

BASE_WEIGHTS = "base"
LATENCY_TABLES = "latency_tables.sqlite"
IMPORTANCE = "importance"
TENSORRT = "tensorrt"


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/depthbench`` (``~/.cache/depthbench`` when XDG_CACHE_HOME is unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "depthbench"
