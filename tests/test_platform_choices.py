"""Per-platform program choices: resolved as documented, and the same arithmetic either way."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lama_jax.configs import tiny
from lama_jax.models import build_discriminator, build_generator
from lama_jax.models import platform as platform_choices


def test_auto_choices_per_platform():
    cfg = tiny.get_config().model.generator
    cpu, gpu, tpu = (build_generator(cfg, platform=p) for p in ("cpu", "cuda", "tpu"))
    assert (cpu.unroll_blocks, cpu.fft_impl) == (True, "fft")
    assert (gpu.unroll_blocks, gpu.fft_impl) == (True, "fft")
    assert (tpu.unroll_blocks, tpu.fft_impl) == (False, "dft")
    explicit = dict(cfg.to_dict(), block_loop="scan", fft_impl="dft")
    cpu_scan = build_generator(explicit, platform="cpu")
    assert (cpu_scan.unroll_blocks, cpu_scan.fft_impl) == (False, "dft")
    # A model config written before these keys existed (converted checkpoints) means "auto".
    legacy = {k: v for k, v in cfg.to_dict().items() if k not in platform_choices.PROGRAM_KEYS}
    assert build_generator(legacy, platform="tpu").fft_impl == "dft"
    assert build_generator(legacy, platform="cpu", fft_impl="dft").fft_impl == "dft"  # export's override


def test_unknown_choices_name_the_key():
    with pytest.raises(ValueError, match=r"model.generator.block_loop = 'loop'; expected one of \('auto', "):
        platform_choices.unroll_blocks("loop", "cpu")
    with pytest.raises(ValueError, match=r"model.generator.fft_impl = 'cufft'"):
        platform_choices.fft_impl("cufft", "cpu")


def test_architecture_ignores_program_keys():
    cfg = tiny.get_config().model.generator.to_dict()
    legacy = {k: v for k, v in cfg.items() if k not in platform_choices.PROGRAM_KEYS}
    assert platform_choices.architecture(dict(cfg, block_loop="scan")) == platform_choices.architecture(legacy)
    assert platform_choices.architecture(dict(cfg, ngf=16)) != platform_choices.architecture(cfg)


def test_remat_blocks_is_checked_and_off_by_default():
    cfg = tiny.get_config().model.generator
    assert cfg.remat_blocks is False and build_generator(cfg, platform="tpu").remat_blocks is False
    assert build_generator(dict(cfg.to_dict(), remat_blocks=True), platform="cpu").remat_blocks is True
    with pytest.raises(ValueError, match=r"model.generator.remat_blocks = 'yes'; expected True or False"):
        platform_choices.remat_blocks("yes")


def test_discriminator_stride2_input_grad_by_device_kind():
    cfg = tiny.get_config().model.discriminator
    assert cfg.stride2_input_grad == "auto"
    by_kind = {kind: build_discriminator(cfg, device_kind=kind).tpu_phase_input_grad
               for kind in ("TPU v4", "TPU v5", "TPU v5 lite", "TPU v6 lite", "cpu", None)}
    assert by_kind == {"TPU v4": True, "TPU v5": True, "TPU v5 lite": False, "TPU v6 lite": False, "cpu": False,
                       None: False}
    assert build_discriminator(dict(cfg.to_dict(), stride2_input_grad="phases")).tpu_phase_input_grad is True
    assert build_discriminator(dict(cfg.to_dict(), stride2_input_grad="xla"), device_kind="TPU v4"
                               ).tpu_phase_input_grad is False
    legacy = {k: v for k, v in cfg.to_dict().items() if k not in platform_choices.PROGRAM_KEYS}
    assert build_discriminator(legacy, device_kind="TPU v4").tpu_phase_input_grad is True
    with pytest.raises(ValueError, match=r"model.discriminator.stride2_input_grad = 'dilated'; expected one of"):
        platform_choices.tpu_phase_input_grad("dilated", "TPU v4")


@pytest.mark.parametrize("second", [dict(block_loop="scan"), dict(block_loop="scan", remat_blocks=True),
                                    dict(block_loop="unrolled", remat_blocks=True)],
                         ids=["scan", "scan-remat", "unrolled-remat"])
def test_blocks_as_a_loop_or_rematerialised_equal_the_unrolled_blocks_with_gradients(second):
    cfg = dict(tiny.get_config().model.generator.to_dict(), n_blocks=2)
    unrolled = build_generator(dict(cfg, block_loop="unrolled"), platform="cpu")
    scanned = build_generator(dict(cfg, **second), platform="cpu")
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 4))
    variables = unrolled.init(jax.random.key(1), x, train=False)

    def loss(module, params):
        out, stats = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                  mutable=["batch_stats"])
        return jnp.sum(out**2), (out, stats)

    (_, (out_u, stats_u)), grads_u = jax.value_and_grad(lambda p: loss(unrolled, p), has_aux=True)(variables["params"])
    (_, (out_s, stats_s)), grads_s = jax.value_and_grad(lambda p: loss(scanned, p), has_aux=True)(variables["params"])
    np.testing.assert_allclose(out_s, out_u, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves((stats_s, grads_s)), jax.tree.leaves((stats_u, grads_u))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
