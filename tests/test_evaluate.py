"""`python -m lama_jax.evaluate` on a small LaMa-layout folder."""

import json
import math
import os

import jax
import numpy as np
import pytest
from PIL import Image

from lama_jax import evaluate, metrics
from lama_jax.models import inception, lpips


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture()
def folders(tmp_path):
    """Three samples: two masks on one 64x64 image, one 48x80 image in a subfolder.

    Returns (data_dir, predictions_dir, {mask name: (image, mask, prediction) uint8}).
    """
    rng = np.random.default_rng(0)
    data, preds = tmp_path / "data", tmp_path / "predictions"
    samples = {}
    specs = [
        ("img1_crop000", "img1_crop000_mask000", (64, 64), 0.05),
        ("img1_crop000", "img1_crop000_mask001", (64, 64), 0.45),
        ("sub/img2", "sub/img2_mask000", (48, 80), 0.0),  # prediction identical to the image
    ]
    images = {}
    for image_name, mask_name, (h, w), noise in specs:
        image = images.setdefault(image_name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2, : int(w * noise * 2) or 1] = 255
        pred = np.clip(image + rng.normal(0, 255 * noise, image.shape), 0, 255).astype(np.uint8)
        _save(str(data / f"{image_name}.png"), image)
        _save(str(data / f"{mask_name}.png"), mask)
        _save(str(preds / f"{mask_name}.png"), pred)
        samples[mask_name] = (image, mask, pred)
    return str(data), str(preds), samples


def _direct_report(samples):
    values = {"ssim": [], "psnr": [], "l1": [], "area": []}
    for image, mask, pred in samples.values():
        a, b = pred[None] / np.float32(255), image[None] / np.float32(255)
        values["ssim"].append(float(metrics.ssim(a, b)[0]))
        values["psnr"].append(float(metrics.psnr(a, b)[0]))
        values["l1"].append(float(np.abs(a - b).mean()))
        values["area"].append(mask.mean() / 255)
    return {k: np.array(v) for k, v in values.items()}


def test_find_samples_follows_lamas_naming(folders):
    data, preds, _ = folders
    samples = evaluate.find_samples(data, preds)
    assert [os.path.relpath(s.mask, data) for s in samples] == [
        "img1_crop000_mask000.png",
        "img1_crop000_mask001.png",
        os.path.join("sub", "img2_mask000.png"),
    ]
    assert samples[1].image == os.path.join(data, "img1_crop000.png")
    assert samples[2].prediction == os.path.join(preds, "sub", "img2_mask000.png")


def test_evaluate_folders_matches_metrics_on_the_loaded_files(folders):
    data, preds, samples = folders
    report = evaluate.evaluate_folders(data, preds, ("ssim", "psnr", "l1"), batch_size=2)
    direct = _direct_report(samples)
    np.testing.assert_allclose(report["total"]["ssim"]["mean"], direct["ssim"].mean(), rtol=1e-5)
    np.testing.assert_allclose(report["total"]["l1"]["std"], direct["l1"].std(), rtol=1e-5)
    assert math.isinf(report["total"]["psnr"]["mean"])  # one prediction equals its image
    bins = metrics.mask_area_bins(direct["area"])
    assert report["num_images"]["total"] == 3
    for b in np.unique(bins):
        name = metrics.BIN_NAMES[b]
        np.testing.assert_allclose(report["bins"][name]["ssim"]["mean"], direct["ssim"][bins == b].mean(), rtol=1e-5)
    assert report["images_per_s"] > 0


# Two 2048x2048 scipy sqrtm calls (~14 s each on 2 cores) dominate; two images give singular covariances.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_evaluate_folders_with_lpips_and_fid(folders):
    data, preds, samples = folders
    # Keep the two 64x64 samples: one batch shape, so one compilation per network.
    os.remove(os.path.join(data, "sub", "img2_mask000.png"))
    del samples["sub/img2_mask000"]
    lpips_vars = lpips.init_lpips_variables(jax.random.key(0))
    inception_vars = inception.init_inception_variables(jax.random.key(1))
    report = evaluate.evaluate_folders(
        data,
        preds,
        ("ssim", "lpips", "fid"),
        lpips_variables=lpips_vars,
        inception_variables=inception_vars,
        batch_size=2,
    )
    preds_batch = np.stack([p for _, _, p in samples.values()]) / np.float32(255)
    images_batch = np.stack([i for i, _, _ in samples.values()]) / np.float32(255)
    expected_lpips = jax.jit(lpips.lpips_distance)(lpips_vars, preds_batch, images_batch)
    features = jax.jit(inception.inception_features)
    fid = metrics.fid_from_features(features(inception_vars, preds_batch), features(inception_vars, images_batch))
    np.testing.assert_allclose(report["total"]["lpips"]["mean"], np.mean(expected_lpips), rtol=1e-5)
    np.testing.assert_allclose(report["total"]["fid"]["mean"], fid, rtol=1e-5)
    assert set(report["total"]) == {"ssim", "lpips", "fid", "ssim_fid100_f1", "lpips_fid100_f1"}
    np.testing.assert_allclose(
        report["total"]["lpips_fid100_f1"]["mean"], metrics.lpips_fid100_f1(np.mean(expected_lpips), fid), rtol=1e-5
    )


def test_cli_writes_strict_json_and_lamas_tsv(folders, tmp_path, capsys):
    data, preds, _ = folders
    output = tmp_path / "out" / "report.json"
    code = evaluate.main(
        ["--data", data, "--predictions", preds, "--output", str(output), "--metrics", "ssim,psnr"]
    )
    assert code == 0
    assert "images/s" in capsys.readouterr().out

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    report = json.loads(output.read_text(), parse_constant=reject)
    assert report["total"]["psnr"]["mean"] is None  # +inf is written as null
    assert set(report["total"]["ssim"]) == {"mean", "std"}
    assert report["num_images"]["total"] == 3
    tsv = (tmp_path / "out" / "report.tsv").read_text().splitlines()
    assert tsv[0] == "\tssim\tssim\tpsnr\tpsnr" and tsv[1] == "\tmean\tstd\tmean\tstd"
    assert tsv[2].startswith("total\t") and len(tsv) == 3 + len(report["bins"])


def test_cli_names_a_missing_weights_file_and_where_to_get_it(folders, tmp_path, capsys):
    data, preds, _ = folders
    args = ["--data", data, "--predictions", preds, "--output", str(tmp_path / "r.json")]
    assert evaluate.main([*args, "--metrics", "fid"]) == 1
    err = capsys.readouterr().err
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "--inception-weights" in err
    assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in err
    assert evaluate.main([*args, "--metrics", "lpips", "--lpips-weights", str(tmp_path / "vgg.pth")]) == 1
    err = capsys.readouterr().err
    assert "vgg.pth" in err and "richzhang/PerceptualSimilarity" in err
    assert not (tmp_path / "r.json").exists()


def test_cli_reports_a_corrupt_weights_file(folders, tmp_path, capsys):
    data, preds, _ = folders
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"PK\x03\x04 truncated")
    args = ["--data", data, "--predictions", preds, "--output", str(tmp_path / "r.json")]
    assert evaluate.main([*args, "--metrics", "fid", "--inception-weights", str(weights)]) == 1
    assert str(weights) in capsys.readouterr().err


def test_missing_prediction_is_reported_by_path(folders):
    data, preds, _ = folders
    os.remove(os.path.join(preds, "img1_crop000_mask001.png"))
    with pytest.raises(FileNotFoundError, match=r"1 of 3 prediction files are missing: .*img1_crop000_mask001.png"):
        evaluate.evaluate_folders(data, preds, ("ssim",))


def test_bad_inputs_are_reported(folders, tmp_path):
    data, preds, samples = folders
    _save(os.path.join(preds, "sub", "img2_mask000.png"), np.zeros((40, 80, 3), np.uint8))
    with pytest.raises(ValueError, match=r"prediction .*img2_mask000.png' is \(40, 80\) but image"):
        evaluate.evaluate_folders(data, preds, ("ssim",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no '\\*mask\\*.png' files"):
        evaluate.evaluate_folders(str(tmp_path / "empty"), preds, ("ssim",))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        evaluate.evaluate_folders(str(tmp_path / "nowhere"), preds, ("ssim",))
    with pytest.raises(ValueError, match="unknown metrics \\['is'\\]"):
        evaluate.parse_metrics("ssim,is")
    with open(os.path.join(preds, "img1_crop000_mask000.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(OSError, match="cannot read .*img1_crop000_mask000.png"):
        evaluate.evaluate_folders(data, preds, ("ssim",))


def test_cli_default_metrics_are_those_it_can_compute_and_says_what_it_skipped(folders, tmp_path, capsys):
    data, preds, _ = folders
    output = tmp_path / "report.json"
    assert evaluate.main(["--data", data, "--predictions", preds, "--output", str(output)]) == 0
    err = capsys.readouterr().err
    assert "skipping lpips: it needs --lpips-weights vgg.pth (https://github.com/richzhang/PerceptualSimilarity" in err
    assert "and --vgg-weights vgg16-397923af.pth (https://download.pytorch.org/models/vgg16-397923af.pth)" in err
    assert "skipping fid: it needs --inception-weights pt_inception-2015-12-05-6726825d.pth (https://" in err
    assert set(json.loads(output.read_text())["total"]) == {"ssim", "psnr", "l1"}
    # A weights flag asks for its metric: a missing file is then an error, as with --metrics lpips.
    assert evaluate.main(["--data", data, "--predictions", preds, "--output", str(tmp_path / "r2.json"),
                          "--inception-weights", str(tmp_path / "missing.pth")]) == 1
    assert "missing.pth' does not exist" in capsys.readouterr().err


def test_available_metrics_follow_the_weights_given():
    assert evaluate.available_metrics()[0] == ("ssim", "psnr", "l1")
    metrics, skipped = evaluate.available_metrics(lpips_weights="vgg.pth", vgg_weights="vgg16.pth")
    assert metrics == ("ssim", "psnr", "l1", "lpips") and list(skipped) == ["fid"]
    assert evaluate.available_metrics(inception_weights="i.pth")[0][-1] == "fid"


def test_predictions_are_named_after_the_mask_or_after_a_photo_with_one_mask():
    assert evaluate.prediction_relpath("sub/img1_crop000_mask000.png") == "sub/img1_crop000_mask000.png"  # LaMa
    assert evaluate.prediction_relpath("sub/cat_mask.png") == "sub/cat.png"  # what predict writes for a photo
