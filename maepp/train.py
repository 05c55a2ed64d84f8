r"""Pretraining: config -> mesh -> data -> state (fresh or resumed) -> step -> loop.

    python -m maepp.train --config configs/audiomaepp.py:base --workdir DIR [--config.batch_size=512]

Runs on one CPU, one GPU box or a pod slice alike; with several processes, start one per host
(jax.distributed picks up the cluster's environment; see --coordinator). Re-running the same
command resumes from the newest checkpoint in DIR, data position included: the resumed run
sees exactly the batches and masks the uninterrupted run would have. SIGTERM (and a TPU
preemption notice) saves a checkpoint at the current step and exits cleanly. The loop itself
is maepp/train_loop.py.
"""

import shlex
import sys
import traceback

from absl import flags

from maepp import program

# Only flags here: JAX, Orbax and the rest load in main(), so that --help answers at once.

_CONFIG = program.config_file_flag("config", None, "Experiment config, e.g. configs/audiomaepp.py:base")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and TensorBoard logs go here; resumes from it.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process job that JAX detects itself (a TPU VM pod slice). Slurm and "
    "Open MPI jobs of several tasks are detected without it.",
)
flags.mark_flags_as_required(["config", "workdir"])
_RESUME_WITH_CHANGED = flags.DEFINE_list(
    "resume_with_changed",
    [],
    "Config fields a resumed run may change although they make another run (the "
    "model's shapes, the seed, the data source, ...): the run is refused otherwise.",
)


def _exit_now(message: str, status: int = 1):
    """The message as the console's last line, then an exit that runs no destructors: after a
    failure a tf.data iterator can deadlock in its destructor, waiting for map workers that need the
    GIL it holds. Every file that matters is already closed or complete (checkpoints are atomic)."""
    program.exit_now(message, status)


def _same_command() -> str:
    return shlex.join([sys.executable, "-m", "maepp.train", *sys.argv[1:]])


def _what_survived() -> str:
    """After an unexpected error: what is on disk, and the command that resumes from it."""
    from maepp import checkpoints

    return (
        f"maepp.train: stopped by the error above. The newest complete checkpoint is "
        f"{checkpoints.newest_complete(_WORKDIR.value)}; once the cause is fixed, resume from it with: "
        f"{_same_command()}"
    )


def _finished(config, workdir) -> str:
    """The line that says a workdir's run is done (its newest checkpoint is its last step), or ""."""
    from maepp import checkpoints

    steps = checkpoints.complete_steps(workdir)
    if not steps or steps[-1] < config.total_steps:
        return ""
    return (
        f"maepp.train: {checkpoints.workdir_path(workdir)} has finished: its newest checkpoint is step {steps[-1]} "
        f"of config.total_steps={config.total_steps}; to train on, raise --config.total_steps"
    )


def main(argv):
    del argv
    import jax
    import numpy as np

    from maepp import checkpoints, config_checks, distributed, job_watch, run_plan
    from maepp.workdir_lock import WorkdirInUse, WorkdirLost

    workdir = checkpoints.workdir_path(_WORKDIR.value)
    if workdir.exists() and not workdir.is_dir():
        _exit_now(f"maepp.train: --workdir {workdir} is a file, not a folder: name a folder (a new one starts a run)")
    config = _CONFIG.value
    finished = _finished(config, _WORKDIR.value)
    if finished:
        print(finished, flush=True)
        return
    distributed.initialize(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        force=_DISTRIBUTED.value,
        heartbeat_s=config.distributed.heartbeat_s,
        shutdown_s=config.distributed.shutdown_s,
    )
    if jax.process_count() > 1:  # a lost process is one line, not JAX's abort
        job_watch.watch_stderr(workdir / "checkpoints", _same_command())
    program.use_compile_cache(config.compile_cache_dir, default=str(workdir / "compile_cache"))
    try:
        plan = run_plan.checked_plan(config)
    except (ValueError, FileNotFoundError) as error:
        _exit_now(f"maepp.train: {error}")
    # Imported once the config has passed its checks: the loop brings in TensorFlow (tf.data,
    # TensorBoard), seconds of start-up that --help and a bad config need not wait for.
    from maepp.data.clip_store import DamagedClip
    from maepp.train_loop import say, train

    notice = config_checks.held_out_notice(config, plan.resolved)
    announce = [f"maepp.train: {notice}"] if notice else []
    announce.append(
        f"writing to {workdir}: checkpoints/, tensorboard/ (tensorboard --logdir {workdir / 'tensorboard'})"
        + (", pictures/NAME/ (input | masked | reconstruction)" if config_checks.held_out_sources(config) else "")
    )

    try:
        final = train(config, _WORKDIR.value, plan, _RESUME_WITH_CHANGED.value, announce)
    except DamagedClip as error:
        _exit_now(f"maepp.train: {error}. The newest complete checkpoint is {checkpoints.newest_complete(workdir)}")
    except (
        FloatingPointError,
        ValueError,
        FileNotFoundError,
        checkpoints.CheckpointSaveError,
        WorkdirInUse,
        WorkdirLost,
    ) as error:
        _exit_now(f"maepp.train: {error}")
    except Exception as error:  # noqa: BLE001 - a fault or a bug: its traceback, what survived, the same prompt exit
        lost = job_watch.lost_process(error) if jax.process_count() > 1 else ""
        if lost:
            _exit_now(job_watch.job_lost(lost, checkpoints.newest_complete(workdir), _same_command()))
        full = program.out_of_space(error)
        if full:  # whatever wrote first: a picture, TensorBoard's events, a checkpoint
            _exit_now(
                f"maepp.train: out of space ({full}); the newest complete checkpoint is "
                f"{checkpoints.newest_complete(workdir)}. Free space, then re-run the same command to resume "
                "from it"
            )
        _exit_now(f"{traceback.format_exc().rstrip()}\n{_what_survived()}")
    if final["interrupted"]:
        _exit_now(
            f"maepp.train: stopped by Ctrl-C after saving step {final['step']} in {workdir / 'checkpoints'}; "
            "the same command resumes from it",
            status=130,
        )
    say(
        f"stopped at step {final['step']}, loss {final.get('loss', np.nan):.4f}; newest checkpoint: "
        f"{checkpoints.newest_complete(workdir)}"
    )


def run():
    program.run_cli(main, "maepp.train")


if __name__ == "__main__":
    run()
