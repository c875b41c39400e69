"""Where the train step's compile time goes: each part of the big-lama step lowered and compiled alone.

    python benchmarks/compile_parts.py --topology v5e:2x2 --per-device-batch 15 --json
    python benchmarks/compile_parts.py --topology local --parts generator_step,train_step --json

Parts (the pieces `lama_jax.train_step.LamaSteps.train_step` is made of, each jitted on the same
data-parallel mesh from abstract inputs, as `lama_jax.aot` does for the whole step):

    generator_forward   eval-mode G (the predict function)
    generator_rerun     train-mode G forward (the reference order's second G pass)
    generator_step      G forward+backward with D on real and fake and the HRF perceptual loss
    discriminator_step  D forward+backward on real (with R1's double backward) and on the fake
    hrf_encoder         the ResNet-50 features of one batch and their gradient w.r.t. the input
    train_step          the whole iteration

`--config.key=value` overrides apply (e.g. `--config.train.compute_dtype=bfloat16`,
`--config.model.generator.block_loop=unrolled` to compare the loop choice).
"""

import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's lama_jax, not an installed one
from lama_jax import aot, config_loader, losses, train_checkpoint, train_step  # noqa: E402

PARTS = ("generator_forward", "generator_rerun", "generator_step", "discriminator_step", "hrf_encoder",
         "train_step")

_CONFIG = config_flags.DEFINE_config_file("config", config_loader.resolve_spec("big_lama"),
                                          "Experiment config: a packaged name or a file.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "local", f"Where to compile: {aot.TOPOLOGY_EXAMPLES}.")
_PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", 15, "Images per device.")
_SIZE = flags.DEFINE_integer("size", 256, "Crop side.")
_PARTS = flags.DEFINE_list("parts", list(PARTS), f"Which of {', '.join(PARTS)}.")
_JSON = flags.DEFINE_bool("json", False, "One JSON object.")


def part_functions(config, mesh):
    """{part: (function, takes_fake)}: each part's function of (state, batch[, fake])."""
    steps = train_step.steps_for_mesh(config, mesh)
    rngs = lambda state: {"dropout": jax.random.wrap_key_data(state["rng"])}  # noqa: E731

    def hrf(state, batch):
        def features_loss(images):
            features = losses.resnet_pl_features(steps.resnet_pl, state["resnet_pl"], images, batch_stats=True,
                                                 groups=steps.bn_groups)
            return sum(jnp.mean(f) for f in features)
        return jax.value_and_grad(features_loss)(batch["image"])

    return {
        "generator_forward": (lambda state, batch: train_step.make_predict_fn(config, mesh)(state["generator"], batch),
                              False),
        "generator_rerun": (lambda state, batch: steps.generator_forward(state["generator"], batch, rngs(state)),
                            False),
        "generator_step": (lambda state, batch: steps.generator_step(state, batch, rngs(state))[:2], False),
        "discriminator_step": (lambda state, batch, fake: steps.discriminator_step(state, batch, fake, rngs(state)),
                               True),
        "hrf_encoder": (hrf, False),
        "train_step": (steps.train_step, False),
    }


def main(argv):
    del argv
    config = _CONFIG.value
    try:
        devices = aot.topology_devices(_TOPOLOGY.value)
    except aot.AotError as e:
        sys.exit(f"error: {e}")
    mesh = train_step.make_mesh(devices)
    global_batch = _PER_DEVICE_BATCH.value * len(devices)
    with config.unlocked():
        config.batch_size = global_batch
    state = train_checkpoint.abstract_train_state(config, mesh)
    batch = aot.abstract_batch(mesh, global_batch, _SIZE.value)
    fake = jax.ShapeDtypeStruct(batch["image"].shape, jnp.float32, sharding=batch["image"].sharding)
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    functions = part_functions(config, mesh)
    out = dict(topology=_TOPOLOGY.value, device_kind=devices[0].device_kind, devices=len(devices),
               per_device_batch=_PER_DEVICE_BATCH.value, size=_SIZE.value, jax=jax.__version__,
               compute_dtype=config.train.compute_dtype, block_loop=config.model.generator.block_loop,
               fft_impl=config.model.generator.fft_impl, parts={})
    for part in _PARTS.value:
        fn, takes_fake = functions[part]
        args = (state, batch, fake) if takes_fake else (state, batch)
        in_shardings = (replicated, sharded, sharded) if takes_fake else (replicated, sharded)
        started = time.perf_counter()
        lowered = jax.jit(fn, in_shardings=in_shardings).lower(*args)
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        done = time.perf_counter()
        report = aot.describe_compiled(compiled, device_kind=devices[0].device_kind, batch_per_step=global_batch)
        out["parts"][part] = dict(lower_s=round(lowered_at - started, 2), compile_s=round(done - lowered_at, 2),
                                  flops=report["flops"], bytes_accessed=report["bytes_accessed"],
                                  estimated_ms=(report["estimated_step_s"] or 0) * 1e3 or None,
                                  roofline_ms=(report["roofline_step_s"] or 0) * 1e3 or None,
                                  temporaries_gib=round(report.get("memory_bytes", {}).get("temporaries", 0) / aot.GIB, 3))
        print(f"{part}: lower {lowered_at - started:.1f} s, compile {done - lowered_at:.1f} s", file=sys.stderr,
              flush=True)
    print(json.dumps(out, indent=None if _JSON.value else 2))


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: flags.FLAGS(config_loader.resolve_config_argv(argv)))
