"""Training-run checkpoints: the whole train state, the data iterator and the config, per step.

A training workdir holds two Orbax `CheckpointManager` directories:

    WORKDIR/checkpoints/<step>/   the newest `keep` checkpoints, saved asynchronously
        state/                    the train state (lama_jax.train_step), every network and optimiser
        data_iter/                the Grain iterator's position (the same on every process)
        config/                   the run's config as JSON
    WORKDIR/best/<step>/          the checkpoint with the best validation metric (state and config)
    WORKDIR/unreadable_checkpoints/<step>/  checkpoints that failed to restore, set aside (never deleted)

Restoring `checkpoints/<step>` puts the run back exactly where it was: the
same parameters, optimiser moments, PRNG key and the next batch the iterator
would have produced, with any number of processes: the state is replicated
and every process's iterator is at the same position of the shared stream
(lama_jax.data.pipeline), so a run saved by 2 processes of 4 devices resumes
on 1 process of 8 and vice versa. `best/` has no data iterator: it is what `export` reads
to ship a model, not a place to resume from.

These are distinct from *model* checkpoints (`lama_jax.checkpoint`), which hold
only network variables; `lama_jax.export` turns one into the other.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Mapping, Optional

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from lama_jax import train_step

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
UNREADABLE_DIR = "unreadable_checkpoints"


class TrainCheckpointError(ValueError):
    """A training workdir without the checkpoint asked for, or one that does not fit the config."""


def config_to_json(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON data (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def abstract_train_state(config: ml_collections.ConfigDict, mesh=None):
    """Shapes, dtypes and (with `mesh`) replicated shardings of a fresh train state, computing nothing."""
    abstract = jax.eval_shape(lambda: train_step.create_train_state(config, jax.random.key(0)))
    sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


class TrainCheckpointer:
    """Saves and restores the checkpoints of one training workdir (see the module docstring).

    `best_metric`/`best_mode` choose which validation result `save_best` keeps.
    Use as a context manager, or call `close()`: pending asynchronous saves are
    finished then.
    """

    def __init__(self, workdir, *, keep: int = 3, best_metric: str = "ssim", best_mode: str = "max"):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {keep}")
        self.workdir = pathlib.Path(workdir).absolute()
        self.best_metric = best_metric
        self._manager = ocp.CheckpointManager(
            self.workdir / CHECKPOINTS_DIR,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                                 create=True))
        # Orbax keeps the checkpoint whose metrics score best under best_fn, deleting the others.
        self._best = ocp.CheckpointManager(
            self.workdir / BEST_DIR,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda metrics: metrics[best_metric], best_mode=best_mode,
                keep_checkpoints_without_metrics=False, enable_async_checkpointing=True, create=True))

    # -- saving --------------------------------------------------------------------------------

    def save(self, step: int, state, *, config: ml_collections.ConfigDict,
             data_iterator: Optional[grain.DatasetIterator] = None) -> None:
        """Starts saving `state` (and the iterator's current position) as checkpoint `step`.

        The iterator state is read before this returns, so the iterator may move
        on at once; the arrays are copied off the devices before it returns too.
        Process 0 writes the iterator state: every process's is the same.
        """
        items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_to_json(config)))
        if data_iterator is not None:
            items["data_iter"] = ocp.args.JsonSave(data_iterator.get_state())
        self._manager.save(step, args=ocp.args.Composite(**items))

    def save_best(self, step: int, state, *, config: ml_collections.ConfigDict,
                  metrics: Mapping[str, float]) -> None:
        """Offers checkpoint `step` with its validation `metrics`; kept only if it beats the best so far."""
        if self.best_metric not in metrics:
            raise KeyError(f"best_metric {self.best_metric!r} is not among the validation results "
                           f"{sorted(metrics)}; set config.eval.best_metric to one of them")
        if not np.isfinite(metrics[self.best_metric]):
            return
        items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_to_json(config)))
        self._best.save(step, args=ocp.args.Composite(**items),
                        metrics={k: float(v) for k, v in metrics.items()})

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
        self._best.close()

    def __enter__(self) -> "TrainCheckpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- restoring -----------------------------------------------------------------------------

    def all_steps(self) -> list:
        """The steps of the finished checkpoints in checkpoints/, oldest first."""
        return sorted(self._manager.all_steps())

    def set_aside(self, step: int) -> None:
        """Moves checkpoint `step` to WORKDIR/unreadable_checkpoints/ (for inspection, not deleted).

        Every process calls this; process 0 moves the folder. Later saves can then
        reuse the step number.
        """
        source = self.workdir / CHECKPOINTS_DIR / str(step)
        if jax.process_index() == 0:
            target = self.workdir / UNREADABLE_DIR / str(step)
            suffix = 1
            while target.exists():  # an earlier run set aside a checkpoint of the same step
                target, suffix = self.workdir / UNREADABLE_DIR / f"{step}.{suffix}", suffix + 1
            target.parent.mkdir(exist_ok=True)
            shutil.move(source, target)
            logging.warning("Moved the unreadable checkpoint %s to %s", source, target)
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self._manager.reload()

    def best_step(self) -> Optional[int]:
        return self._best.best_step()

    def restore_config(self, step: int) -> dict:
        """The config stored with checkpoint `step`, as plain JSON data."""
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def restore(self, step: int, abstract_state, *, data_iterator: Optional[grain.DatasetIterator] = None):
        """Restores checkpoint `step` into the shapes and shardings of `abstract_state`.

        With `data_iterator`, its position is set to the one saved (in place).
        """
        items = dict(state=ocp.args.StandardRestore(abstract_state))
        if data_iterator is not None:
            items["data_iter"] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError) as e:
            raise TrainCheckpointError(
                f"{self.workdir / CHECKPOINTS_DIR / str(step)} cannot be restored (damaged, or not saved with "
                f"this config): {e}") from None
        if data_iterator is not None:
            data_iterator.set_state(restored["data_iter"])
        return restored["state"]


def load_train_state(workdir, *, step: Optional[int] = None, best: bool = False):
    """(state as host arrays, config JSON, step) of a finished or running training workdir.

    Reads checkpoint `step` (default: the newest) of `WORKDIR/checkpoints`, or
    with `best=True` the best-by-validation checkpoint. The config stored with
    the checkpoint decides the shapes, so no config file is needed.
    """
    root = pathlib.Path(workdir).absolute() / (BEST_DIR if best else CHECKPOINTS_DIR)
    if not root.is_dir():
        raise TrainCheckpointError(f"{root} does not exist: is {workdir} a lama_jax.train workdir?")
    with ocp.CheckpointManager(root) as manager:
        steps = list(manager.all_steps())
        if not steps:
            raise TrainCheckpointError(f"{root} holds no finished checkpoint yet")
        if step is None:
            step = max(steps)  # best/ keeps a single checkpoint
        elif step not in steps:
            raise TrainCheckpointError(f"{root} has no checkpoint {step}; it has {sorted(steps)}")
        config_json = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        config = ml_collections.ConfigDict(config_json)
        abstract = abstract_train_state(config)
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return jax.device_get(state), config_json, step

