"""The one fine-tuning recipe every method gets, evaluation, and base-network training.

Fairness (docs/fairness.md) asks that every method in a comparison is fine-tuned the same way: same
optimiser, schedule, length and knowledge-distillation setting. So methods never train on their
own; they hand their realised network to ``finetune`` with the comparison's ``FinetuneRecipe``.
"""

import io
import itertools
import math
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import Dataset

from suite.core.models import build_model
from suite.errors import DepthbenchError
from suite.files import atomic_write
from suite.provenance import config_hash
from suite.run.data import DataSplits, eval_loader, train_loader

Progress = Callable[[int, int], None]
"""Called after every optimiser step with (steps done, total steps)."""


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
    names), e.g. 10 for a layer a method initialises from scratch. The same seed gives bit-identical
    weights on CPU; the caller's random state is left untouched.
    """
    if recipe.kd_weight > 0 and teacher is None:
        raise DepthbenchError(
            f"the recipe distils (kd_weight={recipe.kd_weight}): pass the base network as teacher"
        )
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(recipe.seed)  # dropout and other in-model randomness
        loader = train_loader(data.train, recipe.batch_size, recipe.seed)
        total_steps = recipe_steps(recipe, data)
        optimizer = torch.optim.SGD(
            _parameter_groups(model, recipe.lr, lr_scale or {}),
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
        )
        schedule = CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0.0)
        distil = recipe.kd_weight > 0
        if distil:
            teacher.eval()
        model.train()
        endless = itertools.chain.from_iterable(itertools.repeat(loader))  # epoch after epoch
        for step, (images, labels) in enumerate(itertools.islice(endless, total_steps), start=1):
            images, labels = images.to(device), labels.to(device)
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
            loss.backward()
            optimizer.step()
            schedule.step()
            if progress is not None:
                progress(step, total_steps)
    return model.eval()


def recipe_steps(recipe: FinetuneRecipe, data: DataSplits) -> int:
    """The optimiser steps ``finetune`` runs with ``recipe`` on ``data.train``."""
    if recipe.steps is not None:
        return recipe.steps
    return math.ceil(recipe.epochs * len(train_loader(data.train, recipe.batch_size, recipe.seed)))


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> Accuracy:
    """Top-1 / top-5 accuracy (%), mean cross-entropy and per-image top-1 correctness of
    ``model`` over all of ``dataset`` (in its order, so two networks' results pair image by image).
    """
    if len(dataset) == 0:
        raise DepthbenchError("cannot evaluate on an empty data set")
    device = next(model.parameters(), torch.empty(0)).device
    model.eval()
    top5 = loss = 0.0
    correct = []
    for images, labels in eval_loader(dataset, batch_size):
        logits = model(images.to(device))
        labels = labels.to(device)
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
