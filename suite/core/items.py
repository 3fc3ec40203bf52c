"""Work items: the many small, independent jobs inside one cell that an executor may spread.

A method's tables are built one item at a time: an importance entry is a short fine-tune and an
evaluation, a latency-table segment is one measurement on the target device. ``MapItems`` is how
the code that builds a table hands its items to whoever runs them::

    for result in map_items(fn, items, resources):
        cache.write(result)  # the caller keeps the cache: results come back here, as they finish

``fn`` must be picklable (a module-level function or a dataclass instance) and pure apart from its
return value: it may run in another process, on another machine, or twice (a worker killed
mid-item is retried), so only the caller writes caches. ``resources`` says what one item needs:
``{"CPU": n}``, ``{"GPU": 1}``, or a profile's measuring slot (``{"profile:<name>": 1}``, one per
node that stands for the profile). Results come back in the order they finish, not in the order
of ``items``.

``serial_map`` is the default: every item here, one after another, in order. The run layer wires
Ray in (``suite.run.executors``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

Resources = dict[str, float]
MapItems = Callable[[Callable[[Any], Any], Sequence[Any], "Resources | None"], Iterator[Any]]


def serial_map(
    fn: Callable[[Any], Any], items: Sequence[Any], resources: Resources | None = None
) -> Iterator[Any]:
    """``fn`` on each item in this process, in order; ``resources`` are trivially satisfied."""
    for item in items:
        yield fn(item)
