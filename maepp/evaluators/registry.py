"""config.evals -> the run's evaluators, one per entry, made by its kind (maepp/evaluator_kinds.py)."""

import importlib

from maepp.evaluator_kinds import KINDS, RunContext, settings


def make_evaluators(evals, run: RunContext, sources: dict) -> dict:
    """config.evals -> {name: evaluator} for its entries that evaluate something (a held_out
    entry with an empty source does not); sources: run_plan's, which holds each one's clips or
    task (or None, for a kind that reads nothing)."""
    entries = {name: settings(entry) for name, entry in evals.items() if f"evals.{name}" in sources}
    evaluators = {}
    for name, entry in entries.items():
        module, _, cls = KINDS[entry["type"]].evaluator.partition(":")
        evaluator = getattr(importlib.import_module(module), cls)
        evaluators[name] = evaluator(name, entry, run, sources[f"evals.{name}"])
    return evaluators
