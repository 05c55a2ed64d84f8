"""SIGTERM, Ctrl-C or a preemption notice: where a run stops, saves and exits.

The run asks `reached()` after every step and between every two batches of an evaluation, at
the same points on every process. A one-process run answers from its own signal handlers. A
multi-process job leaves SIGTERM to JAX: its preemption notifier tells every process, and they
agree on where to stop through JAX's preemption sync point, counted in these calls (the first
call after every process's count when the notice came); a handler of ours would replace JAX's,
and each process would stop at a point of its own. The count is the run's alone:
maepp/checkpoints.py keeps Orbax from asking too.
"""

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

from maepp import checkpoints, pause_points, program
from maepp.evaluator_kinds import EvaluationStopped


class StopRequest:
    """Ctrl-C in a multi-process job becomes a SIGTERM to this process, for JAX to hand on. A
    second Ctrl-C exits at once: a save then under way is left under Orbax's temporary name,
    never taken for the newest checkpoint."""

    def __init__(self, workdir):
        self._event = threading.Event()
        self.interrupted = False  # stopped by Ctrl-C: maepp.train exits 130
        self._workdir = workdir
        self._calls = 0
        self._before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
        if jax.process_count() == 1:
            signal.signal(signal.SIGTERM, lambda *_: self._event.set())
        signal.signal(signal.SIGINT, self._interrupt)

    def close(self):
        """Gives the signals back to whoever had them (a program that calls train() goes on)."""
        for number, handler in self._before.items():
            signal.signal(number, handler)

    def _interrupt(self, *_):
        if self.interrupted:
            program.exit_now(
                "maepp.train: interrupted again: exiting now; the newest complete checkpoint is "
                f"{checkpoints.newest_complete(self._workdir)}",
                130,
            )
        self.interrupted = True
        if jax.process_count() > 1:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._event.set()

    def reached(self) -> bool:
        """Whether the run stops here; every process must ask at the same points."""
        self._calls += 1
        if jax.process_count() == 1:
            return self._event.is_set()
        try:
            return multihost_utils.reached_preemption_sync_point(self._calls)
        except RuntimeError:  # JAX's preemption service is off (jax_enable_preemption_service)
            return False

    def between(self, items, what: str = "batches"):
        """An evaluation's batches (or the clips it reads first), asking before each:
        EvaluationStopped ends it where a stop is reached, so that the run saves within seconds
        rather than after the whole evaluation."""
        for done, item in enumerate(items):
            pause_points.reached("evaluation", done)
            if self.reached():
                raise EvaluationStopped(f"after {done} {what}")
            yield item
