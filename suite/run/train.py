"""The one fine-tuning recipe every method gets, evaluation, and base-network training.

Fairness (docs/fairness.md) asks that every method in a comparison is fine-tuned the same way: same
optimiser, schedule, length and knowledge-distillation setting. So methods never train on their
own; they hand their realised network to ``finetune`` with the comparison's ``FinetuneRecipe``.

Every loop that trains or scores a network runs here, on the recipe's ``placement``: the device
(``Compute.device``, resolved on the machine that trains by ``placed``), the data-loading workers
and whether batches are pinned. Networks live on the CPU outside these functions: each moves its
network to the device for the loop and back where it was after, so merging, export and latency
measurement never see the training device. Where a network trains and with how many workers is
not part of any hash (results differ by floating-point rounding only); ``amp`` is, when on.
"""

import io
import itertools
import math
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_serializer,
    model_validator,
)
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader, Dataset

from suite.core.models import build_model
from suite.errors import DepthbenchError
from suite.files import atomic_write
from suite.provenance import config_hash
from suite.run.data import DataSplits, eval_loader, train_loader

Progress = Callable[[int, int], None]
"""Called after every optimiser step with (steps done, total steps)."""

DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"
MAX_DEFAULT_WORKERS = 4


class Compute(BaseModel):
    """Where training runs (an experiment's ``compute`` section, ``--device`` on the command line).

    ``device``: ``auto`` (CUDA when torch sees a CUDA device, else the CPU), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``. ``workers``: data-loading processes; by default min(4, CPUs) for data
    sets read from files, 0 for data sets held in memory. Neither is part of any hash.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = "auto"
    workers: int | None = Field(None, ge=0)

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        # only the name: whether this machine has the device is checked where training runs
        if not re.fullmatch(DEVICE_PATTERN, device):
            raise ValueError(f"{device!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
        return device


@dataclass(frozen=True)
class Placement:
    """A recipe's compute, resolved on the machine that trains: ``placed`` makes one."""

    device: torch.device
    workers: int = 0
    amp: torch.dtype | None = None  # autocast dtype; None: fp32

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def record_fields(self) -> dict[str, object]:
        """The cell record's provenance of training (``CellRecord.train_device`` and the rest)."""
        name = f" ({torch.cuda.get_device_name(self.device)})" if self.pin_memory else ""
        amp = str(self.amp).removeprefix("torch.") if self.amp is not None else "off"
        return {"train_device": f"{self.device}{name}", "amp": amp, "workers": self.workers}


ON_CPU = Placement(torch.device("cpu"))


class FinetuneRecipe(BaseModel):
    """SGD with Nesterov momentum and a per-step cosine schedule to 0, optionally with KD.

    Upstream (Kim et al. 2023): lr 0.05 (MobileNetV2-1.0) or 0.1, momentum 0.9, weight decay 1e-5,
    batch 256; ``kd_weight`` 0.3 when distilling from the base network. Give the length as
    ``epochs`` over the training split or as optimiser ``steps``, not both.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: float | None = Field(None, gt=0)
    steps: int | None = Field(None, gt=0)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(1e-5, ge=0)
    batch_size: int = Field(256, gt=0)
    kd_weight: float = Field(0.0, ge=0, le=1)
    kd_temperature: float = Field(1.0, gt=0)
    seed: int = 0
    amp: bool = Field(False, description="mixed precision (bf16, else fp16 + loss scaling); CUDA")
    _placement: Placement = PrivateAttr(ON_CPU)

    @property
    def placement(self) -> Placement:
        """Where the recipe trains: on the CPU in this process unless ``placed`` says otherwise."""
        return self._placement

    @model_serializer(mode="wrap")
    def _amp_only_when_on(self, serialize: Callable[["FinetuneRecipe"], dict]) -> dict:
        # amp changes the numbers, so it is hashed when on; off, it is left out, so recipes (and
        # cell hashes) from before the option existed stay what they were
        fields = serialize(self)
        if not self.amp:
            fields.pop("amp", None)
        return fields

    @model_validator(mode="after")
    def _one_length(self) -> "FinetuneRecipe":
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give the recipe's length as exactly one of epochs or steps")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a positive momentum")
        return self


@dataclass(frozen=True)
class Accuracy:
    """Percentages of correct predictions, the mean cross-entropy, and which images were right."""

    top1: float
    top5: float | None  # None when there are 5 classes or fewer: it would always be 100
    loss: float
    correct: np.ndarray  # top-1 correctness (bool) of every image, in data-set order


def placed(
    recipe: FinetuneRecipe, compute: Compute, data: DataSplits, source: str = "compute.device"
) -> FinetuneRecipe:
    """``recipe`` set to train with ``compute`` on this machine, on ``data``.

    A device torch cannot use here, and ``amp`` anywhere but on CUDA, are refused; ``source``
    names where the device was given, for the message.
    """
    device = resolve_device(compute.device, source)
    if recipe.amp and device.type != "cuda":
        raise DepthbenchError(
            f"the recipe asks for mixed precision (amp: true) but training runs on {device} "
            f"({source} {compute.device}): amp needs a CUDA device; set amp: false, or train on "
            "a machine with a CUDA GPU"
        )
    workers = compute.workers
    if workers is None:
        workers = 0 if data.in_memory else min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)
    amp = None
    if recipe.amp:  # bf16 where the GPU computes it natively (Ampere, compute capability 8, on)
        native_bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
        amp = torch.bfloat16 if native_bf16 else torch.float16
    copy = recipe.model_copy()
    copy._placement = Placement(device, workers, amp)
    return copy


def resolve_device(device: str, source: str = "compute.device") -> torch.device:
    """``auto`` -> ``cuda`` when torch sees a CUDA device, else ``cpu``; a CUDA device gets its
    index. A name that is no device, or a device this machine lacks, is refused naming ``source``
    (where the name was given) and the fix."""
    if not re.fullmatch(DEVICE_PATTERN, device):
        raise DepthbenchError(
            f"{source} {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if resolved.index is None and count:
            resolved = torch.device("cuda", torch.cuda.current_device())
        if (resolved.index or 0) >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device (a CPU-only torch?)"
            raise DepthbenchError(
                f"{source} {device!r}: torch sees {have} here; use auto or cpu, or a device "
                "index below the count"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DepthbenchError(f"{source} {device!r}: torch has no MPS device here; use auto or cpu")
    return resolved


class DeviceBatches:
    """Batches of a ``DataLoader``, delivered on a device; iterable again for every epoch."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for images, labels in self.loader:
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )


def train_batches(dataset: Dataset, recipe: FinetuneRecipe, seed: int) -> DeviceBatches:
    """One epoch of shuffled training batches (order fixed by ``seed``) on the recipe's device,
    loaded with its workers: what a method that trains or scores on its own iterates."""
    where = recipe.placement
    loader = train_loader(dataset, recipe.batch_size, seed, where.workers, where.pin_memory)
    return DeviceBatches(loader, where.device)


@contextmanager
def moved(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``module`` on ``device`` inside the block and back where it was after (its parameters stay
    the same objects, so optimiser groups and ``lr_scale`` keys still refer to them)."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    home = first.device if first is not None else device
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


def finetune(
    model: nn.Module,
    data: DataSplits,
    recipe: FinetuneRecipe,
    teacher: nn.Module | None = None,
    lr_scale: Mapping[nn.Parameter | str, float] | None = None,
    progress: Progress | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``data.train`` with ``recipe``; returns it in eval mode.

    ``teacher`` (the base network) is distilled from when ``recipe.kd_weight`` is positive.
    ``lr_scale`` multiplies the learning rate of chosen parameters (given as parameters or their
    names), e.g. 10 for a layer a method initialises from scratch. Training runs on the recipe's
    ``placement``; ``model`` and ``teacher`` come back to the device they were on. The same seed
    gives bit-identical weights on CPU; the caller's random state is left untouched.
    """
    if recipe.kd_weight > 0 and teacher is None:
        raise DepthbenchError(
            f"the recipe distils (kd_weight={recipe.kd_weight}): pass the base network as teacher"
        )
    where = recipe.placement
    device = where.device
    distil = recipe.kd_weight > 0
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        moved(model, device),
        moved(teacher, device) if distil else nullcontext(),
    ):
        torch.manual_seed(recipe.seed)  # dropout and other in-model randomness
        batches = train_batches(data.train, recipe, recipe.seed)
        total_steps = finetune_steps(recipe, data.train)
        optimizer = torch.optim.SGD(
            _parameter_groups(model, recipe.lr, lr_scale or {}),
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
        )
        schedule = CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0.0)
        # fp16 needs its loss scaled against gradient underflow; bf16 has fp32's range
        scaler = torch.amp.GradScaler(device.type, enabled=where.amp == torch.float16)
        if distil:
            teacher.eval()
        model.train()
        endless = itertools.chain.from_iterable(itertools.repeat(batches))  # epoch after epoch
        for step, (images, labels) in enumerate(itertools.islice(endless, total_steps), start=1):
            with _autocast(where):
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                if distil:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                    loss = (1 - recipe.kd_weight) * loss + recipe.kd_weight * _distillation_loss(
                        logits, teacher_logits, recipe.kd_temperature
                    )
            if not torch.isfinite(loss):
                raise DepthbenchError(
                    f"fine-tuning diverged at step {step} (loss {loss.item()}): lower the lr"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            if progress is not None:
                progress(step, total_steps)
    return model.eval()


def finetune_steps(recipe: FinetuneRecipe, train: Dataset) -> int:
    """The optimiser steps ``finetune`` takes with ``recipe`` on the training split ``train``:
    ``recipe.steps``, or its epochs of ``train_loader`` batches (the last partial one dropped)."""
    if recipe.steps is not None:
        return recipe.steps
    return math.ceil(recipe.epochs * len(train_loader(train, recipe.batch_size, recipe.seed)))


@torch.inference_mode()
def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, placement: Placement = ON_CPU
) -> Accuracy:
    """Top-1 / top-5 accuracy (%), mean cross-entropy and per-image top-1 correctness of
    ``model`` over all of ``dataset`` (in its order, so two networks' results pair image by image).

    Runs on ``placement`` (a recipe's, e.g. ``ctx.recipe.placement``); ``model`` comes back to the
    device it was on.
    """
    if len(dataset) == 0:
        raise DepthbenchError("cannot evaluate on an empty data set")
    device = placement.device
    top5 = loss = 0.0
    correct = []
    loader = eval_loader(dataset, batch_size, placement.workers, placement.pin_memory)
    with moved(model, device):
        model.eval()
        for images, labels in DeviceBatches(loader, device):
            with _autocast(placement):
                logits = model(images).float()
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            correct.append(ranked[:, 0].cpu().numpy())
            top5 += ranked.any(dim=1).sum().item()
    correct = np.concatenate(correct)
    count = len(dataset)
    has_top5 = logits.shape[1] > 5
    return Accuracy(
        100 * int(correct.sum()) / count,
        100 * top5 / count if has_top5 else None,
        loss / count,
        correct,
    )


def train_base(
    model_name: str,
    data: DataSplits,
    recipe: FinetuneRecipe,
    cache_dir: str | Path,
    width: float = 1.0,
    progress: Progress | None = None,
) -> Path:
    """Train ``model_name`` from scratch on ``data`` once; returns the cached state dict's path.

    The cache key is a hash of the model, the data split and the recipe, so a changed recipe
    trains a new base network and never reuses a stale one.
    """
    key = config_hash(
        {
            "model": model_name,
            "width": width,
            "data": [data.name, data.resolution, data.num_classes, data.seed, len(data.train)],
            "recipe": recipe,
        }
    )
    path = Path(cache_dir) / f"base-{model_name}-{key[:16]}.pt"
    if path.exists():
        return path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)  # the initial weights
        model = build_model(model_name, data.num_classes, width)
    finetune(model, data, recipe, progress=progress)
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    atomic_write(path, weights.getvalue())
    return path


def load_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict (parameter name -> tensor) safely: nothing in the file is executed."""
    path = Path(path)
    if not path.is_file():
        raise DepthbenchError(f"checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's own message advises weights_only=False, i.e. running the file's code: not shown
        raise DepthbenchError(
            f"checkpoint {path} is not a plain state dict (it holds pickled objects besides "
            "tensors, which are not loaded, as loading them could run code); make one with "
            "torch.save(model.state_dict(), path)"
        ) from error
    except (RuntimeError, EOFError) as error:
        raise DepthbenchError(f"checkpoint {path} is not a readable torch file: {error}") from error
    if not _is_state_dict(loaded):
        hint = (
            "; it looks like a training checkpoint: save its 'state_dict' entry alone"
            if isinstance(loaded, dict) and "state_dict" in loaded
            else ""
        )
        raise DepthbenchError(
            f"checkpoint {path} is a {type(loaded).__name__}, not a state dict "
            f"(parameter name -> tensor){hint}"
        )
    return loaded


def _autocast(placement: Placement) -> AbstractContextManager:
    if placement.amp is None:
        return nullcontext()
    return torch.autocast(placement.device.type, dtype=placement.amp)


def _distillation_loss(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al.'s KL divergence of softened outputs, scaled by T^2 to keep gradient size."""
    return (
        F.kl_div(
            F.log_softmax(logits / temperature, dim=1),
            F.log_softmax(teacher_logits / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )


def _parameter_groups(
    model: nn.Module, lr: float, lr_scale: Mapping[nn.Parameter | str, float]
) -> list[dict]:
    named = dict(model.named_parameters())
    scale_by_id = {}
    for key, scale in lr_scale.items():
        if isinstance(key, str):
            if key not in named:
                raise DepthbenchError(f"lr_scale names {key!r}, which is not a model parameter")
            key = named[key]
        if not any(key is parameter for parameter in named.values()):
            raise DepthbenchError("lr_scale holds a parameter that is not the model's")
        scale_by_id[id(key)] = scale
    groups: dict[float, list[nn.Parameter]] = {}
    for parameter in named.values():
        if parameter.requires_grad:
            groups.setdefault(scale_by_id.get(id(parameter), 1.0), []).append(parameter)
    return [{"params": params, "lr": lr * scale} for scale, params in groups.items()]


def _is_state_dict(loaded: object) -> bool:
    return (
        isinstance(loaded, dict)
        and len(loaded) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items())
    )
