"""The train loop: config -> mesh -> data -> state (fresh or resumed) -> step -> loop, as
`python -m maepp.train` (maepp/train.py, its flags and messages) runs it."""

import collections
import dataclasses
import functools
import itertools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from jax.experimental import multihost_utils

from maepp import checkpoints, distributed, optim, pause_points, progress, sharding
from maepp.audio import filterbanks, jax_frontend
from maepp.cadence import Cadence
from maepp.config_checks import resume_changes, saved_by_an_earlier_maepp
from maepp.data.pipeline import WAVEFORM_CROP_KEYS, SkipReport, reraise_damaged, train_dataset
from maepp.data.settings import Shuffle
from maepp.evaluator_kinds import EvaluationStopped, RunContext
from maepp.evaluators.pictures import write_png
from maepp.evaluators.registry import make_evaluators
from maepp.models import MaskedAutoencoder
from maepp.models.counts import train_flops_per_example
from maepp.prefetch import Prefetcher
from maepp.progress import Throughput
from maepp.run_plan import RunPlan, checked_plan
from maepp.stop_request import StopRequest
from maepp.train_step import make_train_step
from maepp.workdir_lock import WorkdirInUse, WorkdirLock, WorkdirLost


def say(message: str):
    if jax.process_index() == 0:
        print(message, flush=True)


def train(config, workdir, plan: RunPlan | None = None, resume_with_changed=(), announce=()) -> dict:
    """Trains to config.total_steps (or until stopped); returns the last log step's figures and
    the run's throughput after its first step (compilation).

    Everything a user can get wrong in the config is checked first (maepp.run_plan; `plan`, where
    the caller has made it already), before the workdir is taken (one run per workdir,
    maepp/workdir_lock.py) and anything is compiled. A workdir that holds checkpoints is resumed
    only with settings its run can go on with (config_checks.resume_changes): resume_with_changed
    names the fields whose change is meant nevertheless. The `announce` lines are said once the
    workdir is this run's and its settings may go on: a refused run says only why.
    """
    workdir = checkpoints.workdir_path(workdir)
    plan = plan or checked_plan(config)
    mesh, resolved = plan.mesh, plan.resolved
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    refusal = _on_process_0(
        lock.acquire if lock else None, WorkdirInUse, f"{workdir} is in use by another run (process 0 found it taken)"
    )
    if refusal:
        raise WorkdirInUse(refusal)
    changes = []
    saved = workdir / "config.json"
    if checkpoints.complete_steps(workdir) and saved.exists():
        try:
            saved_config = ml_collections.ConfigDict(json.loads(saved.read_text()))
            saved_by_an_earlier_maepp(saved_config, workdir)
            changes = resume_changes(saved_config, config, resume_with_changed, resolved)
        except ValueError:
            if lock is not None:
                lock.release()
            raise

    def check_workdir_held():
        """Before every save: raises WorkdirLost on every process if the workdir was taken over."""
        lost = _on_process_0(
            lock.check_held if lock else None,
            WorkdirLost,
            f"{workdir} was taken over by another run (process 0 found it taken)",
        )
        if lost:
            raise WorkdirLost(f"{lost}; this run stopped before its next save")

    try:
        for line in announce:  # said once the workdir is this run's and its settings may go on
            say(line)
        _record_start(workdir, mesh, resolved)
        return _train(config, workdir, plan, check_workdir_held, changes)
    finally:
        if lock is not None:
            lock.release()


def _on_process_0(check, refused, elsewhere: str) -> str:
    """The lock's verdict on every process: check() runs on process 0 (the others pass None);
    -> the text of the `refused` error it raised there, `elsewhere` on the other processes, or ""."""
    message = ""
    if check is not None:
        try:
            check()
        except refused as error:
            message = str(error)
    if jax.process_count() > 1 and multihost_utils.broadcast_one_to_all(np.int32(bool(message))):
        message = message or elsewhere
    return message


def _record_start(workdir, mesh, resolved: dict):
    """One line per start of the run in WORKDIR/run_info.jsonl (process 0): when, on what, what
    the config's "auto" choices resolved to, and which restart of its launcher it is (launch/:
    $MAEPP_RESTART after a failure, 0 otherwise). A resumed run may start on other hardware."""
    if jax.process_index() != 0:
        return
    start = dict(
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        restart=int(os.environ.get("MAEPP_RESTART", "0")),
        processes=jax.process_count(),
        backend=jax.default_backend(),
        device_kind=jax.devices()[0].device_kind,
        mesh=dict(mesh.shape),
        jax=jax.__version__,
        resolved=resolved,
    )
    info = workdir / "run_info.jsonl"
    earlier = info.read_text() if info.exists() else ""  # gs:// objects cannot be appended to
    info.write_text(earlier + json.dumps(start) + "\n")


@dataclasses.dataclass
class Run:
    """What the loop runs on, made by _set_up: the state and the step that comes next, the step
    function, the batches, and where the figures go."""

    mesh: jax.sharding.Mesh
    state: Any  # maepp.train_step.TrainState, sharded
    first_step: int  # 1, or the step after the checkpoint resumed from
    ckpt: Any  # orbax CheckpointManager
    train_step: Callable
    batches: Prefetcher  # -> (global batch, the data position after it)
    report: SkipReport  # clips the input skipped, and why
    writer: Any  # clu metric writer
    hooks: list  # clu periodic actions (the profiler)
    evaluators: dict  # name -> evaluator (maepp/evaluators/registry.py)
    throughput: Throughput
    learning_rate: Callable  # update number -> learning rate, for the log
    cadence: Cadence


def _train(config, workdir, plan: RunPlan, check_workdir_held, changes) -> dict:
    stop = StopRequest(workdir)
    run = None
    try:
        run = _set_up(config, workdir, plan, changes)
        step, means, rates = _loop(run, config, workdir, stop, check_workdir_held)
        checkpoints.finish_saves(run.ckpt)  # with the stop request's handlers: a second Ctrl-C exits at once
    except BaseException:
        if run is not None:
            _finish_saves_in_flight(run.ckpt)
        raise
    finally:
        if run is not None:
            run.batches.close()
            # clu writes in a thread of its own: a run that fails (and exits at once, maepp/program.py
            # exit_now) would lose its last steps' TensorBoard events, which say why it failed.
            run.writer.flush()
        stop.close()
    run.ckpt.close()
    if run.report.skips:
        logging.warning(
            "%d clips skipped (%d distinct files): %s", run.report.skips, len(run.report.reasons), run.report.reasons
        )
    return dict(step=step, interrupted=stop.interrupted, **means, **rates, **run.throughput.run_rates())


def _set_up(config, workdir, plan: RunPlan, changes) -> Run:
    """The state (resumed from the newest checkpoint that restores, or fresh), the data from its
    position, the compiled step's function, and the run's writers."""
    mesh, spec, sources = plan.mesh, plan.spec, plan.sources
    model = MaskedAutoencoder(spec)
    optimizer = optim.optimizer(config)
    abstract, state_shardings = sharding.abstract_state(model, optimizer, mesh)
    ckpt = checkpoints.manager(workdir, keep=config.keep_checkpoints, keep_period=config.keep_period or None)
    start_position, first_step = 0, 1
    other_layout = functools.partial(sharding.abstract_state_in_other_layout, model, optimizer, mesh)
    restored = checkpoints.restore_latest(ckpt, abstract, state_shardings, other_layout)
    if restored is None:  # a fresh state only where none restores: a resumed run never holds two
        state = sharding.fresh_state(model, optimizer, state_shardings, jax.random.key(config.seed))
    else:
        done_step, state, data = restored
        start_position, moved = checkpoints.resume_position(data, done_step)
        first_step = done_step + 1
        say(f"resumed from step {done_step} of {ckpt.directory} (data position {start_position})")
        for line in ([moved] if moved else []) + changes:
            say(line)
    report = SkipReport()
    filterbank = filterbanks.from_config(config)
    to_log_mel = jax_frontend.in_train_step(config.data.frontend, filterbank)
    next_global_batch = _global_batches(
        config,
        mesh,
        spec,
        sources["data.source"],
        start_position,
        report,
        filterbank,
        waveforms=to_log_mel is not None,
        shuffle=Shuffle.from_config(config.data, plan.resolved),
    )
    train_step = sharding.sharded_train_step(make_train_step(model, optimizer, to_log_mel), state_shardings, mesh)
    # Reporting: process 0 writes TensorBoard events; the others only log.
    writer = metric_writers.create_default_writer(str(workdir / "tensorboard"), just_logging=jax.process_index() > 0)
    if jax.process_index() == 0:  # what maepp.export and maepp.hear rebuild the model from
        (workdir / "config.json").write_text(config.to_json(indent=2))
    if first_step == 1:  # statistics computed where the parameters lie: no process holds them all
        overview = parameter_overview.get_parameter_overview(state.params, include_stats="global")
        writer.write_texts(0, {"parameter_overview": f"<pre>{overview}</pre>"})
        writer.write_hparams({k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str))})
    hooks = []
    if config.profile.first_step and jax.process_index() == 0:
        hooks.append(
            periodic_actions.Profile(
                logdir=workdir / "tensorboard",
                first_profile=config.profile.first_step,
                num_profile_steps=config.profile.num_steps,
                every_secs=config.profile.every_secs,
            )
        )
    evaluators = make_evaluators(
        config.get("evals", {}), RunContext(model, mesh, state_shardings.params, filterbank, config.seed), sources
    )
    throughput = Throughput(
        train_flops_per_example(spec) * config.batch_size, config.batch_size, config.total_steps, mesh.devices.flatten()
    )
    batches = Prefetcher(next_global_batch, depth=config.data.prefetch)  # its thread starts making them now
    return Run(
        mesh=mesh,
        state=state,
        first_step=first_step,
        ckpt=ckpt,
        train_step=train_step,
        batches=batches,
        report=report,
        writer=writer,
        hooks=hooks,
        evaluators=evaluators,
        throughput=throughput,
        learning_rate=optim.schedule(config),
        cadence=Cadence.from_config(config, first_step, list(evaluators)),
    )


def _global_batches(
    config,
    mesh,
    spec,
    source,
    start_position: int,
    report: SkipReport,
    filterbank: str,
    waveforms: bool,
    shuffle: Shuffle,
) -> Callable:
    """-> a function giving the next global batch and the data position after it: this process's
    rows of every global batch (maepp/data/order.py), from start_position, made global arrays;
    waveforms: the crops' samples go to the step (its front end), else their log-mels."""
    batches = train_dataset(
        source,
        seed=config.seed,
        batch_size=config.batch_size,
        rows=sharding.process_rows(mesh, config.batch_size),
        crop_frames=spec.input_size[0],
        start_position=start_position,
        report=report,
        frontend=config.data.frontend,
        filterbank=filterbank,
        damaged_clips=config.data.damaged_clips,
        shuffle=shuffle,
    ).as_numpy_iterator()
    made = itertools.count(1)

    def next_global_batch():
        try:
            batch = next(batches)
        except Exception as error:
            reraise_damaged(error)
            raise
        inputs = {key: batch[key] for key in WAVEFORM_CROP_KEYS} if waveforms else batch["log_mel"]
        # The position after this batch: what a checkpoint taken after its step records.
        position = start_position + next(made) * config.batch_size
        return jax.tree.map(lambda rows: sharding.global_batch(rows, mesh, config.batch_size), inputs), position

    return next_global_batch


def _loop(run: Run, config, workdir, stop: StopRequest, check_workdir_held: Callable) -> tuple:
    """Steps from run.first_step to config.total_steps or a stop; -> (last step, its log's means and rates)."""
    base_rng = jax.random.key(config.seed + 1)
    window = progress.new_window(sharding.replicated(run.mesh))
    in_flight = collections.deque()  # the host waits for the step `steps_in_flight` before the newest
    state, means, rates = run.state, {}, {}
    step = run.first_step - 1
    for step in range(run.first_step, config.total_steps + 1):
        inputs, position = next(run.batches)
        state, metrics = run.train_step(state, inputs, jax.random.fold_in(base_rng, step))
        window = progress.accumulate(window, metrics)
        in_flight.append(metrics["loss"])
        if len(in_flight) > config.steps_in_flight:
            in_flight.popleft().block_until_ready()
        for hook in run.hooks:
            hook(step)
        stop_requested = stop.reached()  # on every process at every step (maepp/stop_request.py)
        # A failed asynchronous save stops the run at the next step, in one line: no step trains
        # on after it (a flag Orbax's thread sets; checking it costs nothing).
        checkpoints.check_saves(run.ckpt)
        if not run.cadence.log_due(step, stop_requested):
            continue  # the host never waits for the devices here
        means = progress.window_means(window)
        window = progress.new_window(sharding.replicated(run.mesh), streak=means["nonfinite_in_a_row"])
        rates, waits_s = _log(run, config, step, means, rates)
        pause_points.reached("logged", step)
        if means["nonfinite_in_a_row"] >= config.max_nonfinite_steps:
            checkpoints.finish_saves(run.ckpt)
            raise FloatingPointError(
                f"{means['nonfinite_in_a_row']} steps in a row had a non-finite loss or gradient (last: step "
                f"{step}); parameters were not updated by them. The last good checkpoint is step "
                f"{run.ckpt.latest_step()} in {run.ckpt.directory}; lower the learning rate or enable "
                "config.optimizer.grad_clip"
            )
        due = run.cadence.evals_due(step, stop_requested)
        if due:
            evaluators = {name: run.evaluators[name] for name in due}
            if not evaluate(evaluators, state.params, step, run.writer, workdir, stop.between):
                stop_requested = True  # a stop ended an evaluation: save now
            run.throughput.start(step, waits_s)  # evaluation time is not training speed
        if run.cadence.save_due(step, stop_requested, means["nonfinite_in_a_row"]):
            check_workdir_held()
            checkpoints.save(run.ckpt, step, state, position)
            pause_points.reached("saved", step)
        if stop_requested:
            say(f"stop requested: saved step {step}, exiting")
            break
    return step, means, rates


def _log(run: Run, config, step: int, means: dict, rates: dict) -> tuple:
    """One log step's figures to TensorBoard and the console; -> (throughput rates, every
    process's input wait). The first step's time is compilation's, not the run's speed."""
    skipped_clips, waits_s = distributed.every_process([run.report.skips, run.batches.wait_s]).T
    if step == run.first_step:
        run.throughput.start(step, waits_s)
    else:
        rates = run.throughput.report(step, waits_s)
    update = (step - 1) // config.optimizer.accumulate_steps
    run.writer.write_scalars(
        step,
        dict(
            loss=means["loss"],
            grad_norm=means["grad_norm"],
            skipped=means["skipped"],
            learning_rate=float(run.learning_rate(update)),
            skipped_clips=int(skipped_clips.sum()),
            **{k: v for k, v in rates.items() if k != "input_wait_host"},
        ),
    )
    say(progress.console_line(step, config.total_steps, means, rates, int(skipped_clips.sum()), jax.process_count()))
    return rates, waits_s


def _finish_saves_in_flight(ckpt):
    """After a failure in one process: let an asynchronous save already under way complete, so
    the step it holds survives. (With several processes it needs them all, and they may be
    stuck: then the save is left, and the newest complete step before it is what survives.)"""
    if jax.process_count() > 1:
        return
    try:
        ckpt.wait_until_finished()
    except Exception as error:  # noqa: BLE001 - the failure being raised matters more
        logging.warning("a checkpoint save in flight failed too: %s", error)


def evaluate(evaluators: dict, params, step: int, writer, workdir, between) -> bool:
    """The evaluators due at this step, in config order, each's Metrics written alike
    (maepp/evaluator_kinds.py): scalars to TensorBoard as NAME/KEY, with the time it took
    (eval_seconds/NAME); images to TensorBoard as NAME/KEY and to
    WORKDIR/pictures/NAME/step_NNNNNNN.png (a second image: NAME/KEY/step_...), by process 0;
    one console line holds every evaluator's text. between: the stop request's, which an
    evaluator's batches pass through; -> False if a stop ended an evaluation (nothing of it
    written, the rest not run)."""
    parts = []
    for name, evaluator in evaluators.items():
        started = time.perf_counter()
        try:
            metrics = evaluator.run(params, between)
        except EvaluationStopped as stopped:
            parts.append(f"{name}: stopped {stopped} ({time.perf_counter() - started:.1f} s), not written")
            say(f"step {step} | " + " | ".join(parts))
            return False
        seconds = time.perf_counter() - started
        writer.write_scalars(
            step, {**{f"{name}/{k}": v for k, v in metrics.scalars.items()}, f"eval_seconds/{name}": seconds}
        )
        if metrics.images and jax.process_index() == 0:
            writer.write_images(step, {f"{name}/{k}": image[None] for k, image in metrics.images.items()})
            for number, (key, image) in enumerate(metrics.images.items()):
                folder = workdir / "pictures" / name / (key if number else "")
                write_png(folder / f"step_{step:07d}.png", image)
        parts.append(f"{metrics.text} ({seconds:.1f} s)")
    say(f"step {step} | " + " | ".join(parts))
    return True
