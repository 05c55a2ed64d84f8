r"""Pretraining: config -> mesh -> data -> state (fresh or resumed) -> step -> loop.

    python -m maepp.train --config configs/audiomaepp.py:base --workdir DIR [--config.batch_size=512]

Runs on one CPU, one GPU box or a pod slice alike; with several processes, start one per host
(jax.distributed picks up the cluster's environment; see --coordinator). Re-running the same
command resumes from the newest checkpoint in DIR, data position included: the resumed run
sees exactly the batches and masks the uninterrupted run would have. SIGTERM (and a TPU
preemption notice) saves a checkpoint at the current step and exits cleanly.
"""
import signal
import sys
import threading

import jax
import numpy as np
from absl import app, flags, logging
from clu import metric_writers, parameter_overview, periodic_actions
from ml_collections import config_flags

from maepp import checkpoints, config_files, distributed, optim, sharding
from maepp.audio import jax_frontend
from maepp.data.pipeline import WAVEFORM_CROP_KEYS, SkipReport, train_dataset
from maepp.data.sources import source_from_string
from maepp.evaluators.held_out import HeldOutEvaluation
from maepp.evaluators.pictures import reconstruction_grid, write_png
from maepp.models import MaskedAutoencoder, ModelSpec
from maepp.train_step import make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. configs/audiomaepp.py:base")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and TensorBoard logs go here; resumes from it.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process job that JAX detects itself (a TPU VM pod slice). Slurm and "
    "Open MPI jobs of several tasks are detected without it.")


class StopRequest:
    """Set by SIGTERM; the loop checks it between steps, saves and exits."""

    def __init__(self):
        self._event = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self._event.set())

    def __bool__(self):
        return self._event.is_set()


def _say(message: str):
    if jax.process_index() == 0:
        print(message, flush=True)


def train(config, workdir) -> dict:
    """Trains to config.total_steps (or until stopped); returns the last step's metrics."""
    workdir = checkpoints.workdir_path(workdir)
    stop = StopRequest()
    # Mesh.
    mesh = sharding.make_mesh(config.mesh)
    if config.batch_size % jax.process_count():
        raise ValueError(f"config.batch_size {config.batch_size} is not divisible by {jax.process_count()} processes")
    # Model and state: resumed from the newest checkpoint, or fresh.
    spec = ModelSpec.from_config(config.model)
    model = MaskedAutoencoder(spec)
    optimizer = optim.optimizer(config)
    state, state_shardings = sharding.create_sharded_state(model, optimizer, mesh, jax.random.key(config.seed))
    ckpt = checkpoints.manager(workdir, keep=config.keep_checkpoints, keep_period=config.keep_period or None)
    position, first_step = 0, 1
    restored = checkpoints.restore_latest(ckpt, state, state_shardings)
    if restored is not None:
        done_step, state, position = restored
        first_step = done_step + 1
        _say(f"resumed from step {done_step} of {ckpt.directory} (data position {position})")
    # Data: this process's share of every global batch.
    report = SkipReport()
    batches = train_dataset(
        source_from_string(config.data.source, config.data.data_dir or None),
        seed=config.seed,
        batch_size=config.batch_size // jax.process_count(),
        crop_frames=spec.input_size[0],
        start_position=position,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        report=report,
        frontend=config.data.frontend,
    ).as_numpy_iterator()
    to_log_mel = jax_frontend.in_train_step(config.data.frontend)
    train_step = sharding.sharded_train_step(make_train_step(model, optimizer, to_log_mel), state_shardings, mesh)
    # Reporting: process 0 writes TensorBoard events; the others only log.
    writer = metric_writers.create_default_writer(str(workdir / "tensorboard"), just_logging=jax.process_index() > 0)
    if jax.process_index() == 0:  # what maepp.export and maepp.hear rebuild the model from
        (workdir / "config.json").write_text(config.to_json(indent=2))
    if first_step == 1:
        parameter_overview.log_parameter_overview(state.params)
        writer.write_hparams({k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str))})
    hooks = [periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer)]
    if config.profile.first_step and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(
            logdir=workdir / "tensorboard", first_profile=config.profile.first_step,
            num_profile_steps=config.profile.num_steps, every_secs=config.profile.every_secs,
        ))
    held_out = HeldOutEvaluation(config, model, mesh, state_shardings.params) if config.data.eval_source else None

    schedule = optim.schedule(config)  # for the logged learning rate
    base_rng = jax.random.key(config.seed + 1)
    nonfinite_in_a_row, metrics = 0, {}
    step = first_step - 1
    for step in range(first_step, config.total_steps + 1):
        batch = next(batches)
        position = int(batch["position"][-1]) + 1
        inputs = {key: batch[key] for key in WAVEFORM_CROP_KEYS} if to_log_mel else batch["log_mel"]
        inputs = jax.tree.map(lambda rows: sharding.global_batch(rows, mesh), inputs)
        state, metrics = train_step(state, inputs, jax.random.fold_in(base_rng, step))
        for hook in hooks:
            hook(step)
        skipped = int(metrics["skipped"])
        nonfinite_in_a_row = nonfinite_in_a_row + 1 if skipped else 0
        if step % config.log_every == 0 or step == first_step or skipped:
            scalars = {k: float(v) for k, v in metrics.items()}
            update = (step - 1) // config.optimizer.accumulate_steps
            scalars.update(learning_rate=float(schedule(update)), skipped_clips=report.skips)
            writer.write_scalars(step, scalars)
        preempted = bool(stop) or ckpt.reached_preemption(step)
        if nonfinite_in_a_row >= config.max_nonfinite_steps:
            ckpt.wait_until_finished()
            raise FloatingPointError(
                f"{nonfinite_in_a_row} steps in a row had a non-finite loss or gradient (last: step {step}); "
                f"parameters were not updated by them. The last good checkpoint is step {ckpt.latest_step()} "
                f"in {ckpt.directory}; lower the learning rate or enable config.optimizer.grad_clip"
            )
        if held_out and not preempted and (step % config.eval_every == 0 or step == config.total_steps):
            evaluate(held_out, state.params, step, writer, workdir)
        # No interval saves during a non-finite streak: the newest checkpoint stays before it.
        interval = step % config.checkpoint_every == 0 and not nonfinite_in_a_row
        if interval or preempted or step == config.total_steps:
            checkpoints.save(ckpt, step, state, position)
        if preempted:
            _say(f"stop requested: saved step {step}, exiting")
            break
    ckpt.wait_until_finished()
    ckpt.close()
    writer.flush()
    if report.skips:
        logging.warning("%d clips skipped (%d distinct files): %s", report.skips, len(report.reasons), report.reasons)
    return dict(step=step, **{k: float(v) for k, v in metrics.items()})


def evaluate(held_out: HeldOutEvaluation, params, step: int, writer, workdir):
    """Held-out loss to TensorBoard; pictures to TensorBoard and WORKDIR/pictures (process 0)."""
    loss, pictures = held_out(params)
    writer.write_scalars(step, dict(eval_loss=loss, eval_skipped_clips=held_out.report.skips))
    if jax.process_index() == 0:
        grid = reconstruction_grid(pictures)
        writer.write_images(step, dict(reconstruction=grid[None]))
        write_png(workdir / "pictures" / f"step_{step:07d}.png", grid)


def main(argv):
    del argv
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("--config and --workdir are required")
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, force=_DISTRIBUTED.value)
    # Orbax and JAX log every save at INFO; the run's own news is printed.
    logging.set_verbosity(logging.WARNING)
    try:
        final = train(_CONFIG.value, _WORKDIR.value)
    except (FloatingPointError, ValueError, FileNotFoundError) as error:
        sys.exit(f"maepp.train: {error}")
    workdir = checkpoints.workdir_path(_WORKDIR.value)
    _say(f"stopped at step {final['step']}, loss {final.get('loss', np.nan):.4f}")
    _say(f"checkpoints: {workdir / 'checkpoints'}")
    _say(f"TensorBoard: tensorboard --logdir {workdir / 'tensorboard'}")
    if _CONFIG.value.data.eval_source:
        _say(f"pictures (input | masked | reconstruction): {workdir / 'pictures'}")


def run():
    app.run(main, argv=config_files.resolve_argv(sys.argv))


if __name__ == "__main__":
    run()
