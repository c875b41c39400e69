"""Training and evaluation image transforms (LaMa's ``distortions`` variant in OpenCV/NumPy).

LaMa trains on ``get_transforms('distortions', 256)`` (docs/parity.md, "Data"): imgaug
perspective and affine warps, a reflect-101 pad, albumentations' optical
distortion, a random 256 crop, a flip, then CLAHE, brightness/contrast and
hue/saturation/value jitter. Here every parameter is drawn from the same
distribution, but the five geometric steps (perspective → affine → pad → optical
distortion → crop + flip) are composed into a single ``cv2.remap``: output pixel
coordinates are pushed back through each step's inverse mapping, folding them
into the intermediate image with that step's border rule (reflect-101, or
replicate for the perspective), and the source photo is sampled once. Only the
256×256 output grid is ever computed, which is where the speed comes from; the
one difference from the reference is a single bilinear interpolation instead of
three (slightly less blur), not a different geometry.

Transforms take ``(rng, image, out_size, labels=None)`` with ``image`` uint8 RGB
(H, W, 3) and optional ``labels`` (H, W) uint16 (a segmentation label map that
follows the geometry with nearest-neighbour sampling), and return
``(image uint8 (out, out, 3), labels or None)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import cv2
import numpy as np

# --- geometry -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistortionGeometry:
    """The drawn parameters of one ``distortions`` sample's geometric part.

    ``perspective``: 3x3 homography from output to source coordinates of the
    perspective step, or None. ``affine``: 3x3 forward (source → output) matrix of
    the affine step, or None. ``pad``: (top, left) of the reflect-101 pad and
    ``padded_size`` its (height, width). ``optical_k``: the distortion coefficient,
    or None. ``crop``: (top, left) of the crop, ``flip``: horizontal flip.
    """

    height: int
    width: int
    out_size: int
    perspective: np.ndarray | None
    affine: np.ndarray | None
    pad: tuple[int, int]
    padded_size: tuple[int, int]
    optical_k: float | None
    crop: tuple[int, int]
    flip: bool


def perspective_homography(corner_offsets: np.ndarray, height: int, width: int) -> np.ndarray:
    """imgaug PerspectiveTransform with keep_size: maps the output frame onto an inner quad.

    ``corner_offsets`` (4, 2) are the |N(0, σ)| mod 1 corner jitters (x, y) as
    fractions of the image size, for the top-left, top-right, bottom-right and
    bottom-left corners, each pulled inward. Returns the 3x3 homography taking
    output pixel coordinates to source pixel coordinates.
    """
    w1, h1 = width - 1, height - 1
    ox, oy = corner_offsets[:, 0] * w1, corner_offsets[:, 1] * h1
    quad = np.array([[ox[0], oy[0]], [w1 - ox[1], oy[1]], [w1 - ox[2], h1 - oy[2]], [ox[3], h1 - oy[3]]],
                    np.float32)
    frame = np.array([[0, 0], [w1, 0], [w1, h1], [0, h1]], np.float32)
    return cv2.getPerspectiveTransform(frame, quad)


def affine_matrix(height: int, width: int, scale_x: float, scale_y: float, rotate_deg: float,
                  shear_x_deg: float, shear_y_deg: float) -> np.ndarray:
    """imgaug Affine about the image centre (centre at (W/2 − 0.5, H/2 − 0.5)), source → output."""
    cx, cy = width / 2.0 - 0.5, height / 2.0 - 0.5
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    back = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], np.float64)
    scale = np.diag([scale_x, scale_y, 1.0])
    shear = np.array([[1, np.tan(np.deg2rad(shear_x_deg)), 0],
                      [np.tan(np.deg2rad(shear_y_deg)), 1, 0], [0, 0, 1]], np.float64)
    r = np.deg2rad(rotate_deg)
    rotate = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]], np.float64)
    return back @ rotate @ shear @ scale @ to_origin


def sample_distortion_geometry(rng: np.random.Generator, height: int, width: int,
                               out_size: int) -> DistortionGeometry:
    """Draws the geometric steps of LaMa's ``distortions``: perspective, affine, pad, optical distortion, crop, flip."""
    perspective = None
    if rng.random() < 0.5:  # IAAPerspective2: σ ~ U(0, 0.06), keep_size
        sigma = rng.uniform(0.0, 0.06)
        offsets = np.mod(np.abs(rng.normal(0.0, sigma, size=(4, 2))), 1.0)
        perspective = perspective_homography(offsets, height, width)
    affine = None
    if rng.random() < 0.5:  # IAAAffine2: independent x/y scale, rotation, ±0.1° shear
        sx, sy = rng.uniform(0.7, 1.3, size=2)
        rotate = rng.uniform(-40.0, 40.0)
        shx, shy = rng.uniform(-0.1, 0.1, size=2)
        affine = affine_matrix(height, width, sx, sy, rotate, shx, shy)
    # PadIfNeeded(out_size, out_size), centred (albumentations rounds the top/left half down).
    padded_h, padded_w = max(height, out_size), max(width, out_size)
    pad = ((padded_h - height) // 2, (padded_w - width) // 2)
    optical_k = float(rng.uniform(-0.05, 0.05)) if rng.random() < 0.5 else None
    # RandomCrop: albumentations' int((size - crop) * U[0, 1)).
    top = int((padded_h - out_size) * rng.random())
    left = int((padded_w - out_size) * rng.random())
    flip = bool(rng.random() < 0.5)
    return DistortionGeometry(height, width, out_size, perspective, affine, pad, (padded_h, padded_w),
                              optical_k, (top, left), flip)


def _fold_reflect101(coords: np.ndarray, size: int) -> np.ndarray:
    """Maps coordinates into [0, size − 1] the way BORDER_REFLECT_101 maps pixel indices."""
    low, high = coords.min(), coords.max()
    if low >= 0 and high <= size - 1:
        return coords  # nothing fell outside: the common case
    if size == 1:
        return np.zeros_like(coords)
    period = 2 * (size - 1)
    np.abs(coords, out=coords)
    if max(-low, high) > period:  # float modulo is slow; only far-out points need it
        np.mod(coords, period, out=coords)
    return np.minimum(coords, period - coords, out=coords)


def _apply_homography(matrix: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = matrix.astype(np.float32)
    new_x = m[0, 0] * x + m[0, 1] * y + m[0, 2]
    new_y = m[1, 0] * x + m[1, 1] * y + m[1, 2]
    if m[2, 0] == 0 and m[2, 1] == 0 and m[2, 2] == 1:
        return new_x, new_y
    w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
    return np.divide(new_x, w, out=new_x), np.divide(new_y, w, out=new_y)


def distortion_maps(geometry: DistortionGeometry) -> tuple[np.ndarray, np.ndarray] | None:
    """Source-image sampling maps (x, y), float32 (out, out), for ``cv2.remap``.

    Returns None when the geometry is a plain crop (no warp drawn): the caller can
    slice instead of interpolating.
    """
    g = geometry
    out = g.out_size
    if g.perspective is None and g.affine is None and g.optical_k is None and g.pad == (0, 0):
        return None
    xs = np.arange(out, dtype=np.float32) + g.crop[1]
    ys = np.arange(out, dtype=np.float32) + g.crop[0]
    if g.flip:
        xs = xs[::-1]
    padded_h, padded_w = g.padded_size
    if g.optical_k is not None:
        # cv2.initUndistortRectifyMap with fx = W, fy = H, c = (W/2, H/2), D = (k, k, 0, 0, 0):
        # each output pixel reads the radially distorted position. Without a new camera
        # matrix OpenCV centres the output at ((W-1)/2, (H-1)/2), a half-pixel shift
        # that albumentations inherits and is kept here. The grid is still separable
        # here, so u and v are 1-D.
        u = (xs - (padded_w - 1) * 0.5) / padded_w
        v = (ys - (padded_h - 1) * 0.5) / padded_h
        r2 = np.add.outer(v * v, u * u)
        factor = np.float32(g.optical_k) * r2 * (1 + r2) + 1
        x = _fold_reflect101(factor * (u * padded_w) + padded_w * 0.5, padded_w)
        y = _fold_reflect101(factor * (v * padded_h)[:, None] + padded_h * 0.5, padded_h)
    else:
        x = np.broadcast_to(xs[None, :], (out, out)).copy()
        y = np.broadcast_to(ys[:, None], (out, out)).copy()
    if g.pad != (0, 0):
        x = _fold_reflect101(np.subtract(x, g.pad[1], out=x), g.width)
        y = _fold_reflect101(np.subtract(y, g.pad[0], out=y), g.height)
    if g.affine is not None:
        x, y = _apply_homography(np.linalg.inv(g.affine), x, y)
        x, y = _fold_reflect101(x, g.width), _fold_reflect101(y, g.height)
    if g.perspective is not None:
        # The perspective step replicates the border; remap's BORDER_REPLICATE does the same.
        x, y = _apply_homography(g.perspective, x, y)
    return x, y


def warp(image: np.ndarray, geometry: DistortionGeometry, *, nearest: bool = False) -> np.ndarray:
    """Applies the composed geometric steps of ``geometry`` to ``image`` (or a label map)."""
    maps = distortion_maps(geometry)
    if maps is None:
        top, left = geometry.crop
        out = image[top:top + geometry.out_size, left:left + geometry.out_size]
        return np.ascontiguousarray(out[:, ::-1] if geometry.flip else out)
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(image, maps[0], maps[1], interpolation, borderMode=cv2.BORDER_REPLICATE)


# --- photometric ----------------------------------------------------------------

_IDENTITY = np.arange(256, dtype=np.float64)


def clahe(image: np.ndarray, clip_limit: float) -> np.ndarray:
    """albumentations CLAHE on uint8 RGB: equalise the L channel of LAB, 8x8 tiles."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[:, :, 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(8, 8)).apply(lab[:, :, 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def brightness_contrast_lut(alpha: float, beta: float) -> np.ndarray:
    """albumentations RandomBrightnessContrast on uint8: clip(i·α + β·255) truncated to uint8."""
    return np.clip(_IDENTITY * alpha + beta * 255.0, 0, 255).astype(np.uint8)


def hsv_lut(hue_shift: float, sat_shift: float, val_shift: float) -> np.ndarray:
    """albumentations HueSaturationValue LUTs on OpenCV HSV uint8, shape (256, 1, 3).

    Hue wraps modulo 180 (OpenCV's hue range); saturation and value are clipped.
    """
    hue = np.mod(_IDENTITY + hue_shift, 180)
    sat = np.clip(_IDENTITY + sat_shift, 0, 255)
    val = np.clip(_IDENTITY + val_shift, 0, 255)
    return np.stack([hue, sat, val], axis=-1).astype(np.uint8)[:, None, :]


def photometric_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """CLAHE, RandomBrightnessContrast and HueSaturationValue, each with p = 0.5, in LaMa's order."""
    if rng.random() < 0.5:
        image = clahe(image, rng.uniform(1.0, 4.0))
    if rng.random() < 0.5:
        alpha = 1.0 + rng.uniform(-0.2, 0.2)
        beta = rng.uniform(-0.2, 0.2)
        image = cv2.LUT(image, brightness_contrast_lut(alpha, beta))
    if rng.random() < 0.5:
        shifts = rng.uniform(-5, 5), rng.uniform(-30, 30), rng.uniform(-5, 5)
        hsv = cv2.LUT(cv2.cvtColor(image, cv2.COLOR_RGB2HSV), hsv_lut(*shifts))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return image


# --- transform variants -----------------------------------------------------------

Transform = Callable[..., tuple[np.ndarray, np.ndarray | None]]


def distortions(rng: np.random.Generator, image: np.ndarray, out_size: int,
                labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """LaMa's ``distortions`` training transform, one remap plus colour jitter."""
    geometry = sample_distortion_geometry(rng, image.shape[0], image.shape[1], out_size)
    warped = warp(image, geometry)
    warped_labels = None if labels is None else warp(labels, geometry, nearest=True)
    return photometric_jitter(rng, warped), warped_labels


def resize_short_side(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resizes so that the shorter side is ``size`` (aspect kept, new side = round(side · factor))."""
    height, width = image.shape[:2]
    factor = size / min(height, width)
    new_w, new_h = max(size, round(width * factor)), max(size, round(height * factor))
    if (new_h, new_w) == (height, width):
        return image
    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def plain(rng: np.random.Generator, image: np.ndarray, out_size: int,
          labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize the shorter side to ``out_size``, random square crop, horizontal flip (p 0.5)."""
    image = resize_short_side(image, out_size)
    height, width = image.shape[:2]
    top = int(rng.integers(0, height - out_size + 1))
    left = int(rng.integers(0, width - out_size + 1))
    flip = rng.random() < 0.5

    def crop(array):
        array = array[top:top + out_size, left:left + out_size]
        return np.ascontiguousarray(array[:, ::-1] if flip else array)

    cropped_labels = None
    if labels is not None:
        cropped_labels = crop(resize_short_side(labels, out_size, nearest=True))
    return crop(image), cropped_labels


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(image[top:top + size, left:left + size])


def eval_transform(image: np.ndarray, out_size: int, *, nearest: bool = False) -> np.ndarray:
    """Deterministic evaluation view: shorter side resized to ``out_size`` (bicubic), centre crop."""
    return center_crop(resize_short_side(image, out_size, nearest=nearest), out_size)


TRANSFORMS: dict[str, Transform] = {"distortions": distortions, "plain": plain}


def get_transform(name: str) -> Transform:
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name]
