"""Metric values against independent NumPy computations of LaMa's formulas."""

import math

import numpy as np
import pytest
import scipy.linalg

from lama_jax import metrics


def _images(shape, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    a = rng.random(shape, dtype=np.float32)
    b = np.clip(a + noise * rng.standard_normal(shape).astype(np.float32), 0, 1)
    return a, b


def _ssim_numpy(a, b):
    """LaMa's SSIM, written directly: the 11x11 outer-product window slid over zero-padded images."""
    offsets = np.arange(11) - 5
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    g /= g.sum()
    window = np.outer(g, g)

    def blur(x):  # (H, W) float64 -> same size
        padded = np.pad(x, 5)
        out = np.zeros_like(x)
        for i in range(11):
            for j in range(11):
                out += window[i, j] * padded[i : i + x.shape[0], j : j + x.shape[1]]
        return out

    values = []
    for img_a, img_b in zip(a.astype(np.float64), b.astype(np.float64)):
        maps = []
        for c in range(img_a.shape[-1]):
            x, y = img_a[..., c], img_b[..., c]
            mu_x, mu_y = blur(x), blur(y)
            var_x = blur(x * x) - mu_x**2
            var_y = blur(y * y) - mu_y**2
            cov = blur(x * y) - mu_x * mu_y
            c1, c2 = 0.01**2, 0.03**2
            maps.append(((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
        values.append(np.mean(maps))
    return np.array(values)


def test_ssim_matches_direct_formula():
    a, b = _images((3, 21, 34, 3))
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, b)), _ssim_numpy(a, b), rtol=0, atol=2e-6)


def test_ssim_of_identical_images_is_one_and_borders_count():
    a, _ = _images((2, 16, 16, 3))
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, a)), 1.0, atol=1e-6)
    # A difference confined to the border row still lowers SSIM: the map keeps the full size.
    b = a.copy()
    b[:, 0] = 1 - b[:, 0]
    assert np.all(np.asarray(metrics.ssim(a, b)) < 0.99)


def test_ssim_window_is_normalised_gaussian():
    window = metrics.gaussian_window()
    assert window.shape == (11,) and window.dtype == np.float32
    assert abs(window.sum() - 1) < 1e-6 and window.argmax() == 5
    np.testing.assert_allclose(window[4] / window[5], math.exp(-1 / (2 * 1.5**2)), rtol=1e-6)


def test_psnr_and_l1():
    a, b = _images((2, 8, 12, 3))
    mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(metrics.psnr(a, b)), 10 * np.log10(1 / mse), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(metrics.l1(a, b)), np.abs(a - b).mean(axis=(1, 2, 3)), rtol=1e-5)
    assert np.all(np.isinf(np.asarray(metrics.psnr(a, a))))


@pytest.mark.parametrize("fn", [metrics.ssim, metrics.psnr, metrics.l1])
def test_pairwise_metrics_reject_mismatched_shapes(fn):
    with pytest.raises(ValueError, match=r"\(1, 8, 8, 3\) and \(1, 8, 9, 3\)"):
        fn(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 9, 3)))


def test_mask_area_bins_offline_and_online_differ_on_edges():
    areas = np.array([0.0, 0.05, 0.1, 0.2, 0.55, 0.9, 0.95, 1.0])
    np.testing.assert_array_equal(metrics.mask_area_bins(areas, "offline"), [0, 0, 1, 2, 5, 9, 9, 9])
    np.testing.assert_array_equal(metrics.mask_area_bins(areas, "online"), [0, 0, 0, 1, 5, 8, 9, 9])
    assert metrics.BIN_NAMES[0] == "0-10%" and metrics.BIN_NAMES[9] == "90-100%"
    with pytest.raises(ValueError, match="'sideways'"):
        metrics.mask_area_bins(areas, "sideways")


def _fid_by_eigenvalues(fa, fb):
    """Tr sqrtm(S_a S_b) as the sum of square roots of the eigenvalues of S_a S_b (no scipy sqrtm)."""
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    eig = np.linalg.eigvals(sa @ sb)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return ((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt


def test_fid_matches_eigenvalue_formula_and_is_symmetric():
    rng = np.random.default_rng(1)
    fa = rng.standard_normal((200, 16)).astype(np.float32)
    fb = (rng.standard_normal((150, 16)) @ rng.standard_normal((16, 16)) * 0.5 + 0.3).astype(np.float32)
    fid_ab = metrics.fid_from_features(fa, fb)
    np.testing.assert_allclose(fid_ab, _fid_by_eigenvalues(fa.astype(np.float64), fb.astype(np.float64)), rtol=1e-8)
    np.testing.assert_allclose(metrics.fid_from_features(fb, fa), fid_ab, rtol=1e-8)


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_adds_its_squared_norm():
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((64, 8))
    assert abs(metrics.fid_from_features(feats, feats)) < 1e-8
    shift = rng.standard_normal(8)
    np.testing.assert_allclose(metrics.fid_from_features(feats, feats + shift), shift @ shift, rtol=1e-8)


def test_fid_retries_with_eps_when_sqrtm_is_not_finite(monkeypatch):
    calls = []
    real_sqrtm = scipy.linalg.sqrtm

    def flaky_sqrtm(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky_sqrtm)
    rng = np.random.default_rng(3)
    fa, fb = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    fid = metrics.fid_from_features(fa, fb)
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    np.testing.assert_allclose(calls[1], (sa + 1e-6 * np.eye(4)) @ (sb + 1e-6 * np.eye(4)))
    assert np.isfinite(fid)


def test_fid_imaginary_part_tolerance(monkeypatch):
    rng = np.random.default_rng(4)
    fa, fb = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    expected = metrics.fid_from_features(fa, fb)
    real_sqrtm = scipy.linalg.sqrtm
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: real_sqrtm(m) + 5e-3j * np.eye(len(m)))
    np.testing.assert_allclose(metrics.fid_from_features(fa, fb), expected, rtol=1e-10)
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: real_sqrtm(m) + 0.5j * np.eye(len(m)))
    with pytest.raises(ValueError, match="imaginary component of 0.5"):
        metrics.fid_from_features(fa, fb)


def test_fid_rejects_bad_feature_shapes():
    with pytest.raises(ValueError, match=r"features_a must be \(N >= 2, D\), got shape \(1, 4\)"):
        metrics.fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="feature sizes differ, 4 vs 3"):
        metrics.fid_from_features(np.zeros((5, 4)), np.zeros((5, 3)))


def test_integral_scores():
    # Values worked by hand from LaMa's definitions: fid_rel = (100 - 20) / 100 = 0.8.
    np.testing.assert_allclose(metrics.ssim_fid100_f1(0.9, 20.0), 2 * 0.9 * 0.8 / (0.9 + 0.8 + 1e-3))
    np.testing.assert_allclose(metrics.lpips_fid100_f1(0.1, 20.0), 2 * 0.9 * 0.8 / (0.9 + 0.8 + 1e-3))
    assert metrics.ssim_fid100_f1(0.9, 150.0) == 0.0  # FID beyond the scale clips to 0


def _patch_features(images):
    """A stand-in feature extractor: 4x4 average-pooled pixels (N, 48)."""
    n, h, w, c = images.shape
    return images.reshape(n, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(n, -1)


def _mask_with_area(fraction, size=16):
    mask = np.zeros((size, size, 1), np.float32)
    mask.reshape(-1)[: int(round(fraction * size * size))] = 1
    return mask


# Per-bin FID on fewer images than features has singular covariances, as in LaMa.
@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_evaluator_report_matches_direct_computation():
    rng = np.random.default_rng(5)
    n = 7
    image = rng.random((n, 16, 16, 3), dtype=np.float32)
    inpainted = np.clip(image + 0.2 * rng.standard_normal(image.shape).astype(np.float32), 0, 1)
    # 0.5 lies exactly on an edge (and is exact in float32): bin 50-60% offline, 40-50% online.
    areas = [0.0, 0.05, 0.0625, 0.53, 0.55, 0.75, 0.5]
    mask = np.stack([_mask_with_area(a) for a in areas])
    lpips_fn = lambda x, y: np.abs(np.asarray(x) - np.asarray(y)).max(axis=(1, 2, 3))  # noqa: E731
    evaluator = metrics.InpaintingEvaluator(
        ("ssim", "psnr", "l1", "lpips", "fid"), lpips_fn=lpips_fn, fid_features_fn=_patch_features
    )
    # Two batches, the second padded to 4 rows with one padding row dropped through num_valid.
    evaluator.update({"image": image[:4], "mask": mask[:4], "inpainted": inpainted[:4]})
    pad = lambda x: np.concatenate([x[4:], x[-1:]])  # noqa: E731
    evaluator.update({"image": pad(image), "mask": pad(mask), "inpainted": pad(inpainted)}, num_valid=3)
    report = evaluator.result()

    ssim = _ssim_numpy(inpainted, image)
    lp = lpips_fn(inpainted, image)
    fid = metrics.fid_from_features(_patch_features(inpainted), _patch_features(image))
    assert report["num_images"] == {"total": 7, "0-10%": 3, "50-60%": 3, "70-80%": 1}
    assert list(report["bins"]) == ["0-10%", "50-60%", "70-80%"]
    np.testing.assert_allclose(report["total"]["ssim"]["mean"], ssim.mean(), atol=2e-6)
    np.testing.assert_allclose(report["total"]["ssim"]["std"], ssim.std(), atol=2e-6)
    np.testing.assert_allclose(report["bins"]["50-60%"]["ssim"]["mean"], ssim[[3, 4, 6]].mean(), atol=2e-6)
    np.testing.assert_allclose(report["bins"]["0-10%"]["lpips"]["mean"], lp[:3].mean(), rtol=1e-6)
    np.testing.assert_allclose(report["total"]["l1"]["mean"], np.abs(inpainted - image).mean(), rtol=1e-5)
    np.testing.assert_allclose(report["total"]["fid"]["mean"], fid, rtol=1e-6)
    np.testing.assert_allclose(
        report["bins"]["0-10%"]["fid"]["mean"],
        metrics.fid_from_features(_patch_features(inpainted[:3]), _patch_features(image[:3])),
        rtol=1e-6,
    )
    assert math.isnan(report["bins"]["70-80%"]["fid"]["mean"])  # a single image has no covariance
    np.testing.assert_allclose(
        report["total"]["ssim_fid100_f1"]["mean"], metrics.ssim_fid100_f1(ssim.mean(), fid), rtol=1e-5
    )
    np.testing.assert_allclose(
        report["total"]["lpips_fid100_f1"]["mean"], metrics.lpips_fid100_f1(lp.mean(), fid), rtol=1e-5
    )

    online = metrics.InpaintingEvaluator(("l1",), bin_mode="online")
    online.update({"image": image, "mask": mask, "inpainted": inpainted})
    assert online.result()["num_images"] == {"total": 7, "0-10%": 3, "40-50%": 1, "50-60%": 2, "70-80%": 1}


def test_evaluator_rejects_bad_configuration_and_batches():
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.InpaintingEvaluator(("ssim", "mse"))
    with pytest.raises(ValueError, match="'lpips' needs lpips_fn"):
        metrics.InpaintingEvaluator(("lpips",))
    with pytest.raises(ValueError, match="'fid' needs fid_features_fn"):
        metrics.InpaintingEvaluator(("fid",))
    evaluator = metrics.InpaintingEvaluator(("ssim",))
    with pytest.raises(ValueError, match="no batches"):
        evaluator.result()
    image = np.zeros((2, 16, 16, 3), np.float32)
    with pytest.raises(KeyError, match="'inpainted'"):
        evaluator.update({"image": image, "mask": image[..., :1]})
    with pytest.raises(ValueError, match=r"mask shape \(2, 8, 16, 1\)"):
        evaluator.update({"image": image, "mask": image[:, :8, :, :1], "inpainted": image})


def test_report_to_tsv_has_lamas_table_shape():
    report = {
        "total": {"ssim": {"mean": 0.9, "std": 0.01}, "fid": {"mean": 3.0}, "lpips_fid100_f1": {"mean": 0.93}},
        "bins": {"0-10%": {"ssim": {"mean": 0.95, "std": 0.02}, "fid": {"mean": math.nan}}},
        "num_images": {"total": 2, "0-10%": 1},
    }
    assert metrics.report_to_tsv(report).splitlines() == [
        "\tssim\tssim\tfid\tlpips_fid100_f1",
        "\tmean\tstd\tmean\tmean",
        "total\t0.9000\t0.0100\t3.0000\t0.9300",
        "0-10%\t0.9500\t0.0200\t\t",
    ]
