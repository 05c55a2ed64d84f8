"""What the train loop reports at a log step, read from the devices only then.

Every step adds its metrics to a window of sums that stays on the devices (`accumulate`, jitted,
dispatched behind the step). A log step reads the window once: means over the window, not the
last step's values, and the run of non-finite steps in a row, which the loop checks there.
Throughput (clips/s, achieved TFLOP/s and MFU against the chip's peak, the share of wall time
spent waiting for input, ETA) comes from the host's clock between two reads. The input wait is
the slowest host's: every process's wait is gathered at a log step, and a straggler is named.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from maepp import hardware


def new_window(sharding, streak=0) -> dict:
    """Zero sums (and a non-finite streak carried over from the last window), placed on `sharding`."""
    zeros = dict(loss=0.0, grad_norm=0.0, finite_steps=0, skipped=0, streak=streak)
    return jax.device_put(
        {k: np.asarray(v, np.float32 if isinstance(v, float) else np.int32) for k, v in zeros.items()}, sharding
    )


@jax.jit
def accumulate(window: dict, metrics: dict) -> dict:
    """One step's metrics (loss, grad_norm, skipped) into the window; skipped steps add no loss."""
    skipped = metrics["skipped"]
    finite = skipped == 0
    return dict(
        loss=window["loss"] + jnp.where(finite, metrics["loss"], 0.0),
        grad_norm=window["grad_norm"] + jnp.where(finite, metrics["grad_norm"], 0.0),
        finite_steps=window["finite_steps"] + finite.astype(jnp.int32),
        skipped=window["skipped"] + skipped,
        streak=jnp.where(finite, 0, window["streak"] + 1),
    )


def window_means(window: dict) -> dict:
    """The window read to the host: mean loss and gradient norm of its finite steps, its skipped
    steps, and the non-finite steps in a row up to now."""
    host = jax.device_get(window)
    finite = int(host["finite_steps"])
    mean = lambda total: float(total) / finite if finite else float("nan")
    return dict(
        loss=mean(host["loss"]),
        grad_norm=mean(host["grad_norm"]),
        skipped=int(host["skipped"]),
        nonfinite_in_a_row=int(host["streak"]),
    )


ETA_AFTER_STEPS, ETA_AFTER_SECONDS = 10, 10.0  # timed steps and seconds before the console shows an ETA


class Throughput:
    """Rates between consecutive log steps, from the host clock and every process's input wait."""

    def __init__(self, flops_per_step: float, batch_size: int, total_steps: int, devices):
        self.flops_per_step, self.batch_size, self.total_steps = flops_per_step, batch_size, total_steps
        self.n_devices = len(devices)
        self.peak = hardware.peak_flops(devices[0].device_kind)
        self._last = None  # (step, time, each process's input wait so far)
        self.timed = dict(steps=0, seconds=0.0, wait_s=0.0)  # over every reported window (slowest host)

    def start(self, step: int, waits_s):
        """Marks the clock at `step` (done); the next report covers the steps after it.
        waits_s: each process's input wait so far [processes]."""
        self._last = (step, time.perf_counter(), np.asarray(waits_s, np.float64))

    def report(self, step: int, waits_s) -> dict:
        """Rates over the steps since the last mark, which this call moves to `step`."""
        last_step, last_time, last_waits = self._last
        now = time.perf_counter()
        waits_s = np.asarray(waits_s, np.float64)
        self._last = (step, now, waits_s)
        seconds, steps = now - last_time, step - last_step
        if steps <= 0 or seconds <= 0:
            return {}
        waited = waits_s - last_waits
        slowest = int(np.argmax(waited))
        for key, value in (("steps", steps), ("seconds", seconds), ("wait_s", waited[slowest])):
            self.timed[key] += value
        per_device = self.flops_per_step * steps / seconds / self.n_devices
        rates = dict(
            steps_per_s=steps / seconds,
            clips_per_s=self.batch_size * steps / seconds,
            tflops_per_device=per_device / 1e12,
            input_wait=waited[slowest] / seconds,
            input_wait_host=slowest,
        )
        # An ETA from a step or two (a slow first window, a cache warming up) misleads; from the
        # run's average once it has timed enough of both, steps and seconds.
        if self.timed["steps"] >= ETA_AFTER_STEPS and self.timed["seconds"] >= ETA_AFTER_SECONDS:
            rates["eta_s"] = (self.total_steps - step) * self.timed["seconds"] / self.timed["steps"]
        if self.peak:
            rates["mfu"] = per_device / self.peak
        return rates

    def run_rates(self) -> dict:
        """Steps/s and input-wait share over all reported windows (compilation and evaluations left out)."""
        seconds = self.timed["seconds"]
        if not seconds:
            return dict(run_steps_per_s=None, run_input_wait=None)
        return dict(run_steps_per_s=self.timed["steps"] / seconds, run_input_wait=self.timed["wait_s"] / seconds)


def console_line(
    step: int, total_steps: int, means: dict, rates: dict, skipped_clips: int = 0, processes: int = 1
) -> str:
    """step 120/300 | loss 0.4312 | 95.2 clips/s | 0.05 TFLOP/s per device, MFU n/a | input wait 2% | ETA 3m05s

    With several processes the wait is the slowest one's, named: `input wait 9% (slowest: process 3)`;
    skipped_clips is the run's count over all processes. The ETA shows once the run has timed
    ETA_AFTER_STEPS steps and ETA_AFTER_SECONDS seconds."""
    parts = [f"step {step}/{total_steps}", f"loss {means['loss']:.4f}"]
    if means["skipped"]:
        parts.append(f"{means['skipped']} non-finite steps skipped")
    if skipped_clips:
        parts.append(f"{skipped_clips} clips skipped")
    if rates:
        mfu = f"MFU {rates['mfu']:.1%}" if "mfu" in rates else "MFU n/a"
        wait = f"input wait {rates['input_wait']:.0%}"
        if processes > 1:
            wait += f" (slowest: process {rates['input_wait_host']})"
        parts += [
            f"{rates['clips_per_s']:.1f} clips/s",
            f"{rates['tflops_per_device']:.2f} TFLOP/s per device, {mfu}",
            wait,
        ]
    if "eta_s" in rates:
        minutes, seconds = divmod(round(rates["eta_s"]), 60)
        hours, minutes = divmod(minutes, 60)
        parts.append(f"ETA {hours}h{minutes:02d}m" if hours else f"ETA {minutes}m{seconds:02d}s")
    return " | ".join(parts)
