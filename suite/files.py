"""Writing a file so that a reader sees either nothing or the whole of it.

Every file the suite keeps (result cells, the run manifest and its Parquet table, base weights,
importance entries, base latencies, sessions and deploy networks of a run, TensorRT timing caches)
is written here: the content goes to a temporary sibling, is flushed to disk, and the sibling takes
the final name in one step. An interrupted writer leaves no partial file and no temporary one.
Files get the mode ``open`` would give them (0666 less the umask, 0644 usually), not ``mkstemp``'s
0600, so a shared results folder stays readable.
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, exclusive: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, creating its folder.

    ``exclusive``: the file must not exist yet; if it does, ``FileExistsError`` is raised and the
    file is left as it is (``os.link`` fails where ``os.replace`` would overwrite, so concurrent
    writers of one name cannot clobber each other).
    """

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write_with(path, write, exclusive=exclusive)


def atomic_write_with(
    path: Path, write: Callable[[Path], object], *, exclusive: bool = False
) -> None:
    """``atomic_write`` for content a library writes to a path itself (an ONNX export,
    ``torch.save``): ``write`` fills a temporary sibling, which then takes the name ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=path.suffix)
    try:
        os.fchmod(descriptor, _shared_mode())
        os.close(descriptor)
        write(Path(temporary))
        if exclusive:
            os.link(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _shared_mode() -> int:
    """0666 less this process's umask: what ``open`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
