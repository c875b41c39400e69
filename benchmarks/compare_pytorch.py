"""lama_jax beside upstream PyTorch LaMa, in one run on one machine: speed ratios and output parity.

    python benchmarks/compare_pytorch.py --lama-root ~/src/lama [--torch-python ~/lama-venv/bin/python] --json

`--lama-root` is an advimman/lama checkout (imported from there, never copied);
`--torch-python` the interpreter that has torch and LaMa's requirements
(default: this one). The torch side runs in that interpreter as a worker
process (benchmarks/upstream_lama.py) that this script drives request by
request, so the two sides' timed repeats alternate (lama_jax, torch, lama_jax,
torch, ...) and share whatever else the machine is doing.

Both sides start from the same weights: upstream builds its networks from
`--seed` and they are converted with lama_jax.convert. Reported, each as
seconds per side and `speedup` = torch seconds / lama_jax seconds (> 1: lama_jax
is faster), medians over `--repeats` after one warm-up call:

* eval_<size>: eval-mode generator, batch 1, for each of `--sizes`;
* fwd_bwd_<size>: train-mode generator forward + backward of the output mean;
* train_step_reference / train_step_fused: one G step + D step with every
  big-lama loss (upstream: its trainer's methods, Adam and clipping; lama_jax:
  lama_jax.train_step with `train.step_mode` "reference", then "fused");
* loader: training samples per second on one core (JPEG decode, `distortions`,
  crop, LaMa's training masks, batching) on the same JPEGs, upstream's train
  dataloader vs lama_jax.data.pipeline; `speedup` is lama_jax's rate / upstream's;
* conv3x3_fwd / conv3x3_fwd_bwd: one 3x3 convolution, `--conv-shape` H W C (C -> C
  channels, batch 1; default 64 64 512), forward and forward + backward (input
  and kernel gradients) with each side's GFLOP/s: what bounds the generator's
  training speed on the machine (lama_jax: the convolution its layers use);
* compile_s: lama_jax's compile time per program (torch runs eagerly; its first
  call is in first_call_s beside lama_jax's);
* parity: max |Δ| of the inpainted eval output; both sides' first-step losses and
  gradient norms, beside upstream's own first step on another thread count (its
  numbers summed in another order: what rounding alone moves); and how alike the
  two sides' first weight updates are (Adam's first step is about lr * sign(g),
  so a weight whose gradient is near rounding level moves by up to 2 lr apart).

Ratios are printed only when both processes ran on the same machine (hostname,
CPU model and boot id agree). The CPU model, thread settings, XLA_FLAGS and the
load average before and after come with the figures.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# The benchmark scripts' folder whatever the working directory, and this checkout's lama_jax, not an installed one.
sys.path[:0] = [str(pathlib.Path(__file__).resolve().parent), str(pathlib.Path(__file__).resolve().parent.parent)]
import upstream_lama  # noqa: E402

PARTS = ("eval", "fwd_bwd", "train_step", "loader", "conv")
# Upstream's training masks for 256 crops (its data config abl-04-256-mh-dist `mask_gen_kwargs`).
UPSTREAM_TRAIN_MASKS = {
    "irregular_proba": 1, "irregular_kwargs": dict(max_angle=4, max_len=200, max_width=100, max_times=5,
                                                   min_times=1),
    "box_proba": 1, "box_kwargs": dict(margin=10, bbox_min_size=30, bbox_max_size=150, max_times=4, min_times=1),
    "segm_proba": 0,
}
LOADER_BATCH = 16


class TorchSide:
    """The worker process running upstream LaMa; one request, one reply."""

    def __init__(self, python: str, lama_root: str, threads: int):
        self.process = subprocess.Popen(
            [python, str(pathlib.Path(upstream_lama.__file__)), "--serve", "--lama-root", lama_root,
             "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, op: str, **arguments):
        self.process.stdin.write(json.dumps(dict(arguments, op=op)) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise upstream_lama.UpstreamUnavailable(
                f"the torch worker ({self.process.args[0]}) exited with status {self.process.wait()} "
                f"before answering '{op}'; its messages are above")
        reply = json.loads(line)
        if "error" in reply:
            raise (upstream_lama.UpstreamUnavailable if reply.get("unavailable") else RuntimeError)(reply["error"])
        return reply

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def same_machine(a: dict, b: dict):
    """None when `a` and `b` describe one machine, else the reason the runs cannot be compared."""
    differing = [k for k in ("hostname", "cpu", "boot_id") if a.get(k) != b.get(k)]
    if differing:
        return "the two sides ran on different machines (" + ", ".join(
            f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in differing) + "); no ratio is given"
    return None


def add_speedups(figures: dict, refused) -> None:
    """Each figure's `speedup`, or nothing when the machines differ."""
    for figure in figures.values():
        if refused is None:
            if "lama_jax_samples_per_s" in figure:
                figure["speedup"] = round(figure["lama_jax_samples_per_s"] / figure["torch_samples_per_s"], 3)
            else:
                figure["speedup"] = round(figure["torch_s"] / figure["lama_jax_s"], 3)


def make_batch(size: int, seed: int = 0) -> dict:
    """A random image and a LaMa-like hole (a centred box plus scattered pixels), NHWC float32."""
    rng = np.random.default_rng(seed)
    image = rng.random((1, size, size, 3), dtype=np.float32)
    mask = np.zeros((1, size, size, 1), np.float32)
    mask[:, size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1.0
    mask = np.maximum(mask, (rng.random(mask.shape) > 0.9).astype(np.float32))
    return {"image": image, "mask": mask}


def interleaved(jax_call, torch_call, repeats: int) -> tuple:
    """(lama_jax seconds, torch seconds) of the first calls and the medians of `repeats` alternating
    timed calls. Each call returns its own seconds."""
    first = jax_call(), torch_call()
    jax_times, torch_times = [], []
    for _ in range(repeats):
        jax_times.append(jax_call())
        torch_times.append(torch_call())
    return first, statistics.median(jax_times), statistics.median(torch_times)


def timed(fn, *args):
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lama-root", required=True, help="an advimman/lama checkout (its saicinpainting/)")
    parser.add_argument("--torch-python", default=sys.executable,
                        help="interpreter with torch and LaMa's requirements (default: this one)")
    parser.add_argument("--lama-commit", default=None,
                        help="the checkout's commit, recorded in the output (default: read from its .git)")
    parser.add_argument("--config", default="big_lama", help="lama_jax config whose model both sides build")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="eval sizes")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], choices=[*PARTS, "fused"], help="parts not to run")
    parser.add_argument("--images", default=None, help="JPEG folder for the loader (default: built-in samples)")
    parser.add_argument("--loader-samples", type=int, default=96, help="samples per timed loader run")
    parser.add_argument("--conv-shape", type=int, nargs=3, default=[64, 64, 512], metavar=("H", "W", "C"),
                        help="input of the conv part: H x W x C, C -> C channels, 3x3, batch 1")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    return parser.parse_args(argv)


def lama_commit(lama_root: str):
    try:
        return subprocess.run(["git", "-C", lama_root, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def run(args) -> dict:
    import jax
    import jax.numpy as jnp

    from lama_jax import convert, inference, train_step
    from lama_jax.config_loader import load_config
    from lama_jax.models import build_generator

    threads = len(os.sched_getaffinity(0))
    before = os.getloadavg()
    torch_side = TorchSide(args.torch_python, args.lama_root, threads)
    try:
        torch_machine = torch_side("machine")
        machine = upstream_lama.machine_info()
        refused = same_machine(machine, torch_machine)
        config = load_config(args.config)
        config.train.batch_norm = "global"
        up_config = upstream_lama.UpstreamConfig.from_lama_jax(config)
        mesh = train_step.make_mesh(jax.devices()[:1])
        result = {
            "machine": {"cpu": machine["cpu"], "cores": machine["cores"], "hostname": machine["hostname"]},
            "torch_machine": {k: torch_machine[k] for k in ("cpu", "cores", "hostname")},
            "same_machine": refused is None,
            "threads": {"torch": torch_machine["torch_threads"], "xla_cpu_devices": len(jax.devices()),
                        "xla_flags": os.environ.get("XLA_FLAGS", "")},
            "versions": {"jax": jax.__version__, "torch": torch_machine["torch"],
                         "torch_python": torch_machine["python"]},
            "lama_root": str(args.lama_root), "lama_commit": args.lama_commit or lama_commit(args.lama_root),
            "config": args.config, "repeats": args.repeats, "load_average_before": before,
            "figures": {}, "compile_s": {}, "first_call_s": {}, "parity": {},
        }
        if refused:
            result["ratios_refused"] = refused
        figures = result["figures"]

        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            weights_path = tmp / "weights.npz"
            torch_side("setup", config=dataclasses.asdict(up_config), seed=args.seed, weights=str(weights_path))
            model = config.model.to_dict()

            def torch_variables(path):
                """The torch side's networks as lama_jax variables."""
                with np.load(path) as data:
                    states = {}
                    for key in data.files:
                        network, name = key.split("/", 1)
                        states.setdefault(network, {})[name] = data[key]
                converted = {"generator": convert.convert_generator(states["generator"], model["generator"]),
                             "discriminator": convert.convert_discriminator(states["discriminator"],
                                                                            model["discriminator"])}
                if "resnet_pl" in states:
                    converted["resnet_pl"] = convert.convert_resnet50_dilated(states["resnet_pl"])
                return converted

            variables = torch_variables(weights_path)

            def batch_file(size):
                path = tmp / f"batch_{size}.npz"
                if not path.exists():
                    np.savez(path, **make_batch(size, args.seed))
                return str(path)

            if "eval" not in args.skip:
                predict = train_step.make_predict_fn(config, mesh)
                for size in args.sizes:
                    batch = train_step.shard_batch(make_batch(size, args.seed), mesh)
                    start = time.perf_counter()
                    compiled = predict.lower(variables["generator"], batch).compile()
                    result["compile_s"][f"eval_{size}"] = round(time.perf_counter() - start, 2)
                    inpainted = np.asarray(compiled(variables["generator"], batch)["inpainted"])
                    torch_side("eval", batch=batch_file(size), output=str(tmp / "torch_out.npy"))
                    result["parity"][f"eval_{size}_inpainted_max_abs_diff"] = float(
                        np.abs(inpainted - np.load(tmp / "torch_out.npy")).max())
                    first, jax_s, torch_s = interleaved(
                        lambda: timed(compiled, variables["generator"], batch),
                        lambda: torch_side("eval", batch=batch_file(size))["seconds"], args.repeats)
                    figures[f"eval_{size}"] = {"lama_jax_s": jax_s, "torch_s": torch_s}
                    result["first_call_s"][f"eval_{size}"] = {"lama_jax_s": first[0], "torch_s": first[1]}
                    del compiled

            if "fwd_bwd" not in args.skip:
                size = args.train_size
                generator = build_generator(config.model.generator)

                def loss(params, batch_stats, x):
                    out, _ = generator.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                             mutable=["batch_stats"])
                    return out.mean()

                host = make_batch(size, args.seed)
                x = inference.model_input(jnp.asarray(host["image"]), jnp.asarray(host["mask"]))
                g = variables["generator"]
                start = time.perf_counter()
                compiled = jax.jit(jax.grad(loss)).lower(g["params"], g["batch_stats"], x).compile()
                result["compile_s"][f"fwd_bwd_{size}"] = round(time.perf_counter() - start, 2)
                first, jax_s, torch_s = interleaved(
                    lambda: timed(compiled, g["params"], g["batch_stats"], x),
                    lambda: torch_side("fwd_bwd", batch=batch_file(size))["seconds"], args.repeats)
                figures[f"fwd_bwd_{size}"] = {"lama_jax_s": jax_s, "torch_s": torch_s}
                result["first_call_s"][f"fwd_bwd_{size}"] = {"lama_jax_s": first[0], "torch_s": first[1]}
                del compiled

            if "train_step" not in args.skip:
                batch_path = batch_file(args.train_size)
                # Upstream's first iteration, from the initial weights like lama_jax's first one below.
                first_torch = torch_side("train_step", batch=batch_path)
                result["first_call_s"]["train_step_torch"] = first_torch["seconds"]
                torch_times = []
                for mode in [m for m in ("reference", "fused") if m not in args.skip]:
                    config.train.step_mode = mode
                    state = train_step.create_train_state(
                        config, jax.random.key(config.seed), mesh=mesh,
                        generator_variables=variables["generator"],
                        discriminator_variables=variables["discriminator"],
                        resnet_pl_variables=variables.get("resnet_pl"))
                    batch = train_step.shard_batch(make_batch(args.train_size, args.seed), mesh)
                    start = time.perf_counter()
                    step = train_step.make_train_step(config, mesh).lower(state, batch).compile()
                    result["compile_s"][f"train_step_{mode}"] = round(time.perf_counter() - start, 2)
                    holder = {"state": state}

                    def jax_step():
                        start = time.perf_counter()
                        holder["state"], metrics = step(holder["state"], batch)
                        holder["metrics"] = jax.device_get(metrics)
                        return time.perf_counter() - start

                    result["first_call_s"][f"train_step_{mode}"] = jax_step()
                    if mode == "reference":
                        # Upstream's own first step on another thread count adds its numbers in another
                        # order: how far two correct implementations' first steps can lie apart.
                        other_threads = 1 if threads > 1 else 2
                        rounding = torch_side("first_step_with_threads", batch=batch_path, threads=other_threads)
                        result["parity"]["first_step_losses"] = first_step_losses(
                            holder["metrics"], first_torch["losses"], rounding["losses"], other_threads)
                        torch_side("weights", path=str(tmp / "after_step.npz"))
                        after = torch_variables(tmp / "after_step.npz")
                        lr = {"generator": config.optim.generator_lr, "discriminator": config.optim.discriminator_lr}
                        result["parity"]["first_step_updates"] = {
                            net: update_agreement(holder["state"][net]["params"], after[net]["params"], lr[net])
                            for net in ("generator", "discriminator")}
                    jax_times = []
                    for _ in range(args.repeats):
                        jax_times.append(jax_step())
                        torch_times.append(torch_side("train_step", batch=batch_path)["seconds"])
                    figures[f"train_step_{mode}"] = {"lama_jax_s": statistics.median(jax_times)}
                    del step, holder, state
                # Upstream has one step order; its repeats, alternating with both modes', are pooled.
                for mode in ("reference", "fused"):
                    if f"train_step_{mode}" in figures:
                        figures[f"train_step_{mode}"]["torch_s"] = statistics.median(torch_times)

            if "loader" not in args.skip:
                figures["loader"] = loader_rates(torch_side, args, config, tmp)

            if "conv" not in args.skip:
                figures.update(conv_figures(torch_side, args, result["compile_s"], tmp))
    finally:
        torch_side.close()
    add_speedups(figures, refused)
    result["load_average_after"] = os.getloadavg()
    return result


def conv_figures(torch_side, args, compile_s: dict, tmp: pathlib.Path) -> dict:
    """conv3x3_fwd and conv3x3_fwd_bwd: seconds and GFLOP/s of each side, same input and kernel."""
    import jax
    import jax.numpy as jnp

    from lama_jax.models import layers

    height, width, channels = args.conv_shape
    rng = np.random.default_rng(args.seed)
    inputs = {"x": rng.standard_normal((1, height, width, channels), dtype=np.float32),  # NHWC
              "kernel": rng.standard_normal((3, 3, channels, channels), dtype=np.float32) / (3 * channels ** 0.5)}
    inputs_path = tmp / "conv_inputs.npz"
    np.savez(inputs_path, **inputs)
    x, kernel = jnp.asarray(inputs["x"]), jnp.asarray(inputs["kernel"])

    def forward(x, kernel):
        return layers.conv2d(x, kernel, 1, ((1, 1), (1, 1)))

    def forward_backward(x, kernel):
        y, pullback = jax.vjp(forward, x, kernel)
        return pullback(y)  # the output as its own cotangent: both gradients, no extra reduction

    forward_flops = 2 * height * width * channels * channels * 9
    figures = {}
    for name, fn, flops in (("conv3x3_fwd", forward, forward_flops),
                            ("conv3x3_fwd_bwd", forward_backward, 3 * forward_flops)):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(x, kernel).compile()
        compile_s[name] = round(time.perf_counter() - start, 2)
        mode = name.removeprefix("conv3x3_")
        _, jax_s, torch_s = interleaved(
            lambda: timed(compiled, x, kernel),
            lambda: torch_side("conv", mode=mode, inputs=str(inputs_path))["seconds"], args.repeats)
        figures[name] = {"lama_jax_s": jax_s, "torch_s": torch_s,
                         "lama_jax_gflop_per_s": float(f"{flops / jax_s / 1e9:.4g}"),
                         "torch_gflop_per_s": float(f"{flops / torch_s / 1e9:.4g}")}
    return figures


def update_agreement(ours, theirs, lr: float) -> dict:
    """How alike both sides' first weight updates are, in units of the learning rate (both started
    from the same weights, so the updates differ by what the updated weights differ by).

    Adam's first step is lr * g / (|g| + eps): about lr * sign(g) for every weight, so a weight whose
    gradient both sides round to opposite signs (or to sizes near eps) moves differently by up to 2 lr.
    """
    if lr <= 0:
        return {"lr": lr}
    import jax

    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(ours)]
    diffs = [np.abs(np.asarray(a) - np.asarray(b)).ravel() / lr
             for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs))]
    flipped = {path: int(np.sum(d > 1.0)) for path, d in zip(paths, diffs)}
    every = np.concatenate(diffs)
    return {"lr": lr, "weights": int(every.size), "max_diff_in_lr": float(every.max()),
            "share_differing_by_over_0.1_lr": float(np.mean(every > 0.1)),
            "share_differing_by_over_1_lr": float(np.mean(every > 1.0)),
            "most_differing_over_1_lr": {path: [count, int(d.size)] for path, count, d in sorted(
                zip(paths, flipped.values(), diffs), key=lambda item: -item[1])[:6] if count}}


def first_step_losses(jax_metrics: dict, torch_losses: dict, torch_other_threads: dict, other_threads: int) -> dict:
    """Both sides' losses of the first iteration, under lama_jax's names (upstream's in the comments),
    with upstream's own on `other_threads` threads beside them."""
    pairs = {
        "gen_l1": "gen_l1", "gen_adv": "gen_adv", "gen_fm": "gen_fm", "gen_resnet_pl": "gen_resnet_pl",
        "gen_total": "gen_total",
        "discr_total": "discr_total",  # upstream discr_adv: real + fake + R1 terms
        "discr_real_out": "adv_discr_real_out", "discr_fake_out": "adv_discr_fake_out",
        "generator_grad_norm": "generator_grad_norm", "discriminator_grad_norm": "discriminator_grad_norm",
    }
    return {name: {"lama_jax": float(jax_metrics[name]), "torch": torch_losses.get(upstream),
                   f"torch_{other_threads}_thread{'s' if other_threads > 1 else ''}": torch_other_threads.get(upstream)}
            for name, upstream in pairs.items() if name in jax_metrics}


def loader_rates(torch_side, args, config, tmp: pathlib.Path) -> dict:
    """Training samples per second on one core, both loaders on the same JPEGs, alternating runs."""
    import data_pipeline
    from lama_jax.data import pipeline

    images = args.images
    if not images:
        images = tmp / "images"
        images.mkdir()
        data_pipeline.write_sample_jpegs(images)
    data_config = config.data
    data_config.source, data_config.train_dir = "folder", str(images)
    data_config.num_workers, data_config.read_threads = 0, 0
    iterator = pipeline.create_train_iterator(data_config, global_batch_size=LOADER_BATCH, seed=args.seed)
    batches = max(1, args.loader_samples // LOADER_BATCH)
    core = min(os.sched_getaffinity(0))

    def jax_run():
        import cv2

        cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {core})
        cv2.setNumThreads(1)
        try:
            next(iterator)
            start = time.perf_counter()
            for _ in range(batches):
                next(iterator)
            return (time.perf_counter() - start) / (batches * LOADER_BATCH)
        finally:
            os.sched_setaffinity(0, cores)

    def torch_run():
        reply = torch_side("loader", images=str(images), samples=batches * LOADER_BATCH, batch_size=LOADER_BATCH,
                           core=core, out_size=data_config.crop_size, mask_kwargs=UPSTREAM_TRAIN_MASKS)
        return reply["seconds"] / reply["samples"]

    _, jax_s, torch_s = interleaved(jax_run, torch_run, args.repeats)
    return {"lama_jax_samples_per_s": round(1 / jax_s, 1), "torch_samples_per_s": round(1 / torch_s, 1),
            "samples_per_run": batches * LOADER_BATCH, "core": core}


def print_table(result: dict) -> None:
    machine = result["machine"]
    print(f"{machine['cpu']}, {machine['cores']} cores; torch threads {result['threads']['torch']}; "
          f"load average {result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f}")
    if "ratios_refused" in result:
        print(result["ratios_refused"])
    print(f"{'':<24}{'lama_jax':>12}{'torch':>12}{'speedup':>10}")
    for name, figure in result["figures"].items():
        if "lama_jax_s" in figure:
            cells = f"{figure['lama_jax_s']:>11.3f}s{figure['torch_s']:>11.3f}s"
        else:
            cells = f"{figure['lama_jax_samples_per_s']:>10.1f}/s{figure['torch_samples_per_s']:>10.1f}/s"
        speedup = f"{figure['speedup']:>9.2f}x" if "speedup" in figure else f"{'-':>10}"
        print(f"{name:<24}{cells}{speedup}")
    print("lama_jax compile (s):", result["compile_s"])
    print("parity:", json.dumps(result["parity"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except upstream_lama.UpstreamUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
