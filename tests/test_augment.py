"""Augmentations: the composed remap equals the step-by-step warps; parameter distributions; LUTs."""

import dataclasses

import cv2
import numpy as np
import pytest

from lama_jax.data import augment


def _smooth_image(height, width):
    """Low-frequency content, so single vs repeated bilinear interpolation barely differ."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        128 + 100 * np.sin(xx / 23.0) * np.cos(yy / 31.0),
        128 + 100 * np.cos((xx + yy) / 41.0),
        255 * (xx + 2 * yy) / (width + 2 * height),
    ]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def _step_by_step(image, g):
    """The reference's geometric steps in order (perspective ... crop, flip), one OpenCV call each."""
    h, w = image.shape[:2]
    x = image
    if g.perspective is not None:
        x = cv2.warpPerspective(x, g.perspective, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
    if g.affine is not None:
        x = cv2.warpAffine(x, g.affine[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    (top, left), (ph, pw) = g.pad, g.padded_size
    x = cv2.copyMakeBorder(x, top, ph - h - top, left, pw - w - left, cv2.BORDER_REFLECT_101)
    if g.optical_k is not None:
        camera = np.array([[pw, 0, pw * 0.5], [0, ph, ph * 0.5], [0, 0, 1]], np.float32)
        distortion = np.array([g.optical_k, g.optical_k, 0, 0, 0], np.float32)
        map_x, map_y = cv2.initUndistortRectifyMap(camera, distortion, None, None, (pw, ph), cv2.CV_32FC1)
        x = cv2.remap(x, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    y0, x0 = g.crop
    x = x[y0:y0 + g.out_size, x0:x0 + g.out_size]
    return x[:, ::-1] if g.flip else x


def _geometry(height, width, out_size, **changes):
    g = augment.DistortionGeometry(
        height=height, width=width, out_size=out_size,
        perspective=augment.perspective_homography(
            np.array([[0.05, 0.02], [0.01, 0.07], [0.04, 0.03], [0.02, 0.05]]), height, width),
        affine=augment.affine_matrix(height, width, 0.8, 1.2, 25.0, 0.1, -0.05),
        pad=(0, 0), padded_size=(height, width), optical_k=0.045, crop=(30, 40), flip=True)
    return dataclasses.replace(g, **changes)


@pytest.mark.parametrize("changes", [
    {},
    {"optical_k": -0.05, "flip": False},
    {"perspective": None},
    {"affine": None, "crop": (0, 0)},
])
def test_composed_remap_matches_step_by_step_warps(changes):
    image = _smooth_image(300, 380)
    g = _geometry(300, 380, 256, **changes)
    composed = augment.warp(image, g).astype(np.float32)
    reference = _step_by_step(image, g).astype(np.float32)
    diff = np.abs(composed - reference)
    assert composed.shape == (256, 256, 3)
    assert diff.mean() < 0.3 and np.quantile(diff, 0.999) <= 2


def test_composed_remap_matches_with_reflect_padding():
    image = _smooth_image(200, 230)  # smaller than the crop: PadIfNeeded pads by reflection
    g = _geometry(200, 230, 256, pad=(28, 13), padded_size=(256, 256), crop=(0, 0))
    diff = np.abs(augment.warp(image, g).astype(np.float32) - _step_by_step(image, g).astype(np.float32))
    assert diff.mean() < 0.3 and np.quantile(diff, 0.999) <= 2


def test_plain_crop_geometry_slices_without_interpolation():
    image = _smooth_image(300, 380)
    g = _geometry(300, 380, 256, perspective=None, affine=None, optical_k=None, crop=(7, 11), flip=False)
    np.testing.assert_array_equal(augment.warp(image, g), image[7:263, 11:267])


def test_label_maps_follow_the_geometry_with_nearest_sampling():
    labels = np.zeros((300, 380), np.uint16)
    labels[100:200, 150:250] = 9
    g = _geometry(300, 380, 256)
    warped = augment.warp(labels, g, nearest=True)
    reference = _step_by_step(labels, g)  # bilinear, but only 0/9 on flat regions
    assert set(np.unique(warped)) <= {0, 9}
    assert np.mean((warped == 9) != (reference >= 4.5)) < 0.01


def test_geometry_parameter_distributions():
    draws = [augment.sample_distortion_geometry(np.random.default_rng([5, i]), 512, 640, 256)
             for i in range(3000)]
    for attr in ("perspective", "affine", "optical_k"):
        assert abs(np.mean([getattr(g, attr) is not None for g in draws]) - 0.5) < 0.04
    assert abs(np.mean([g.flip for g in draws]) - 0.5) < 0.04
    affines = np.array([g.affine for g in draws if g.affine is not None])
    scale_x = np.linalg.norm(affines[:, :2, 0], axis=1)
    scale_y = np.linalg.norm(affines[:, :2, 1], axis=1)
    assert 0.7 <= scale_x.min() and scale_x.max() <= 1.3 and 0.7 <= scale_y.min() and scale_y.max() <= 1.3
    assert abs(np.corrcoef(scale_x, scale_y)[0, 1]) < 0.08  # x and y scale drawn independently
    rotation = np.degrees(np.arctan2(affines[:, 1, 0], affines[:, 0, 0]))
    assert -40.1 < rotation.min() < -38 and 38 < rotation.max() < 40.1
    ks = np.array([g.optical_k for g in draws if g.optical_k is not None])
    assert -0.05 <= ks.min() and ks.max() <= 0.05 and abs(ks.mean()) < 0.005
    tops = np.array([g.crop[0] for g in draws])
    lefts = np.array([g.crop[1] for g in draws])
    assert tops.min() == 0 and tops.max() == 512 - 256 - 1  # int((H - crop) * U[0, 1))
    assert lefts.min() == 0 and lefts.max() == 640 - 256 - 1


def test_perspective_corners_move_inward():
    h = augment.perspective_homography(np.array([[0.1, 0.2]] * 4), 100, 200)
    corners = cv2.perspectiveTransform(np.array([[[0, 0], [199, 0], [199, 99], [0, 99]]], np.float32), h)[0]
    np.testing.assert_allclose(corners, [[19.9, 19.8], [179.1, 19.8], [179.1, 79.2], [19.9, 79.2]], atol=1e-3)
    identity = augment.perspective_homography(np.zeros((4, 2)), 100, 200)
    np.testing.assert_allclose(identity, np.eye(3), atol=1e-9)


def test_brightness_contrast_lut_truncates_like_albumentations():
    lut = augment.brightness_contrast_lut(1.2, 0.1)
    assert lut[100] == 145  # 100·1.2 + 25.5 = 145.5 → 145
    assert lut[0] == 25 and lut[255] == 255
    assert augment.brightness_contrast_lut(0.8, -0.2)[10] == 0


def test_hsv_lut_wraps_hue_and_clips_saturation_value():
    lut = augment.hsv_lut(5.0, 30.0, -5.0)[:, 0, :]
    assert lut[178, 0] == 3  # (178 + 5) mod 180
    assert lut[250, 1] == 255 and lut[3, 2] == 0
    assert augment.hsv_lut(-5.0, 0.0, 0.0)[2, 0, 0] == 177


def test_distortions_output_and_determinism():
    image = _smooth_image(320, 480)
    out1, labels1 = augment.distortions(np.random.default_rng(9), image, 256,
                                        np.ones((320, 480), np.uint16))
    out2, _ = augment.distortions(np.random.default_rng(9), image, 256)
    assert out1.shape == (256, 256, 3) and out1.dtype == np.uint8
    assert labels1.shape == (256, 256) and labels1.dtype == np.uint16
    np.testing.assert_array_equal(out1, out2)
    outputs = {augment.distortions(np.random.default_rng(s), image, 256)[0].tobytes() for s in range(8)}
    assert len(outputs) == 8


def test_clahe_changes_only_through_lightness():
    image = _smooth_image(64, 64)
    out = augment.clahe(image, 4.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)


def test_plain_and_eval_transforms():
    image = _smooth_image(300, 500)
    out, labels = augment.plain(np.random.default_rng(0), image, 128, np.zeros((300, 500), np.uint16))
    assert out.shape == (128, 128, 3) and labels.shape == (128, 128)
    evaluated = augment.eval_transform(image, 128)
    assert evaluated.shape == (128, 128, 3)
    resized = cv2.resize(image, (213, 128), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(evaluated, resized[:, 42:170])
    with pytest.raises(ValueError, match="unknown transform 'fancy'"):
        augment.get_transform("fancy")
