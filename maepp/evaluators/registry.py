"""config.evals -> the run's evaluators, one per entry, made by its kind (maepp/evaluator_kinds.py)."""

import importlib

from maepp.evaluator_kinds import KINDS, settings


def make_evaluators(config, model, mesh, params_shardings, sources: dict) -> dict:
    """{name: evaluator} for the entries of config.evals that evaluate something (a held_out
    entry with an empty source does not); sources: run_plan's, which holds each one's clips or
    task (or None, for a kind that reads nothing)."""
    evaluators = {}
    for name, entry in config.get("evals", {}).items():
        if f"evals.{name}" not in sources:
            continue
        module, _, cls = KINDS[entry.type].evaluator.partition(":")
        evaluator = getattr(importlib.import_module(module), cls)
        evaluators[name] = evaluator(
            name, settings(entry), config, model, mesh, params_shardings, sources[f"evals.{name}"]
        )
    return evaluators
