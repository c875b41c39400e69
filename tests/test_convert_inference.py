"""PyTorch checkpoint -> model checkpoint -> Inpainter, end to end on the fixture generator."""

import numpy as np
import pytest
import torch

from lama_jax import checkpoint, convert
from lama_jax.inference import Inpainter, pad_to_modulo

SMALL_CONFIG = """
from lama_jax.configs.common import lama_config

def get_config(arg=None):
    config = lama_config()
    config.model.generator.update(ngf=16, n_blocks=2)
    config.model.discriminator.update(ndf=16)
    return config
"""


def fixture_state_dict(fixtures_dir, name):
    with np.load(fixtures_dir / f"{name}.npz") as f:
        return {k[len("state_dict/"):]: f[k] for k in f.files if k.startswith("state_dict/")}


@pytest.fixture()
def small_config(tmp_path):
    path = tmp_path / "small.py"
    path.write_text(SMALL_CONFIG)
    return path


def write_lightning_checkpoint(path, fixtures_dir, with_discriminator=True, extra=None):
    state = {f"generator.{k}": torch.from_numpy(np.array(v)) for k, v in
             fixture_state_dict(fixtures_dir, "generator_ffc_small").items()}
    if with_discriminator:
        state.update({f"discriminator.{k}": torch.from_numpy(np.array(v)) for k, v in
                      fixture_state_dict(fixtures_dir, "nlayer_discriminator").items()})
    state["val_evaluator.scores.ssim.window"] = torch.ones(1, 1, 11, 11)  # ignored, like strict=False
    state.update(extra or {})
    torch.save({"state_dict": state, "epoch": 7, "hyper_parameters": {"lr": 1e-3}}, path)


def test_convert_cli_then_inpainter_reproduces_the_fixture(tmp_path, fixtures_dir, small_config, capsys):
    ckpt = tmp_path / "best.ckpt"
    write_lightning_checkpoint(ckpt, fixtures_dir)
    out_dir = tmp_path / "converted"
    assert convert.main(["--config", str(small_config), "--torch-checkpoint", str(ckpt), "--output", str(out_dir)]) == 0
    assert "generator: " in capsys.readouterr().out

    model = checkpoint.load_model(out_dir)
    assert sorted(model.variables) == ["discriminator", "generator"]
    assert model.model_config["generator"]["ngf"] == 16

    with np.load(fixtures_dir / "generator_ffc_small.npz") as f:
        image = f["input/image"].transpose(0, 2, 3, 1)
        mask = f["input/mask"].transpose(0, 2, 3, 1)
        prediction = f["eval/output"].transpose(0, 2, 3, 1)
    expected = mask * prediction + (1 - mask) * image
    inpainter = Inpainter.from_checkpoint(out_dir)
    result = inpainter(image, mask)
    assert result.shape == image.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=2e-5)
    # Known pixels come back unchanged.
    np.testing.assert_array_equal(result[mask[..., 0] == 0], image[mask[..., 0] == 0])


def test_convert_reports_missing_and_unexpected_keys_by_name(tmp_path, fixtures_dir):
    state = fixture_state_dict(fixtures_dir, "generator_ffc_small")
    del state["model.18.bias"]
    state["model.99.weight"] = np.zeros(3, np.float32)
    cfg = dict(ngf=16, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_generator(state, cfg)
    assert "missing keys (1): model.18.bias" in str(err.value)
    assert "unexpected keys (1): model.99.weight" in str(err.value)


def test_convert_shape_mismatch_names_key_and_both_shapes(tmp_path, fixtures_dir, small_config, capsys):
    ckpt = tmp_path / "wrong.ckpt"
    bad = {"generator.model.1.ffc.convl2l.weight": torch.zeros(16, 4, 5, 5)}
    write_lightning_checkpoint(ckpt, fixtures_dir, with_discriminator=False, extra=bad)
    status = convert.main(["--config", str(small_config), "--torch-checkpoint", str(ckpt),
                           "--output", str(tmp_path / "o")])
    message = capsys.readouterr().err
    assert status == 1 and message.startswith("error: ") and message.count("\n") == 1
    assert "model.1.ffc.convl2l.weight" in message and "(16, 4, 5, 5)" in message and "(16, 4, 7, 7)" in message
    assert not (tmp_path / "o").exists()


def test_convert_plain_state_dict_without_prefix(tmp_path, fixtures_dir):
    path = tmp_path / "generator.pth"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in
                fixture_state_dict(fixtures_dir, "generator_ffc_small").items()}, path)
    cfg = {"generator": dict(ngf=16, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)}
    networks = convert.convert_checkpoint(path, cfg)
    assert list(networks) == ["generator"]


def test_inpainter_pads_any_size_and_compiles_once_per_padded_shape(tmp_path, fixtures_dir):
    cfg = dict(ngf=16, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)
    variables = convert.convert_generator(fixture_state_dict(fixtures_dir, "generator_ffc_small"), cfg)
    inpainter = Inpainter(cfg, variables)
    rng = np.random.default_rng(0)
    for height, width in [(37, 50), (40, 49), (33, 56)]:  # all pad to 40x56
        image = rng.uniform(size=(1, height, width, 3)).astype(np.float32)
        mask = np.zeros((1, height, width, 1), np.float32)
        mask[:, 5:20, 10:30] = 0.4  # any value > 0 is a hole
        out = inpainter(image, mask)
        assert out.shape == image.shape
        np.testing.assert_array_equal(out[:, 25:], image[:, 25:])
        assert np.abs(out[:, 5:20, 10:30] - image[:, 5:20, 10:30]).max() > 1e-3
    assert inpainter.compiled_shapes() == 1
    inpainter(np.zeros((1, 64, 64, 3), np.float32), np.zeros((1, 64, 64, 1), np.float32))
    assert inpainter.compiled_shapes() == 2


def test_inpainter_takes_uint8_as_0_to_255_and_refuses_other_ranges(fixtures_dir):
    cfg = dict(ngf=16, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)
    inpainter = Inpainter(cfg, convert.convert_generator(fixture_state_dict(fixtures_dir, "generator_ffc_small"), cfg))
    pixels = np.random.default_rng(0).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    mask = np.zeros((1, 16, 24, 1), np.uint8)
    mask[:, 4:12, 4:12] = 255
    from_uint8 = inpainter(pixels, mask)
    assert from_uint8.dtype == np.float32 and 0 <= from_uint8.min() and from_uint8.max() <= 1
    np.testing.assert_array_equal(from_uint8, inpainter(pixels / np.float32(255), mask / np.float32(255)))
    with pytest.raises(ValueError, match=r"^image must be uint8 or float in \[0, 1\], got float32 values in "
                                         r"\[\d+, \d+\]; divide 0-255 values by 255$"):
        inpainter(pixels.astype(np.float32), mask)
    with pytest.raises(ValueError, match=r"got float64 values in \[-0.5, 0.5\]$"):
        inpainter(pixels / 255.0 - 0.5, mask)
    with pytest.raises(ValueError, match=r"got dtype int64$"):
        inpainter(pixels.astype(np.int64), mask)


def test_pad_to_modulo_is_symmetric_bottom_right():
    x = np.arange(10, dtype=np.float32).reshape(1, 1, 10, 1)
    padded = pad_to_modulo(x)
    assert padded.shape == (1, 8, 16, 1)
    np.testing.assert_array_equal(padded[0, 0, 10:, 0], [9, 8, 7, 6, 5, 4])  # edge pixel repeated


@pytest.mark.parametrize("image_shape, mask_shape, message", [
    ((64, 64, 3), (1, 64, 64, 1), "image must be"),
    ((1, 64, 64, 3), (1, 64, 32, 1), "mask must be"),
    ((1, 8, 64, 3), (1, 8, 64, 1), "at least 16x16"),
])
def test_inpainter_rejects_bad_shapes(fixtures_dir, image_shape, mask_shape, message):
    cfg = dict(ngf=16, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)
    variables = convert.convert_generator(fixture_state_dict(fixtures_dir, "generator_ffc_small"), cfg)
    with pytest.raises(ValueError, match=message):
        Inpainter(cfg, variables)(np.zeros(image_shape, np.float32), np.zeros(mask_shape, np.float32))


def test_load_model_on_a_plain_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="lama_jax.convert"):
        checkpoint.load_model(tmp_path)
