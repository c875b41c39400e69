"""The Grain pipeline: batch format, determinism across workers and restores, bad data, eval batches."""

import logging

import cv2
import grain
import numpy as np
import pytest
from PIL import Image

from lama_jax.data import gen_masks
from lama_jax.configs import common
from lama_jax.data import pipeline
from lama_jax.data import samples
from test_data_sources import BAD_FILES, write_image_zoo  # pylint: disable=g-bad-import-order


def _config(**changes):
    config = common.data_config()
    config.update(changes)
    return config


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_default_config_keys():
    config = common.data_config()
    for key in ("source", "train_dir", "tfds_name", "tfds_split", "tfds_data_dir", "transform", "crop_size",
                "mask", "mask_overrides", "num_workers", "eval_dir", "eval_size", "eval_mask"):
        assert key in config, key
    assert (config.source, config.crop_size, config.mask) == ("samples", 256, "train_mixed")
    assert config.num_workers == 0
    assert (config.eval_size, config.eval_mask, config.eval_dir) == (256, "thick_256", None)


def test_sample_photo_batches_have_the_documented_format():
    iterator = pipeline.create_train_iterator(_config(), global_batch_size=4, seed=0)
    batch = next(iterator)
    assert sorted(batch) == ["image", "mask", "skipped"]
    assert batch["image"].shape == (4, 256, 256, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (4, 256, 256, 1) and batch["mask"].dtype == np.float32
    assert batch["skipped"].shape == (4,) and batch["skipped"].dtype == np.int32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1 and batch["image"].std() > 0.05
    assert set(np.unique(batch["mask"])) == {0.0, 1.0}
    assert pipeline.skipped_files_count(batch) == 0


def test_same_seed_same_batches_and_mid_epoch_restore():
    config = _config(source="synthetic", synthetic_records=6, crop_size=64, mask="train_mixed",
                     mask_overrides={"box_kwargs": {"bbox_max_size": 40}})
    reference = _take(pipeline.create_train_iterator(config, global_batch_size=4, seed=3), 5)
    resumed = pipeline.create_train_iterator(config, global_batch_size=4, seed=3)
    _assert_same_batches(_take(resumed, 2), reference[:2])
    state = resumed.get_state()
    restored = pipeline.create_train_iterator(config, global_batch_size=4, seed=3)
    restored.set_state(state)
    _assert_same_batches(_take(restored, 3), reference[2:])
    other = next(pipeline.create_train_iterator(config, global_batch_size=4, seed=4))
    assert not np.array_equal(other["image"], reference[0]["image"])


def test_iterator_state_round_trips_through_an_orbax_checkpoint(tmp_path):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    config = _config(source="synthetic", synthetic_records=5, crop_size=64, mask="irregular")
    iterator = pipeline.create_train_iterator(config, global_batch_size=2, seed=0)
    _take(iterator, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = _take(iterator, 2)
    restored = pipeline.create_train_iterator(config, global_batch_size=2, seed=0)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
    _assert_same_batches(_take(restored, 2), expected)


def test_worker_processes_give_the_same_batches(tmp_path):
    # Also checks that skip counts travel with the batch out of worker processes.
    config = _config(source="folder", train_dir=str(write_image_zoo(tmp_path)), crop_size=64,
                     mask="irregular")
    in_process = _take(pipeline.create_train_iterator(config, global_batch_size=4, seed=1), 4)
    config.num_workers = 2
    iterator = pipeline.create_train_iterator(config, global_batch_size=4, seed=1)
    try:
        _assert_same_batches(_take(iterator, 4), in_process)
    finally:
        iterator.close()
    assert sum(pipeline.skipped_files_count(b) for b in in_process) >= len(BAD_FILES)


def test_bad_files_are_skipped_logged_and_counted(tmp_path, caplog):
    zoo = write_image_zoo(tmp_path)
    # read_threads=0: no read-ahead, so the log holds exactly the taken batches' skips.
    config = _config(source="folder", train_dir=str(zoo), crop_size=128, mask="box",
                     mask_overrides={"bbox_max_size": 60}, read_threads=0)
    iterator = pipeline.create_train_iterator(config, global_batch_size=2, seed=0)
    with caplog.at_level(logging.WARNING):
        epoch = _take(iterator, 20)  # 40 draws from 14 files visit every bad file (fixed seed)
    skipped = sum(pipeline.skipped_files_count(b) for b in epoch)
    warnings = [r.getMessage() for r in caplog.records if "Skipping unreadable" in r.getMessage()]
    assert skipped == len(warnings) >= len(BAD_FILES)
    for name in BAD_FILES:
        assert any(str(zoo / name) in w for w in warnings), name
    for batch in epoch:
        assert batch["image"].shape == (2, 128, 128, 3)  # incl. the 60x100 photo, upscaled


def test_a_folder_without_readable_images_is_a_clear_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"garbage")
    config = _config(source="folder", train_dir=str(tmp_path), max_bad_in_a_row=6)
    iterator = pipeline.create_train_iterator(config, global_batch_size=2, seed=0)
    expected = f"6 unreadable images in a row from image folder {tmp_path}"
    with pytest.raises(pipeline.NoReadableImageError, match=expected):
        next(iterator)


def test_record_order_covers_every_record_per_pass():
    order = pipeline.record_order(10, seed=0)
    copies = -(-4096 // 10)
    first_pass = np.array([order[i] for i in range(10 * copies)])
    np.testing.assert_array_equal(np.bincount(first_pass, minlength=10), copies)
    big = pipeline.record_order(5000, seed=1)
    first = [big[i] for i in range(5000)]
    assert sorted(first) == list(range(5000)) and first != list(range(5000))
    assert [big[i] for i in range(5000, 5010)] != first[:10]  # reshuffled each pass


def test_hosts_read_disjoint_rows_of_the_same_global_batches():
    """Host i of n gets rows [i*B/n, (i+1)*B/n) of each global batch that one host would read whole."""
    config = _config(source="synthetic", synthetic_records=8, crop_size=64, mask="irregular")
    one_host = _take(pipeline.create_train_iterator(config, global_batch_size=6, seed=0), 3)
    for hosts in (2, 3):
        per_host = [_take(pipeline.create_train_iterator(config, global_batch_size=6, seed=0, process_index=i,
                                                         process_count=hosts), 3) for i in range(hosts)]
        for step, whole in enumerate(one_host):
            for key in ("image", "mask"):
                np.testing.assert_array_equal(
                    np.concatenate([batches[step][key] for batches in per_host]), whole[key],
                    err_msg=f"{hosts} hosts, batch {step}, {key}")
    # Rows of one batch are different samples (positions), so the hosts' shares are disjoint.
    rows = one_host[0]["image"].reshape(6, -1)
    assert len({row.tobytes() for row in rows}) == 6
    with pytest.raises(ValueError, match="multiple of process_count 4"):
        pipeline.create_train_iterator(config, global_batch_size=6, seed=0, process_count=4)


def test_segmentation_masks_need_label_maps(tmp_path):
    config = _config(source="synthetic", synthetic_records=4, crop_size=64, mask="segmentation",
                     transform="plain")
    batch = next(pipeline.create_train_iterator(config, global_batch_size=2, seed=0))
    assert batch["mask"].shape == (2, 64, 64, 1) and batch["mask"].any()
    with pytest.raises(ValueError, match="needs label maps, which image folder .* lacks"):
        pipeline.create_train_iterator(_config(mask="segmentation"), global_batch_size=2, seed=0)


def test_folder_label_maps_via_segm_dir(tmp_path):
    (tmp_path / "img/x").mkdir(parents=True)
    (tmp_path / "seg/x").mkdir(parents=True)
    photo = cv2.imread(str(samples.sample_photo_paths()[0]))
    cv2.imwrite(str(tmp_path / "img/x/p.jpg"), photo)
    labels = np.zeros(photo.shape[:2], np.uint8)
    labels[100:300, 150:350] = 5
    cv2.imwrite(str(tmp_path / "seg/x/p.png"), labels)
    config = _config(source="folder", train_dir=str(tmp_path / "img"), segm_dir=str(tmp_path / "seg"),
                     mask="segmentation", mask_overrides={"max_object_area": 0.5})
    batch = next(pipeline.create_train_iterator(config, global_batch_size=2, seed=0))
    assert batch["mask"].any() and pipeline.skipped_files_count(batch) == 0


def test_tfds_source_through_mock_data():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    with tfds.testing.mock_data(num_examples=6):
        config = _config(source="tfds", tfds_name="places365_small", crop_size=128, mask="irregular")
        batch = next(pipeline.create_train_iterator(config, global_batch_size=3, seed=0))
    assert batch["image"].shape == (3, 128, 128, 3)


# --- evaluation ----------------------------------------------------------------------------


def test_builtin_eval_batches_are_frozen():
    config = _config(eval_size=128)
    first = list(pipeline.create_eval_batches(config, batch_size=4))
    again = list(pipeline.create_eval_batches(config, batch_size=4))
    names = [p.stem for p in samples.sample_photo_paths()]
    assert [n for b in first for n in b["name"]] == names
    assert [b["image"].shape for b in first] == [(4, 128, 128, 3), (len(names) - 4, 128, 128, 3)]
    assert len(pipeline.create_eval_batches(config, batch_size=4)) == 2
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        assert 0 < a["mask"].mean() <= 0.5 and set(np.unique(a["mask"])) == {0.0, 1.0}


def test_eval_batches_from_a_lama_folder(tmp_path):
    gen_masks.generate_mask_dataset(samples.samples_dir(), tmp_path, preset="thick_256", seed=0)
    batches = list(pipeline.create_eval_batches(_config(eval_dir=str(tmp_path)), batch_size=5))
    names = [n for b in batches for n in b["name"]]
    assert names == sorted(f"{p.stem}_crop000_mask000" for p in samples.sample_photo_paths())
    mask_png = np.asarray(Image.open(tmp_path / f"{names[0]}.png")) > 127
    np.testing.assert_array_equal(batches[0]["mask"][0, ..., 0], mask_png)
    image_png = np.asarray(Image.open(tmp_path / f"{names[0][:-len('_mask000')]}.png"))
    np.testing.assert_allclose(batches[0]["image"][0], image_png / 255.0, atol=1e-6)


def test_eval_folder_size_mismatch_names_both_files(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(tmp_path / "a_mask000.png")
    batches = pipeline.create_eval_batches(_config(eval_dir=str(tmp_path)), batch_size=1)
    with pytest.raises(ValueError, match=r"a_mask000.png is 32x16 but image .*a.png is 32x32"):
        list(batches)
