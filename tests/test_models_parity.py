"""Parity of every Flax module with arrays produced by the official PyTorch LaMa code.

Fixtures are NCHW / PyTorch-keyed (tests/fixtures/README.md); tolerances follow
its "Observed float32 differences" section (float32 noise of the reference itself, times ~10).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_recipe
from fixture_arrays import generator_fixture, load, nhwc, state_dict
from lama_jax import convert
from lama_jax.models import (
    FFCBnAct, FourierUnit, NLayerDiscriminator, ResNet50Dilated, SpectralTransform, build_generator,
)


def assert_close(actual, expected_nchw, atol, name=""):
    expected = np.asarray(expected_nchw)
    if expected.ndim == 4:
        expected = expected.transpose(0, 2, 3, 1)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected).max()
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol:.1g}"


def convert_module(module, sd, example_input, context=(), *args):
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), example_input, *args, train=False))
    return convert.torch_to_flax(sd, shapes, convert.submodule_key_fn(context))


@pytest.mark.parametrize("fft_impl", ["fft", "dft"])
@pytest.mark.parametrize("suffix", ["", "_odd"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fourier_unit(fixtures_dir, mode, suffix, fft_impl):
    f = load(fixtures_dir, "fourier_unit")
    x = nhwc(f[f"input/x{suffix}"])
    module = FourierUnit(8, fft_impl=fft_impl)
    variables = convert_module(module, state_dict(f), x)
    out, state = module.apply(
        variables, x, train=mode == "train", mutable=["batch_stats", "intermediates"], capture_intermediates=True
    )
    prefix = f"{mode}{suffix}"
    assert_close(state["intermediates"]["conv_layer"]["__call__"][0], f[f"{prefix}/conv_layer/out"], 1e-5, "conv")
    assert_close(state["intermediates"]["bn"]["__call__"][0], f[f"{prefix}/bn/out"], 1e-5, "bn")
    assert_close(out, f[f"{prefix}/output"], 1e-5, "output")
    if mode == "train":
        sd_after = {**state_dict(f), **state_dict(f, f"{prefix}/state_after/")}
        expected = convert_module(module, sd_after, x)["batch_stats"]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state["batch_stats"], expected)


@pytest.mark.parametrize("lfu", [False, True])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_spectral_transform(fixtures_dir, mode, lfu):
    f = load(fixtures_dir, "spectral_transform_lfu" if lfu else "spectral_transform")
    x = nhwc(f["input/x"])
    module = SpectralTransform(16, enable_lfu=lfu)
    variables = convert_module(module, state_dict(f), x, ("convg2g",))
    out, state = module.apply(
        variables, x, train=mode == "train", mutable=["batch_stats", "intermediates"], capture_intermediates=True
    )
    inter = state["intermediates"]
    assert_close(jax.nn.relu(inter["bn1"]["__call__"][0]), f[f"{mode}/conv1/out"], 1e-5, "conv1")
    assert_close(inter["fu"]["__call__"][0], f[f"{mode}/fu/out"], 1e-5, "fu")
    if lfu:
        assert_close(inter["lfu"]["__call__"][0], f[f"{mode}/lfu/out"], 1e-5, "lfu")
    assert_close(out, f[f"{mode}/output"], 1e-5, "output")
    if mode == "train":
        sd_after = {**state_dict(f), **state_dict(f, "train/state_after/")}
        expected = convert_module(module, sd_after, x, ("convg2g",))["batch_stats"]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state["batch_stats"], expected)


def test_lfu_rejects_non_square_maps():
    module = SpectralTransform(16, enable_lfu=True)
    with pytest.raises(ValueError, match="square map with an even side, got 8x12"):
        module.init(jax.random.key(0), jnp.zeros((1, 8, 12, 16)), train=False)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_ffc_bn_act_resnet_block_conv(fixtures_dir, mode):
    f = load(fixtures_dir, "ffc_bn_act")
    streams = (nhwc(f["input/x_l"]), nhwc(f["input/x_g"]))
    module = FFCBnAct(32, 0.75, 0.75, 3, padding=1)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), streams, train=False))
    variables = convert.torch_to_flax(state_dict(f), shapes, convert.submodule_key_fn())
    (out_l, out_g), state = module.apply(
        variables, streams, train=mode == "train", mutable=["batch_stats", "intermediates"],
        capture_intermediates=True,
    )
    ffc = state["intermediates"]["ffc"]
    for path in ("convl2l", "convg2l", "convl2g", "convg2g"):
        assert_close(ffc[path]["__call__"][0], f[f"{mode}/ffc.{path}/out"], 1e-5, path)
    assert_close(state["intermediates"]["bn_g"]["__call__"][0], f[f"{mode}/bn_g/out"], 1e-5, "bn_g")
    assert_close(out_l, f[f"{mode}/output_l"], 1e-5, "output_l")
    assert_close(out_g, f[f"{mode}/output_g"], 1e-5, "output_g")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_ffc_bn_act_downsampling_births_global_stream(fixtures_dir, mode):
    f = load(fixtures_dir, "ffc_bn_act_down")
    streams = (nhwc(f["input/x"]), None)
    module = FFCBnAct(32, 0.0, 0.75, 3, strides=2, padding=1)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), streams, train=False))
    assert set(shapes["params"]["ffc"]) == {"convl2l", "convl2g"}  # no parameters for absent paths
    variables = convert.torch_to_flax(state_dict(f), shapes, convert.submodule_key_fn())
    (out_l, out_g), _ = module.apply(variables, streams, train=mode == "train", mutable=["batch_stats"])
    assert_close(out_l, f[f"{mode}/output_l"], 1e-5, "output_l")
    assert_close(out_g, f[f"{mode}/output_g"], 1e-5, "output_g")


@pytest.mark.parametrize("fft_impl", ["fft", "dft"])  # "dft": the exported StableHLO's Fourier units
def test_generator_eval_outputs_and_intermediates(fixtures_dir, fft_impl):
    f, _, generator, variables = generator_fixture(fixtures_dir, "generator_ffc_small", fft_impl)
    out, state = generator.apply(
        variables, nhwc(f["input/x"]), train=False, mutable=["intermediates"], capture_intermediates=True
    )
    assert_close(out, f["eval/output"], 2e-5, "output")
    inter = state["intermediates"]
    assert_close(inter["init"]["__call__"][0][0], f["eval/model.1_l"], 1e-4, "model.1")
    assert_close(inter["down_0"]["__call__"][0][0], f["eval/model.2_l"], 1e-4, "model.2")
    assert_close(inter["down_2"]["__call__"][0][0], f["eval/model.4_l"], 1e-4, "model.4_l")
    assert_close(inter["down_2"]["__call__"][0][1], f["eval/model.4_g"], 1e-4, "model.4_g")
    assert_close(inter["up_0"]["__call__"][0], f["eval/model.8"], 1e-4, "model.8 (ConvTranspose)")
    assert_close(inter["up_bn_2"]["__call__"][0], f["eval/model.15"], 1e-4, "model.15")
    assert_close(inter["final"]["__call__"][0], f["eval/model.18"], 1e-4, "model.18 (pre-sigmoid)")


def test_generator_train_mode_outputs_and_running_stats(fixtures_dir):
    f, cfg, generator, variables = generator_fixture(fixtures_dir, "generator_ffc_small")
    out, updated = generator.apply(variables, nhwc(f["input/x"]), train=True, mutable=["batch_stats"])
    assert_close(out, f["train/output"], 2e-5, "train output")
    sd_after = {**state_dict(f), **state_dict(f, "train/state_after/")}
    expected = convert.convert_generator(sd_after, cfg)["batch_stats"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), updated["batch_stats"], expected)
    # The fixture's BN state is randomised: a port confusing eval and train, or mean and var, fails.
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), updated["batch_stats"],
                         variables["batch_stats"])
    assert min(jax.tree.leaves(moved)) > 0


@pytest.mark.parametrize("fft_impl", ["fft", "dft"])
@pytest.mark.parametrize("name, overrides", [
    ("generator_ffc_small_lfu", dict(enable_lfu=True)),
    ("generator_ffc_small_nonsquare", {}),
])
def test_generator_variants(fixtures_dir, name, overrides, fft_impl):
    f, cfg, generator, variables = generator_fixture(fixtures_dir, name, fft_impl, **overrides)
    x = nhwc(f["input/x"])
    out, state = generator.apply(
        variables, x, train=False, mutable=["intermediates"], capture_intermediates=True
    )
    assert_close(out, f["eval/output"], 2e-5, "eval output")
    assert_close(state["intermediates"]["down_2"]["__call__"][0][1], f["eval/model.4_g"], 1e-4, "model.4_g")
    out, updated = generator.apply(variables, x, train=True, mutable=["batch_stats"])
    assert_close(out, f["train/output"], 2e-5, "train output")
    sd_after = {**state_dict(f), **state_dict(f, "train/state_after/")}
    expected = convert.convert_generator(sd_after, cfg)["batch_stats"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), updated["batch_stats"], expected)


def test_generator_gradients(fixtures_dir):
    f, cfg, generator, variables = generator_fixture(fixtures_dir, "generator_ffc_small")
    probe = nhwc(f["input/probe"])

    def objective(params, x):
        out, _ = generator.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out * probe)

    grad_params, grad_x = jax.grad(objective, argnums=(0, 1))(variables["params"], nhwc(f["input/x"]))
    expected_x = f["train/grad/input"]
    assert_close(grad_x, expected_x, 1e-4 * np.abs(expected_x).max(), "d/dx")

    grads = {k[len("train/grad/"):]: v for k, v in f.items() if k.startswith("train/grad/model.")}
    # Gradients have the parameters' layout: convert them like parameters (BN stats are not needed).
    shapes = convert.abstract_variables(generator, (1, 64, 64, 4))
    expected = convert.torch_to_flax(
        grads, {"params": shapes["params"]}, convert.generator_key_fn(3, cfg["n_blocks"]), stacked_prefix="blocks"
    )["params"]
    # The biases of ConvTransposes feeding a batch-statistics BN have exactly zero gradient;
    # the fixture holds float noise there (fixtures README, "Generator fixtures"), so they get an absolute
    # tolerance.
    for path, actual in jax.tree_util.tree_leaves_with_path(grad_params):
        want = expected
        for p in path:
            want = want[p.key]
        name = "/".join(p.key for p in path)
        scale = np.abs(want).max()
        tol = 1e-4 if name.startswith("up_") and name.endswith("bias") else 1e-4 * scale
        err = np.abs(np.asarray(actual) - want).max()
        assert err <= tol, f"gradient {name}: max abs error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_discriminator_logits_and_features(fixtures_dir, mode):
    f = load(fixtures_dir, "nlayer_discriminator")
    cfg = dict(ndf=16, n_layers=4)
    variables = convert.convert_discriminator(state_dict(f), cfg)
    (logits, features), updated = NLayerDiscriminator(**cfg).apply(
        variables, nhwc(f["input/x"]), train=mode == "train", mutable=["batch_stats"]
    )
    assert_close(logits, f[f"{mode}/logits"], 2e-5, "logits")
    for k, feat in enumerate(features):
        assert_close(feat, f[f"{mode}/feat{k}"], 2e-5, f"feat{k}")
    if mode == "train":
        sd_after = {**state_dict(f), **state_dict(f, "train/state_after/")}
        expected = convert.convert_discriminator(sd_after, cfg)["batch_stats"]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), updated["batch_stats"], expected)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_resnet50_dilated_features(fixtures_dir, mode):
    f = load(fixtures_dir, "resnet_pl")
    variables = convert.convert_resnet50_dilated(resnet_recipe.resnet_pl_state_dict())
    mean = jnp.array([0.485, 0.456, 0.406])
    std = jnp.array([0.229, 0.224, 0.225])
    target = (nhwc(f["input/target"]) - mean) / std
    features, _ = ResNet50Dilated().apply(variables, target, train=mode == "train", mutable=["batch_stats"])
    for k, feat in enumerate(features):
        expected = f[f"{mode}/target_feat{k}"]
        tol = (1e-3 if mode == "train" else 1e-5) * np.abs(expected).max()
        assert_close(feat, expected, tol, f"layer{k + 1}")


def count_params(module, shape):
    variables = convert.abstract_variables(module, shape)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("config_name, expected", [("big_lama", 50_975_875), ("lama_fourier", 27_048_835)])
def test_generator_parameter_counts(config_name, expected):
    import importlib

    config = importlib.import_module(f"lama_jax.configs.{config_name}").get_config()
    assert count_params(build_generator(config.model.generator), (1, 64, 64, 4)) == expected


def test_discriminator_and_resnet_parameter_counts():
    assert count_params(NLayerDiscriminator(ndf=64, n_layers=4), (1, 64, 64, 3)) == 6_962_369
    assert count_params(ResNet50Dilated(), (1, 64, 64, 3)) == 23_631_808


def test_generator_front_then_rear_equals_full(fixtures_dir):
    f, _, generator, variables = generator_fixture(fixtures_dir, "generator_ffc_small")
    x = nhwc(f["input/x"])
    streams = generator.apply(variables, x, train=False, stage="front")
    assert [s.shape for s in streams] == [(2, 8, 8, 32), (2, 8, 8, 96)]
    np.testing.assert_allclose(
        generator.apply(variables, streams, train=False, stage="rear"),
        generator.apply(variables, x, train=False), atol=1e-6,
    )
