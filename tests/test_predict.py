"""`python -m lama_jax.predict` end to end on the sample photos, with a small saved checkpoint."""

import os

import numpy as np
import pytest
from PIL import Image

from lama_jax import checkpoint, convert, evaluate, predict
from lama_jax.data import gen_masks, samples
from lama_jax.inference import Inpainter
from lama_jax.refinement import RefinementOptions, Refiner

# The PyTorch fixture generator (random weights, randomised BN statistics), converted.
SMALL = dict(ngf=16, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, fixtures_dir):
    with np.load(fixtures_dir / "generator_ffc_small.npz") as f:
        state = {k[len("state_dict/"):]: f[k] for k in f.files if k.startswith("state_dict/")}
    directory = tmp_path_factory.mktemp("ckpt") / "small"
    model_config = {"generator": SMALL, "discriminator": dict(ndf=16, n_layers=3)}
    checkpoint.save_model(directory, {"generator": convert.convert_generator(state, SMALL)}, model_config)
    return str(directory)


@pytest.fixture(scope="module")
def inpainter(small_checkpoint):
    return Inpainter.from_checkpoint(small_checkpoint)


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _photo(name, size):
    """A sample photo resized to size=(width, height), uint8 RGB."""
    path = next(p for p in samples.sample_photo_paths() if p.stem == name)
    return np.asarray(Image.open(path).convert("RGB").resize(size, Image.BILINEAR))


@pytest.fixture()
def eval_folder(tmp_path):
    """A frozen 64 px LaMa-layout set from the sample photos (4 samples) plus a 48x80 one in a subfolder."""
    data = tmp_path / "data"
    manifest = gen_masks.generate_mask_dataset(samples.samples_dir(), data, preset="medium_256", seed=0, out_size=64)
    masks = sorted(name for name in manifest["files"] if "_mask" in name)
    assert len(masks) == 4
    mask = np.zeros((48, 80), np.uint8)
    mask[10:30, 20:50] = 255
    _save(str(data / "sub" / "coffee_crop000.png"), _photo("coffee", (80, 48)))
    _save(str(data / "sub" / "coffee_crop000_mask000.png"), mask)
    return str(data), masks + ["sub/coffee_crop000_mask000.png"]


def _load(path, mode="RGB"):
    return np.asarray(Image.open(path).convert(mode))


def test_to_uint8_truncates_like_lama():
    values = np.array([0.0, 0.5, 0.99999, 1.0, 1.7, -0.3, 254.9 / 255], np.float32)
    np.testing.assert_array_equal(predict.to_uint8(values), [0, 127, 254, 255, 255, 0, 254])


def test_predict_folder_then_evaluate_on_the_sample_photos(small_checkpoint, inpainter, eval_folder, tmp_path, capsys):
    data, masks = eval_folder
    out = str(tmp_path / "predictions")
    status = predict.main(["--checkpoint", small_checkpoint, "--input", data, "--output", out, "--batch-size", "3"])
    assert status == 0
    assert f"wrote 5 of 5 results to {out}" in capsys.readouterr().out
    written = sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs)
    assert written == sorted(masks)  # named after the masks, suffix .png
    for name in masks:
        image = _load(os.path.join(data, name.rsplit("_mask", 1)[0] + ".png"))
        mask = _load(os.path.join(data, name), "L")[..., None]
        result = _load(os.path.join(out, name))
        assert result.shape == image.shape
        expected = inpainter(image[None] / np.float32(255), mask[None] / np.float32(255))[0]
        # Batched (3 + a padded 1) vs alone: equal up to float noise, then truncated.
        assert np.abs(result.astype(int) - predict.to_uint8(expected).astype(int)).max() <= 1
        known = mask[..., 0] == 0
        np.testing.assert_array_equal(result[known], predict.to_uint8(image / np.float32(255))[known])
        assert np.abs(result.astype(int) - image)[~known].max() > 10  # the hole was filled in

    report = evaluate.evaluate_folders(data, out, metrics=("ssim", "psnr"))
    assert report["num_images"]["total"] == 5
    assert 0 < report["total"]["ssim"]["mean"] < 1


def test_equal_sizes_are_batched_with_one_compile_per_size(small_checkpoint, eval_folder, tmp_path):
    data, masks = eval_folder
    fresh = Inpainter.from_checkpoint(small_checkpoint)
    found, failures = predict.predict_folder(fresh, data, str(tmp_path / "out"), batch_size=3)
    assert failures == [] and [os.path.relpath(s.mask, data) for s in found] == masks
    assert fresh.compiled_shapes() == 2  # (3, 64, 64) for 3 + 1 samples, (3, 48, 80) for the subfolder one


def test_bad_samples_are_reported_by_path_and_the_rest_processed(small_checkpoint, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    good = _photo("astronaut", (64, 64))
    hole = np.zeros((64, 64), np.uint8)
    hole[20:40, 20:40] = 255
    _save(str(data / "good.png"), good)
    _save(str(data / "good_mask.png"), hole)
    _save(str(data / "orphan_mask.png"), hole)  # no orphan.png
    _save(str(data / "wide.png"), _photo("rocket", (96, 64)))
    _save(str(data / "wide_mask.png"), hole)  # 64x64 mask for a 64x96 image
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _save(str(data / "broken_mask.png"), hole)
    _save(str(data / "tiny.png"), good[:12])
    _save(str(data / "tiny_mask.png"), hole[:12])

    status = predict.main(["--checkpoint", small_checkpoint, "--input", str(data), "--output", str(out)])
    captured = capsys.readouterr()
    assert status == 4
    assert os.listdir(out) == ["good.png"]  # <name>_mask.png: named after the image
    assert f"{str(data / 'orphan.png')!r} for mask {str(data / 'orphan_mask.png')!r} does not exist" in captured.err
    wide_mask, wide = str(data / "wide_mask.png"), str(data / "wide.png")
    assert f"mask {wide_mask!r} is 64x64 but image {wide!r} is 64x96" in captured.err
    assert f"cannot read {str(data / 'broken.png')!r}" in captured.err
    assert f"image {str(data / 'tiny.png')!r} is 12x64" in captured.err
    assert "wrote 1 of 5 results" in captured.out and "4 of 5 samples failed" in captured.err


def test_single_image_mode_and_refine_flags(small_checkpoint, inpainter, tmp_path, monkeypatch):
    image_path, mask_path = str(tmp_path / "cat.jpg"), str(tmp_path / "hole.png")
    Image.fromarray(_photo("chelsea", (72, 64))).save(image_path, quality=95)
    hole = np.zeros((64, 72), np.uint8)
    hole[16:48, 24:56] = 1  # any non-zero value is a hole
    _save(mask_path, hole)
    image = _load(image_path) / np.float32(255)
    mask = (hole > 0).astype(np.float32)[..., None]

    result_png = str(tmp_path / "result.png")
    args = ["--checkpoint", small_checkpoint, "--image", image_path, "--mask", mask_path]
    assert predict.main(args + ["--output", result_png]) == 0
    expected = predict.to_uint8(inpainter(image[None], mask[None])[0])
    # The CLI's program and this direct call are compiled separately; float rounding may differ by
    # an ulp, which can flip the rounding of a pixel to uint8.
    np.testing.assert_allclose(_load(result_png), expected, rtol=0, atol=1)

    # Into a folder, refined on two levels (32 and 64 px) with 2 iterations each.
    runs = []
    original_run = Refiner.run

    def recording_run(self, *args):
        runs.append(original_run(self, *args))
        return runs[-1]

    monkeypatch.setattr(Refiner, "run", recording_run)
    refined_dir = str(tmp_path / "refined")
    flags = ["--refine", "--refine-min-side", "32", "--refine-iters", "2", "--refine-lr", "0.01"]
    assert predict.main(args + ["--output", refined_dir] + flags) == 0
    (run,) = runs
    assert [level.size for level in run.levels] == [(32, 36), (64, 72)]
    assert run.levels[1].known_l1.shape == (2,)
    refined = _load(os.path.join(refined_dir, "cat.png"))  # named after the image
    np.testing.assert_array_equal(refined, predict.to_uint8(run.inpainted))
    known = mask[..., 0] == 0
    np.testing.assert_array_equal(refined[known], expected[known])
    assert np.abs(refined.astype(int) - expected)[~known].max() > 0


def test_setup_errors_exit_255(small_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert predict.main(["--checkpoint", str(tmp_path / "nope"), "--input", str(empty), "--output", "o"]) == 255
    assert f"error: no masks under --input {str(empty)!r}: name each mask after its image" in capsys.readouterr().err
    _save(str(empty / "a_mask.png"), np.zeros((32, 32), np.uint8))
    assert predict.main(["--checkpoint", str(tmp_path / "nope"), "--input", str(empty), "--output", "o"]) == 255
    assert f"{tmp_path / 'nope'}: does not exist" in capsys.readouterr().err
    assert predict.main(["--checkpoint", small_checkpoint, "--image", "x.png", "--output", "o"]) == 255
    assert "--image needs --mask" in capsys.readouterr().err
    assert predict.main(["--checkpoint", small_checkpoint, "--input", str(empty), "--output", "o",
                         "--batch-size", "0"]) == 255
    assert "--batch-size must be positive" in capsys.readouterr().err


def test_a_folder_of_photos_with_masks_in_any_common_format(small_checkpoint, inpainter, tmp_path, capsys):
    """cat.jpg + cat_mask.png, dog.webp + dog_mask.bmp, sub/owl.jpeg + sub/owl_mask.jpg: named after the image."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    hole = np.zeros((48, 64), np.uint8)
    hole[10:30, 20:40] = 255
    pairs = {"cat.jpg": "cat_mask.png", "dog.webp": "dog_mask.bmp", "sub/owl.jpeg": "sub/owl_mask.jpg"}
    for (image_name, mask_name), photo in zip(pairs.items(), ("chelsea", "coffee", "astronaut")):
        _save(str(photos / image_name), _photo(photo, (64, 48)))
        _save(str(photos / mask_name), hole)
    status = predict.main(["--checkpoint", small_checkpoint, "--input", str(photos), "--output", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"wrote 3 of 3 results to {out}" in captured.out
    assert "compiling the model for 48x64 images, batch 3" in captured.err  # one batch of one size
    written = sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs)
    assert written == ["cat.png", "dog.png", "sub/owl.png"]
    for image_name in pairs:
        image = _load(str(photos / image_name))
        mask = _load(str(photos / pairs[image_name]), "L")[..., None]  # a JPEG mask is not exactly 0/255
        expected = predict.to_uint8(inpainter(image[None], (mask[None] > 0).astype(np.float32))[0])
        result = _load(str(out / (os.path.splitext(image_name)[0] + ".png")))
        assert np.abs(result.astype(int) - expected).max() <= 1, image_name
    # A folder holding one photo may go to one file.
    assert predict.main(["--checkpoint", small_checkpoint, "--input", str(photos / "sub"),
                         "--output", str(tmp_path / "owl.webp")]) == 0
    with Image.open(tmp_path / "owl.webp") as written:
        assert written.format == "WEBP" and written.size == (64, 48)


def test_one_photo_to_a_jpeg_file(small_checkpoint, tmp_path, capsys):
    photo, mask, result = tmp_path / "photo.jpg", tmp_path / "mask.png", tmp_path / "result.jpg"
    _save(str(photo), _photo("rocket", (40, 32)))
    hole = np.zeros((32, 40), np.uint8)
    hole[8:24, 8:24] = 255
    _save(str(mask), hole)
    args = ["--checkpoint", small_checkpoint, "--image", str(photo), "--mask", str(mask), "--output", str(result)]
    assert predict.main(args) == 0
    captured = capsys.readouterr()
    assert captured.out == f"wrote 1 of 1 results to {result}\n"
    assert "compiling the model for 32x40 images, batch 1" in captured.err
    with Image.open(result) as written:
        assert written.format == "JPEG" and written.size == (40, 32)
    # A failing photo is the run's one error line.
    _save(str(mask), hole[:16])
    assert predict.main(args) == 1
    assert capsys.readouterr().err == f"error: mask {str(mask)!r} is 16x40 but image {str(photo)!r} is 32x40\n"


def test_compile_notes_only_on_the_first_use_of_a_size(small_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    for name in ("a", "b"):
        _save(str(photos / f"{name}.png"), _photo("coffee", (40, 32)))
        _save(str(photos / f"{name}_mask.png"), np.full((32, 40), 255, np.uint8))
    fresh = Inpainter.from_checkpoint(small_checkpoint)
    notes = []
    predict.predict_folder(fresh, str(photos), str(tmp_path / "a"), batch_size=2, notify=notes.append)
    assert len(notes) == 2 and notes[0] == "compiling the model for 32x40 images, batch 2 (once per size)..."
    assert notes[1].startswith("compiled and inpainted in ")
    notes.clear()
    predict.predict_folder(fresh, str(photos), str(tmp_path / "b"), batch_size=2, notify=notes.append)
    assert notes == []


def test_refine_flag_defaults_are_the_refiners():
    assert RefinementOptions(**predict.REFINE_DEFAULTS) == RefinementOptions()
