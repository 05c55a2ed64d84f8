"""The train loop's parts: input made ahead on a thread, metrics kept on the devices between log steps."""

import os
import signal
import threading

import jax
import numpy as np
import pytest

from maepp import progress
from maepp.prefetch import Prefetcher


def test_the_next_batches_are_made_while_the_step_runs():
    """While the consumer holds item 0 (a slow step), the thread makes items 1 and 2; made one
    after the other, the consumer would wait here forever (the events time out instead)."""
    made = [threading.Event() for _ in range(4)]
    counter = iter(range(4))

    def make_item():
        i = next(counter)
        made[i].set()
        return i

    prefetch = Prefetcher(make_item, depth=2)
    assert next(prefetch) == 0
    assert made[1].wait(10) and made[2].wait(10)  # queued ahead of the step in progress
    assert [next(prefetch) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(StopIteration):
        next(prefetch)
    prefetch.close()


def test_an_input_error_reaches_the_loop_at_its_batch():
    items = iter([0, 1])

    def make_item():
        item = next(items, None)
        if item is None:
            raise ValueError("clip 2 of shard 7 is not audio")
        return item

    prefetch = Prefetcher(make_item, depth=1)
    assert [next(prefetch), next(prefetch)] == [0, 1]
    for _ in range(2):  # and again, not a hang
        with pytest.raises(ValueError, match="clip 2 of shard 7"):
            next(prefetch)
    prefetch.close()


def _metrics(loss, skipped):
    return dict(loss=np.float32(loss), grad_norm=np.float32(2 * loss), skipped=np.int32(skipped))


def test_the_window_averages_finite_steps_and_counts_the_non_finite_run():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    window = progress.new_window(sharding)
    for loss, skipped in ((1.0, 0), (3.0, 0), (np.nan, 1), (np.inf, 1)):
        window = progress.accumulate(window, _metrics(loss, skipped))
    means = progress.window_means(window)
    assert means == dict(loss=2.0, grad_norm=4.0, skipped=2, nonfinite_in_a_row=2)
    # The next window starts from zero sums but keeps the run of non-finite steps going.
    window = progress.new_window(sharding, streak=means["nonfinite_in_a_row"])
    window = progress.accumulate(window, _metrics(np.nan, 1))
    means = progress.window_means(window)
    assert means["nonfinite_in_a_row"] == 3 and means["skipped"] == 1 and np.isnan(means["loss"])
    window = progress.accumulate(window, _metrics(0.5, 0))
    assert progress.window_means(window)["nonfinite_in_a_row"] == 0


def test_throughput_is_measured_between_reports_and_named_on_the_console():
    devices = [type("Device", (), {"device_kind": "NVIDIA H100 80GB HBM3"})()] * 2
    throughput = progress.Throughput(flops_per_step=989e12, batch_size=64, total_steps=100, devices=devices)
    throughput.start(10, [0.0])
    throughput._last = (10, throughput._last[1] - 4.0, np.zeros(1))  # as if 4 s had passed since step 10
    rates = throughput.report(20, [1.0])
    # rel 0.01: the clock moves on between the test's lines (micro-seconds of 4 s)
    assert rates["steps_per_s"] == pytest.approx(2.5, rel=0.01)
    assert rates["clips_per_s"] == pytest.approx(160, rel=0.01)
    assert rates["mfu"] == pytest.approx(2.5 / 2, rel=0.01)  # one peak's FLOPs per step over 2 devices
    assert rates["input_wait"] == pytest.approx(0.25, rel=0.01)
    line = progress.console_line(20, 100, dict(loss=0.25, skipped=0), rates)
    assert line.startswith("step 20/100 | loss 0.2500 | 160.0 clips/s") and "MFU 125.0%" in line
    assert line.endswith("input wait 25%")  # 10 steps but 4 s timed: no ETA yet
    throughput._last = (20, throughput._last[1] - 8.0, np.ones(1))  # 20 more steps in 8 s
    rates = throughput.report(40, [1.0])
    assert rates["eta_s"] == pytest.approx(60 * 12 / 30, rel=0.01)  # 60 steps to go at the run's 12 s per 30
    assert progress.console_line(40, 100, dict(loss=0.25, skipped=0), rates).endswith("input wait 0% | ETA 0m24s")
    assert throughput.run_rates()["run_steps_per_s"] == pytest.approx(2.5, rel=0.01)


def test_the_slowest_hosts_input_wait_is_reported_and_named_and_skips_are_the_runs():
    devices = [type("Device", (), {"device_kind": "cpu"})()] * 8
    throughput = progress.Throughput(flops_per_step=1e9, batch_size=64, total_steps=100, devices=devices)
    throughput.start(10, [0.5, 0.0, 2.0])
    throughput._last = (10, throughput._last[1] - 4.0, throughput._last[2])  # 4 s since step 10
    rates = throughput.report(20, [1.0, 0.2, 5.0])  # process 2 waited 3 s of the 4
    assert rates["input_wait"] == pytest.approx(0.75, rel=0.01) and rates["input_wait_host"] == 2
    line = progress.console_line(20, 100, dict(loss=0.25, skipped=0), rates, skipped_clips=7, processes=3)
    assert "| 7 clips skipped |" in line and line.endswith("input wait 75% (slowest: process 2)")


@pytest.mark.e2e
@pytest.mark.long(seconds=30)
def test_evaluations_and_saves_happen_on_their_own_steps_between_log_steps(tmp_path, capsys):
    """The loop reads the devices only at log steps, except where a save or an evaluation is due."""
    from maepp.configs import audiomaepp
    from maepp.train_loop import train
    from tests.helpers import logged_scalars

    config = audiomaepp.get_config("micro")
    config.update(batch_size=8, total_steps=10, warmup_steps=1, log_every=7, checkpoint_every=4)
    config.evals.held_out.update(source="synthetic:16:1", every=5, batch_size=8)
    train(config, tmp_path)
    assert sorted(logged_scalars(tmp_path)) == [1, 4, 5, 7, 8, 10]  # first, saves, evaluation, log step, last
    eval_loss = logged_scalars(tmp_path, "held_out/loss")
    assert sorted(eval_loss) == [5, 10]
    seconds = logged_scalars(tmp_path, "eval_seconds/held_out")
    assert sorted(seconds) == [5, 10] and all(s > 0 for s in seconds.values())  # what each evaluation took
    assert f"step 5 | held-out loss {eval_loss[5]:.4f} ({seconds[5]:.1f} s)" in capsys.readouterr().out.splitlines()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 8, 10]


@pytest.mark.e2e
@pytest.mark.long(seconds=30)
def test_a_stop_during_an_evaluation_ends_it_between_batches_and_saves_at_once(tmp_path, capsys, monkeypatch):
    """SIGTERM during step 2's evaluations, in config order: the held-out one (8 batches) has run
    and is written; the probe's first, reading its task's 15 clips, is stopped after the tenth and
    writes nothing; the run saves step 2 and exits, as a preempted job must within seconds, not
    after the whole evaluation."""
    from maepp.configs import audiomaepp
    from maepp.downstream.synthetic_tasks import write_task
    from maepp.train_loop import train
    from tests.helpers import PausePoint, logged_scalars

    config = audiomaepp.get_config("micro")
    config.update(batch_size=8, total_steps=4, warmup_steps=1, log_every=1, checkpoint_every=100)
    config.evals.held_out.update(source="synthetic:64:1", every=2, batch_size=8)
    task = write_task(tmp_path / "task", "classes", {"train": 2, "test": 1}, seconds=1.0)
    config.evals.probe = dict(type="probe", task=str(task), every=2, shots=0, l2=1.0, batch_size=8)
    held = PausePoint(tmp_path, "evaluation@10")  # the held-out evaluation's 8 batches never reach 10
    for variable, value in held.environment.items():
        monkeypatch.setenv(variable, value)

    class ThisProcess:  # what PausePoint.wait watches: the test's own process, running
        poll = staticmethod(lambda: None)

    def signal_when_held():
        held.wait(ThisProcess)
        os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, which the point holds
        held.release()

    signaller = threading.Thread(target=signal_when_held, daemon=True)
    signaller.start()
    result = train(config, tmp_path / "run")
    signaller.join(timeout=60)
    out = capsys.readouterr().out.splitlines()
    assert result["step"] == 2 and not result["interrupted"]
    loss = logged_scalars(tmp_path / "run", "held_out/loss")
    line = next(line for line in out if line.startswith("step 2 | held-out loss "))
    assert (
        line.startswith(f"step 2 | held-out loss {loss[2]:.4f} (") and " | probe: stopped after 10 clips read (" in line
    )
    assert line.endswith("s), not written") and out[-1] == "stop requested: saved step 2, exiting"
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()) == [2]
    assert sorted(logged_scalars(tmp_path / "run")) == [1, 2] and not logged_scalars(
        tmp_path / "run", "classes/accuracy"
    )
