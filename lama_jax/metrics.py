"""Inpainting quality metrics computed the way LaMa's evaluator computes them.

Every pairwise metric compares the blended result (`inpainted`) with the
ground-truth `image`, both NHWC float in [0, 1], and gives one value per image:

* SSIM: 11x11 Gaussian window (sigma 1.5), zero padding 5 so the map keeps the
  image size (borders included), C1 = 0.01^2, C2 = 0.03^2, averaged over
  channels and pixels. This is LaMa's `SSIM(size_average=False)`, not the
  valid-region SSIM of scikit-image.
* PSNR with data range 1 (identical images give +inf), and L1 = mean |a - b|.

FID is a set-level distance between Inception pool3 features, computed in float64
with scipy's `sqrtm` and the reference's fallbacks. Results are grouped by the
share of the image covered by the mask into ten bins; the offline evaluator
(`bin/evaluate_predicts.py`) and the training-time one put areas lying exactly on
a 10% edge into different bins, so both rules are available.

`InpaintingEvaluator` accumulates batches and returns a report shaped
`{"total": {metric: {"mean", "std"}}, "bins": {"0-10%": {...}}, "num_images": {...}}`.
The network-based metrics enter as callables, so this module needs no weights.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

LOGGER = logging.getLogger(__name__)

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2

NUM_BINS = 10
BIN_EDGES = np.linspace(0.0, 1.0, NUM_BINS + 1)
BIN_NAMES = tuple(f"{10 * i}-{10 * (i + 1)}%" for i in range(NUM_BINS))

PAIRWISE_METRICS = ("ssim", "psnr", "l1")
NETWORK_METRICS = ("lpips", "fid")
ALL_METRICS = PAIRWISE_METRICS + NETWORK_METRICS

FID_SCALE = 100.0


def gaussian_window(size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian; LaMa's 2-D window is its outer product."""
    offsets = np.arange(size, dtype=np.float64) - size // 2
    window = np.exp(-(offsets**2) / (2.0 * sigma**2)).astype(np.float32)
    return window / window.sum()


def _check_pair(a: jax.Array, b: jax.Array, name: str) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(f"{name} expects two NHWC batches of equal shape, got {a.shape} and {b.shape}")


def _gaussian_blur(x: jax.Array) -> jax.Array:
    """Depthwise 11x11 Gaussian filter with zero padding (NHWC), separably.

    Written as eleven shifted, weighted slices per axis: XLA fuses them into one
    pass, several times faster on CPU than a grouped convolution.
    """
    window = gaussian_window()
    pad = SSIM_WINDOW_SIZE // 2
    for axis in (1, 2):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (pad, pad)
        padded = jnp.pad(x, widths)
        size = x.shape[axis]
        x = sum(
            float(weight) * jax.lax.slice_in_dim(padded, k, k + size, axis=axis) for k, weight in enumerate(window)
        )
    return x


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """LaMa's SSIM per image, shape (N,), for NHWC batches in [0, 1]."""
    _check_pair(a, b, "ssim")
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    # One blur over all five moment images instead of five separate convolutions.
    moments = _gaussian_blur(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1))
    mu_a, mu_b, aa, bb, ab = jnp.split(moments, 5, axis=-1)
    var_a = aa - mu_a**2
    var_b = bb - mu_b**2
    cov_ab = ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov_ab + SSIM_C2)) / (
        (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    )
    return ssim_map.mean(axis=(1, 2, 3))


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """Peak signal-to-noise ratio per image in dB, data range 1; +inf for identical images."""
    _check_pair(a, b, "psnr")
    mse = jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2, axis=(1, 2, 3))
    return 10.0 * jnp.log10(1.0 / mse)


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean absolute difference per image."""
    _check_pair(a, b, "l1")
    return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3))


@jax.jit
def pairwise_metrics(inpainted: jax.Array, image: jax.Array) -> dict[str, jax.Array]:
    """SSIM, PSNR and L1 per image in one compiled call."""
    return {"ssim": ssim(inpainted, image), "psnr": psnr(inpainted, image), "l1": l1(inpainted, image)}


def mask_area_bins(areas: np.ndarray, mode: str = "offline") -> np.ndarray:
    """Bin index in [0, 9] for each mask area (fraction of masked pixels).

    "offline" (bin/evaluate_predicts.py): searchsorted side="right", area 1.0 goes
    to the last bin. "online" (training validation): side="left", clipped to
    [0, 9]. They differ only for areas exactly on a 10% edge.
    """
    areas = np.asarray(areas, dtype=np.float64)
    if mode == "offline":
        bins = np.searchsorted(BIN_EDGES, areas, side="right") - 1
        bins[bins == NUM_BINS] = NUM_BINS - 1
        return bins
    if mode == "online":
        return np.clip(np.searchsorted(BIN_EDGES, areas, side="left") - 1, 0, NUM_BINS - 1)
    raise ValueError(f"mask_area_bins mode must be 'offline' or 'online', got {mode!r}")


def frechet_distance(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr sqrtm(S_a S_b), with the reference's fallbacks.

    A non-finite square root is retried with `eps` added to both diagonals; an
    imaginary part is dropped when the diagonal's is within 1e-2 of zero, else it
    is an error.
    """
    diff = mu_a - mu_b
    covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        LOGGER.warning("FID: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(sigma_a.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-2):
            raise ValueError(f"FID: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
    """FID between two (N, D) feature sets: float64 mean and unbiased covariance."""
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    for name, feats in (("features_a", features_a), ("features_b", features_b)):
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"fid_from_features: {name} must be (N >= 2, D), got shape {feats.shape}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"fid_from_features: feature sizes differ, {features_a.shape[1]} vs {features_b.shape[1]}"
        )
    return frechet_distance(
        features_a.mean(axis=0),
        np.cov(features_a, rowvar=False),
        features_b.mean(axis=0),
        np.cov(features_b, rowvar=False),
        eps=eps,
    )


def _fid_rel(fid: float) -> float:
    return max(0.0, FID_SCALE - fid) / FID_SCALE


def report_totals(metrics) -> tuple[str, ...]:
    """The names a report's "total" holds for `metrics`: each metric, plus the FID F1 scores that FID enables."""
    names = tuple(metrics)
    if "fid" in names:
        names += tuple(f"{name}_fid100_f1" for name in ("ssim", "lpips") if name in names)
    return names


def ssim_fid100_f1(ssim_mean: float, fid: float) -> float:
    """Harmonic-mean score of SSIM and (100 - FID)/100; the training checkpoint monitor."""
    fid_rel = _fid_rel(fid)
    return 2 * ssim_mean * fid_rel / (ssim_mean + fid_rel + 1e-3)


def lpips_fid100_f1(lpips_mean: float, fid: float) -> float:
    """Harmonic-mean score of 1 - LPIPS and (100 - FID)/100; the offline evaluator's summary."""
    neg_lpips = 1 - lpips_mean
    fid_rel = _fid_rel(fid)
    return 2 * neg_lpips * fid_rel / (neg_lpips + fid_rel + 1e-3)


def _mean_std(values: np.ndarray) -> dict[str, float]:
    # Population std (ddof 0), as LaMa's evaluator reports it; an infinite PSNR makes it NaN.
    with np.errstate(invalid="ignore"):
        return {"mean": float(values.mean()), "std": float(values.std())}


def _to_host(array) -> np.ndarray:
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        array = multihost_utils.process_allgather(array, tiled=True)
    return np.asarray(jax.device_get(array))


LpipsFn = Callable[[jax.Array, jax.Array], jax.Array]
FeaturesFn = Callable[[jax.Array], jax.Array]


class InpaintingEvaluator:
    """Accumulates per-image metrics over batches and builds the report.

    Args:
      metrics: names among "ssim", "psnr", "l1", "lpips", "fid".
      lpips_fn: (inpainted, image) -> (N,) distances; required for "lpips".
      fid_features_fn: images -> (N, D) features; required for "fid".
      bin_mode: "offline" (LaMa's evaluate_predicts) or "online" (training validation).

    Results stay on the device until `result()`, so `update` does not block.
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("ssim", "psnr", "l1"),
        *,
        lpips_fn: LpipsFn | None = None,
        fid_features_fn: FeaturesFn | None = None,
        bin_mode: str = "offline",
    ):
        metrics = tuple(metrics)
        unknown = [m for m in metrics if m not in ALL_METRICS]
        if unknown or not metrics:
            raise ValueError(f"unknown metrics {unknown or metrics}; choose from {', '.join(ALL_METRICS)}")
        if "lpips" in metrics and lpips_fn is None:
            raise ValueError("metric 'lpips' needs lpips_fn")
        if "fid" in metrics and fid_features_fn is None:
            raise ValueError("metric 'fid' needs fid_features_fn")
        mask_area_bins(np.zeros(1), bin_mode)  # validates the mode early
        self.metrics = metrics
        self.bin_mode = bin_mode
        self._lpips_fn = lpips_fn
        self._fid_features_fn = fid_features_fn
        self.reset()

    def reset(self) -> None:
        self._areas: list = []
        self._values: dict[str, list] = {name: [] for name in self.metrics if name != "fid"}
        self._features_inpainted: list = []
        self._features_image: list = []

    def update(self, batch: Mapping[str, jax.Array], num_valid: int | None = None) -> None:
        """Adds a batch {"image", "mask", "inpainted"} (NHWC, mask N,H,W,1 in [0, 1]).

        `num_valid` keeps only the first rows, for batches padded to a fixed size.
        """
        for key in ("image", "mask", "inpainted"):
            if key not in batch:
                raise KeyError(f"InpaintingEvaluator.update: batch has no {key!r} (keys: {sorted(batch)})")
        image, mask, inpainted = batch["image"], batch["mask"], batch["inpainted"]
        if image.ndim != 4 or image.shape != inpainted.shape:
            raise ValueError(f"image and inpainted must be equal NHWC shapes, got {image.shape}, {inpainted.shape}")
        if mask.shape[:3] != image.shape[:3]:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
        keep = slice(None) if num_valid is None else slice(0, num_valid)

        self._areas.append(jnp.mean(mask.reshape(mask.shape[0], -1), axis=1)[keep])
        if any(name in PAIRWISE_METRICS for name in self.metrics):
            pairwise = pairwise_metrics(inpainted, image)
            for name in PAIRWISE_METRICS:
                if name in self._values:
                    self._values[name].append(pairwise[name][keep])
        if "lpips" in self.metrics:
            self._values["lpips"].append(self._lpips_fn(inpainted, image)[keep])
        if "fid" in self.metrics:
            self._features_inpainted.append(self._fid_features_fn(inpainted)[keep])
            self._features_image.append(self._fid_features_fn(image)[keep])

    @property
    def num_images(self) -> int:
        return int(sum(a.shape[0] for a in self._areas))

    def result(self) -> dict:
        """The report; NaN marks FID of a bin with fewer than two images."""
        if not self._areas:
            raise ValueError("InpaintingEvaluator.result: no batches were added")
        bins = mask_area_bins(np.concatenate([_to_host(a) for a in self._areas]), self.bin_mode)
        values = {name: np.concatenate([_to_host(v) for v in vals]) for name, vals in self._values.items()}
        if "fid" in self.metrics:
            feats_inpainted = np.concatenate([_to_host(f) for f in self._features_inpainted])
            feats_image = np.concatenate([_to_host(f) for f in self._features_image])

        def group_scores(index: np.ndarray) -> dict:
            scores = {}
            for name in self.metrics:
                if name == "fid":
                    fid = (
                        fid_from_features(feats_inpainted[index], feats_image[index])
                        if len(index) > 1
                        else math.nan
                    )
                    scores["fid"] = {"mean": fid}
                else:
                    scores[name] = _mean_std(values[name][index])
            return scores

        total = group_scores(np.arange(len(bins)))
        if "fid" in total:
            fid = total["fid"]["mean"]
            if "ssim" in total:
                total["ssim_fid100_f1"] = {"mean": ssim_fid100_f1(total["ssim"]["mean"], fid)}
            if "lpips" in total:
                total["lpips_fid100_f1"] = {"mean": lpips_fid100_f1(total["lpips"]["mean"], fid)}
        report = {"total": total, "bins": {}, "num_images": {"total": len(bins)}}
        # Only bins that hold images appear, as in LaMa's table.
        for bin_index in np.unique(bins):
            index = np.flatnonzero(bins == bin_index)
            report["bins"][BIN_NAMES[bin_index]] = group_scores(index)
            report["num_images"][BIN_NAMES[bin_index]] = int(len(index))
        return report


def report_rows(report: Mapping) -> Iterable[tuple[str, Mapping]]:
    """(row name, {metric: {stat: value}}) for "total" then each bin, in order."""
    yield "total", report["total"]
    yield from report["bins"].items()


def report_to_tsv(report: Mapping) -> str:
    """LaMa's table: two header rows (metric, statistic), one row per group, '%.4f', NaN empty."""
    columns: list[tuple[str, str]] = []
    for _, scores in report_rows(report):
        for metric, stats in scores.items():
            for stat in stats:
                if (metric, stat) not in columns:
                    columns.append((metric, stat))
    lines = ["\t" + "\t".join(m for m, _ in columns), "\t" + "\t".join(s for _, s in columns)]
    for row_name, scores in report_rows(report):
        cells = []
        for metric, stat in columns:
            value = scores.get(metric, {}).get(stat, math.nan)
            cells.append("" if math.isnan(value) else f"{value:.4f}")
        lines.append(row_name + "\t" + "\t".join(cells))
    return "\n".join(lines) + "\n"
