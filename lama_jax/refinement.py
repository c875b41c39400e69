"""Feature refinement for high-resolution inpainting (LaMa's `refine: True`).

    refiner = Refiner(inpainter.generator, inpainter.variables)
    result = refiner(image, mask)   # image (H,W,3) in [0,1], mask (H,W,1), 1 = hole

A generator trained on 256 px crops loses global structure on large images.
Refinement runs it on an image pyramid, coarse to fine. The coarsest level is
one plain forward pass. At every finer level the generator is split at its
bottleneck: the front (input conv and downsampling) runs once, and its output
streams (x_l, x_g) are optimised with Adam so that the rear's prediction
(a) reproduces the known pixels of this level and (b) downscaled, agrees with
the previous, coarser result well inside the hole. The generator's weights
never change and BatchNorm stays in eval mode.

Numerics follow the reference (`saicinpainting/evaluation/refinement.py` with
kornia 0.5): the pyramid is built from the unpadded image (first resized
bilinearly to the pixel budget when larger), each coarser level is a 5x5
Gaussian blur (sigma 1, reflect border) followed by a bilinear resize to half
size with PyTorch's `align_corners=False` sampling and no antialiasing; each
level is reflect-padded (edge excluded) to a multiple of 8. Batch size is 1.

Each level's optimisation (front, all Adam steps, final forward) is one jitted
call with the iterations in a `lax.scan`, so every level compiles once per
image size. Like the reference, images over the pixel budget come back at the
reduced size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from lama_jax.inference import MIN_SIDE, blend, model_input

BINARY_EPS = 1e-8  # the reference's threshold for "this pixel is (partly) a hole"
EROSION_SIZE = 15  # elliptical structuring element of the reference-consistency mask


@dataclasses.dataclass(frozen=True)
class RefinementOptions:
    """The reference's `refiner` block of configs/prediction/default.yaml."""

    n_iters: int = 15  # per level; the last iteration only predicts, so n_iters - 1 Adam steps
    lr: float = 0.002
    min_side: int = 512  # sets the number of levels: every level's short side is >= min_side / sqrt(2)
    max_scales: int = 3
    px_budget: int = 1_800_000  # larger inputs are resized to fit first
    modulo: int = 8

    def __post_init__(self):
        for name in ("n_iters", "min_side", "max_scales", "px_budget", "modulo"):
            if getattr(self, name) < 1:
                raise ValueError(f"RefinementOptions.{name} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"RefinementOptions.lr must be positive, got {self.lr}")


@dataclasses.dataclass
class LevelReport:
    """Losses of one pyramid level: one entry per iteration (before each Adam step, then the final forward)."""

    size: tuple[int, int]
    known_l1: np.ndarray  # mean |pred - image| over known pixels
    reference_l1: Optional[np.ndarray]  # mean |down(pred) - coarser result| deep in the hole; None at the coarsest


@dataclasses.dataclass
class RefinementResult:
    inpainted: np.ndarray  # (H, W, 3) float32; H, W reduced when the input exceeded the pixel budget
    levels: list[LevelReport]  # coarse to fine


# ---------------------------------------------------------------------------------------------------
# Resampling with PyTorch/kornia semantics, NHWC.


def _linear_taps(in_size: int, out_size: int):
    """Source indices and weights of PyTorch's bilinear (align_corners=False) along one axis, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    source = np.maximum(source, np.float32(0))
    lower = np.minimum(source.astype(np.int32), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    upper_weight = (source - lower).astype(np.float32)
    return lower, upper, upper_weight


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(N,H,W,C) -> (N,h,w,C) like `F.interpolate(mode="bilinear", align_corners=False)`: no antialiasing."""
    top, bottom, down_weight = _linear_taps(x.shape[1], size[0])
    down_weight = down_weight[:, None, None]
    x = jnp.take(x, top, axis=1) * (1 - down_weight) + jnp.take(x, bottom, axis=1) * down_weight
    left, right, right_weight = _linear_taps(x.shape[2], size[1])
    right_weight = right_weight[:, None]
    return jnp.take(x, left, axis=2) * (1 - right_weight) + jnp.take(x, right, axis=2) * right_weight


def gaussian_kernel_1d(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float32) - size // 2
    kernel = np.exp(-(offsets**2) / np.float32(2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(x: jax.Array, size: int = 5, sigma: float = 1.0) -> jax.Array:
    """Separable Gaussian blur of (N,H,W,C) with reflect (edge-excluding) borders, as kornia's default."""
    kernel = gaussian_kernel_1d(size, sigma)
    radius = size // 2
    height, width = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="reflect")
    x = sum(float(k) * x[:, i : i + height] for i, k in enumerate(kernel))
    x = jnp.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(float(k) * x[:, :, i : i + width] for i, k in enumerate(kernel))


def half_size(shape) -> tuple[int, int]:
    return shape[1] // 2, shape[2] // 2


def pyr_down(image: jax.Array) -> jax.Array:
    """One pyramid step: blur, then bilinear to half size (floor)."""
    return resize_bilinear(gaussian_blur(image), half_size(image.shape))


def pyr_down_mask(mask: jax.Array, *, blur: bool, round_up: bool) -> jax.Array:
    """Half-size binary mask. round_up: any hole coverage makes a hole; else only full coverage does."""
    mask = resize_bilinear(gaussian_blur(mask) if blur else mask, half_size(mask.shape))
    threshold = BINARY_EPS if round_up else 1.0 - BINARY_EPS
    return (mask >= threshold).astype(mask.dtype)


def erosion_kernel(size: int = EROSION_SIZE) -> np.ndarray:
    """OpenCV's `MORPH_ELLIPSE` structuring element of size x size, as booleans, without OpenCV.

    Row i spans columns r - dx .. r + dx, with r = size // 2, dy = i - r and dx = round(r * sqrt(1 - dy² / r²)).
    """
    radius = size // 2
    kernel = np.zeros((size, size), bool)
    for row in range(size):
        dy = row - radius
        half = int(np.rint(radius * np.sqrt((radius * radius - dy * dy) / (radius * radius)))) if radius else 0
        kernel[row, max(radius - half, 0): min(radius + half + 1, size)] = True
    return kernel


def erode(mask: jax.Array, kernel: np.ndarray) -> jax.Array:
    """Grey erosion of (N,H,W,1) by a boolean kernel; outside the image counts as hole (1), as in kornia 0.5."""
    kernel_h, kernel_w = kernel.shape
    height, width = mask.shape[1:3]
    padded = jnp.pad(
        mask, ((0, 0), (kernel_h // 2, kernel_h // 2), (kernel_w // 2, kernel_w // 2), (0, 0)), constant_values=1.0
    )
    eroded = jnp.ones_like(mask)
    for dy, dx in zip(*np.nonzero(kernel)):
        eroded = jnp.minimum(eroded, padded[:, dy : dy + height, dx : dx + width])
    return eroded


def reflect_pad_to_modulo(x: jax.Array, modulo: int) -> jax.Array:
    """Pads (N,H,W,C) at the bottom/right to multiples of `modulo`, mirroring without the edge pixel."""
    pad_h, pad_w = -x.shape[1] % modulo, -x.shape[2] % modulo
    return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


# ---------------------------------------------------------------------------------------------------
# Pyramid.


def num_scales(height: int, width: int, min_side: int, max_scales: int) -> int:
    """1 + round(log2(short side / min_side)), at least 1 and at most max_scales."""
    return min(1 + int(round(max(0.0, math.log2(min(height, width) / min_side)))), max_scales)


def budget_size(height: int, width: int, px_budget: int) -> tuple[int, int]:
    """The size refinement works at: unchanged within the budget, else scaled (truncated) to fit it."""
    if height * width <= px_budget:
        return height, width
    ratio = math.sqrt(px_budget / float(height * width))
    return int(height * ratio), int(width * ratio)


def image_mask_pyramid(image: np.ndarray, mask: np.ndarray, options: RefinementOptions):
    """(1,H,W,3) image and binary (1,H,W,1) mask -> [(image, mask)] from coarsest to finest."""
    height, width = image.shape[1:3]
    image, mask = jnp.asarray(image), jnp.asarray(mask)
    target = budget_size(height, width, options.px_budget)
    if target != (height, width):
        logging.warning("refinement: %dx%d is over the pixel budget; refining at %dx%d", height, width, *target)
        image = resize_bilinear(image, target)
        mask = resize_bilinear(mask, target)
        mask = jnp.where(mask > BINARY_EPS, 1.0, mask)
    levels = [(image, mask)]
    for _ in range(num_scales(*target, options.min_side, options.max_scales) - 1):
        finer_image, finer_mask = levels[-1]
        levels.append((pyr_down(finer_image), pyr_down_mask(finer_mask, blur=True, round_up=True)))
    return levels[::-1]


# ---------------------------------------------------------------------------------------------------
# Optimisation.


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean of `values` where the 0/1 `weights` (broadcast over channels) are 1; 0 when none are.

    The reference takes torch.mean of the selected elements, which is NaN for an
    empty selection but contributes no gradient; 0 keeps the value finite with the
    same gradient.
    """
    weights = jnp.broadcast_to(weights, values.shape)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class Refiner:
    """LaMa's multi-scale feature refinement around a generator in eval mode."""

    def __init__(self, generator, variables: Any, options: RefinementOptions = RefinementOptions()):
        self.generator = generator
        self.variables = jax.device_put(variables)
        self.options = options
        self._erosion_kernel = erosion_kernel()
        self._coarsest = jax.jit(self._predict_level)
        self._refine = jax.jit(self._refine_level)

    @classmethod
    def from_inpainter(cls, inpainter, options: RefinementOptions = RefinementOptions()) -> "Refiner":
        return cls(inpainter.generator, inpainter.variables, options)

    def _pad(self, image, mask):
        image = reflect_pad_to_modulo(image, self.options.modulo)
        mask = reflect_pad_to_modulo(mask, self.options.modulo)
        return image, (mask >= BINARY_EPS).astype(mask.dtype)

    def _front(self, variables, image, mask):
        return self.generator.apply(variables, model_input(image, mask), train=False, stage="front")

    def _rear(self, variables, streams):
        return self.generator.apply(variables, streams, train=False, stage="rear")

    def _predict_level(self, variables, image, mask):
        """The coarsest level: one forward pass on the reflect-padded level."""
        height, width = image.shape[1:3]
        padded_image, padded_mask = self._pad(image, mask)
        prediction = self._rear(variables, self._front(variables, padded_image, padded_mask))
        known_l1 = _masked_mean(jnp.abs(prediction - padded_image), padded_mask < BINARY_EPS)
        return blend(prediction, padded_image, padded_mask)[:, :height, :width], known_l1

    def _refine_level(self, variables, image, mask, reference):
        """Optimises the bottleneck streams against the known pixels and the coarser `reference`."""
        height, width = image.shape[1:3]
        padded_image, padded_mask = self._pad(image, mask)
        known = padded_mask < BINARY_EPS
        # Where the downscaled hole is complete even after a 15x15 erosion, i.e. far from
        # known pixels, the coarser result is trusted.
        full_holes = pyr_down_mask(padded_mask[:, :height, :width], blur=False, round_up=False)
        trusted = erode(full_holes, self._erosion_kernel) >= 1.0 - BINARY_EPS

        def losses(streams):
            prediction = self._rear(variables, streams)
            known_l1 = _masked_mean(jnp.abs(prediction - padded_image), known)
            reference_l1 = _masked_mean(jnp.abs(pyr_down(prediction[:, :height, :width]) - reference), trusted)
            return known_l1 + reference_l1, (prediction, jnp.stack([known_l1, reference_l1]))

        optimizer = optax.adam(self.options.lr)  # PyTorch's Adam defaults: betas 0.9/0.999, eps 1e-8

        def step(carry, _):
            streams, opt_state = carry
            (_, (_, parts)), grads = jax.value_and_grad(losses, has_aux=True)(streams)
            updates, opt_state = optimizer.update(grads, opt_state, streams)
            return (optax.apply_updates(streams, updates), opt_state), parts

        streams = jax.lax.stop_gradient(self._front(variables, padded_image, padded_mask))
        (streams, _), history = jax.lax.scan(
            step, (streams, optimizer.init(streams)), length=self.options.n_iters - 1
        )
        _, (prediction, final_parts) = losses(streams)
        history = jnp.concatenate([history, final_parts[None]], axis=0)
        return blend(prediction, padded_image, padded_mask)[:, :height, :width], history

    def run(self, image, mask) -> RefinementResult:
        """Refines one image: (H,W,3) or (1,H,W,3) in [0,1]; mask (H,W,1) or (1,H,W,1), > 0 is a hole."""
        image = np.asarray(image, dtype=np.float32)
        mask = np.asarray(mask, dtype=np.float32)
        if image.shape[-1:] != (3,) or image.ndim not in (3, 4) or image.ndim == 4 and image.shape[0] != 1:
            raise ValueError(f"Refiner: image must be (H, W, 3) or (1, H, W, 3), got shape {image.shape}")
        image = image.reshape((1,) + image.shape[-3:])
        if mask.shape not in (image.shape[1:3] + (1,), image.shape[:3] + (1,)):
            raise ValueError(f"Refiner: mask must be {image.shape[1:3] + (1,)} to match the image, got {mask.shape}")
        mask = mask.reshape(image.shape[:3] + (1,))
        mask = (mask > 0).astype(np.float32)
        pyramid = image_mask_pyramid(image, mask, self.options)
        if min(pyramid[0][0].shape[1:3]) < MIN_SIDE:
            raise ValueError(
                f"Refiner: the coarsest level is {pyramid[0][0].shape[1:3]}, below {MIN_SIDE} px "
                f"(the bottleneck is 1/8); raise min_side ({self.options.min_side}) or use a larger image"
            )
        levels = []
        inpainted = None
        for level_image, level_mask in pyramid:
            size = tuple(level_image.shape[1:3])
            if inpainted is None:
                inpainted, known_l1 = self._coarsest(self.variables, level_image, level_mask)
                levels.append(LevelReport(size, np.asarray(known_l1)[None], None))
            else:
                inpainted, history = self._refine(self.variables, level_image, level_mask, inpainted)
                history = np.asarray(history)
                levels.append(LevelReport(size, history[:, 0], history[:, 1]))
        return RefinementResult(np.asarray(inpainted[0]), levels)

    def __call__(self, image, mask) -> np.ndarray:
        """The refined, blended result (H, W, 3) float32 in [0, 1]."""
        return self.run(image, mask).inpainted

    def compiled_shapes(self) -> int:
        """How many (level size) programs have been compiled, coarsest forwards included."""
        return self._coarsest._cache_size() + self._refine._cache_size()
