"""Executors: how the runner spreads the cells of a grid over processes and machines.

Both executors have one method, ``map(fn, items, resources=None)``, which calls ``fn`` on every
item and yields the results in the order they finish.

- ``InProcessExecutor`` (the default) calls ``fn`` here, one item after another.
- ``RayExecutor`` runs ``fn`` in *lanes*: Ray actors that each hold ``resources`` for as long as
  the map runs and take items one at a time. ``fn`` is shipped to each lane once, so whatever it
  caches (data, measured latencies) lasts across that lane's items. There are as many lanes as
  the cluster has units of ``resources``, and each also holds its node's CPUs (its share, where
  a node has several units). The runner uses that for latency (docs/measurement.md: latency work
  runs in an exclusive lane): every cell of a profile requests ``{"profile:<name>": 1}``, a node
  advertises one unit, so each node runs one cell at a time and no other Ray work beside it.

Ray is optional (``pip install depthbench[ray]``); without ``address`` the executor starts a local
cluster whose one node advertises ``node_resources``, with ``address`` it joins an existing cluster,
whose nodes advertise their own (``ray start --resources='{"profile:cpu-onnxruntime": 1}'``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, Protocol, TypeVar

from suite.errors import DepthbenchError

Item = TypeVar("Item")
Result = TypeVar("Result")
Resources = dict[str, float]


class Executor(Protocol):
    in_process: bool  # whether fn runs in this process (and may report progress to it)

    def map(
        self,
        fn: Callable[[Item], Result],
        items: Sequence[Item],
        resources: Resources | None = None,
    ) -> Iterator[Result]: ...

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
        count, cpus = self._lane_shape(resources)
        lane = self._ray.remote(_Lane).options(num_cpus=cpus, resources=resources or {})
        shipped_fn = self._ray.put(fn)
        lanes = [lane.remote(shipped_fn) for _ in range(min(count, len(items)))]
        try:
            yield from ActorPool(lanes).map_unordered(
                lambda actor, item: actor.run.remote(item), items
            )
        finally:
            for actor in lanes:
                self._ray.kill(actor)

    def _lane_shape(self, resources: Resources | None) -> tuple[int, int]:
        """How many lanes the cluster holds at once, and how many CPUs each lane holds.

        Without resources, a lane per CPU. With them, a lane per unit of them on every node, and
        each lane holds its node's CPUs divided by the node's units (the smallest such share
        across nodes, so that every lane fits): no other work of the cluster lands beside it.
        """
        if not resources:
            return int(self._ray.cluster_resources().get("CPU", 1)), 1
        nodes = [node["Resources"] for node in self._ray.nodes() if node["Alive"]]
        slots = [
            (min(int(node.get(name, 0) // amount) for name, amount in resources.items()), node)
            for node in nodes
        ]
        offering = [(count, node) for count, node in slots if count > 0]
        if not offering:
            name = next(iter(resources))
            raise DepthbenchError(
                f"no node of the Ray cluster offers {name!r}; start one that does with "
                f"`ray start --address=<head> --resources='{{\"{name}\": 1}}'`"
            )
        cpus = min(int(node.get("CPU", 0) // count) for count, node in offering)
        return sum(count for count, _ in offering), cpus

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._connected_here:
            self._ray.shutdown()


class _Lane:
    """A Ray actor that applies one function to the items it is given, keeping its state."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def run(self, item: Any) -> Any:
        return self.fn(item)


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as error:
        raise DepthbenchError(
            "the Ray executor needs Ray: pip install 'depthbench[ray]' (or use the default "
            "in-process executor)"
        ) from error
    return ray
