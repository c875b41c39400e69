r"""Trains LaMa end to end: resumable, observable, and stoppable at any step.

    python -m lama_jax.train --config configs/big_lama.py[:arg] --workdir DIR [--config.key=value ...]

`train_and_evaluate(config, workdir)` is the whole run; `main` only parses
flags. A run, in the order the code below does it:

1. **Setup.** One data-parallel mesh over every device (`train_step.make_mesh`);
   only process 0 writes logs, metrics and TensorBoard events.
2. **Data.** This host's Grain iterator of training batches and the frozen
   evaluation set (`lama_jax.data.pipeline`).
3. **State.** Resume priority: the newest checkpoint in WORKDIR (state, data
   iterator position and all) > `config.init_from` (a model checkpoint, e.g.
   the released big-lama converted by `lama_jax.convert`) > random init.
4. **Loop.** next batch → `shard_batch` → jitted `train_step`. A step's
   metrics are read while the next step runs; any non-finite value stops the
   run naming the step and the term, before anything of that step is saved.
   Logged every `log_every_steps`, checkpointed (asynchronously) every
   `checkpoint_every_steps`, validated every `eval_every_steps` and at the end.
5. **Stop.** SIGTERM or SIGINT (e.g. TPU preemption) finishes the current step,
   saves a checkpoint and returns normally (exit status 0); the next launch
   with the same workdir resumes from there.

Workdir layout:

    config.json         the resolved config of the latest launch
    checkpoints/<step>/ newest `keep_checkpoints` training checkpoints (lama_jax.train_checkpoint)
    best/<step>/        the best checkpoint by config.eval.best_metric
    metrics.jsonl       one JSON object per logged step and one per evaluation ("val_*" keys)
    tensorboard/        scalars and evaluation image grids (tensorboard --logdir WORKDIR/tensorboard)
    eval_images/        the same grids as PNG: masked input | mask | prediction | inpainted | target
    summary.json        written when the run ends

`python -m lama_jax.export --workdir DIR --output OUT` turns a workdir into a
model checkpoint for `Inpainter` and `lama_jax.predict`.
"""

from __future__ import annotations

import json
import logging as pylogging
import math
import pathlib
import re
import signal
import sys
import threading
import time
from typing import Any, Dict, Mapping, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from lama_jax import aot
from lama_jax import checkpoint as model_checkpoint
from lama_jax import cli
from lama_jax import compilation_cache
from lama_jax import evaluate as evaluate_lib
from lama_jax import metrics as metrics_lib
from lama_jax import train_checkpoint
from lama_jax import train_step
from lama_jax.data import pipeline
from lama_jax.models import platform as platform_choices

RESNET_PL_URL = "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet50dilated-ppm_deepsup/encoder_epoch_20.pth"


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class NonFiniteMetricError(TrainingError):
    """A loss, norm or learning rate became NaN or infinite."""


# ---------------------------------------------------------------------------------------------
# Config checks and the networks a fresh run starts from


def _check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    if config.total_steps < 0:
        raise TrainingError(f"config.total_steps must be >= 0, got {config.total_steps}")
    for key in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps"):
        if config[key] <= 0:
            raise TrainingError(f"config.{key} must be positive, got {config[key]}")
    for key, value in (("batch_size", config.batch_size), ("eval.batch_size", config.eval.batch_size)):
        # Every process has the same number of devices, so this also splits the batch over processes.
        if value <= 0 or value % num_devices:
            raise TrainingError(f"config.{key} = {value} must be a positive multiple of the "
                                f"{num_devices} devices the batch is split over ({jax.process_count()} "
                                f"process(es) of {jax.local_device_count()} devices)")
    try:
        train_step.validate_config(config)
    except ValueError as err:
        raise TrainingError(str(err)) from None
    # Checked here rather than at the first validation, possibly hours into the run.
    totals = metrics_lib.report_totals(config.eval.metrics)
    if config.eval.best_metric not in totals:
        raise TrainingError(f"config.eval.best_metric = {config.eval.best_metric!r} is not among the validation "
                            f"results {list(totals)} of config.eval.metrics")
    if config.eval.best_mode not in ("max", "min"):
        raise TrainingError(f"config.eval.best_mode must be 'max' or 'min', got {config.eval.best_mode!r}")
    if config.keep_checkpoints < 1:
        raise TrainingError(f"config.keep_checkpoints must be at least 1, got {config.keep_checkpoints}")
    # Masks that cannot fit the crop would otherwise fail in the first batch, deep inside Grain.
    try:
        masks = pipeline.train_mask_generator(config.data)
        if not masks.needs_labels:
            _warn_of_fully_masked_crops(config, masks, config.batch_size // num_devices)
    except (KeyError, TypeError, ValueError) as e:
        raise TrainingError(f"config.data.mask = {config.data.mask!r} with crop_size = {config.data.crop_size}: "
                            f"{e}") from None
    try:
        platform_choices.unroll_blocks(config.model.generator.block_loop)
        platform_choices.fft_impl(config.model.generator.fft_impl)
        platform_choices.remat_blocks(config.model.generator.get("remat_blocks", False))
        platform_choices.tpu_phase_input_grad(config.model.discriminator.get("stride2_input_grad", "auto"))
    except ValueError as err:
        raise TrainingError(str(err)) from None
    _profile_window(config)


_MASK_SAMPLES = 1000  # about 0.1 s of mask drawing at 256 px


def _warn_of_fully_masked_crops(config: ml_collections.ConfigDict, masks, per_device_batch: int) -> None:
    """Warns when the training masks can hide a whole crop, e.g. masks sized for larger crops.

    A crop with no visible pixel alone in its BatchNorm group has zero variance in the encoder's
    channels, and BatchNorm's backward then scales the gradient by 1/sqrt(eps) per layer: the
    generator's gradient norm overflows to inf and the run stops at a non-finite loss.
    """
    rng = np.random.default_rng(0)
    size = config.data.crop_size
    covered = sum(bool(np.all(masks(rng, size, size) > 0.5)) for _ in range(_MASK_SAMPLES))
    if not covered:
        return
    group = per_device_batch if config.train.batch_norm == "per_device" else config.batch_size
    logging.warning(
        "config.data.mask = %r with crop_size = %d covers the whole crop in %d of %d sampled masks%s; "
        "size the masks to the crop with config.data.mask_overrides", config.data.mask, size, covered,
        _MASK_SAMPLES,
        " and each device's BatchNorm sees one crop: such a crop makes the generator's gradient "
        "non-finite and stops the run" if group == 1 else "")


def _profile_window(config: ml_collections.ConfigDict) -> Optional[tuple]:
    """(start, stop) of config.profile_steps "START:STOP" (steps START..STOP-1 are traced), or None."""
    if not config.profile_steps:
        return None
    start, sep, stop = config.profile_steps.partition(":")
    if not (sep and start.strip().isdigit() and stop.strip().isdigit() and 0 < int(start) < int(stop)):
        raise TrainingError(f"config.profile_steps = {config.profile_steps!r}; expected \"START:STOP\" with "
                            "0 < START < STOP, e.g. \"10:15\" (steps 10 to 14), or \"\" for no profile")
    return int(start), int(stop)


_COMPILE_WAIT_MS = 30 * 60 * 1000  # how long a process waits for the others to finish compiling


def compile_train_step(step_fn, state, config: ml_collections.ConfigDict, mesh):
    """(the step compiled for this run's batches, the start-up report).

    The report is what `lama_jax.aot` says of the same program: parameter counts per network, the
    compiled step's per-device memory, FLOPs and collectives, and how long compiling took (seconds
    when JAX's persistent compilation cache holds the program).
    """
    batch = aot.abstract_batch(mesh, config.batch_size, config.data.crop_size)
    logging.info("compiling the train step; this takes a while (first time only with the compilation cache)")
    started = time.perf_counter()
    lowered = step_fn.lower(state, batch)
    lowered_at = time.perf_counter()
    with compilation_cache.count_lookups() as cache_lookups:
        compiled = lowered.compile()  # read back from the persistent cache when it holds the program
    compiled_at = time.perf_counter()
    if jax.process_count() > 1:
        # CPU collectives (Gloo) fail the first collective when processes reach it more than 30 s
        # apart, which uneven compile times (one process hitting the compilation cache, a busy host)
        # cause: wait at a barrier of jax.distributed's coordination service, not a collective.
        ocp.multihost.get_barrier_sync_fn()(key="lama_jax train step compiled", timeout_ms=_COMPILE_WAIT_MS)
    report = dict(
        lower_s=lowered_at - started,
        compile_s=compiled_at - lowered_at,
        from_compilation_cache=cache_lookups["hits"] > 0 and not cache_lookups["misses"],
        parameters={name: int(sum(np.prod(x.shape) for x in jax.tree.leaves(state[name]["params"])))
                    for name in ("generator", "discriminator", "resnet_pl") if name in state},
        **aot.describe_compiled(compiled, device_kind=jax.devices()[0].device_kind,
                                batch_per_step=config.batch_size))
    logging.info("train step %s in %.1f s (traced and lowered in %.1f s): %s",
                 "read from the compilation cache" if report["from_compilation_cache"] else "compiled",
                 report["compile_s"], report["lower_s"], aot.format_program_report(report))
    return compiled, report


def _resnet_pl_variables(config: ml_collections.ConfigDict, init_networks: Mapping[str, Any]):
    """The frozen ADE20k encoder of the perceptual loss, or None when the loss is off or random."""
    if config.losses.resnet_pl_weight <= 0:
        return None
    if "resnet_pl" in init_networks:
        return init_networks["resnet_pl"]
    path = config.losses.resnet_pl_weights
    if path == "random":
        logging.warning("config.losses.resnet_pl_weights = 'random': the perceptual loss uses a random "
                        "encoder. Only speed measurements make sense with it.")
        return None
    if not path or not (pathlib.Path(path) / model_checkpoint.METADATA_FILE).is_file():
        raise TrainingError(
            f"config.losses.resnet_pl_weights = {path!r} is not a converted ADE20k encoder, which the "
            f"perceptual loss (resnet_pl_weight = {config.losses.resnet_pl_weight}) needs. Download "
            f"encoder_epoch_20.pth from {RESNET_PL_URL} and convert it with "
            f"`python -m lama_jax.convert --network resnet_pl --torch-checkpoint encoder_epoch_20.pth "
            f"--output {path or 'checkpoints/ade20k_resnet50dilated'}`, "
            "or train without that loss: --config.losses.resnet_pl_weight=0")
    return model_checkpoint.load_model(path, networks=["resnet_pl"]).variables["resnet_pl"]


def _init_from_networks(config: ml_collections.ConfigDict) -> Dict[str, Any]:
    """The networks of `config.init_from` (a model checkpoint), checked against config.model."""
    if not config.init_from:
        return {}
    model = model_checkpoint.load_model(config.init_from)
    for network in ("generator", "discriminator"):
        if network not in model.variables:
            continue
        stored, wanted = model.model_config[network], config.model[network].to_dict()
        if platform_choices.architecture(stored) != platform_choices.architecture(wanted):
            raise TrainingError(f"config.init_from = {config.init_from}: its {network} is {stored}, but "
                                f"config.model.{network} is {wanted}; pick the config the weights were "
                                "converted with")
    if "discriminator" not in model.variables:
        logging.warning("init_from %s has no discriminator: it starts from random weights",
                        config.init_from)
    logging.info("Initialising %s from %s", ", ".join(sorted(model.variables)), config.init_from)
    return model.variables


def _reason(error: Exception) -> str:
    """An exception as one short line: TensorStore appends kilobytes of JSON spec to its messages."""
    text = str(error).split(" [tensorstore_spec", 1)[0].replace("\n", " ")
    return f"{type(error).__name__}: {text[:300]}"


def _check_resumable(config: ml_collections.ConfigDict, stored: Mapping[str, Any], workdir) -> None:
    """Refuses to resume a checkpoint whose `stored` config does not fit `config`."""
    wanted = train_checkpoint.config_to_json(config)
    if ({k: platform_choices.architecture(v) for k, v in stored["model"].items()}
            != {k: platform_choices.architecture(v) for k, v in wanted["model"].items()}):
        raise TrainingError(
            f"{workdir} holds a run with config.model = {stored['model']}, not "
            f"{wanted['model']}; resume with the same model or use a new --workdir")
    if stored["data"]["num_workers"] != config.data.num_workers:
        raise TrainingError(
            f"{workdir} was saved with config.data.num_workers = "
            f"{stored['data']['num_workers']}; the data iterator's position can only be restored with "
            "the same number of workers")


def initial_train_state(config: ml_collections.ConfigDict, mesh, checkpointer: train_checkpoint.TrainCheckpointer,
                        train_iterator=None):
    """(state, step) to start from: the workdir's newest readable checkpoint > config.init_from > random.

    Resuming also moves `train_iterator` to the position saved with the checkpoint.
    Checkpoints newer than the one resumed from failed to restore (e.g. files
    truncated by a crash): they are moved to WORKDIR/unreadable_checkpoints.
    """
    unreadable = []  # (step, why) of the checkpoints tried, newest first
    for step in reversed(checkpointer.all_steps()):
        path = checkpointer.workdir / train_checkpoint.CHECKPOINTS_DIR / str(step)
        # Any exception while reading means this checkpoint cannot be resumed from; an older one may.
        try:
            stored = checkpointer.restore_config(step)
        except Exception as e:  # pylint: disable=broad-except
            unreadable.append((step, _reason(e)))
            logging.warning("Checkpoint %s has no readable config (%s); trying an older one", path, _reason(e))
            continue
        _check_resumable(config, stored, checkpointer.workdir)
        try:
            state = checkpointer.restore(step, train_checkpoint.abstract_train_state(config, mesh),
                                         data_iterator=train_iterator)
        except Exception as e:  # pylint: disable=broad-except
            unreadable.append((step, _reason(e)))
            logging.warning("Checkpoint %s is unreadable (%s); trying an older one", path, _reason(e))
            continue
        for bad_step, _ in unreadable:
            checkpointer.set_aside(bad_step)
        logging.info("Resuming from %s", path)
        return state, step
    if unreadable:
        tried = "; ".join(f"step {step}: {why}" for step, why in unreadable)
        raise TrainingError(
            f"no checkpoint in {checkpointer.workdir / train_checkpoint.CHECKPOINTS_DIR} is readable (tried {tried}). "
            "Nothing was deleted; move them elsewhere or use a new --workdir to start afresh")
    networks = _init_from_networks(config)
    state = train_step.create_train_state(
        config, jax.random.key(config.seed),
        generator_variables=networks.get("generator"),
        discriminator_variables=networks.get("discriminator"),
        resnet_pl_variables=_resnet_pl_variables(config, networks),
        mesh=mesh)
    return state, 0


# ---------------------------------------------------------------------------------------------
# Observability: metrics.jsonl, TensorBoard, progress line (process 0 writes)


class MetricWriter:
    """Appends JSON lines to WORKDIR/metrics.jsonl and mirrors them to TensorBoard.

    On other processes than 0 every method does nothing. Resuming from step N
    drops the lines of steps after N that the interrupted run had written, so
    the file reads as one uninterrupted run.
    """

    def __init__(self, workdir: pathlib.Path, *, enabled: bool, start_step: int):
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self.images_dir = workdir / "eval_images"
        if not enabled:
            return
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

        self._tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1,
                                          flush_secs=30)

    def write(self, step: int, scalars: Mapping[str, float], *, tensorboard_prefix: str) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _json_number(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in scalars.items():
            self._tensorboard.add_scalar(f"{tensorboard_prefix}/{name}", value, step)

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """`image`: HWC float in [0, 1]; also saved as eval_images/<name>_<step>.png."""
        if not self.enabled:
            return
        from PIL import Image  # pylint: disable=g-import-not-at-top

        self._tensorboard.add_image(name, image, step, dataformats="HWC")
        self.images_dir.mkdir(exist_ok=True)
        pixels = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(self.images_dir / f"{name.replace('/', '_')}_{step:07d}.png")

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tensorboard.close()


def _json_number(value):
    # JSON has no NaN/Infinity; write null rather than invalid JSON.
    if isinstance(value, int):
        return value
    return float(value) if math.isfinite(value) else None


class Progress:
    """Steps/s, img/s, data-wait time and ETA over the interval since the last log line."""

    def __init__(self, *, total_steps: int, global_batch_size: int):
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        # Totals over the measured intervals: all but the first step, which includes compilation.
        self.measured_steps = 0
        self.measured_seconds = 0.0
        self.restart(step=0, measured=False)

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` (an evaluation) out of the current interval's throughput."""
        self.interval_start += seconds

    def restart(self, step: int, *, measured: bool = True) -> None:
        """Ends the current interval at `step` (adding it to the totals if `measured`)."""
        now = time.perf_counter()
        if measured:
            self.measured_steps += step - self.interval_first_step
            self.measured_seconds += now - self.interval_start
        self.interval_start = now
        self.interval_first_step = step
        self.data_wait = 0.0
        self.skipped_files = 0

    def interval_scalars(self, step: int) -> Dict[str, float]:
        seconds = max(time.perf_counter() - self.interval_start, 1e-9)
        steps = step - self.interval_first_step
        return {
            "steps_per_s": steps / seconds,
            "img_per_s": steps * self.global_batch_size / seconds,
            "data_wait_s": self.data_wait,
            "skipped_files": self.skipped_files,
        }

    def steps_per_second(self) -> Optional[float]:
        return self.measured_steps / self.measured_seconds if self.measured_seconds else None

    def line(self, step: int, scalars: Mapping[str, float], *, compiling: bool = False) -> str:
        """The progress line; the ETA needs a rate measured without compilation."""
        rate = self.steps_per_second() or (None if compiling else scalars["steps_per_s"])
        eta = time.strftime("%H:%M:%S", time.gmtime((self.total_steps - step) / rate)) if rate else "?"
        return (f"step {step}/{self.total_steps} | {scalars['steps_per_s']:.2f} steps/s | "
                f"{scalars['img_per_s']:.1f} img/s | data wait {scalars['data_wait_s']:.2f} s | ETA {eta} | "
                f"gen_total {scalars['gen_total']:.4f} | discr_total {scalars['discr_total']:.4f}")


def _check_finite(step: int, scalars: Mapping[str, float], last_checkpoint: Optional[int]) -> None:
    bad = {name: value for name, value in scalars.items() if not math.isfinite(value)}
    if bad:
        terms = ", ".join(f"{name} = {value}" for name, value in sorted(bad.items()))
        kept = (f"the newest good checkpoint is step {last_checkpoint}" if last_checkpoint is not None
                else "no checkpoint was written yet")
        raise NonFiniteMetricError(f"step {step}: non-finite {terms}; stopping ({kept}, nothing later was saved)")


# ---------------------------------------------------------------------------------------------
# Stopping on SIGTERM / SIGINT


class StopSignal:
    """Turns SIGTERM and SIGINT into a request the loop honours after the current step.

    With one process, Python handlers set a flag (a second SIGINT interrupts at
    once). With several, JAX's preemption sync point (which jax.distributed
    wires to SIGTERM) tells every host to stop at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: Optional[str] = None
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        del frame
        self.received = signal.Signals(signum).name
        logging.warning("%s received: finishing the current step, saving a checkpoint, then exiting",
                        self.received)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
            self.received = self.received or "preemption"
        return self.received is not None


# ---------------------------------------------------------------------------------------------
# Validation


def image_grid(batch: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], count: int) -> np.ndarray:
    """Rows of masked input | mask | prediction | inpainted | target, HWC in [0, 1]."""
    image, mask = batch["image"][:count], batch["mask"][:count]
    mask3 = np.repeat(mask, 3, axis=-1)
    columns = [image * (1 - mask3) + mask3, mask3, outputs["predicted_image"][:count],
               outputs["inpainted"][:count], image]
    rows = [np.concatenate([c[i] for c in columns], axis=1) for i in range(len(image))]
    return np.concatenate(rows, axis=0)


def _process_rows(batch: Mapping[str, np.ndarray], size: int) -> Dict[str, np.ndarray]:
    """Pads a host batch to `size` rows (repeating the last) and keeps this process's share."""
    share = size // jax.process_count()
    start = jax.process_index() * share
    out = {}
    for key in ("image", "mask"):
        value = batch[key]
        padding = np.repeat(value[-1:], size - len(value), axis=0)
        out[key] = np.concatenate([value, padding])[start:start + share]
    return out


def run_evaluation(predict_fn, generator_variables, eval_batches, mesh, evaluator, *, batch_size: int,
                   num_images: int):
    """Inpaints the evaluation set; returns ({metric: mean over all images}, image grid or None).

    Every process feeds its share of each (padded) batch; the evaluator
    gathers the results across processes.
    """
    evaluator.reset()
    grid = None
    for batch in eval_batches:
        global_batch = train_step.shard_batch(_process_rows(batch, batch_size), mesh)
        outputs = predict_fn(generator_variables, global_batch)
        evaluator.update({"image": global_batch["image"], "mask": global_batch["mask"],
                          "inpainted": outputs["inpainted"]}, num_valid=len(batch["image"]))
        if grid is None and num_images > 0:
            host_outputs = multihost_utils.process_allgather(outputs, tiled=True)
            grid = image_grid(batch, host_outputs, num_images)
    report = evaluator.result()
    return {name: stats["mean"] for name, stats in report["total"].items()}, grid


# ---------------------------------------------------------------------------------------------
# The run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> Dict[str, Any]:
    """Trains (or resumes) the run in `workdir` up to config.total_steps; returns the run summary."""
    run_start = time.perf_counter()
    workdir = pathlib.Path(workdir).absolute()
    cache_dir = compilation_cache.enable(config.compilation_cache_dir)  # before anything compiles
    is_chief = jax.process_index() == 0

    # -- Setup: mesh, config record --------------------------------------------------------
    mesh = train_step.make_mesh()
    _check_config(config, mesh.size)
    if is_chief:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(train_checkpoint.config_to_json(config), indent=2) + "\n")
    logging.info("Training on %d devices (%s) in %d process(es), global batch %d", mesh.size,
                 jax.devices()[0].platform, jax.process_count(), config.batch_size)

    # -- Data: this host's training iterator, the frozen evaluation set --------------------
    train_iterator = pipeline.create_train_iterator(
        config.data, global_batch_size=config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    eval_batches = pipeline.create_eval_batches(config.data, batch_size=config.eval.batch_size)
    evaluator = evaluate_lib.build_evaluator(
        config.eval.metrics, lpips_weights=config.eval.lpips_weights, vgg_weights=config.eval.vgg_weights,
        inception_weights=config.eval.inception_weights, bin_mode="online")

    # -- State: resume > init_from > scratch -----------------------------------------------
    checkpointer = train_checkpoint.TrainCheckpointer(
        workdir, keep=config.keep_checkpoints, best_metric=config.eval.best_metric,
        best_mode=config.eval.best_mode)
    state, start_step = initial_train_state(config, mesh, checkpointer, train_iterator)
    predict_fn = train_step.make_predict_fn(config, mesh)
    logging.info("Compilation cache: %s", cache_dir or "off")
    step_fn, startup = None, None  # a finished run relaunched trains nothing and compiles nothing
    if start_step < config.total_steps:
        step_fn, startup = compile_train_step(train_step.make_train_step(config, mesh), state, config, mesh)
    profile = _profile_window(config) if is_chief else None

    writer = MetricWriter(workdir, enabled=is_chief, start_step=start_step)
    progress = Progress(total_steps=config.total_steps, global_batch_size=config.batch_size)
    summary: Dict[str, Any] = dict(start_step=start_step, devices=mesh.size, processes=jax.process_count(),
                                   global_batch_size=config.batch_size, stopped_by=None, startup=startup)
    last_checkpoint = start_step if start_step else None
    last_eval: Dict[str, float] = {}
    step = start_step

    def evaluate_and_keep_best(step: int, state) -> Dict[str, float]:
        started = time.perf_counter()
        results, grid = run_evaluation(predict_fn, state["generator"], eval_batches, mesh, evaluator,
                                       batch_size=config.eval.batch_size, num_images=config.eval.num_image_grids)
        writer.write(step, {f"val_{k}": v for k, v in results.items()}, tensorboard_prefix="val")
        if grid is not None:
            writer.write_image(step, "val/inpainting", grid)
        checkpointer.save_best(step, state, config=config, metrics=results)
        seconds = time.perf_counter() - started
        progress.exclude(seconds)
        logging.info("step %d validation (%.1f s): %s", step, seconds,
                     ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        return results

    def record(step: int, metrics, *, log: bool) -> None:
        """Reads one step's metrics (waiting for the step), checks them, logs them if asked."""
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(step, scalars, last_checkpoint)
        first = step == start_step + 1
        if first:
            logging.info("step %d took %.1f s (compiled before it)", step, time.perf_counter() - progress.interval_start)
        if log:
            scalars.update(progress.interval_scalars(step))
            writer.write(step, scalars, tensorboard_prefix="train")
            logging.info(progress.line(step, scalars, compiling=first))
        if log or first:
            progress.restart(step, measured=not first)

    # -- The loop: a batch from the iterator to the step, then logging, checkpoints, evals --
    progress.restart(start_step, measured=False)
    try:
        with StopSignal() as stop:
            pending = None  # (step, metrics) of the step whose metrics are not read yet
            while step < config.total_steps:
                step += 1
                wait_start = time.perf_counter()
                host_batch = next(train_iterator)  # this host's rows of the global batch
                progress.data_wait += time.perf_counter() - wait_start
                progress.skipped_files += pipeline.skipped_files_count(host_batch)
                batch = train_step.shard_batch({"image": host_batch["image"], "mask": host_batch["mask"]}, mesh)
                if profile and step == profile[0]:
                    jax.profiler.start_trace(str(workdir / "profile"))
                with jax.profiler.StepTraceAnnotation("train", step_num=step):
                    state, metrics = step_fn(state, batch)  # dispatched; runs while the host goes on
                if profile and step == profile[1] - 1:
                    jax.block_until_ready(metrics)
                    jax.profiler.stop_trace()
                    logging.info("Profile of steps %d-%d written to %s", profile[0], step, workdir / "profile")

                if pending is not None:  # the previous step's metrics, read while this step runs
                    record(*pending, log=pending[0] % config.log_every_steps == 0)
                stopping = stop.requested(step)
                final = step == config.total_steps or stopping
                save = final or step % config.checkpoint_every_steps == 0
                evaluate = step == config.total_steps or step % config.eval_every_steps == 0
                if save or evaluate:  # these need the step's metrics checked first
                    record(step, metrics, log=final or step % config.log_every_steps == 0)
                    pending = None
                else:
                    pending = (step, metrics)

                if save:
                    checkpointer.save(step, state, config=config, data_iterator=train_iterator)
                    last_checkpoint = step
                if evaluate:
                    last_eval = evaluate_and_keep_best(step, state)
                if stopping:
                    summary["stopped_by"] = stop.received
                    logging.warning("Stopped by %s at step %d; checkpoint saved, resume with the same command",
                                    stop.received, step)
                    break
    finally:
        if profile and profile[0] <= step < profile[1] - 1:  # stopped inside the profile window
            jax.profiler.stop_trace()
        checkpointer.wait_until_finished()
        best_step = checkpointer.best_step()
        checkpointer.close()
        writer.close()
        if config.data.num_workers > 0:
            train_iterator.close()

    # -- Summary -------------------------------------------------------------------------------
    summary.update(
        final_step=step,
        wall_s=time.perf_counter() - run_start,
        steps_per_s=progress.steps_per_second(),
        last_checkpoint=last_checkpoint,
        best_step=best_step,
        validation={f"val_{k}": _json_number(v) for k, v in last_eval.items()},
    )
    if summary["steps_per_s"] is not None:
        summary["img_per_s"] = summary["steps_per_s"] * config.batch_size
    summary_path = workdir / "summary.json"
    if not last_eval and summary_path.is_file():
        # This launch validated nothing (e.g. the run was already finished): keep the run's last results.
        summary["validation"] = json.loads(summary_path.read_text()).get("validation", {})
    if is_chief:
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        logging.info("Run summary: %s", json.dumps(summary))
        logging.info("Checkpoints: %s/checkpoints; metrics: %s; TensorBoard: tensorboard --logdir %s/tensorboard",
                     workdir, writer.path, workdir)
    return summary


# ---------------------------------------------------------------------------------------------
# Command line

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: a packaged name (big_lama, lama_fourier, tiny) or a file, "
    "e.g. configs/big_lama.py, optionally :arg; override keys with --config.key=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, TensorBoard logs. "
                                "With several hosts, a folder every host sees (NFS, a gcsfuse mount).")
# Multi-host runs (TPU pods, several GPU hosts): one process per host, all started with the same flags.
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first. On TPU VMs, "
                                 "SLURM and Open MPI it finds the other processes by itself.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (elsewhere).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (elsewhere).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (elsewhere).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "With --distributed: a process silent this long (e.g. its host died) "
    "stops every other process with an error instead of leaving them waiting in a collective.")
flags.mark_flags_as_required(["config", "workdir"])
_VERBOSE = flags.DEFINE_bool("verbose", False, "Full absl log lines (file, line, thread) and the INFO lines "
                             "of libraries such as Orbax; by default lines are 'time level message'.")

# What `--help` prints above the flags (absl prints __main__'s docstring, here the developer notes).
USAGE = """Trains LaMa, or resumes the run in --workdir.

    python -m lama_jax.train --config big_lama --workdir DIR [--config.key=value ...]

--config takes a packaged config (big_lama, lama_fourier, tiny) or a config file;
--config.key=value overrides any key of it, e.g. --config.batch_size=15. Launch
the same command again to resume; SIGTERM or Ctrl-C saves and stops. Turn the
run into a model for predict: python -m lama_jax.export --workdir DIR --output OUT
"""


def _config_spec(argv) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_override(argv) -> Optional[str]:
    """A message naming the first `--config.key` override that the config file does not define."""
    from lama_jax.config_loader import load_config  # pylint: disable=g-import-not-at-top

    spec = _config_spec(argv)
    if spec is None:
        return None
    config = load_config(spec)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        node, path = config, []
        for part in key.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = "config." + ".".join(path) if path else "the config"
                known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
                return (f"--config.{key}: {spec} has no key {'.'.join(path + [part])!r} "
                        f"(keys of {where}: {known})")
            node, path = node[part], path + [part]
    return None


def _resolve_config_flag(argv):
    """argv with a packaged config's name after --config (e.g. `tiny`) replaced by its installed path."""
    from lama_jax.config_loader import resolve_config_argv  # pylint: disable=g-import-not-at-top

    try:
        return resolve_config_argv(argv)
    except FileNotFoundError as e:
        raise flags.IllegalFlagValueError(f"--config: {e}") from None


def parse_flags(argv):
    """absl flag parsing whose mistakes (a missing, unknown or bad flag; an unknown config key) end the
    process with one `error: ...` line and exit status 2 instead of a traceback."""
    try:
        resolved = _resolve_config_flag(argv)
        try:
            return flags.FLAGS(resolved)
        except AttributeError as e:  # ml_collections' locked config rejects a new key this way
            message = _unknown_override(argv[1:]) or f"invalid --config override: {e}"
            raise flags.IllegalFlagValueError(message) from None
    except SystemExit as e:
        # absl's help flags exit with status 1 after printing the help; asking for help is no error.
        if e.code == 1 and any(arg.lstrip("-") in ("help", "helpshort", "helpfull", "?") for arg in argv[1:]):
            sys.exit(0)
        raise
    except flags.Error as e:
        missing = re.findall(r"Flag (--\w+) must have a value other than None", str(e))
        message = f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required" if missing else e
        cli.exit_with_error(f"{message} (see python -m lama_jax.train --help)")


class _LibraryInfoFilter(pylogging.Filter):
    """Drops the INFO lines Orbax writes for every file of every checkpoint; warnings pass."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def main(argv) -> None:
    if len(argv) > 1:
        cli.exit_with_error(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value; "
                            "see python -m lama_jax.train --help)")
    workdir = pathlib.Path(_WORKDIR.value)
    if workdir.exists() and not workdir.is_dir():
        cli.exit_with_error(f"--workdir {workdir} is a file, not a folder; name a new or existing run folder",
                            cli.INPUT_STATUS)
    if not _VERBOSE.value:
        logging.get_absl_logger().addFilter(_LibraryInfoFilter())
        logging.get_absl_handler().setFormatter(cli.short_log_formatter())
    if _DISTRIBUTED.value:  # before anything touches the devices
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value, heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value)
    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    # FileNotFoundError: data, weights or an init_from the config names that is not there.
    except (TrainingError, train_checkpoint.TrainCheckpointError, model_checkpoint.CheckpointError,
            FileNotFoundError) as e:
        cli.exit_with_error(e, cli.INPUT_STATUS)


if __name__ == "__main__":
    __doc__ = USAGE  # pylint: disable=redefined-builtin
    app.run(main, flags_parser=parse_flags)
