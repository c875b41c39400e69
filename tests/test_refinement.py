"""Multi-scale feature refinement: resampling parity with PyTorch/OpenCV, the pyramid, the optimisation."""

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from lama_jax import convert, refinement
from lama_jax.inference import Inpainter
from lama_jax.models import build_generator
from lama_jax.refinement import RefinementOptions, Refiner

# The PyTorch fixture generator (random weights, randomised BN statistics), converted.
SMALL = dict(ngf=16, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)


@pytest.fixture(scope="module")
def small_variables(fixtures_dir):
    with np.load(fixtures_dir / "generator_ffc_small.npz") as f:
        state = {k[len("state_dict/"):]: f[k] for k in f.files if k.startswith("state_dict/")}
    return convert.convert_generator(state, SMALL)


@pytest.fixture(scope="module")
def two_level_refiner(small_variables):
    # min_side 32 gives two levels for a 64 px image: 32 px coarsest, 64 px refined.
    return Refiner(build_generator(SMALL), small_variables, RefinementOptions(min_side=32))


def _photo_like(height, width, seed=0):
    """A smooth image (what the known-pixel term can actually fit) with a rectangular hole."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rng = np.random.default_rng(seed)
    image = np.stack([0.5 + 0.4 * np.sin(6 * x + p) * np.cos(4 * y) for p in rng.uniform(0, 3, 3)], -1)
    mask = np.zeros((height, width, 1), np.float32)
    mask[height // 4 : 3 * height // 4, width // 5 : 3 * width // 5] = 1
    return image.astype(np.float32), mask


def test_resize_bilinear_matches_torch_interpolate_without_antialias():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 37, 50, 3)).astype(np.float32)
    for size in [(18, 25), (26, 35), (80, 111), (37, 50)]:
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(x.transpose(0, 3, 1, 2)), size=size, mode="bilinear", align_corners=False
        ).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(refinement.resize_bilinear(jnp.asarray(x), size), expected, atol=2e-6)


def test_gaussian_blur_matches_a_reflect_padded_5x5_convolution():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(1, 20, 13, 3)).astype(np.float32)
    # kornia's kernel: exp(-d^2 / 2) at d = -2..2, normalised, outer product.
    g = np.exp(-np.arange(-2.0, 3.0) ** 2 / 2)
    g /= g.sum()
    kernel = torch.tensor(np.outer(g, g), dtype=torch.float32).expand(3, 1, 5, 5)
    padded = torch.nn.functional.pad(torch.from_numpy(x.transpose(0, 3, 1, 2)), (2, 2, 2, 2), mode="reflect")
    expected = torch.nn.functional.conv2d(padded, kernel, groups=3).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(refinement.gaussian_blur(jnp.asarray(x)), expected, atol=1e-6)


def test_erosion_kernel_is_opencvs_ellipse_at_every_size():
    for size in range(1, 32):
        expected = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)).astype(bool)
        np.testing.assert_array_equal(refinement.erosion_kernel(size), expected, err_msg=f"size {size}")


def test_erode_matches_opencv_with_the_15x15_ellipse():
    rng = np.random.default_rng(2)
    mask = (cv2.GaussianBlur(rng.uniform(size=(60, 70)).astype(np.float32), (0, 0), 4) > 0.5).astype(np.float32)
    mask[:, :12] = 1  # a hole touching the border is not eroded from outside
    kernel = refinement.erosion_kernel()
    assert kernel.shape == (15, 15) and kernel[7].all() and not kernel[0, 0]
    expected = cv2.erode(mask, kernel.astype(np.uint8))  # OpenCV's default border never erodes
    eroded = refinement.erode(jnp.asarray(mask)[None, :, :, None], kernel)[0, :, :, 0]
    np.testing.assert_array_equal(eroded, expected)
    assert 0 < expected.sum() < mask.sum()


@pytest.mark.parametrize(
    "height, width, min_side, max_scales, expected",
    [(512, 512, 512, 3, 1), (600, 800, 512, 3, 1), (725, 2000, 512, 3, 2), (1024, 1024, 512, 3, 2),
     (2048, 1536, 512, 3, 3), (4096, 4096, 512, 3, 3), (4096, 4096, 512, 2, 2), (64, 64, 32, 3, 2),
     (300, 300, 512, 3, 1)],
)
def test_num_scales(height, width, min_side, max_scales, expected):
    assert refinement.num_scales(height, width, min_side, max_scales) == expected


def test_pyramid_fits_the_pixel_budget_then_halves_with_binary_masks():
    image, mask = _photo_like(100, 130)
    options = RefinementOptions(min_side=20, px_budget=6000)
    ratio = np.sqrt(6000 / (100 * 130))
    assert refinement.budget_size(100, 130, 6000) == (int(100 * ratio), int(130 * ratio)) == (67, 88)
    levels = refinement.image_mask_pyramid(image[None], mask[None], options)
    assert [lv[0].shape[1:3] for lv in levels] == [(16, 22), (33, 44), (67, 88)]
    for level_image, level_mask in levels:
        assert level_mask.shape == level_image.shape[:3] + (1,)
        assert set(np.unique(np.asarray(level_mask))) == {0.0, 1.0}
    # Coarser holes are rounded up: any partial coverage is a hole.
    fine, coarse = np.asarray(levels[2][1]), np.asarray(levels[1][1])
    assert coarse.mean() > fine.mean()
    np.testing.assert_allclose(levels[1][0], refinement.pyr_down(levels[2][0]), atol=1e-6)


def test_refinement_reduces_the_loss_and_keeps_known_pixels(two_level_refiner):
    image, mask = _photo_like(64, 64)
    result = two_level_refiner.run(image, mask)
    coarse, fine = result.levels
    assert coarse.size == (32, 32) and fine.size == (64, 64)
    assert coarse.reference_l1 is None and coarse.known_l1.shape == (1,)
    assert fine.known_l1.shape == fine.reference_l1.shape == (15,)  # 14 Adam steps, then the final forward
    total = fine.known_l1 + fine.reference_l1
    assert total[-1] < total[0]
    assert fine.known_l1[-1] < fine.known_l1[0]
    assert result.inpainted.shape == (64, 64, 3) and result.inpainted.dtype == np.float32
    known = mask[..., 0] == 0
    np.testing.assert_array_equal(result.inpainted[known], image[known])
    # The optimisation moves the hole away from the plain forward pass.
    plain = Inpainter(SMALL, two_level_refiner.variables)(image[None], mask[None])[0]
    assert np.abs(result.inpainted - plain)[~known].max() > 1e-4


def test_refinement_is_deterministic_and_compiles_once_per_level(two_level_refiner):
    image, mask = _photo_like(64, 64, seed=3)
    first = two_level_refiner(image, mask)
    compiled = two_level_refiner.compiled_shapes()
    second = two_level_refiner(image[None], mask[None] * 0.5)  # any value > 0 is a hole
    np.testing.assert_array_equal(first, second)
    assert two_level_refiner.compiled_shapes() == compiled == 2


def test_one_iteration_or_one_level_is_the_plain_forward(small_variables):
    """n_iters=1 takes no Adam step; a single level is one forward (sides of 8: reflect = symmetric pad)."""
    image, mask = _photo_like(64, 48)
    plain = Inpainter(SMALL, small_variables)(image[None], mask[None])[0]
    no_step = Refiner(build_generator(SMALL), small_variables, RefinementOptions(min_side=24, n_iters=1))
    result = no_step.run(image, mask)
    assert len(result.levels) == 2 and result.levels[1].known_l1.shape == (1,)
    np.testing.assert_allclose(result.inpainted, plain, atol=1e-5)
    single = Refiner(build_generator(SMALL), small_variables)  # min_side 512: one level
    np.testing.assert_allclose(single(image, mask), plain, atol=1e-5)


def test_bad_inputs_are_reported(two_level_refiner):
    image, mask = _photo_like(64, 64)
    with pytest.raises(ValueError, match=r"mask must be \(64, 64, 1\) to match the image, got \(64, 60, 1\)"):
        two_level_refiner(image, mask[:, :60])
    with pytest.raises(ValueError, match=r"image must be .*\(2, 64, 64, 3\)"):
        two_level_refiner(np.stack([image, image]), np.stack([mask, mask]))
    with pytest.raises(ValueError, match="coarsest level is .*below 16 px"):
        two_level_refiner(image[:12, :40], mask[:12, :40])
    with pytest.raises(ValueError, match="lr must be positive"):
        RefinementOptions(lr=0.0)
