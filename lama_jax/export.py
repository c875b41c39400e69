r"""Ships a trained generator: a model checkpoint plus serialized StableHLO that needs no model code.

    python -m lama_jax.export --workdir DIR [--step N | --best] --output OUT \
        [--sizes 512x512,1024x1024] [--platforms cpu,cuda,tpu]

reads a training checkpoint of `lama_jax.train` (the newest, step N, or the
best by validation) and writes to OUT:

    lama_jax_model.json, variables/   the generator as a model checkpoint: Inpainter.from_checkpoint(OUT),
                                      `python -m lama_jax.predict --checkpoint OUT`, init_from=OUT
    inpaint_<H>x<W>.stablehlo         jax.export artifacts, one per size: inpainted = f(image, mask)
    stablehlo.json                    what each artifact expects, and how to call it

Each artifact is LaMa's inference with the weights embedded: image (B, H, W, 3)
float32 in [0, 1] and mask (B, H, W, 1) (> 0 is a hole) in, the blended result
out. The batch B is symbolic; H and W are fixed per artifact because StableHLO's
`fft` op takes static lengths (openxla/stablehlo#1366), so a symbolic size
cannot reach the Fourier units. Pad inputs to the artifact's size (bottom and
right, mirrored, as `inference.pad_to_modulo` does). Running one needs only JAX:

    from lama_jax.export import load_stablehlo      # or: jax.export.deserialize(bytes).call
    inpaint = load_stablehlo("OUT/inpaint_512x512.stablehlo")
    result = inpaint(image, mask)

This is the portable form ONNX cannot give (its exporters fail on rfft).
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from lama_jax import checkpoint as model_checkpoint
from lama_jax import inference
from lama_jax import train_checkpoint
from lama_jax.models import build_generator

MANIFEST_FILE = "stablehlo.json"
DEFAULT_SIZES = ((512, 512),)
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
MIN_SIDE = 16  # the generator's bottleneck (1/8) reflect-pads by 1


def parse_sizes(text: str) -> Tuple[Tuple[int, int], ...]:
    """"512x512,1024x768" -> ((512, 512), (1024, 768)) as (height, width); checks multiples of 8."""
    sizes = []
    for item in text.split(","):
        try:
            height, width = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"size {item!r}: expected HEIGHTxWIDTH, e.g. 512x512") from None
        if height % inference.PAD_MODULO or width % inference.PAD_MODULO or min(height, width) < MIN_SIDE:
            raise ValueError(f"size {item!r}: height and width must be multiples of {inference.PAD_MODULO} "
                             f"and at least {MIN_SIDE}")
        sizes.append((height, width))
    return tuple(sizes)


def inpaint_function(generator_config: Mapping[str, Any], variables) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(image, mask) -> inpainted with `variables` as constants: what the artifacts compute."""
    generator = build_generator(generator_config)
    variables = jax.tree.map(jnp.asarray, {"params": variables["params"], "batch_stats": variables["batch_stats"]})

    def inpaint(image, mask):
        mask = (mask > 0).astype(jnp.float32)
        prediction = generator.apply(variables, inference.model_input(image, mask), train=False)
        return inference.blend(prediction, image, mask)

    return inpaint


def export_stablehlo(generator_config: Mapping[str, Any], variables, size: Tuple[int, int],
                     platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
    """The inpainting function lowered for `platforms`, batch symbolic, at (height, width) = `size`."""
    (batch,) = jax.export.symbolic_shape("batch")
    height, width = size
    args = (jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32),
            jax.ShapeDtypeStruct((batch, height, width, 1), jnp.float32))
    return jax.export.export(jax.jit(inpaint_function(generator_config, variables)),
                             platforms=tuple(platforms))(*args)


def load_stablehlo(path) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`inpaint(image, mask)` from an artifact written by `export_workdir`; needs no lama_jax model code."""
    return jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes())).call


def export_workdir(workdir, output, *, step: Optional[int] = None, best: bool = False,
                   sizes: Sequence[Tuple[int, int]] = DEFAULT_SIZES,
                   platforms: Sequence[str] = DEFAULT_PLATFORMS) -> Dict[str, Any]:
    """Writes the generator of a training checkpoint to `output` (see the module docstring).

    Returns the manifest also written to OUT/stablehlo.json.
    """
    output = pathlib.Path(output).absolute()
    state, config, step = train_checkpoint.load_train_state(workdir, step=step, best=best)
    generator = state["generator"]
    source = f"{pathlib.Path(workdir).absolute()} step {step}{' (best)' if best else ''}"
    model_checkpoint.save_model(output, {"generator": generator}, config["model"], source=source)

    manifest = {"source": source, "step": step, "generator": config["model"]["generator"], "artifacts": []}
    for height, width in sizes:
        exported = export_stablehlo(config["model"]["generator"], generator, (height, width), platforms)
        name = f"inpaint_{height}x{width}.stablehlo"
        (output / name).write_bytes(exported.serialize())
        manifest["artifacts"].append({
            "file": name,
            "inputs": {"image": f"float32[B, {height}, {width}, 3] in [0, 1]",
                       "mask": f"float32[B, {height}, {width}, 1], > 0 is a hole"},
            "output": f"float32[B, {height}, {width}, 3], the inpainted image",
            "platforms": list(exported.platforms),
        })
    manifest["usage"] = "jax.export.deserialize(open(file, 'rb').read()).call(image, mask)"
    (output / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lama_jax.export", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a lama_jax.train workdir")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    which.add_argument("--best", action="store_true", help="the best checkpoint by validation")
    parser.add_argument("--output", required=True, help="new folder for the model checkpoint and artifacts")
    parser.add_argument("--sizes", default=",".join(f"{h}x{w}" for h, w in DEFAULT_SIZES),
                        help="StableHLO artifact sizes HEIGHTxWIDTH, comma-separated; '' for none "
                             "(default %(default)s)")
    parser.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                        help="platforms the artifacts are lowered for (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes) if args.sizes.strip() else ()
        manifest = export_workdir(args.workdir, args.output, step=args.step, best=args.best, sizes=sizes,
                                  platforms=[p.strip() for p in args.platforms.split(",") if p.strip()])
    except (ValueError, model_checkpoint.CheckpointError, train_checkpoint.TrainCheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"model checkpoint of {manifest['source']}: {pathlib.Path(args.output).absolute()}")
    for artifact in manifest["artifacts"]:
        print(f"  {artifact['file']} ({', '.join(artifact['platforms'])})")


if __name__ == "__main__":
    main()
