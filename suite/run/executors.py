"""Executors: how the runner spreads the cells of a grid, and the work items inside each cell,
over processes and machines.

Both executors have ``map(fn, items, resources=None)``, which calls ``fn`` on every cell and yields
the results in the order they finish, and ``item_map(held)``, the ``MapItems`` (``suite.core.items``)
that a cell run by this executor uses for its tables' work items (importance entries, latency
segments); ``held`` is what the cell's own lane holds.

- ``InProcessExecutor`` (the default) calls ``fn`` here, one item after another. Its cells'
  work items that ask for CPU cores (importance entries) run in a pool of local worker processes,
  one per core this process may use (``CoreItems``); the rest (latency segments, which need the
  measuring slot, and GPU entries) run here, one after another.
- ``RayExecutor`` runs cells in *lanes*: Ray actors that each hold ``resources`` for as long as the
  map runs and take cells one at a time. ``fn`` is shipped to each lane once, so whatever it
  caches (data, measured latencies) lasts across that lane's cells. There are as many lanes as the
  cluster has units of ``resources``. The runner uses that for latency (docs/measurement.md: latency
  work runs in an exclusive lane): every cell of a profile requests ``{"profile:<name>": 1}``, a
  node advertises one unit, so each node runs one cell of the profile at a time.

  A cell's work items become Ray tasks (``RayItems``), each asking for what the item says it needs
  (an entry: a CPU core or a GPU; a segment: the profile's slot), retried on another worker when
  the one running it dies (``max_retries``). Their results come back to the lane, which writes the
  caches, so the caches stay the one record of what is done and a killed run resumes from them.

Deadlock: a lane waits for its tasks, so it must not hold what they need. Lanes that hold a
profile's slot hold no CPU (``num_cpus=0``): entry tasks can use every core of the cluster, the
lane's own included, while the lane waits. A segment needs the very slot the lane holds (one unit
per node, and every unit may be held by a lane); so items that need nothing beyond what the caller
holds run in the caller itself: the lane measures its segments on its own node, under the slot it
holds, one at a time. Items submitted from the driver (which holds nothing) always become tasks.

Ray is optional (``pip install depthbench[ray]``); without ``address`` the executor starts a local
cluster whose one node advertises ``node_resources``, with ``address`` it joins an existing cluster,
whose nodes advertise their own (``ray start --resources='{"profile:cpu-onnxruntime": 1}'``).
Progress reported in lanes comes back to the driver through a Ray queue (``relay``), so a run on a
cluster shows one line per step (cell, importance table, latency table) as on one machine.
See docs/cluster.md for running on a real cluster.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, TypeVar

from suite.core.items import MapItems, Resources, serial_map
from suite.errors import DepthbenchError

Item = TypeVar("Item")
Result = TypeVar("Result")
StepProgress = Callable[[str, int, int], None]  # (what, done, total)
MAX_RETRIES = 3  # attempts after the first, for a work item whose worker died
POLL_S = 0.5  # how often the driver forwards progress while it waits for a lane


class Executor(Protocol):
    in_process: bool  # whether fn runs in this process (and may report progress to it)

    def map(
        self,
        fn: Callable[[Item], Result],
        items: Sequence[Item],
        resources: Resources | None = None,
    ) -> Iterator[Result]: ...

    def item_map(self, held: Resources | None = None) -> MapItems: ...

    def relay(self, progress: StepProgress) -> StepProgress: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc_info: object) -> None: ...


class InProcessExecutor:
    """Call ``fn`` on each item in turn, in this process; ``resources`` are trivially exclusive."""

    in_process = True

    def map(
        self,
        fn: Callable[[Item], Result],
        items: Sequence[Item],
        resources: Resources | None = None,
    ) -> Iterator[Result]:
        for item in items:
            yield fn(item)

    def item_map(self, held: Resources | None = None) -> MapItems:
        """CPU work items on this machine's cores, the rest in the cell's process (``CoreItems``)."""
        return CoreItems()

    def relay(self, progress: StepProgress) -> StepProgress:
        """Cells run here and report to ``progress`` directly."""
        return progress

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class RayExecutor:
    """Run ``fn`` in Ray actors (lanes) that hold ``resources`` each; see the module docstring.

    Joins the Ray instance this process is already connected to, if any; otherwise starts a local
    cluster (``address=None``) or connects to ``address``. Leaving the ``with`` block shuts down
    only a connection this executor made.
    """

    in_process = False

    def __init__(self, address: str | None = None, node_resources: Resources | None = None) -> None:
        self._ray = _import_ray()
        self._connected_here = not self._ray.is_initialized()
        self._queue: Any = None  # the progress queue lanes write to (relay)
        self._sink: StepProgress | None = None
        if not self._connected_here:
            return
        if address is None:
            self._ray.init(resources=node_resources or {}, include_dashboard=False)
        else:
            try:
                self._ray.init(address=address)
            except ConnectionError as error:
                raise DepthbenchError(
                    f"cannot reach a Ray cluster at {address!r} ({error}); start one with "
                    "`ray start --head` and pass the address it prints"
                ) from error

    def map(
        self,
        fn: Callable[[Item], Result],
        items: Sequence[Item],
        resources: Resources | None = None,
    ) -> Iterator[Result]:
        from ray.util import ActorPool

        if not items:
            return
        count = self._lane_count(resources)
        # A lane with a profile's slot holds no CPU: the work items it hands out may use its cores
        lane = self._ray.remote(_Lane).options(
            num_cpus=0 if resources else 1, resources=resources or {}
        )
        shipped_fn = self._ray.put(fn)
        lanes = [lane.remote(shipped_fn) for _ in range(min(count, len(items)))]
        pool = ActorPool(lanes)
        for item in items:
            pool.submit(lambda actor, item: actor.run.remote(item), item)
        try:
            while pool.has_next():
                try:
                    yield pool.get_next_unordered(timeout=POLL_S)
                except TimeoutError:
                    pass
                self._forward_progress()
        finally:
            self._forward_progress()
            for actor in lanes:
                self._ray.kill(actor)

    def item_map(self, held: Resources | None = None) -> MapItems:
        """Work items as Ray tasks, for a caller (a lane, or the driver) that holds ``held``
        (the lane's ``resources``); see the module docstring on deadlock."""
        return RayItems(held=dict(held or {}))

    def relay(self, progress: StepProgress) -> StepProgress:
        """A picklable stand-in for ``progress`` that lanes call: what they report is queued and
        passed to ``progress`` here while ``map`` waits for results."""
        from ray.util.queue import Queue

        if self._queue is None:
            self._queue = Queue(actor_options={"num_cpus": 0})
        self._sink = progress
        return _QueuedProgress(self._queue)

    def _forward_progress(self) -> None:
        if self._queue is None or self._sink is None:
            return
        while not self._queue.empty():
            self._sink(*self._queue.get_nowait())

    def _lane_count(self, resources: Resources | None) -> int:
        """How many lanes the cluster holds at once: without resources, one per CPU; with them,
        one per unit of them on every node."""
        if not resources:
            return int(self._ray.cluster_resources().get("CPU", 1))
        nodes = [node["Resources"] for node in self._ray.nodes() if node["Alive"]]
        slots = [
            min(int(node.get(name, 0) // amount) for name, amount in resources.items())
            for node in nodes
        ]
        if not any(slots):
            name = next(iter(resources))
            raise DepthbenchError(
                f"no node of the Ray cluster offers {name!r}; start one that does with "
                f"`ray start --address=<head> --resources='{{\"{name}\": 1}}'`"
            )
        return sum(slots)

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._queue is not None:
            self._queue.shutdown()
            self._queue = None
        if self._connected_here:
            self._ray.shutdown()


class _Lane:
    """A Ray actor that applies one function to the items it is given, keeping its state."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def run(self, item: Any) -> Any:
        return self.fn(item)


@dataclass(frozen=True)
class RayItems:
    """``MapItems`` on Ray: each item a task asking for the item's resources, retried up to
    ``MAX_RETRIES`` times when its worker dies; results yielded as they finish.

    Items that need nothing beyond ``held`` (what the caller itself holds) run in the caller:
    waiting for another unit of a slot while holding one could wait forever.
    """

    held: Resources

    def __call__(
        self, fn: Callable[[Any], Any], items: Sequence[Any], resources: Resources | None = None
    ) -> Iterator[Any]:
        resources = resources or {}
        if not items:
            return
        if self.held and all(self.held.get(k, 0) >= v for k, v in resources.items()):
            yield from serial_map(fn, items, resources)
            return
        ray = _import_ray()
        custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
        task = ray.remote(_apply).options(
            num_cpus=resources.get("CPU", 0),
            num_gpus=resources.get("GPU", 0),
            resources=custom,
            max_retries=MAX_RETRIES,
        )
        shipped_fn = ray.put(fn)
        pending = [task.remote(shipped_fn, item) for item in items]
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                yield ray.get(ready[0])
        finally:  # the caller stopped early (an error, Ctrl-C): drop what has not run
            for ref in pending:
                ray.cancel(ref)


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


@dataclass(frozen=True)
class CoreItems:
    """``MapItems`` on this machine's cores: items that ask for CPU cores only (``{"CPU": n}``)
    run in a pool of worker processes, as many as fit the cores this process may use, each with
    one torch thread; everything else, and everything on a one-core machine, runs in the caller,
    one item after another. Results are yielded as they finish.

    Why processes: an importance entry fine-tunes a small network for a few steps, and torch's
    intra-op threads barely help at that size (on 2 cores, 2 threads ran 80 training steps of
    MobileNetV2-0.5 at 32x32 in 4.8 s, 1 thread in 5.7 s, 2 processes of 1 thread in 2.6 s).
    ``fn`` goes to each worker once, when it starts (it holds the network and the data); workers
    are started fresh (``spawn``) since forking a process whose torch threads have run can hang.
    """

    def __call__(
        self, fn: Callable[[Any], Any], items: Sequence[Any], resources: Resources | None = None
    ) -> Iterator[Any]:
        cores_only = set(resources or {}) == {"CPU"}
        workers = min(int(usable_cores() // resources["CPU"]), len(items)) if cores_only else 0
        if workers < 2:
            yield from serial_map(fn, items, resources)
            return
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(fn,),
        )
        try:
            pending = [pool.submit(_apply_shipped, item) for item in items]
            for done in as_completed(pending):
                yield done.result()
        finally:  # the caller stopped early (an error, Ctrl-C): drop what has not started
            pool.shutdown(cancel_futures=True)


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform says, e.g. under
    ``taskset`` or a container's CPU set), else all of the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_shipped: Callable[[Any], Any] | None = None  # a CoreItems worker's fn


def _start_worker(fn: Callable[[Any], Any]) -> None:
    import torch

    global _shipped
    _shipped = fn
    torch.set_num_threads(1)  # one core per worker: the pool has one worker per core


def _apply_shipped(item: Any) -> Any:
    return _shipped(item)


@dataclass(frozen=True)
class _QueuedProgress:
    """Progress reported in a lane, queued for the driver (``RayExecutor.relay``)."""

    queue: Any

    def __call__(self, what: str, done: int, total: int) -> None:
        self.queue.put_nowait((what, done, total))


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as error:
        raise DepthbenchError(
            "the Ray executor needs Ray: pip install 'depthbench[ray]' (or use the default "
            "in-process executor)"
        ) from error
    return ray
