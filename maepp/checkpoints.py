"""Orbax checkpoints of the train state plus the data position.

    WORKDIR/checkpoints/<step>/state   the sharded TrainState (each process writes its shards)
    WORKDIR/checkpoints/<step>/data    {"position": global position of the next batch,
                                        "processes": how many processes saved it}

The position is one number for the whole job (maepp/data/order.py), so a step resumes on any
number of processes, its state resharded onto the new mesh.

Orbax writes a step under a temporary name and renames it when complete, so the newest step on
disk was whole when written. Disks and people still damage them: restoring walks back from the
newest step to the newest one that restores completely, on every process, and moves the damaged
ones aside (WORKDIR/checkpoints/<step>.damaged), saying which and why. Mask rngs are not saved:
they are fold_in(seed, step).

A step saved with the other config.model.scan_layers (maepp.models.layer_stack) restores too: it
is read in its own layout and converted.
"""

import functools
import time
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import type_handler_registry

from maepp import pause_points
from maepp.models import layer_stack

# Orbax writes a replicated array "replica-parallel": each replica transfers and writes a slice of
# it, through a compiled slicing program per array shape, built at a process's first save. For a
# slice under this size that costs more than it saves (micro's first save: 44 such programs, 1 s
# of a 13 s start); those arrays are written whole by one replica. The handler is otherwise
# Orbax's default, its array metadata store included. (Through the registry itself: the public
# register_type_handler logs a warning on every start that it replaced the default, as asked.)
REPLICA_PARALLEL_MIN_SLICE_BYTES = 256 * 1024
type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
    jax.Array,
    ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_SLICE_BYTES,
    ),
    override=True,
    ignore_warnings=True,
)


class CheckpointSaveError(RuntimeError):
    """A save failed (disk full, permissions, ...): the run stops, the older checkpoints stand."""


def workdir_path(workdir) -> epath.Path:
    """A local path made absolute, or a bucket path (gs://...) as it is."""
    path = epath.Path(workdir)
    return path if "://" in str(workdir) else path.absolute()


def manager(workdir, *, keep: int, keep_period: int | None = None) -> ocp.CheckpointManager:
    """The training run's manager (it holds the workdir lock). The caller decides when to save
    (interval, preemption, end); Orbax keeps and prunes, and removes the unfinished steps a
    killed run left (their names carry a suffix, so they were never taken for complete ones)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        keep_period=keep_period,  # also keep every keep_period-th step
        enable_async_checkpointing=True,
        cleanup_tmp_directories=True,
        # Runs once a save's files are written, before Orbax commits it (a rename, or gs://'s
        # commit_success.txt): the moment a test kills a run "during a save".
        async_options=ocp.AsyncOptions(post_finalization_callback=_save_written),
    )
    return _Manager(workdir_path(workdir) / "checkpoints", options=options)


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, leaving JAX's preemption sync point to the train loop: the point is
    counted in calls (maepp/stop_request.py), and Orbax's own calls, at every save and in its
    background commit, would move the count (its answer feeds only its statistics)."""

    def reached_preemption(self, step: int) -> bool:
        return False


# The step whose save is in flight: Orbax has one at a time, and its callback is told no step.
_saving = {"step": None}


def _save_written():
    """Orbax's callback once a save's files are written, before it commits them."""
    pause_points.reached("save_written", _saving["step"])


def save(checkpoints: ocp.CheckpointManager, step: int, state, position: int):
    """Starts an asynchronous save of the state and the global position of the next batch;
    raises CheckpointSaveError if this or an earlier asynchronous save failed."""
    # Orbax waits for the previous save before it starts one; waited for here, its callback
    # cannot be told this step.
    finish_saves(checkpoints)
    _saving["step"] = step
    data = {"position": int(position), "processes": jax.process_count()}
    try:
        checkpoints.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
            force=True,
        )
    except Exception as error:
        raise CheckpointSaveError(_save_failure(checkpoints, step, error)) from error


def check_saves(checkpoints: ocp.CheckpointManager):
    """Raises CheckpointSaveError if an asynchronous save has failed since the last check: at the
    first check after its threads ended. Orbax raises an error of its background commit only to a
    wait (on a full tmpfs, check_for_errors alone let a run train four more steps to its end).
    is_saving_in_progress reads a flag Orbax sets with a barrier over the hosts as a save ends,
    so at that moment the check waits for every host's save to end."""
    try:
        if not checkpoints.is_saving_in_progress():
            checkpoints.wait_until_finished()  # no save runs: it returns at once, raising what failed
        checkpoints.check_for_errors()
    except Exception as error:
        raise CheckpointSaveError(_save_failure(checkpoints, None, error)) from error


def finish_saves(checkpoints: ocp.CheckpointManager):
    """Waits for the asynchronous saves under way; raises CheckpointSaveError if one failed (the
    wait itself raises a save's error, which would otherwise reach the user as TensorStore's)."""
    try:
        checkpoints.wait_until_finished()
        checkpoints.check_for_errors()
    except Exception as error:
        raise CheckpointSaveError(_save_failure(checkpoints, None, error)) from error


def _one_line(error: BaseException) -> str:
    """The error's first line; a long one keeps its start and its end, where the OS's reason is."""
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    if len(line) > 300:
        line = f"{line[:120]} ... {line[-160:]}"
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _save_failure(checkpoints, step, error) -> str:
    checkpoints.reload()
    saved = [s for s in checkpoints.all_steps() if s != step]
    newest = f"step {max(saved)}" if saved else "none"
    # Asynchronous: the save that failed may be an earlier one than `step`; the error names its files.
    return (
        f"saving checkpoints failed ({_one_line(error)}); the newest "
        f"complete checkpoint is {newest} in {checkpoints.directory}. Free space or fix the directory, then "
        "re-run the same command to resume from it"
    )


def complete_steps(workdir) -> list:
    """The steps Orbax committed, sorted, as Orbax itself tells them: on a local disk a step is
    renamed into place when complete; on gs:// it is written under its own number and committed
    by its commit_success.txt, so a step folder without one is an unfinished save. Damaged steps
    were renamed aside. Read from the folder alone, so it works after any failure."""
    return sorted(ocp.utils.checkpoint_steps(workdir_path(workdir) / "checkpoints"))


def newest_complete(workdir) -> str:
    """ "step N in DIR" (or "none in DIR"): the newest complete step."""
    steps = complete_steps(workdir)
    return f"{f'step {steps[-1]}' if steps else 'none'} in {workdir_path(workdir) / 'checkpoints'}"


def restore_latest(checkpoints: ocp.CheckpointManager, state, shardings, other_layout: Callable):
    """-> (step, state, its data item: see resume_position), or None without a checkpoint that restores.

    `state` gives shapes and dtypes, `shardings` the target layout: a checkpoint saved on one
    mesh restores onto another. other_layout() gives the state's ShapeDtypeStructs (with
    shardings) in the other block layout, called only for a step saved with the other
    scan_layers. Steps that do not restore completely on every process are skipped, newest
    first, and moved aside.
    """
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    stacked = layer_stack.is_stacked(state.params)

    def restore_step(step):
        restored, reason = None, ""
        try:
            metadata = _saved_tree(epath.Path(checkpoints.directory) / str(step) / "state")
            saved_stacked = layer_stack.is_stacked(metadata["params"])
            layout = target if saved_stacked == stacked else other_layout()
            _check_same_shapes(step, metadata["params"], layout.params)
            items = checkpoints.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(layout), data=ocp.args.JsonRestore())
            )
            restored = (items["state"], items["data"], saved_stacked)
        except OtherModel:
            raise
        except Exception as error:  # noqa: BLE001 - a damaged step fails in TensorStore, JSON or Orbax
            reason = _one_line(error)
        # Every process must agree: each reads its own shards, and one bad file fails one process.
        failed = multihost_utils.process_allgather(np.asarray([bool(reason)])).reshape(-1)
        if failed.any():
            return None, reason or f"it does not restore on process {int(np.argmax(failed))}"
        return restored, ""

    checkpoints.reload()
    step, restored = _walk_back(
        checkpoints.all_steps(), restore_step, on_damaged=functools.partial(_set_aside, checkpoints)
    )
    if step is None:
        return None
    restored_state, data, saved_stacked = restored
    if saved_stacked != stacked:
        restored_state = jax.jit(functools.partial(layer_stack.to_layout, stacked=stacked), out_shardings=shardings)(
            restored_state
        )
        _say_converted(step, saved_stacked)
    return step, restored_state, data


def _walk_back(steps, restore_step: Callable, on_damaged: Callable) -> tuple:
    """The one walk-back over a run's checkpoint steps, for training and for reading parameters:
    newest first, -> (step, restored) of the first step that restores, or (None, None).

    restore_step(step) -> (restored, reason), the reason "" when it restored; on_damaged(step,
    reason) is told of each newer step that did not, before the next one is tried.
    """
    for step in sorted(steps, reverse=True):
        restored, reason = restore_step(step)
        if not reason:
            return step, restored
        on_damaged(step, reason)
    return None, None


def resume_position(data: dict, step: int) -> tuple:
    """A step's data item -> (global position of the next batch, a line on how it maps, or "")."""
    if "position" not in data:  # maepp 0.0.x saved each process's own position
        raise ValueError(
            f"checkpoint step {step} was saved by maepp 0.0.x (each process's own data position), "
            "which maepp 0.1 does not resume: finish the run with maepp 0.0.x, or start this run in "
            "another --workdir"
        )
    processes = jax.process_count()
    saved_by = int(data["processes"])
    moved = (
        f"resumed step {step} saved by {saved_by} processes on {processes} processes" if saved_by != processes else ""
    )
    return int(data["position"]), moved


class OtherModel(ValueError):
    """A checkpoint whose parameters have other shapes than the config's model: a config change, not damage."""


def _saved_tree(state_directory) -> dict:
    """A saved state's tree of array metadata (shapes, dtypes). Read by the item's handler: a
    Checkpointer would also look for step metadata in the item's directory and warn on every
    export that it is not there."""
    return ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_directory)).tree


def _saved_stacked(state_directory) -> bool:
    """Whether a saved state (or params) tree has the stacked block layout, from its metadata."""
    return layer_stack.is_stacked(_saved_tree(state_directory)["params"])


def _check_same_shapes(step: int, saved, expected):
    """Raises OtherModel, naming the first difference, unless the saved parameters have the
    expected tree and shapes: a model of other shapes is another run, whose checkpoints are left
    where they are."""
    saved_shapes = {
        jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(saved)
    }
    shapes = {
        jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(expected)
    }
    if saved_shapes == shapes:
        return
    names = sorted(set(saved_shapes) ^ set(shapes)) or sorted(k for k in shapes if shapes[k] != saved_shapes[k])
    first = names[0]
    raise OtherModel(
        f"checkpoint step {step} holds parameters of another model than config.model (first difference: {first}: "
        f"saved {saved_shapes.get(first, 'absent')}, config {shapes.get(first, 'absent')}); its checkpoints are kept "
        "as they are: train this model in another --workdir"
    )


def _say_converted(step: int, saved_stacked: bool):
    if jax.process_index() == 0:
        print(
            f"checkpoint step {step} was saved with config.model.scan_layers={saved_stacked}; "
            f"converted its blocks to scan_layers={not saved_stacked}",
            flush=True,
        )


def _set_aside(checkpoints: ocp.CheckpointManager, step: int, reason: str):
    """Moves a damaged step out of Orbax's sight (never deletes it) and says so."""
    directory = epath.Path(checkpoints.directory)
    if jax.process_index() == 0:
        aside = directory / f"{step}.damaged-{int(time.time())}"
        (directory / str(step)).rename(aside)
        message = f"checkpoint step {step} is damaged ({reason}); skipped it, moved to {aside}"
        logging.warning(message)
        print(message, flush=True)
    multihost_utils.sync_global_devices(f"maepp_set_aside_{step}")
    checkpoints.reload()


def restore_params(workdir, shapes, sharding, step: int | None = None):
    """-> (step, params) of a run's checkpoint (the newest that restores, by default), without its
    optimizer state, in the block layout of `shapes` whichever layout it was saved in.

    shapes: ShapeDtypeStructs of the parameter tree to read into; sharding: where every array goes.
    """
    directory = workdir_path(workdir) / "checkpoints"
    steps = ocp.CheckpointManager(directory).all_steps() if directory.exists() else []
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {directory}: train there first (python -m maepp.train)")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; there are steps {sorted(steps)}")
    stacked = layer_stack.is_stacked(shapes)

    def restore_step(candidate):
        try:
            saved_stacked = _saved_stacked(directory / str(candidate) / "state")
            saved_shapes = jax.eval_shape(functools.partial(layer_stack.to_layout, stacked=saved_stacked), shapes)
            target = {
                "params": jax.tree.map(
                    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), saved_shapes
                )
            }
            restored = ocp.PyTreeCheckpointer().restore(
                directory / str(candidate) / "state",
                args=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
                ),
            )
            return layer_stack.to_layout(restored["params"], stacked), ""
        except Exception as error:  # noqa: BLE001 - a damaged step fails in TensorStore, JSON or Orbax
            return None, _one_line(error)

    # Reading parameters moves nothing aside: a run's checkpoints are the training run's to manage.
    reasons = []
    found, params = _walk_back(
        [step] if step is not None else steps,
        restore_step,
        on_damaged=lambda candidate, reason: reasons.append(f"step {candidate} ({reason})"),
    )
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {directory} restores: {'; '.join(reasons)}")
    if reasons:
        print(f"skipped damaged checkpoints: {'; '.join(reasons)}", flush=True)
    return found, params
