"""Hole-mask generators for inpainting, as pure functions of a NumPy Generator.

Every generator is a small picklable object called as
``generator(rng, height, width, *, labels=None) -> float32 (height, width)`` with
1 = hole (to be inpainted) and 0 = known pixel. The ``rng`` is the only source of
randomness, so a record's mask is fixed by the seed Grain derives for it.

The irregular and box generators reproduce LaMa's algorithms
(``saicinpainting/training/data/masks.py``) including the off-by-ones its wrapper
classes add (docs/parity.md, "Masks"):

* irregular: stroke count uniform in ``[min_times, max_times + 1]``; each stroke
  has 1–5 segments; segment angle ``0.01 + randint(max_angle)`` radians, mirrored
  (``2π − angle``) for even strokes; length ``10 + randint(max_len)``; width
  ``5 + randint(max_width)``; endpoints truncated toward zero and clipped to
  ``[0, W]`` / ``[0, H]``; drawn as OpenCV thick lines (rounded caps).
* box: side lengths uniform in ``[bbox_min_size, min(bbox_max_size, H − 2·margin,
  W − 2·margin)]`` inclusive, count uniform in ``[min_times, max_times]``.

LaMa draws each number with a separate call on NumPy's global RNG; here the
numbers of one mask are drawn as vectors. The random streams differ, the
distributions are the same (docs/parity.md, "Deviations").

``get(name, **overrides)`` returns a preset by name: ``train_mixed`` (Big-LaMa's
training masks), the six evaluation presets of LaMa's ``configs/data_gen``,
``irregular``, ``box``, ``outpainting`` and ``segmentation``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

# LaMa writes 2π as this literal when mirroring stroke angles.
_TWO_PI_LAMA = 2 * 3.1415926


def _check_canvas(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got height={height}, width={width}")


@dataclasses.dataclass(frozen=True)
class Stroke:
    """One polygonal chain: start pixel and (angle radians, length px, width px) per segment."""

    x: int
    y: int
    segments: tuple[tuple[float, int, int], ...]


def draw_strokes(strokes: Sequence[Stroke], height: int, width: int) -> np.ndarray:
    """Rasterises polygonal chains as LaMa does: thick OpenCV lines, value 1."""
    canvas = np.zeros((height, width), np.uint8)
    for stroke in strokes:
        x, y = stroke.x, stroke.y
        for angle, length, brush in stroke.segments:
            # int() truncates toward zero like LaMa's astype(np.int32); the clip bound
            # is W / H (one past the last pixel), as upstream.
            end_x = min(max(int(x + length * math.sin(angle)), 0), width)
            end_y = min(max(int(y + length * math.cos(angle)), 0), height)
            cv2.line(canvas, (x, y), (end_x, end_y), 1, brush)
            x, y = end_x, end_y
    return canvas.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class IrregularMaskGenerator:
    """LaMa's "wide polygonal chain" strokes (RandomIrregularMaskGenerator, no ramp).

    The fields are LaMa's constructor arguments; the effective stroke count is
    uniform in ``[min_times, max_times + 1]`` as in LaMa.
    """

    max_angle: int = 4
    max_len: int = 60
    max_width: int = 20
    min_times: int = 0
    max_times: int = 10

    needs_labels = False

    def sample_strokes(self, rng: np.random.Generator, height: int, width: int) -> list[Stroke]:
        """Draws the strokes of one mask: their start points and segments."""
        times = int(rng.integers(self.min_times, self.max_times + 2))
        if times <= 0:
            return []
        start_x = rng.integers(width, size=times).tolist()
        start_y = rng.integers(height, size=times).tolist()
        n_segments = (1 + rng.integers(5, size=times)).tolist()
        total = sum(n_segments)
        angle = 0.01 + rng.integers(self.max_angle, size=total)
        stroke_index = np.repeat(np.arange(times), n_segments)
        angle = np.where(stroke_index % 2 == 0, _TWO_PI_LAMA - angle, angle).tolist()
        length = (10 + rng.integers(self.max_len, size=total)).tolist()
        brush = (5 + rng.integers(self.max_width, size=total)).tolist()
        strokes, k = [], 0
        for i, count in enumerate(n_segments):
            segments = tuple(zip(angle[k:k + count], length[k:k + count], brush[k:k + count]))
            strokes.append(Stroke(start_x[i], start_y[i], segments))
            k += count
        return strokes

    def __call__(self, rng: np.random.Generator, height: int, width: int, *,
                 labels: np.ndarray | None = None) -> np.ndarray:
        del labels
        _check_canvas(height, width)
        return draw_strokes(self.sample_strokes(rng, height, width), height, width)


@dataclasses.dataclass(frozen=True)
class BoxMaskGenerator:
    """LaMa's random rectangles (RandomRectangleMaskGenerator, no ramp)."""

    margin: int = 10
    bbox_min_size: int = 30
    bbox_max_size: int = 100
    min_times: int = 0
    max_times: int = 3

    needs_labels = False

    def _side_end(self, height: int, width: int) -> int:
        # Exclusive upper bound of a side: LaMa's wrapper passes bbox_max_size + 1,
        # and the canvas minus its margins limits it further.
        side_end = min(self.bbox_max_size + 1, height - 2 * self.margin, width - 2 * self.margin)
        if side_end <= self.bbox_min_size:
            raise ValueError(
                f"box masks with margin={self.margin} and bbox_min_size={self.bbox_min_size} "
                f"do not fit a {height}x{width} canvas")
        return side_end

    def __call__(self, rng: np.random.Generator, height: int, width: int, *,
                 labels: np.ndarray | None = None) -> np.ndarray:
        del labels
        _check_canvas(height, width)
        return draw_boxes(self.sample_boxes(rng, height, width), height, width)

    def sample_boxes(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """Draws the boxes of one mask as an int array of rows (x0, y0, w, h)."""
        side_end = self._side_end(height, width)
        times = int(rng.integers(self.min_times, self.max_times + 1))
        box_w = rng.integers(self.bbox_min_size, side_end, size=times)
        box_h = rng.integers(self.bbox_min_size, side_end, size=times)
        x0 = rng.integers(self.margin, width - self.margin - box_w + 1)
        y0 = rng.integers(self.margin, height - self.margin - box_h + 1)
        return np.stack([x0, y0, box_w, box_h], axis=-1).reshape(times, 4)


def draw_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    for x, y, w, h in boxes.tolist():
        mask[y:y + h, x:x + w] = 1
    return mask


@dataclasses.dataclass(frozen=True)
class OutpaintingMaskGenerator:
    """Border strips (LaMa's OutpaintingMaskGenerator).

    Each side is masked with its own probability; the strip width is uniform in
    ``[min_padding_percent, max_padding_percent)`` of that axis. When no side was
    picked, one side is chosen in proportion to the side probabilities, so every
    mask has a hole.
    """

    min_padding_percent: float = 0.04
    max_padding_percent: float = 0.25
    left_padding_prob: float = 0.5
    top_padding_prob: float = 0.5
    right_padding_prob: float = 0.5
    bottom_padding_prob: float = 0.5

    needs_labels = False

    def __post_init__(self):
        probs = self._side_probs()
        if min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(f"outpainting side probabilities must be >= 0 with a positive sum, got {probs}")
        if not 0 <= self.min_padding_percent < self.max_padding_percent <= 1:
            raise ValueError("outpainting needs 0 <= min_padding_percent < max_padding_percent <= 1, got "
                             f"{self.min_padding_percent}, {self.max_padding_percent}")

    def _side_probs(self) -> tuple[float, float, float, float]:
        return (self.left_padding_prob, self.top_padding_prob,
                self.right_padding_prob, self.bottom_padding_prob)

    def _strip(self, rng: np.random.Generator, size: int) -> int:
        low = int(self.min_padding_percent * size)
        high = max(int(self.max_padding_percent * size), low + 1)
        return max(int(rng.integers(low, high)), 1)

    def __call__(self, rng: np.random.Generator, height: int, width: int, *,
                 labels: np.ndarray | None = None) -> np.ndarray:
        del labels
        _check_canvas(height, width)
        probs = np.asarray(self._side_probs())
        strips = (self._strip(rng, width), self._strip(rng, height),
                  self._strip(rng, width), self._strip(rng, height))
        chosen = rng.random(4) < probs
        if not chosen.any():
            chosen[rng.choice(4, p=probs / probs.sum())] = True
        mask = np.zeros((height, width), np.float32)
        left, top, right, bottom = (s if c else 0 for s, c in zip(strips, chosen))
        mask[:, :left] = 1
        mask[:top, :] = 1
        mask[:, width - right:width] = 1  # right = 0 gives an empty slice
        mask[height - bottom:height, :] = 1
        return mask


@dataclasses.dataclass(frozen=True)
class SegmentationMaskGenerator:
    """Object-shaped holes taken from a per-image label map, dilated.

    One object (a label whose area fraction lies in ``[min_object_area,
    max_object_area]``; labels in ``ignore_labels`` are background) is picked
    uniformly. With ``shift`` its shape is moved to a uniformly random place (and
    mirrored with ``flip_prob``), so the hole has an object's outline without
    covering that object, as LaMa's segmentation masks intend. The shape is then
    dilated by an elliptic kernel of radius ``[min_dilation, max_dilation]`` px.
    Images without a suitable object get an irregular mask (``fallback``).
    """

    min_object_area: float = 0.01
    max_object_area: float = 0.3
    min_dilation: int = 2
    max_dilation: int = 12
    shift: bool = True
    flip_prob: float = 0.5
    ignore_labels: tuple[int, ...] = (0,)
    fallback: IrregularMaskGenerator = IrregularMaskGenerator(
        max_angle=4, max_len=200, max_width=100, min_times=1, max_times=5)

    needs_labels = True

    def __call__(self, rng: np.random.Generator, height: int, width: int, *,
                 labels: np.ndarray | None = None) -> np.ndarray:
        _check_canvas(height, width)
        if labels is None:
            raise ValueError("segmentation masks need a label map (labels=...); set data_config.segm_dir "
                             "for image folders or use the synthetic source")
        if labels.shape != (height, width):
            raise ValueError(f"label map shape {labels.shape} does not match the mask size {(height, width)}")
        ids, counts = np.unique(labels, return_counts=True)
        fraction = counts / float(height * width)
        usable = ((fraction >= self.min_object_area) & (fraction <= self.max_object_area)
                  & ~np.isin(ids, self.ignore_labels))
        candidates = ids[usable]
        if candidates.size == 0:
            return self.fallback(rng, height, width)
        shape = (labels == rng.choice(candidates)).astype(np.uint8)
        if self.shift:
            rows = np.flatnonzero(shape.any(axis=1))
            cols = np.flatnonzero(shape.any(axis=0))
            patch = shape[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            if rng.random() < self.flip_prob:
                patch = patch[:, ::-1]
            y0 = int(rng.integers(0, height - patch.shape[0] + 1))
            x0 = int(rng.integers(0, width - patch.shape[1] + 1))
            shape = np.zeros_like(shape)
            shape[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch
        radius = int(rng.integers(self.min_dilation, self.max_dilation + 1))
        if radius > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            shape = cv2.dilate(shape, kernel)
        return shape.astype(np.float32)


class MixedMaskGenerator:
    """Picks one generator per mask in proportion to its probability (MixedMaskGenerator).

    Probabilities are normalised over the enabled kinds, as LaMa does; with
    ``invert_proba`` the finished mask is replaced by ``1 - mask``.
    """

    def __init__(self, *, irregular_proba: float = 1.0, irregular_kwargs: Mapping[str, Any] | None = None,
                 box_proba: float = 1.0, box_kwargs: Mapping[str, Any] | None = None,
                 segm_proba: float = 0.0, segm_kwargs: Mapping[str, Any] | None = None,
                 outpainting_proba: float = 0.0, outpainting_kwargs: Mapping[str, Any] | None = None,
                 invert_proba: float = 0.0):
        kinds = [
            (irregular_proba, IrregularMaskGenerator, irregular_kwargs),
            (box_proba, BoxMaskGenerator, box_kwargs),
            (segm_proba, SegmentationMaskGenerator, segm_kwargs),
            (outpainting_proba, OutpaintingMaskGenerator, outpainting_kwargs),
        ]
        if any(p < 0 for p, _, _ in kinds):
            raise ValueError(f"mask probabilities must be >= 0, got {[p for p, _, _ in kinds]}")
        self.generators = tuple(cls(**(kwargs or {})) for p, cls, kwargs in kinds if p > 0)
        probas = np.array([p for p, _, _ in kinds if p > 0], np.float64)
        if probas.size == 0:
            raise ValueError("at least one mask kind needs a positive probability")
        self.probas = probas / probas.sum()
        if not 0 <= invert_proba <= 1:
            raise ValueError(f"invert_proba must lie in [0, 1], got {invert_proba}")
        self.invert_proba = invert_proba
        self.needs_labels = any(g.needs_labels for g in self.generators)

    def __call__(self, rng: np.random.Generator, height: int, width: int, *,
                 labels: np.ndarray | None = None) -> np.ndarray:
        generator = self.generators[rng.choice(len(self.generators), p=self.probas)]
        mask = generator(rng, height, width, labels=labels)
        if self.invert_proba > 0 and rng.random() < self.invert_proba:
            mask = 1.0 - mask
        return mask

    def __repr__(self) -> str:
        return (f"MixedMaskGenerator(generators={self.generators}, probas={self.probas.tolist()}, "
                f"invert_proba={self.invert_proba})")


MaskGenerator = Callable[..., np.ndarray]

_TRAIN_IRREGULAR = dict(max_angle=4, max_len=200, max_width=100, min_times=1, max_times=5)
_TRAIN_BOX = dict(margin=10, bbox_min_size=30, bbox_max_size=150, min_times=1, max_times=4)


def _eval_preset(irregular: Sequence[int], box: Sequence[int] | None) -> dict[str, Any]:
    """configs/data_gen/random_*.yaml: irregular proba 1, box proba 0.3 or off."""
    min_times, max_times, max_width, max_angle, max_len = irregular
    preset: dict[str, Any] = dict(
        irregular_proba=1.0,
        irregular_kwargs=dict(max_angle=max_angle, max_len=max_len, max_width=max_width,
                              min_times=min_times, max_times=max_times),
        box_proba=0.0, box_kwargs=None, invert_proba=0.0)
    if box is not None:
        margin, bbox_min, bbox_max, box_min_times, box_max_times = box
        preset.update(box_proba=0.3, box_kwargs=dict(
            margin=margin, bbox_min_size=bbox_min, bbox_max_size=bbox_max,
            min_times=box_min_times, max_times=box_max_times))
    return preset


# name -> (factory, default keyword arguments). Overrides passed to get() replace
# these; a dict-valued default (e.g. irregular_kwargs) is updated key by key.
_REGISTRY: dict[str, tuple[Callable[..., MaskGenerator], dict[str, Any]]] = {
    "train_mixed": (MixedMaskGenerator, dict(
        irregular_proba=1.0, irregular_kwargs=_TRAIN_IRREGULAR,
        box_proba=1.0, box_kwargs=_TRAIN_BOX, invert_proba=0.0)),
    "thin_256": (MixedMaskGenerator, _eval_preset((4, 50, 10, 4, 40), None)),
    "medium_256": (MixedMaskGenerator, _eval_preset((4, 5, 50, 4, 100), (0, 10, 50, 1, 5))),
    "thick_256": (MixedMaskGenerator, _eval_preset((1, 5, 100, 4, 200), (10, 30, 150, 1, 3))),
    "thin_512": (MixedMaskGenerator, _eval_preset((4, 70, 20, 4, 100), None)),
    "medium_512": (MixedMaskGenerator, _eval_preset((4, 10, 100, 4, 200), (0, 30, 150, 1, 5))),
    "thick_512": (MixedMaskGenerator, _eval_preset((1, 5, 250, 4, 450), (10, 30, 300, 1, 4))),
    "irregular": (IrregularMaskGenerator, dict(_TRAIN_IRREGULAR)),
    "box": (BoxMaskGenerator, dict(_TRAIN_BOX)),
    "outpainting": (OutpaintingMaskGenerator, {}),
    "segmentation": (SegmentationMaskGenerator, {}),
}

def names() -> tuple[str, ...]:
    """The registered mask preset names."""
    return tuple(_REGISTRY)


def preset_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments preset ``name`` is built from, with ``overrides`` applied."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown mask preset {name!r}; known: {', '.join(_REGISTRY)}")
    factory, defaults = _REGISTRY[name]
    kwargs = copy.deepcopy(defaults)
    allowed = _allowed_keys(factory)
    for key, value in overrides.items():
        if key not in allowed:
            raise ValueError(f"mask preset {name!r} has no option {key!r}; "
                             f"options: {', '.join(sorted(allowed))}")
        if isinstance(value, Mapping) and isinstance(kwargs.get(key), Mapping):
            kwargs[key] = {**kwargs[key], **value}
        else:
            kwargs[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else value
    return kwargs


def get(name: str, **overrides: Any) -> MaskGenerator:
    """Returns preset ``name`` as a callable ``(rng, height, width, *, labels=None)``.

    The callable returns a float32 (height, width) array of 0/1, 1 = hole.
    ``overrides`` replace the preset's options, e.g.
    ``get("train_mixed", invert_proba=0.1, box_kwargs={"max_times": 2})``.
    """
    kwargs = preset_kwargs(name, **overrides)
    factory, _ = _REGISTRY[name]
    return factory(**kwargs)


def _allowed_keys(factory: Callable[..., Any]) -> set[str]:
    if dataclasses.is_dataclass(factory):
        return {f.name for f in dataclasses.fields(factory)}
    return set(inspect.signature(factory).parameters)


def hole_fraction(mask: np.ndarray) -> float:
    """Share of hole pixels in a 0/1 mask."""
    return float(np.mean(mask > 0.5))
