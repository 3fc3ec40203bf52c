"""Where a stored number comes from: the hash of the configuration it was made with, and the code.

``config_hash`` keys result cells, run ids, base-weight and importance caches: equal
configurations give equal hashes on any machine. ``code_version`` is recorded with every cell and
manifest.
"""

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from suite.errors import DepthbenchError


def config_hash(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON: equal configurations give equal hashes, on any machine.

    Accepts JSON-like data, pydantic models, dataclasses and paths; key order does not matter and
    tuples hash like lists.
    """
    try:
        canonical = json.dumps(
            to_jsonable_python(obj), sort_keys=True, separators=(",", ":"), allow_nan=False
        )
    except (PydanticSerializationError, ValueError) as error:
        raise DepthbenchError(f"cannot hash configuration {obj!r}: {error}") from error
    return hashlib.sha256(canonical.encode()).hexdigest()


def code_version() -> str:
    """The git commit the suite runs from ('+dirty' with uncommitted changes), else its version."""
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / ".git").exists():
        return metadata.version("depthbench")
    try:
        commit = _git(checkout, "rev-parse", "HEAD")
        changes = _git(checkout, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):  # no git, or a checkout without commits
        return metadata.version("depthbench")
    return commit + ("+dirty" if changes else "")


def _git(checkout: Path, *arguments: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(checkout), *arguments], capture_output=True, text=True, check=True
    )
    return completed.stdout.strip()
