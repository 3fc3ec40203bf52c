"""The uncertainty of accuracy numbers: for one network, over seeds, and between two networks
evaluated on the same test images.

Pure functions on numpy arrays. Proportions are fractions in [0, 1] (the report shows percent);
every interval is two-sided at ``confidence``, 95% unless given. With z = Φ⁻¹((1 + c) / 2):

**Wilson score interval** of k right out of n images, p = k / n:

    centre = (p + z²/2n) / (1 + z²/n),   half-width = z / (1 + z²/n) · √(p(1 − p)/n + z²/4n²)

Unlike p ± z √(p(1 − p)/n) it stays inside [0, 1] and keeps its coverage near 0 and 1, where the
accuracies of good networks are.

**Student-t interval** of the mean of m ≥ 2 values (one per seed):
mean ± t_{(1+c)/2, m−1} · sd / √m (sd with ddof 1). ``geometric_t_interval`` does the same on
logarithms, for positive quantities that vary by a factor (latencies).

**McNemar's exact test** of two networks on the same images: of the images one network gets right
and the other wrong, b are right only for A and c only for B; if both are equally accurate,
b ~ Binomial(b + c, 1/2). The two-sided p-value is that binomial's (``scipy.stats.binomtest``).

**Paired bootstrap** of the accuracy difference B − A: per image, d_i = mean over seeds of
(B right − A right); the n images are drawn with replacement R times with a fixed seed, and the
interval is the (1 − c)/2 and (1 + c)/2 percentiles of the R means of d. An image keeps all of its
seeds together, since it is the image that is sampled. d takes few distinct values, so drawing n
images with replacement is drawing multinomial counts of those values: that is how it is computed
(the same distribution, without an n × R array).
"""

import base64
from dataclasses import dataclass

import numpy as np
from scipy import stats

from suite.errors import DepthbenchError

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class McNemar:
    """Discordant images of a paired comparison and the exact two-sided p-value."""

    only_a: int  # right for A, wrong for B
    only_b: int  # right for B, wrong for A
    p_value: float


def wilson_interval(
    successes: int, trials: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / trials`` (see the module)."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise DepthbenchError(
            f"a proportion needs 0 <= successes <= trials and trials > 0, got {successes} of "
            f"{trials}"
        )
    z = _normal_quantile(confidence)
    p = successes / trials
    shrink = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / shrink
    half_width = z / shrink * np.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2))
    return float(max(0.0, centre - half_width)), float(min(1.0, centre + half_width))


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean of ``values`` (at least 2)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        raise DepthbenchError(f"a t-interval needs at least 2 values, got {values.size}")
    mean = values.mean()
    half_width = (
        stats.t.ppf((1 + confidence) / 2, values.size - 1)
        * values.std(ddof=1)
        / np.sqrt(values.size)
    )
    return float(mean), float(mean - half_width), float(mean + half_width)


def geometric_t_interval(
    values: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(geometric mean, low, high): ``t_interval`` of the logarithms, mapped back."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(values > 0):
        raise DepthbenchError(f"a geometric interval needs positive values, got {values}")
    return tuple(float(np.exp(bound)) for bound in t_interval(np.log(values), confidence))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """McNemar's exact test on per-image correctness of two networks on the same images."""
    correct_a, correct_b = _paired(correct_a, correct_b)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(correct_b & ~correct_a))
    if only_a + only_b == 0:
        return McNemar(0, 0, 1.0)
    return McNemar(only_a, only_b, float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue))


def paired_bootstrap_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """(difference, low, high) of accuracy B − A as fractions, by the paired bootstrap.

    ``correct_a`` and ``correct_b`` are per-image correctness, shaped (images,) or
    (seeds, images) with the same seeds in the same order.
    """
    correct_a, correct_b = _paired(correct_a, correct_b)
    per_image = np.atleast_2d(correct_b).mean(axis=0) - np.atleast_2d(correct_a).mean(axis=0)
    values, counts = np.unique(per_image, return_counts=True)
    drawn = np.random.default_rng(seed).multinomial(
        per_image.size, counts / per_image.size, size=resamples
    )
    means = drawn @ values / per_image.size
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(per_image.mean()), float(low), float(high)


def pack_correct(correct: np.ndarray) -> str:
    """Per-image correctness as text for a record: base64 of ``numpy.packbits`` (8 images a byte,
    the first image in the highest bit)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool))).decode("ascii")


def unpack_correct(text: str, images: int) -> np.ndarray:
    """The inverse of ``pack_correct`` for ``images`` images."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    if not images <= bits.size < images + 8:
        raise DepthbenchError(
            f"stored per-image correctness holds {bits.size} bits, which does not fit {images} "
            "test images; the record is corrupt"
        )
    return bits[:images].astype(bool)


def _paired(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape or correct_a.size == 0:
        raise DepthbenchError(
            f"a paired comparison needs both networks' correctness on the same images, got shapes "
            f"{correct_a.shape} and {correct_b.shape}"
        )
    return correct_a, correct_b


def _normal_quantile(confidence: float) -> float:
    return float(stats.norm.ppf((1 + confidence) / 2))
