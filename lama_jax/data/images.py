"""Robust image decoding: any common file becomes uint8 RGB, or a clear UnreadableImageError.

Training data is messy. OpenCV's ``IMREAD_COLOR_RGB`` already turns grayscale,
RGBA (alpha dropped), palette, CMYK and 16-bit images into 8-bit RGB. What it
does not do is refuse broken files consistently: a zero-byte file or garbage
returns None, while a truncated JPEG decodes "successfully" with a grey tail.
``decode_image`` turns all of these into ``UnreadableImageError`` so the
pipeline can skip and count them.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# Images with a shorter side below this are treated as unusable rather than upscaled.
MIN_IMAGE_SIDE = 8

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


class UnreadableImageError(ValueError):
    """A record that cannot become an RGB image; the message names the file and the reason."""


def _check_complete(data: bytes, name: str) -> None:
    if data.startswith(_JPEG_START):
        # Encoders may pad after the end-of-image marker; a truncated file lacks it.
        if not data.rstrip(b"\x00\r\n ").endswith(_JPEG_END):
            raise UnreadableImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    elif data.startswith(_PNG_START):
        if _PNG_END not in data[-64:]:
            raise UnreadableImageError(f"{name}: truncated PNG (no IEND chunk)")


def decode_image(data: bytes | np.ndarray, name: str) -> np.ndarray:
    """Decodes encoded bytes (or validates an already decoded array) into uint8 RGB (H, W, 3)."""
    if isinstance(data, np.ndarray) and data.ndim >= 2:
        image = _array_to_rgb(data, name)
    else:
        # Encoded bytes, possibly as a 1-D uint8 array.
        raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        if not raw:
            raise UnreadableImageError(f"{name}: empty file")
        _check_complete(raw, name)
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR_RGB)
        if image is None:
            raise UnreadableImageError(f"{name}: not a decodable image ({len(raw)} bytes)")
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise UnreadableImageError(
            f"{name}: image of {image.shape[1]}x{image.shape[0]} px is smaller than {MIN_IMAGE_SIDE} px")
    return image


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """Converts a decoded array (e.g. from TFDS) to uint8 RGB."""
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise UnreadableImageError(f"{name}: unsupported pixel type {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 1):
        return cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2RGB)
    if array.ndim == 3 and array.shape[-1] == 4:
        return np.ascontiguousarray(array[..., :3])
    if array.ndim == 3 and array.shape[-1] == 3:
        return array
    raise UnreadableImageError(f"{name}: unsupported image array shape {array.shape}")


def decode_label_map(data: bytes | np.ndarray, name: str) -> np.ndarray:
    """Decodes a segmentation label PNG (8- or 16-bit, one channel) into uint16 (H, W)."""
    if isinstance(data, np.ndarray):
        labels = data
    else:
        if not data:
            raise UnreadableImageError(f"{name}: empty label file")
        labels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if labels is None:
            raise UnreadableImageError(f"{name}: not a decodable label map")
    if labels.ndim == 3:
        # Colour-coded maps: use the first channel (OpenCV order) as the object id.
        labels = labels[..., 0]
    if labels.dtype not in (np.uint8, np.uint16):
        raise UnreadableImageError(f"{name}: label map must be 8- or 16-bit, got {labels.dtype}")
    return labels.astype(np.uint16)


def read_bytes(path: str | pathlib.Path) -> bytes:
    """Reads a file, turning I/O failures into UnreadableImageError naming the path."""
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as e:
        raise UnreadableImageError(f"{path}: cannot read ({e.strerror or e})") from e


def is_image_file(path: pathlib.Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS
