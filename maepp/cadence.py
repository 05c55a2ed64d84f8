"""When the train loop logs, evaluates, saves and stops, as named questions about a step (in the
way of big_vision's `itstime`). Pure arithmetic on step numbers, so it is tested without training.

Reading the devices (a log) costs the host a wait for the step, so the loop does it only where
a question needs their numbers: at log steps, at the first step (compilation's end), and wherever
a save or an evaluation may be due (a save looks at the run of non-finite steps first).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Cadence:
    first_step: int  # the run's first step: 1, or the step after the checkpoint it resumed
    total_steps: int
    log_every: int
    checkpoint_every: int
    evals: tuple = ()  # (evaluator name, its every), for the evaluators the run has

    @classmethod
    def from_config(cls, config, first_step: int, evaluators=()) -> "Cadence":
        """evaluators: the names of config.evals the run evaluates."""
        return cls(
            first_step,
            config.total_steps,
            config.log_every,
            config.checkpoint_every,
            tuple((name, config.evals[name].every) for name in evaluators),
        )

    def last(self, step: int) -> bool:
        return step == self.total_steps

    def stopping(self, step: int, stop_requested: bool) -> bool:
        """The loop ends after this step: the last step, or a stop asked for (SIGTERM, Ctrl-C, preemption)."""
        return stop_requested or self.last(step)

    def evals_due(self, step: int, stop_requested: bool) -> list:
        """The evaluators to run after this step: each every its `every` steps and at the last;
        none on a requested stop, whose job may have seconds left to save in."""
        if stop_requested:
            return []
        return [name for name, every in self.evals if step % every == 0 or self.last(step)]

    def save_due(self, step: int, stop_requested: bool, nonfinite_in_a_row: int = 0) -> bool:
        """Always when stopping; every checkpoint_every steps otherwise, except during a run of
        non-finite steps, so that the newest checkpoint stays before it."""
        if self.stopping(step, stop_requested):
            return True
        return step % self.checkpoint_every == 0 and not nonfinite_in_a_row

    def log_due(self, step: int, stop_requested: bool) -> bool:
        """The host reads the devices' figures at this step (and logs them)."""
        return (
            step % self.log_every == 0
            or step == self.first_step
            or step % self.checkpoint_every == 0
            or self.stopping(step, stop_requested)
            or bool(self.evals_due(step, stop_requested))
        )
