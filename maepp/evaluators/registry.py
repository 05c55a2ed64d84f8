"""config.evals -> the run's evaluators, one per entry, made by its type.

Each evaluator is built with (name, settings, config, model, mesh, params_shardings, its
source) and has evaluate(params, step, writer, workdir) -> its part of the console line, having
written its figures to TensorBoard. maepp/config_checks.py checks each type's fields.
"""

from maepp.config_checks import evaluator_settings
from maepp.evaluators.held_out import HeldOutEvaluation
from maepp.evaluators.probe import ProbeEvaluation

TYPES = {"held_out": HeldOutEvaluation, "probe": ProbeEvaluation}


def make_evaluators(config, model, mesh, params_shardings, sources: dict) -> dict:
    """{name: evaluator} for the entries of config.evals that evaluate something (a held_out
    entry with an empty source does not); sources: run_plan's, which holds each one's clips or task."""
    return {
        name: TYPES[entry.type](
            name, evaluator_settings(entry), config, model, mesh, params_shardings, sources[f"evals.{name}"]
        )
        for name, entry in config.get("evals", {}).items()
        if f"evals.{name}" in sources
    }
