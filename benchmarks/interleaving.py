"""Are latency ratios steadier measured interleaved than back to back? A measurement script.

    python -m benchmarks.interleaving [--repetitions 3] [--profile cpu-onnxruntime]

Four deploy networks of MobileNetV2-0.5 at 32x32 (10 classes, seeded random weights) of
different depth: the original and DepthShrinker-style plans that merge the first 4, 8 and all 17
inverted-residual blocks. Each repetition measures them twice, under the profile's full protocol:

- back to back: each network fully (``suite.measure.harness.measure``: every repeat, the
  stability gate), one network after another, as cells are measured when each finishes;
- interleaved: one session (``suite.run.session.measure_interleaved``): R rounds, every network
  once per round in a seeded random order, one repeat each, R = the protocol's repeats.

It prints, per network, its latency ratio to the original in each repetition and the coefficient
of variation of that ratio over the repetitions, for both schemes. A method comparison is a ratio
comparison, so the steadier scheme is the one whose ratios move less when the machine's load
does. The result on the development machine is in docs/measurement.md. Not an asv benchmark: it
answers a question once, with numbers that depend on the machine's load at the time.
"""

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path

import torch

from methods.depthshrinker import shrink_plan
from suite.core.export import export_onnx
from suite.core.realize import deploy_network, trainable_network
from suite.core.trace import trace_model
from suite.measure.harness import UnstableMeasurementWarning, measure, summarize
from suite.measure.profiles import load_profile
from suite.run.session import measure_interleaved

RESOLUTION = 32
SHRUNK_BLOCKS = {"original": 0, "shrink-4": 4, "shrink-8": 8, "shrink-all": None}


def deploy_files(folder: Path, batch: int) -> dict[str, Path]:
    """The four networks as ONNX files, at the profile's batch."""
    torch.manual_seed(0)
    traced = trace_model("mobilenet_v2", 0.5, 10, RESOLUTION)
    chain, blocks = traced.chain, traced.chain.blocks
    files = {}
    for name, count in SHRUNK_BLOCKS.items():
        plan = shrink_plan(chain, blocks, set(range(len(blocks) if count is None else count)))
        deploy = deploy_network(trainable_network(traced, plan)).eval()
        files[name] = export_onnx(
            deploy, (batch, 3, RESOLUTION, RESOLUTION), folder / f"{name}.onnx"
        )
    return files


def back_to_back(files: dict[str, Path], profile) -> dict[str, float]:
    return {name: measure(path, profile).median_ms for name, path in files.items()}


def interleaved(files: dict[str, Path], profile, seed: int) -> dict[str, float]:
    _, samples = measure_interleaved(files, profile, profile.protocol.repeats, seed)
    return {name: summarize(samples[name]).median_ms for name in files}


def cov(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--profile", default="cpu-onnxruntime")
    arguments = parser.parse_args()
    profile = load_profile(arguments.profile)
    warnings.simplefilter("ignore", UnstableMeasurementWarning)  # busy machine: that is the point
    ratios: dict[str, dict[str, list[float]]] = {"back to back": {}, "interleaved": {}}
    with tempfile.TemporaryDirectory() as folder:
        files = deploy_files(Path(folder), profile.batch)
        for repetition in range(arguments.repetitions):
            for scheme, medians in (
                ("back to back", back_to_back(files, profile)),
                ("interleaved", interleaved(files, profile, seed=repetition)),
            ):
                print(f"repetition {repetition + 1}, {scheme}: "
                      + ", ".join(f"{n} {ms:.4f} ms" for n, ms in medians.items()), flush=True)  # fmt: skip
                for name, median in medians.items():
                    ratio = median / medians["original"]
                    ratios[scheme].setdefault(name, []).append(ratio)
    print("\n| network | back to back: ratios | CoV | interleaved: ratios | CoV |")
    print("|---|---|---|---|---|")
    for name in list(SHRUNK_BLOCKS)[1:]:
        cells = []
        for scheme in ("back to back", "interleaved"):
            values = ratios[scheme][name]
            cells += [", ".join(f"{v:.3f}" for v in values), f"{cov(values):.1%}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
