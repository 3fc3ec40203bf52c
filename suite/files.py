"""Writing a file so that a reader sees either nothing or the whole of it.

Every file the suite keeps (result cells, the run manifest and its Parquet table, base weights,
importance entries, TensorRT timing caches) is written here: the bytes go to a temporary sibling,
are flushed to disk, and the sibling takes the final name in one step. An interrupted writer
leaves no partial file and no temporary one.
"""

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, exclusive: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, creating its folder.

    ``exclusive``: the file must not exist yet; if it does, ``FileExistsError`` is raised and the
    file is left as it is (``os.link`` fails where ``os.replace`` would overwrite, so concurrent
    writers of one name cannot clobber each other).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
