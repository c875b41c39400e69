"""Mask generators: LaMa's stroke and box semantics by hand, preset statistics, registry behaviour."""

import math
import pickle

import cv2
import numpy as np
import pytest

from lama_jax.data import masks


def _rngs(n, salt=0):
    return (np.random.default_rng([salt, i]) for i in range(n))


# --- irregular strokes ---------------------------------------------------------


def test_single_segment_matches_hand_drawn_line():
    stroke = masks.Stroke(x=40, y=30, segments=((2.01, 60, 9),))
    mask = masks.draw_strokes([stroke], 128, 128)
    end = (int(40 + 60 * math.sin(2.01)), int(30 + 60 * math.cos(2.01)))  # truncation toward zero
    expected = np.zeros((128, 128), np.uint8)
    cv2.line(expected, (40, 30), end, 1, 9)
    np.testing.assert_array_equal(mask, expected.astype(np.float32))
    assert mask.dtype == np.float32


def test_segments_chain_and_clip_to_canvas_edge_plus_one():
    # The first segment leaves the canvas: its end is clipped to x = W (not W - 1),
    # and the second segment starts from that clipped point.
    stroke = masks.Stroke(x=60, y=10, segments=((math.pi / 2, 100, 5), (math.pi, 20, 5)))
    mask = masks.draw_strokes([stroke], 64, 64)
    expected = np.zeros((64, 64), np.uint8)
    cv2.line(expected, (60, 10), (64, int(10 + 100 * math.cos(math.pi / 2))), 1, 5)
    cv2.line(expected, (64, 10), (int(64 + 20 * math.sin(math.pi)), int(10 + 20 * math.cos(math.pi))), 1, 5)
    np.testing.assert_array_equal(mask, expected.astype(np.float32))


def test_irregular_draws_follow_lama_ranges():
    gen = masks.IrregularMaskGenerator(max_angle=4, max_len=7, max_width=3, min_times=2, max_times=4)
    counts, seg_counts, angles, lengths, widths = set(), set(), {0: set(), 1: set()}, set(), set()
    for rng in _rngs(3000):
        strokes = gen.sample_strokes(rng, 64, 64)
        counts.add(len(strokes))
        for i, stroke in enumerate(strokes):
            assert 0 <= stroke.x < 64 and 0 <= stroke.y < 64
            seg_counts.add(len(stroke.segments))
            for angle, length, width in stroke.segments:
                angles[i % 2].add(round(angle, 6))
                lengths.add(length)
                widths.add(width)
    assert counts == {2, 3, 4, 5}  # off-by-one: up to max_times + 1
    assert seg_counts == {1, 2, 3, 4, 5}
    base = {0.01, 1.01, 2.01, 3.01}
    assert angles[1] == base  # odd strokes: 0.01 + randint(max_angle) radians
    assert angles[0] == {round(2 * 3.1415926 - a, 6) for a in base}  # even strokes mirrored
    assert lengths == set(range(10, 17))
    assert widths == {5, 6, 7}


# --- boxes -------------------------------------------------------------------------


def test_box_sides_are_inclusive_and_respect_margins():
    gen = masks.BoxMaskGenerator(margin=5, bbox_min_size=10, bbox_max_size=13, min_times=1, max_times=3)
    sides, counts = set(), set()
    for rng in _rngs(2000):
        boxes = gen.sample_boxes(rng, 40, 50)
        counts.add(len(boxes))
        for x, y, w, h in boxes:
            sides.update((w, h))
            assert x >= 5 and y >= 5 and x + w <= 50 - 5 and y + h <= 40 - 5
    assert sides == {10, 11, 12, 13}  # bbox_max_size itself is reachable
    assert counts == {1, 2, 3}


def test_box_sides_are_limited_by_the_canvas():
    gen = masks.BoxMaskGenerator(margin=10, bbox_min_size=30, bbox_max_size=150, min_times=4, max_times=4)
    largest = max(int(gen.sample_boxes(rng, 64, 200)[:, 3].max()) for rng in _rngs(300))
    assert largest == 64 - 2 * 10 - 1  # side < H - 2·margin, as LaMa's randint bound


def test_draw_boxes_fills_rectangles():
    mask = masks.draw_boxes(np.array([[2, 3, 4, 5]]), 12, 10)
    assert mask.sum() == 20 and mask[3:8, 2:6].all()


def test_box_too_large_for_canvas_is_a_clear_error():
    with pytest.raises(ValueError, match="do not fit a 40x40 canvas"):
        masks.get("box")(np.random.default_rng(0), 40, 40)


# --- mixed, invert, outpainting, segmentation -------------------------------------


def test_mixed_probabilities_are_normalised():
    gen = masks.get("thick_256")
    np.testing.assert_allclose(gen.probas, [1 / 1.3, 0.3 / 1.3])
    assert [type(g).__name__ for g in gen.generators] == ["IrregularMaskGenerator", "BoxMaskGenerator"]
    assert masks.get("thin_256").generators == (masks.IrregularMaskGenerator(4, 40, 10, 4, 50),)


def test_invert_replaces_mask_by_its_complement():
    plain = masks.get("train_mixed")
    inverted = masks.get("train_mixed", invert_proba=1.0)
    for seed in range(5):
        a = plain(np.random.default_rng(seed), 64, 96)
        b = inverted(np.random.default_rng(seed), 64, 96)
        np.testing.assert_array_equal(b, 1.0 - a)


def test_outpainting_masks_are_border_strips():
    gen = masks.get("outpainting")
    for rng in _rngs(200):
        mask = gen(rng, 100, 80)
        assert mask.any()
        rows = np.flatnonzero(mask.all(axis=1))
        cols = np.flatnonzero(mask.all(axis=0))
        # Every hole pixel lies in a full row or column strip touching the border.
        strip = np.zeros_like(mask)
        strip[rows] = 1
        strip[:, cols] = 1
        np.testing.assert_array_equal(mask, strip)
        for idx, size in ((rows, 100), (cols, 80)):
            for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1):
                if run.size:
                    assert run[0] == 0 or run[-1] == size - 1
                    assert run.size <= int(0.25 * size)


def test_outpainting_rejects_all_zero_side_probabilities():
    with pytest.raises(ValueError, match="side probabilities"):
        masks.get("outpainting", left_padding_prob=0, top_padding_prob=0, right_padding_prob=0,
                  bottom_padding_prob=0)


def _label_map():
    labels = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:40] = 3  # 12.5 % of the image
    labels[40:42, 50:52] = 7  # too small (< 1 %)
    return labels


def test_segmentation_without_shift_or_dilation_is_the_object():
    gen = masks.get("segmentation", shift=False, min_dilation=0, max_dilation=0)
    mask = gen(np.random.default_rng(0), 60, 80, labels=_label_map())
    np.testing.assert_array_equal(mask, (_label_map() == 3).astype(np.float32))


def test_segmentation_shifted_and_dilated_keeps_the_object_shape():
    gen = masks.get("segmentation", min_dilation=2, max_dilation=2)
    for rng in _rngs(20):
        mask = gen(rng, 60, 80, labels=_label_map())
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        # A 20x30 box dilated by radius 2 (clipped at the image border).
        assert rows.size <= 24 and cols.size <= 34 and rows.size >= 22 and cols.size >= 32
        assert mask.sum() > 20 * 30


def test_segmentation_falls_back_to_strokes_and_needs_labels():
    gen = masks.get("segmentation")
    empty = np.zeros((64, 64), np.uint16)
    assert gen(np.random.default_rng(1), 64, 64, labels=empty).any()
    with pytest.raises(ValueError, match="need a label map"):
        gen(np.random.default_rng(1), 64, 64)
    with pytest.raises(ValueError, match=r"label map shape \(64, 64\) does not match"):
        gen(np.random.default_rng(1), 32, 64, labels=empty)


# --- registry ---------------------------------------------------------------------------


def test_registry_names_and_errors():
    required = {"train_mixed", "thin_256", "medium_256", "thick_256", "thin_512", "medium_512",
                "thick_512", "irregular", "box", "outpainting", "segmentation"}
    assert required <= set(masks.names())
    with pytest.raises(ValueError, match="unknown mask preset 'nope'"):
        masks.get("nope")
    with pytest.raises(ValueError, match="has no option 'max_lenght'"):
        masks.get("irregular", max_lenght=3)


def test_overrides_merge_nested_kwargs():
    kwargs = masks.preset_kwargs("train_mixed", box_kwargs={"max_times": 2}, box_proba=0.5)
    assert kwargs["box_kwargs"] == dict(margin=10, bbox_min_size=30, bbox_max_size=150, min_times=1,
                                        max_times=2)
    assert kwargs["box_proba"] == 0.5
    assert masks.preset_kwargs("train_mixed")["box_kwargs"]["max_times"] == 4  # preset untouched


@pytest.mark.parametrize("name", ["train_mixed", "thin_512", "outpainting", "segmentation"])
def test_generators_are_pure_and_picklable(name):
    gen = pickle.loads(pickle.dumps(masks.get(name)))
    labels = np.zeros((96, 128), np.uint16)
    labels[20:60, 30:90] = 1
    a = gen(np.random.default_rng(3), 96, 128, labels=labels)
    b = masks.get(name)(np.random.default_rng(3), 96, 128, labels=labels)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (96, 128) and a.dtype == np.float32
    assert set(np.unique(a)) <= {0.0, 1.0}


# --- statistics over 2,000 seeded masks -------------------------------------------------

# (mean, 10 %, 50 %, 90 % quantiles) of the hole fraction over masks seeded
# default_rng([2024, i]), i < 2000, at the preset's size (256 unless _512).
GOLDEN_STATS = {
    "train_mixed": (0.3505, 0.1068, 0.3166, 0.6496),
    "thin_256": (0.2977, 0.1123, 0.3085, 0.4660),
    "medium_256": (0.2441, 0.0350, 0.2667, 0.4019),
    "thick_256": (0.4025, 0.1166, 0.3851, 0.7130),
    "thin_512": (0.2965, 0.1000, 0.3030, 0.4713),
    "medium_512": (0.3089, 0.0763, 0.3249, 0.5147),
    "thick_512": (0.4575, 0.1231, 0.4552, 0.8037),
    "irregular": (0.4579, 0.1607, 0.4669, 0.7316),
    "box": (0.2444, 0.0877, 0.2466, 0.3923),
    "outpainting": (0.2720, 0.0977, 0.2669, 0.4466),
}

# Mean hole fraction of upstream LaMa's PyTorch mask generators at 256x256, measured by
# running them on 2,000 masks each.
UPSTREAM_MEANS = {"train_mixed": 0.34, "thin_256": 0.30, "medium_256": 0.25, "thick_256": 0.41}


@pytest.mark.parametrize("name", sorted(GOLDEN_STATS))
def test_preset_area_statistics_are_stable(name):
    size = 512 if name.endswith("512") else 256
    gen = masks.get(name)
    fractions = np.array([masks.hole_fraction(gen(np.random.default_rng([2024, i]), size, size))
                          for i in range(2000)])
    stats = (fractions.mean(), *np.quantile(fractions, [0.1, 0.5, 0.9]))
    np.testing.assert_allclose(stats, GOLDEN_STATS[name], atol=2e-3)
    if name in UPSTREAM_MEANS:
        # Same distribution as upstream: the means agree within sampling error of both runs.
        assert abs(stats[0] - UPSTREAM_MEANS[name]) < 0.02
