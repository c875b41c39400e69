"""Sources and decoding: image folders, bad files, LaMa evaluation folders, TFDS, built-in samples."""

import pathlib

import cv2
import numpy as np
import pytest
from PIL import Image

from lama_jax import evaluate
from lama_jax.data import build_tfds
from lama_jax.data import images
from lama_jax.data import samples
from lama_jax.data import sources

def _smooth_photo(height, width):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = [128 + 90 * np.sin(xx / 17.0), 128 + 90 * np.cos(yy / 13.0), 255 * xx / width]
    return np.clip(np.stack(rgb, -1), 0, 255).astype(np.uint8)


GOOD = _smooth_photo(300, 400)

# Files write_image_zoo() makes that must be skipped, and those converted to RGB.
BAD_FILES = ("empty.jpg", "garbage.png", "tiny.png", "truncated.jpg")
CONVERTED_FILES = ("a/gray.png", "a/rgba.png", "a/palette.png", "b/cmyk.jpg", "b/sixteen.png",
                   "b/small.jpg", "c/photo.webp", "c/photo.bmp", "c/UPPER.JPG", "good.jpg")


def write_image_zoo(root: pathlib.Path) -> pathlib.Path:
    """A folder with every kind of file the pipeline must convert or skip."""
    for sub in ("a", "b", "c"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(GOOD).save(root / "good.jpg", quality=90)
    Image.fromarray(GOOD).convert("L").save(root / "a/gray.png")
    Image.fromarray(np.dstack([GOOD, np.full(GOOD.shape[:2], 128, np.uint8)])).save(root / "a/rgba.png")
    Image.fromarray(GOOD).convert("P").save(root / "a/palette.png")
    Image.fromarray(GOOD).convert("CMYK").save(root / "b/cmyk.jpg")
    cv2.imwrite(str(root / "b/sixteen.png"), GOOD[..., ::-1].astype(np.uint16) * 257)
    Image.fromarray(GOOD[:60, :100]).save(root / "b/small.jpg")
    cv2.imwrite(str(root / "c/photo.webp"), GOOD[..., ::-1])
    cv2.imwrite(str(root / "c/photo.bmp"), GOOD[..., ::-1])
    Image.fromarray(GOOD).save(root / "c/UPPER.JPG")
    (root / "empty.jpg").write_bytes(b"")
    (root / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"IEND\xaeB`\x82")
    Image.fromarray(GOOD[:4, :4]).save(root / "tiny.png")
    full = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[:len(full) // 2])
    (root / "c/notes.txt").write_text("not an image")
    return root


def test_folder_source_lists_images_recursively_sorted(tmp_path):
    source = sources.ImageFolderSource(write_image_zoo(tmp_path))
    assert source.relpaths == sorted(BAD_FILES + CONVERTED_FILES)
    record = source[source.relpaths.index("good.jpg")]
    assert record["name"] == str(tmp_path / "good.jpg")
    assert record["image"] == (tmp_path / "good.jpg").read_bytes()


def test_folder_source_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image folder {tmp_path / 'missing'} does not exist"):
        sources.ImageFolderSource(tmp_path / "missing")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=f"no images .* found under {tmp_path / 'docs'}"):
        sources.ImageFolderSource(tmp_path / "docs")


@pytest.mark.parametrize("relpath", CONVERTED_FILES)
def test_odd_formats_become_rgb(tmp_path, relpath):
    write_image_zoo(tmp_path)
    image = images.decode_image((tmp_path / relpath).read_bytes(), relpath)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    height, width = (60, 100) if relpath == "b/small.jpg" else (300, 400)
    assert image.shape[:2] == (height, width)
    reference = GOOD[:height, :width].astype(np.float32)
    if relpath == "a/gray.png":
        reference = np.asarray(Image.fromarray(GOOD).convert("L").convert("RGB"), np.float32)
    elif relpath == "a/palette.png":
        reference = np.asarray(Image.open(tmp_path / relpath).convert("RGB"), np.float32)
    tolerance = 3 if relpath.endswith((".jpg", ".JPG")) else 0.5  # JPEG loss
    assert np.abs(image - reference).mean() <= tolerance


@pytest.mark.parametrize("relpath, reason", [
    ("empty.jpg", "empty file"),
    ("garbage.png", "not a decodable image"),
    ("tiny.png", "smaller than 8 px"),
    ("truncated.jpg", "truncated JPEG"),
])
def test_bad_files_raise_unreadable_with_name(tmp_path, relpath, reason):
    write_image_zoo(tmp_path)
    with pytest.raises(images.UnreadableImageError, match=f"{relpath}: .*{reason}"):
        images.decode_image((tmp_path / relpath).read_bytes(), relpath)


def test_truncated_png_and_missing_file(tmp_path):
    data = cv2.imencode(".png", GOOD)[1].tobytes()
    with pytest.raises(images.UnreadableImageError, match="truncated PNG"):
        images.decode_image(data[:-40], "cut.png")
    with pytest.raises(images.UnreadableImageError, match="cannot read"):
        images.read_bytes(tmp_path / "nope.jpg")


def test_decoded_arrays_are_validated_and_converted():
    gray = GOOD[..., 0]
    np.testing.assert_array_equal(images.decode_image(gray, "g")[..., 2], gray)
    np.testing.assert_array_equal(images.decode_image(GOOD.astype(np.uint16) * 257, "w"), GOOD)
    with pytest.raises(images.UnreadableImageError, match="unsupported pixel type float32"):
        images.decode_image(GOOD.astype(np.float32), "f")


def test_label_maps_decode_to_uint16(tmp_path):
    labels = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 300
    cv2.imwrite(str(tmp_path / "l.png"), labels)
    np.testing.assert_array_equal(images.decode_label_map((tmp_path / "l.png").read_bytes(), "l"), labels)


def _write_eval_folder(root):
    (root / "sub").mkdir(parents=True)
    for stem in ("img1_crop000", "sub/img2_crop000"):
        Image.fromarray(GOOD[:64, :64]).save(root / f"{stem}.png")
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / f"{stem}_mask000.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "img1_crop000_mask001.png")


def test_eval_folder_pairs_masks_with_images(tmp_path):
    _write_eval_folder(tmp_path)
    source = sources.EvalFolderSource(tmp_path)
    assert [r[1] for r in source.pairs] == [str(tmp_path / n) for n in (
        "img1_crop000_mask000.png", "img1_crop000_mask001.png", "sub/img2_crop000_mask000.png")]
    assert [r[0] for r in source.pairs][:2] == [str(tmp_path / "img1_crop000.png")] * 2
    assert source[2]["name"] == "sub/img2_crop000_mask000"
    assert sources.mask_image_path(pathlib.Path("a_mask_x_mask003.png")) == pathlib.Path("a_mask_x.png")


def test_training_validation_and_evaluate_list_the_same_samples(tmp_path):
    _write_eval_folder(tmp_path)
    hidden = tmp_path / ".ipynb_checkpoints"  # skipped, as by LaMa's glob
    hidden.mkdir()
    Image.fromarray(GOOD[:64, :64]).save(hidden / "img1_crop000.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(hidden / "img1_crop000_mask000.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / ".img1_crop000_mask002.png")
    listed = [(s.image, s.mask) for s in evaluate.list_samples(str(tmp_path), str(tmp_path / "out"))]
    assert listed == sources.EvalFolderSource(tmp_path).pairs
    assert len(listed) == 3


def test_eval_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no '\\*mask\\*.png' files"):
        sources.EvalFolderSource(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "lonely_mask000.png")
    with pytest.raises(FileNotFoundError, match=r"lonely_mask000.png has no image: expected .*lonely.png"):
        sources.EvalFolderSource(tmp_path)


def test_synthetic_source_is_a_function_of_the_index():
    source = sources.SyntheticSource(4, height=64, width=96)
    a, b = source[2], sources.SyntheticSource(4, height=64, width=96)[2]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (64, 96, 3) and a["labels"].shape == (64, 96)
    assert a["labels"].max() >= 1
    assert not np.array_equal(source[1]["image"], a["image"])
    with pytest.raises(IndexError):
        source[4]


def test_sample_photos_are_found_and_missing_folder_is_clear(monkeypatch, tmp_path):
    paths = samples.sample_photo_paths()
    assert len(paths) >= 6 and all(p.suffix == ".jpg" for p in paths)
    assert all(min(images.decode_image(p.read_bytes(), str(p)).shape[:2]) == 512 for p in paths)
    assert (samples.SAMPLES_DIR / "LICENSE.md").is_file()
    monkeypatch.setattr(samples, "SAMPLES_DIR", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="built-in sample photos not found at .*gone"):
        samples.sample_photo_paths()


# --- TFDS ------------------------------------------------------------------------------


def test_tfds_places365_through_mock_data():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    with tfds.testing.mock_data(num_examples=5):
        source = sources.TfdsSource("places365_small", split="train")
        assert len(source) == 5
        record = source[3]
    assert record["image"].shape == (256, 256, 3) and record["image"].dtype == np.uint8
    assert record["name"].startswith("places365_small/train[3]")
    assert images.decode_image(record["image"], record["name"]).shape == (256, 256, 3)


def test_tfds_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"'no_such_set' split 'train' is not prepared in {tmp_path}"):
        sources.TfdsSource("no_such_set", data_dir=str(tmp_path))


def test_build_tfds_packs_a_folder(tmp_path):
    zoo = write_image_zoo(tmp_path / "zoo")
    build_tfds.main(["--input", str(zoo), "--name", "zoo_images", "--data-dir", str(tmp_path / "tfds")])
    source = sources.TfdsSource("zoo_images", split="train", data_dir=str(tmp_path / "tfds"))
    assert len(source) == len(CONVERTED_FILES)  # the unreadable files were left out
    by_name = {}
    for i in range(len(source)):
        record = source[i]
        by_name[record["name"].split(" ", 1)[1]] = record["image"]
    assert sorted(by_name) == sorted(CONVERTED_FILES)
    for relpath, image in by_name.items():
        expected = images.decode_image((zoo / relpath).read_bytes(), relpath)
        np.testing.assert_array_equal(image, expected)


def test_build_tfds_keeps_rgb_jpeg_bytes_and_rejects_bad_names(tmp_path):
    jpeg = cv2.imencode(".jpg", GOOD)[1].tobytes()
    assert build_tfds.storable_bytes(jpeg, "x.jpg") is jpeg
    gray_png = cv2.imencode(".png", GOOD[..., 0])[1].tobytes()
    converted = build_tfds.storable_bytes(gray_png, "g.png")
    assert cv2.imdecode(np.frombuffer(converted, np.uint8), cv2.IMREAD_UNCHANGED).shape == (300, 400, 3)
    with pytest.raises(ValueError, match="must be lower snake_case"):
        build_tfds.build(tmp_path, name="Bad-Name", data_dir=tmp_path)
