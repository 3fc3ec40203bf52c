"""Data sets, each split into train / holdout / test, the same way for every method.

``holdout`` is carved out of the training images, as upstream (Kim et al.) does for ImageNet: the
importance of a merge is scored on the holdout after fine-tuning on ``train``, which never contains
a holdout image. ``test`` is the data set's own test (or val) split and is used only to report
accuracy. Nothing is downloaded: ``digits`` ships with scikit-learn, the others read a local root.

Training batches may be loaded by worker processes. Each training image's random augmentation is
drawn from a seed of its own, dealt out with the shuffled order, so the crops and flips depend on
the loader's seed only: not on how many workers load them, nor on which.
"""

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, Subset, TensorDataset
from torchvision.transforms import v2

from suite.errors import DepthbenchError

HOLDOUT_FRACTION = 0.1
DIGITS_TEST_FRACTION = 0.2
IMAGENET_HOLDOUT_LIST = "ecdc__utils_txt_holdout_val.txt"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataSplits:
    """One data set, split for compression experiments; every item is (image tensor, label)."""

    name: str
    train: Dataset
    holdout: Dataset
    test: Dataset
    num_classes: int
    resolution: int
    seed: int  # of the holdout (and digits' test) split
    in_memory: bool = False  # tensors held in memory: nothing for loader workers to do


@dataclass(frozen=True)
class _CifarFormat:
    dataset_class: type[tvd.CIFAR10]
    folder: str
    files: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR = {
    "cifar10": _CifarFormat(
        tvd.CIFAR10,
        "cifar-10-batches-py",
        (
            "batches.meta",
            "data_batch_1",
            "data_batch_2",
            "data_batch_3",
            "data_batch_4",
            "data_batch_5",
            "test_batch",
        ),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _CifarFormat(
        tvd.CIFAR100,
        "cifar-100-python",
        ("meta", "train", "test"),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}
KNOWN_DATASETS: tuple[str, ...] = ("digits", *_CIFAR, "imagenet", "imagefolder")


def load_data(
    name: str, root: str | Path | None = None, resolution: int | None = None, seed: int = 0
) -> DataSplits:
    """Load data set ``name`` with images of ``resolution`` pixels a side.

    ``seed`` fixes the holdout split (and, for ``digits``, the test split). ``root`` is the local
    directory of ``cifar10``, ``cifar100``, ``imagenet`` and ``imagefolder``; ``digits`` needs none.
    """
    if resolution is not None and resolution < 1:
        raise DepthbenchError(f"resolution must be a positive number of pixels, got {resolution}")
    if name == "digits":
        return _load_digits(resolution or 32, seed)
    if name not in _CIFAR and name not in ("imagenet", "imagefolder"):
        raise DepthbenchError(f"unknown data set {name!r}: use one of {', '.join(KNOWN_DATASETS)}")
    if root is None:
        raise DepthbenchError(f"data set {name!r} reads a local directory: give its root path")
    if name in _CIFAR:
        return _load_cifar(name, Path(root), resolution or 32, seed)
    return _load_image_folders(name, Path(root), resolution or 224, seed)


def train_loader(
    dataset: Dataset, batch_size: int, seed: int, workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Shuffled batches in an order fixed by ``seed``, each image augmented under its own seed.

    The last partial batch is dropped (when there is more than one batch) because a batch of one
    image breaks batch-norm training. ``workers`` processes load the batches (0: this process);
    ``pin_memory`` puts them in page-locked memory, for fast copies to a CUDA device.
    """
    return DataLoader(
        _SeededItems(dataset),
        batch_size=batch_size,
        sampler=_SeededOrder(dataset, seed),
        # the workers' base seed comes from here, not from the global random state (which would
        # then advance once per epoch without workers and once with persistent ones)
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(dataset) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,  # not restarted every epoch
        pin_memory=pin_memory,
    )


def eval_loader(
    dataset: Dataset, batch_size: int, workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Batches in data-set order, every image once."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory
    )


class _SeededOrder(Sampler[tuple[int, int]]):
    """The shuffled order of the images (as ``RandomSampler`` with a generator seeded by ``seed``
    deals it) and a seed for each image's augmentation, from a second generator."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.order = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        self.seeds = torch.Generator().manual_seed(seed + 1)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for index in self.order:
            yield index, int(torch.randint(2**62, (), generator=self.seeds))


class _SeededItems(Dataset):
    """``dataset[index]`` drawn under the seed that comes with the index; the random state of the
    process that loads it (this one, or a worker) is left as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def stratified_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """``size`` images of ``dataset`` drawn so that every class keeps its share, fixed by ``seed``;
    the whole data set when it has no more than ``size`` images.

    ImageFolder trees list their images class by class, so the first ``size`` images would cover
    only the first classes. Here each class's images are shuffled and the classes interleaved in
    proportion to their sizes: any prefix of that order is stratified, also when ``size`` is below
    the number of classes (then the classes it covers are a seeded choice). The chosen images keep
    their data-set order.
    """
    if size >= len(dataset):
        return dataset
    labels = labels_of(dataset)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    share = np.empty(len(labels))  # how far into its shuffled class an image comes, in (0, 1]
    for label in np.unique(labels):
        members = shuffled[labels[shuffled] == label]
        share[members] = (np.arange(len(members)) + rng.random()) / len(members)
    chosen = shuffled[np.argsort(share[shuffled], kind="stable")[:size]]
    return Subset(dataset, np.sort(chosen).tolist())


def labels_of(dataset: Dataset) -> np.ndarray:
    """The label of every image, read from the data set's label list (no image is loaded)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    return np.asarray(dataset.targets)  # torchvision's ImageFolder and CIFAR


def _load_digits(resolution: int, seed: int) -> DataSplits:
    """scikit-learn's 1797 8x8 handwritten digits, upsampled bilinearly and kept in memory."""
    digits = load_digits()
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    pixels = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(pixels, size=(resolution, resolution), mode="bilinear")
    rest, test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=seed
    )
    train, holdout = _split_holdout(rest, labels[rest].tolist(), seed)
    mean, std = images[train].mean(), images[train].std()
    images = ((images - mean) / std).repeat(1, 3, 1, 1)

    def tensors(index: np.ndarray) -> TensorDataset:
        return TensorDataset(images[index], labels[index])

    return DataSplits(
        "digits", tensors(train), tensors(holdout), tensors(test), 10, resolution, seed, True
    )


def _load_cifar(name: str, root: Path, resolution: int, seed: int) -> DataSplits:
    """CIFAR in torchvision's format (the extracted python-pickle archive) under ``root``."""
    spec = _CIFAR[name]
    missing = [f for f in spec.files if not (root / spec.folder / f).is_file()]
    if missing:
        raise DepthbenchError(
            f"data set {name!r}: {root / spec.folder} lacks {', '.join(missing)}; expected "
            f"{root}/{spec.folder}/{{{','.join(spec.files)}}}, the extracted torchvision archive "
            f"(torchvision.datasets.{spec.dataset_class.__name__}(root, download=True) makes it)"
        )
    resize = [v2.Resize(resolution)] if resolution != 32 else []
    train_transform = v2.Compose(
        [
            *resize,
            v2.RandomCrop(resolution, padding=resolution // 8),
            v2.RandomHorizontalFlip(),
            *_to_normalised_tensor(spec.mean, spec.std),
        ]
    )
    eval_transform = v2.Compose([*resize, *_to_normalised_tensor(spec.mean, spec.std)])
    try:
        train_set = spec.dataset_class(str(root), train=True, transform=train_transform)
        test_set = spec.dataset_class(str(root), train=False, transform=eval_transform)
    except RuntimeError as error:  # torchvision's answer to a corrupt archive
        message = f"data set {name!r} under {root}: {error}; extract the archive again"
        raise DepthbenchError(message) from error
    train, holdout = _split_holdout(np.arange(len(train_set)), train_set.targets, seed)
    subsets = _train_and_holdout(train_set, train, holdout, eval_transform)
    return DataSplits(name, *subsets, test_set, len(train_set.classes), resolution, seed)


def _load_image_folders(name: str, root: Path, resolution: int, seed: int) -> DataSplits:
    """An ImageFolder tree: root/train/<class>/<image> and root/val/<class>/<image>.

    For ``imagenet`` the holdout is upstream's list of 50 training images per class; for any other
    tree it is a seeded, class-stratified fraction of the training images.
    """
    layout = f"{root}/train/<class>/<image> and {root}/val/<class>/<image>"
    for split in ("train", "val"):
        if not (root / split).is_dir():
            message = f"data set {name!r}: {root / split} is missing; expected {layout}"
            raise DepthbenchError(message)
    train_transform = v2.Compose(
        [
            v2.RandomResizedCrop(resolution),
            v2.RandomHorizontalFlip(),
            *_to_normalised_tensor(_IMAGENET_MEAN, _IMAGENET_STD),
        ]
    )
    eval_transform = v2.Compose(
        [
            v2.Resize(round(resolution * 256 / 224)),
            v2.CenterCrop(resolution),
            *_to_normalised_tensor(_IMAGENET_MEAN, _IMAGENET_STD),
        ]
    )
    try:
        train_set = tvd.ImageFolder(str(root / "train"), transform=train_transform)
        test_set = tvd.ImageFolder(str(root / "val"), transform=eval_transform)
    except FileNotFoundError as error:  # ImageFolder's answer to a folder without class folders
        raise DepthbenchError(f"data set {name!r}: {error}; expected {layout}") from error
    if train_set.classes != test_set.classes:
        raise DepthbenchError(
            f"data set {name!r}: {root}/train and {root}/val have different class folders; "
            "both need the same set of classes"
        )
    if name == "imagefolder":
        train, holdout = _split_holdout(np.arange(len(train_set)), train_set.targets, seed)
    else:
        train, holdout = _imagenet_holdout(root, train_set)
    subsets = _train_and_holdout(train_set, train, holdout, eval_transform)
    return DataSplits(name, *subsets, test_set, len(train_set.classes), resolution, seed)


def _imagenet_holdout(root: Path, train_set: tvd.ImageFolder) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's holdout: the training images named in its list (50 per ImageNet class)."""
    holdout_names = set(_reference_text(IMAGENET_HOLDOUT_LIST).split())
    in_holdout = np.array([Path(path).name in holdout_names for path, _ in train_set.samples])
    if not in_holdout.any():
        raise DepthbenchError(
            f"data set 'imagenet': no image in {root}/train is on the upstream holdout list "
            f"(suite/reference/{IMAGENET_HOLDOUT_LIST}); is {root} an ImageNet-1k root with "
            "the original file names? Use 'imagefolder' for other trees"
        )
    index = np.arange(len(in_holdout))
    return index[~in_holdout], index[in_holdout]


def _train_and_holdout(
    train_set: Dataset, train: np.ndarray, holdout: np.ndarray, eval_transform: v2.Transform
) -> tuple[Subset, Subset]:
    """Holdout images are scored, so they get the evaluation transform, not the augmentation."""
    holdout_view = copy.copy(train_set)  # shares the (possibly huge) file list
    holdout_view.transform = eval_transform
    return Subset(train_set, train.tolist()), Subset(holdout_view, holdout.tolist())


def _split_holdout(
    index: np.ndarray, labels: Sequence[int], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified ``HOLDOUT_FRACTION`` of ``index``, fixed by ``seed``."""
    train, holdout = train_test_split(
        index, test_size=HOLDOUT_FRACTION, stratify=labels, random_state=seed
    )
    return np.sort(train), np.sort(holdout)


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def _reference_text(file_name: str) -> str:
    return resources.files("suite").joinpath("reference", file_name).read_text()
