"""Resuming past damaged checkpoints: the newest readable one wins, the others are set aside, not deleted.

Real Orbax checkpoints of a stand-in train state (a step counter and one small array), so
no network is compiled; `train.initial_train_state` is what a launch calls to resume.
"""

import os
import shutil

import jax.numpy as jnp
import pytest

from lama_jax import train, train_checkpoint, train_step
from test_train import small_config


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A workdir with checkpoints 2, 4 and 6 of a stand-in state whose array holds the step."""
    def fake_state(config, rng, **kwargs):
        return {"step": jnp.zeros((), jnp.int32), "generator": {"w": jnp.zeros(1000)}}

    monkeypatch.setattr(train_step, "create_train_state", fake_state)
    config = small_config()
    iterator = train.pipeline.create_train_iterator(config.data, global_batch_size=8, seed=0)
    with train_checkpoint.TrainCheckpointer(tmp_path) as checkpointer:
        for step in (2, 4, 6):
            iterator.set_state({"next_index": step})
            state = {"step": jnp.int32(step), "generator": {"w": jnp.full(1000, float(step))}}
            checkpointer.save(step, state, config=config, data_iterator=iterator)
    return tmp_path


def resume(workdir):
    """(state, step, iterator position) of a launch resuming in `workdir`."""
    config = small_config()
    iterator = train.pipeline.create_train_iterator(config.data, global_batch_size=8, seed=0)
    with train_checkpoint.TrainCheckpointer(workdir) as checkpointer:
        state, step = train.initial_train_state(config, train_step.make_mesh(), checkpointer, iterator)
    return state, step, iterator.get_state()["next_index"]


def files_below(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)


def array_files(path):
    """The files of Orbax's OCDBT key-value stores (folders `d/`) in the state of checkpoint `path`."""
    return [os.path.join(d, f) for d, _, files in os.walk(os.path.join(path, "state"))
            if os.path.basename(d) == "d" for f in files]


def truncate_array_files(path):
    for name in array_files(path):
        with open(name, "r+b") as f:
            f.truncate(os.path.getsize(name) // 2)


def delete_array_files(path):
    for name in array_files(path):
        os.remove(name)


def half_write_config(path):
    # A crash while writing: the config file empty, no commit markers (as on a non-atomic file system).
    open(os.path.join(path, "config", "metadata"), "w").close()
    for marker in ("_CHECKPOINT_METADATA", "commit_success.txt"):
        os.remove(os.path.join(path, marker))


@pytest.mark.parametrize("damage", [truncate_array_files, delete_array_files, half_write_config],
                         ids=["truncated_array_files", "missing_array_files", "half_written_step"])
def test_a_damaged_newest_checkpoint_is_skipped_and_set_aside(workdir, damage, caplog):
    newest = workdir / "checkpoints" / "6"
    damage(str(newest))
    damaged_files = files_below(newest)
    (workdir / "checkpoints" / "8.orbax-checkpoint-tmp").mkdir()  # a save cut short: never a candidate

    state, step, position = resume(workdir)
    assert step == 4 and int(state["step"]) == 4 and float(state["generator"]["w"][0]) == 4.0
    assert position == 4  # the data iterator moved to the resumed checkpoint's position
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"Checkpoint {newest} " in w and "trying an older one" in w for w in warnings), warnings
    # Set aside, every file kept, so later saves can use step 6 again; the rest untouched.
    assert files_below(workdir / "unreadable_checkpoints" / "6") == damaged_files
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "8.orbax-checkpoint-tmp"]


def test_no_readable_checkpoint_stops_with_one_message_listing_every_try(workdir):
    for step in (2, 4, 6):
        delete_array_files(str(workdir / "checkpoints" / str(step)))
    before = files_below(workdir)
    with pytest.raises(train.TrainingError) as error:
        resume(workdir)
    message = str(error.value)
    assert message.startswith(f"no checkpoint in {workdir / 'checkpoints'} is readable (tried step 6: ")
    assert "; step 4: " in message and "; step 2: " in message and "Nothing was deleted" in message
    assert files_below(workdir) == before


def test_resuming_twice_past_the_same_step_keeps_both_damaged_copies(workdir):
    truncate_array_files(str(workdir / "checkpoints" / "6"))
    resume(workdir)
    shutil.copytree(workdir / "checkpoints" / "4", workdir / "checkpoints" / "6")
    truncate_array_files(str(workdir / "checkpoints" / "6"))
    assert resume(workdir)[1] == 4
    assert sorted(os.listdir(workdir / "unreadable_checkpoints")) == ["6", "6.1"]
