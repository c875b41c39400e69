"""Frozen evaluation sets: LaMa's crop rule, the layout, byte-for-byte reproducibility."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lama_jax.data import gen_masks
from lama_jax.data import masks
from lama_jax.data import samples
from lama_jax.data import sources


def test_square_crop_start_follows_lama_borders():
    mask = np.zeros((10, 4), np.float32)
    mask[5:7, 1] = 1  # hole rows a = 5, b = 6 on a 10-long axis, side 4
    starts = {gen_masks.square_crop_start(np.random.default_rng(s), mask) for s in range(200)}
    # lo = max(0, min(10-4-1, 6-4)) = 2, hi = max(lo+1, min(10-4, 6)) = 6
    assert starts == {2, 3, 4, 5}
    wide = np.zeros((4, 10), np.float32)
    wide[1, 0] = 1  # hole at the start: lo = 0, hi = max(1, min(6, 0)) = 1
    assert gen_masks.square_crop_start(np.random.default_rng(0), wide) == 0
    with pytest.raises(ValueError, match="empty mask"):
        gen_masks.square_crop_start(np.random.default_rng(0), np.zeros((10, 4)))


def test_eval_example_is_square_binary_and_under_the_area_limit():
    image = (np.random.default_rng(0).random((300, 450, 3)) * 255).astype(np.uint8)
    generator = masks.get("thick_256")
    for seed in range(10):
        example = gen_masks.make_eval_example(np.random.default_rng(seed), image, generator, 256)
        if example is None:
            continue
        crop, mask = example
        assert crop.shape == (256, 256, 3) and mask.shape == (256, 256) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert (mask > 0).mean() <= 0.5
    resized = gen_masks.resize_for_masking(image, 256)
    assert resized.shape == (256, 384, 3)


def test_all_candidates_over_the_limit_gives_no_example():
    image = np.zeros((64, 64, 3), np.uint8)
    full = masks.get("outpainting", min_padding_percent=0.6, max_padding_percent=0.9,
                     left_padding_prob=1, top_padding_prob=1, right_padding_prob=1, bottom_padding_prob=1)
    assert gen_masks.make_eval_example(np.random.default_rng(0), image, full, 64) is None


def _manifest_bytes(folder):
    return (folder / gen_masks.MANIFEST_NAME).read_bytes()


def test_thick_512_from_the_samples_is_reproducible(tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(samples.samples_dir(), photos)
    for run in ("a", "b"):
        gen_masks.main(["--input", str(photos), "--output", str(tmp_path / run), "--preset", "thick_512",
                        "--seed", "0"])
    assert _manifest_bytes(tmp_path / "a") == _manifest_bytes(tmp_path / "b")
    manifest = json.loads(_manifest_bytes(tmp_path / "a"))
    names = [p.stem for p in samples.sample_photo_paths()]
    assert sorted(manifest["files"]) == sorted(
        f"{n}_crop000{suffix}.png" for n in names for suffix in ("", "_mask000"))
    for relpath, digest in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "a" / relpath).read_bytes()).hexdigest() == digest
    image = Image.open(tmp_path / "a" / f"{names[0]}_crop000.png")
    mask = Image.open(tmp_path / "a" / f"{names[0]}_crop000_mask000.png")
    assert image.size == mask.size == (512, 512) and image.mode == "RGB" and mask.mode == "L"
    # The written set is a LaMa evaluation folder.
    assert len(sources.EvalFolderSource(tmp_path / "a")) == len(names)


def test_seed_changes_masks_and_other_images_do_not(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    first, second = samples.sample_photo_paths()[:2]
    shutil.copy(first, photos)
    base = gen_masks.generate_mask_dataset(photos, tmp_path / "one", preset="thick_256", seed=0)
    reseeded = gen_masks.generate_mask_dataset(photos, tmp_path / "two", preset="thick_256", seed=1)
    shutil.copy(second, photos)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    grown = gen_masks.generate_mask_dataset(photos, tmp_path / "three", preset="thick_256", seed=0)
    mask_name = f"{first.stem}_crop000_mask000.png"
    assert base["files"][mask_name] != reseeded["files"][mask_name]
    assert grown["files"][mask_name] == base["files"][mask_name]  # per-image RNG
    assert list(grown["skipped"]) == ["broken.jpg"]
    assert "truncated JPEG" in grown["skipped"]["broken.jpg"]


def test_presets_without_a_size_need_out_size(tmp_path):
    with pytest.raises(ValueError, match="no size suffix"):
        gen_masks.generate_mask_dataset(samples.samples_dir(), tmp_path, preset="train_mixed", seed=0)
