r"""Ships a trained generator: a model checkpoint plus serialized StableHLO that needs no model code.

    python -m lama_jax.export --workdir DIR [--step N | --best] --output OUT \
        [--platforms cpu,cuda,tpu] [--no-stablehlo]

reads a training checkpoint of `lama_jax.train` (the newest, step N, or the
best by validation) and writes to OUT:

    lama_jax_model.json, variables/   the generator as a model checkpoint: Inpainter.from_checkpoint(OUT),
                                      `python -m lama_jax.predict --checkpoint OUT`, init_from=OUT
    inpaint.stablehlo                 a jax.export artifact: inpainted = f(image, mask)
    stablehlo.json                    what the artifact expects, and how to call it

The artifact is LaMa's inference with the weights embedded: image (B, H, W, 3)
float32 in [0, 1] and mask (B, H, W, 1) (> 0 is a hole) in, the blended result
out. B, H and W are symbolic: one artifact serves every batch and every size
whose sides are multiples of 8 and at least 16 (for a generator with the LFU:
square, sides multiples of 16). StableHLO's `fft` op needs static lengths, so
the artifact computes the Fourier units as DFT matrix products
(`lama_jax.models.dft`, equal to the FFT to float32 rounding). Running it
needs only JAX:

    inpaint = jax.export.deserialize(open("OUT/inpaint.stablehlo", "rb").read()).call
    result = inpaint(image, mask)                   # H, W multiples of 8

    from lama_jax.export import load_stablehlo      # any size: pads and crops as Inpainter does
    result = load_stablehlo("OUT/inpaint.stablehlo")(image, mask)

This is the portable form ONNX cannot give (its exporters fail on rfft).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from lama_jax import checkpoint as model_checkpoint
from lama_jax import cli
from lama_jax import compilation_cache
from lama_jax import inference
from lama_jax import train_checkpoint
from lama_jax.models import build_generator

MANIFEST_FILE = "stablehlo.json"
ARTIFACT_FILE = "inpaint.stablehlo"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for


def inpaint_function(generator_config: Mapping[str, Any], variables) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(image, mask) -> inpainted with `variables` as constants: what the artifact computes."""
    generator = build_generator(generator_config, fft_impl="dft")
    variables = jax.tree.map(jnp.asarray, {"params": variables["params"], "batch_stats": variables["batch_stats"]})

    def inpaint(image, mask):
        mask = (mask > 0).astype(jnp.float32)
        prediction = generator.apply(variables, inference.model_input(image, mask), train=False)
        return inference.blend(prediction, image, mask)

    return inpaint


def input_size_rule(generator_config: Mapping[str, Any]) -> Tuple[str, Tuple[str, ...], str]:
    """The artifact's symbolic (batch, height, width): `jax.export` spec, constraints, and in words."""
    modulo = 2 ** generator_config["n_downsampling"]
    if generator_config["enable_lfu"]:
        # The LFU cuts the bottleneck into 2x2 quadrants and, as in the reference, needs it square.
        return f"batch, {2 * modulo}*s, {2 * modulo}*s", (), f"H == W, a multiple of {2 * modulo}"
    # The bottleneck is reflect-padded by 1, so each of its sides needs at least 2 pixels.
    return (f"batch, {modulo}*h, {modulo}*w", ("h >= 2", "w >= 2"),
            f"H and W multiples of {modulo}, at least {2 * modulo}")


def export_stablehlo(generator_config: Mapping[str, Any], variables,
                     platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
    """The inpainting function lowered for `platforms` with a symbolic batch, height and width."""
    spec, constraints, _ = input_size_rule(generator_config)
    batch, height, width = jax.export.symbolic_shape(spec, constraints=constraints)
    args = (jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32),
            jax.ShapeDtypeStruct((batch, height, width, 1), jnp.float32))
    return jax.export.export(jax.jit(inpaint_function(generator_config, variables)),
                             platforms=tuple(platforms))(*args)


def load_stablehlo(path) -> Callable[[Any, Any], np.ndarray]:
    """`inpaint(image, mask)` at any size from an artifact of `export_workdir`; no lama_jax model code runs.

    Pads to multiples of 8 at the bottom and right as `Inpainter` does, calls the
    artifact and crops back.
    """
    call = jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes())).call

    def inpaint(image, mask) -> np.ndarray:
        image, mask = inference.check_inputs(image, mask)
        height, width = image.shape[1:3]
        result = call(inference.pad_to_modulo(image), inference.pad_to_modulo(mask))
        return np.asarray(result)[:, :height, :width]

    return inpaint


def export_workdir(workdir, output, *, step: Optional[int] = None, best: bool = False, stablehlo: bool = True,
                   platforms: Sequence[str] = DEFAULT_PLATFORMS) -> Dict[str, Any]:
    """Writes the generator of a training checkpoint to `output` (see the module docstring).

    Returns the manifest, also written to OUT/stablehlo.json when `stablehlo`.
    """
    unknown = [p for p in platforms if p not in PLATFORMS]
    if stablehlo and unknown:
        raise ValueError(f"unknown platform {unknown[0]!r}; choose from {', '.join(PLATFORMS)}")
    output = pathlib.Path(output).absolute()
    state, config, step = train_checkpoint.load_train_state(workdir, step=step, best=best)
    generator = state["generator"]
    generator_config = config["model"]["generator"]
    source = f"{pathlib.Path(workdir).absolute()} step {step}{' (best)' if best else ''}"
    model_checkpoint.save_model(output, {"generator": generator}, config["model"], source=source)

    manifest = {"source": source, "step": step, "generator": generator_config}
    if stablehlo:
        exported = export_stablehlo(generator_config, generator, platforms)
        (output / ARTIFACT_FILE).write_bytes(exported.serialize())
        manifest["artifact"] = {
            "file": ARTIFACT_FILE,
            "inputs": {"image": "float32[B, H, W, 3] in [0, 1]", "mask": "float32[B, H, W, 1], > 0 is a hole"},
            "output": "float32[B, H, W, 3], the inpainted image",
            "sizes": input_size_rule(generator_config)[2],
            "platforms": list(exported.platforms),
            "usage": "jax.export.deserialize(open(file, 'rb').read()).call(image, mask)",
        }
        (output / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m lama_jax.export",
                                description="Turn a training run into a model checkpoint and a StableHLO artifact.")
    parser.add_argument("--workdir", required=True, help="a lama_jax.train workdir")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    which.add_argument("--best", action="store_true", help="the best checkpoint by validation")
    parser.add_argument("--output", required=True, help="new folder for the model checkpoint and artifacts")
    parser.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                        help="platforms the StableHLO artifact is lowered for (default %(default)s)")
    parser.add_argument("--no-stablehlo", action="store_true", help="write only the model checkpoint")
    cli.add_compilation_cache_flag(parser)
    args = parser.parse_args(argv)
    compilation_cache.enable(args.compilation_cache_dir)
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    try:
        manifest = export_workdir(args.workdir, args.output, step=args.step, best=args.best,
                                  stablehlo=not args.no_stablehlo, platforms=platforms)
    except (OSError, ValueError, model_checkpoint.CheckpointError, train_checkpoint.TrainCheckpointError) as e:
        return cli.error(e)
    output = pathlib.Path(args.output).absolute()
    print(f"model checkpoint of {manifest['source']}: {output}")
    if "artifact" in manifest:
        artifact = manifest["artifact"]
        print(f"  {output / artifact['file']}: any batch, {artifact['sizes']} ({', '.join(artifact['platforms'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
