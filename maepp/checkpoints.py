"""Orbax checkpoints of the train state plus every process's data position.

    WORKDIR/checkpoints/<step>/state   the sharded TrainState (each process writes its shards)
    WORKDIR/checkpoints/<step>/data    {"positions": [next clip of process 0, 1, ...]}

Orbax writes a step under a temporary name and renames it when complete, so the latest step
on disk is always whole. Mask rngs are not saved: they are fold_in(seed, step).
"""
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils


def workdir_path(workdir) -> epath.Path:
    """A local path made absolute, or a bucket path (gs://...) as it is."""
    path = epath.Path(workdir)
    return path if "://" in str(workdir) else path.absolute()


def manager(workdir, *, keep: int, keep_period: int = None) -> ocp.CheckpointManager:
    """The caller decides when to save (interval, preemption, end); Orbax keeps and prunes."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        keep_period=keep_period,  # also keep every keep_period-th step
        enable_async_checkpointing=True,
    )
    return ocp.CheckpointManager(workdir_path(workdir) / "checkpoints", options=options)


def save(checkpoints: ocp.CheckpointManager, step: int, state, position: int):
    """Starts an asynchronous save of the state and every process's next data position."""
    positions = multihost_utils.process_allgather(np.asarray([position], np.int64)).reshape(-1)
    checkpoints.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"positions": positions.tolist()})
        ),
        force=True,
    )


def restore_latest(checkpoints: ocp.CheckpointManager, state, shardings):
    """-> (step, state, this process's data position), or None without a checkpoint.

    `state` gives shapes and dtypes, `shardings` the target layout: a checkpoint saved on one
    mesh restores onto another.
    """
    step = checkpoints.latest_step()
    if step is None:
        return None
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    restored = checkpoints.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
    )
    positions = restored["data"]["positions"]
    if len(positions) != jax.process_count():
        raise ValueError(
            f"checkpoint {step} was saved by {len(positions)} processes, this job has {jax.process_count()}: "
            "the data positions cannot be mapped; resume with the same process count"
        )
    return step, restored["state"], int(positions[jax.process_index()])


def restore_params(workdir, abstract_params, step: int = None):
    """-> (step, params) of a run's checkpoint (the newest by default), without its optimizer state.

    abstract_params: ShapeDtypeStructs (with shardings) of the parameter tree to read into.
    """
    directory = workdir_path(workdir) / "checkpoints"
    steps = ocp.CheckpointManager(directory).all_steps() if directory.exists() else []
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {directory}: train there first (python -m maepp.train)")
    step = max(steps) if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; there are steps {sorted(steps)}")
    target = {"params": abstract_params}
    restored = ocp.PyTreeCheckpointer().restore(
        directory / str(step) / "state",
        args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        ),
    )
    return step, restored["params"]
