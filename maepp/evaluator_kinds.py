"""What an evaluator of config.evals is (the contract), and the kinds there are: one place, with
no TensorFlow, that the config checks (maepp/config_checks.py), the run plan (maepp/run_plan.py),
the registry (maepp/evaluators/registry.py) and the command line's override checks
(maepp/program.py) read.

An entry of config.evals is `dict(type=KIND, every=N, ...)`. Its kind declares the fields it
reads (each with its check) and the defaults of those an entry may leave out; what it evaluates
on: held-out clips named as config.data.source names clips ("clips"), a labelled task's folder
("task"), or nothing the run must load (None); and the class that evaluates, named by import
path so that its module (which may bring in TensorFlow) loads only when a run makes it.

The class is made with (name, settings, run: RunContext, source) and its run(params, between)
returns Metrics, its batches (and any clips it reads first) passed through `between` (a stop
request may end them with EvaluationStopped; outside a run, `every_batch`); the train loop
writes them: every scalar to TensorBoard as NAME/KEY, every image to TensorBoard as NAME/KEY and
to WORKDIR/pictures/NAME/ (process 0), and the text on the step's console line. A new kind is
its module and one entry of KINDS.
"""

import dataclasses

from maepp.field_checks import choice, numbers, text, whole


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What an evaluator may know of the run that makes it: the model, the mesh and the
    parameters' shardings on it, the filterbank the run trains with (its name) and the run's seed.
    Evaluators get this, not the run's config."""

    model: object
    mesh: object
    params_shardings: object
    filterbank: str
    seed: int


class EvaluationStopped(Exception):
    """A stop (SIGTERM, Ctrl-C, a preemption notice) ended an evaluation between two batches: its
    figures are not written, and the run saves at once (maepp/stop_request.py)."""


def every_batch(items, what: str = "batches"):
    """`between` for an evaluation that nothing stops."""
    return items


@dataclasses.dataclass
class Metrics:
    """What one evaluation found: scalars {key: number}, images {key: uint8 RGB [H, W, 3]}, and
    its part of the console line."""

    text: str
    scalars: dict = dataclasses.field(default_factory=dict)
    images: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Kind:
    fields: dict  # field -> its check (maepp/field_checks.py)
    defaults: dict  # the values of the fields an entry may leave out; the others it must give
    evaluator: str  # "module:Class"
    reads: str | None = None  # "clips", "task" or None: what source_field names
    source_field: str | None = None  # the field naming it; an empty value there evaluates nothing


EVERY = whole(1, "steps between evaluations; it runs at the last step too")

KINDS = {
    # The reconstruction loss over held-out clips, with pictures.
    "held_out": Kind(
        fields={
            "type": choice(("held_out",)),
            "source": text(
                'held-out clips, as config.data.source names clips; "auto" (resolve_held_out); empty for no evaluation'
            ),
            "every": EVERY,
            "batch_size": whole(1, "held-out clips per step, over all devices"),
        },
        defaults=dict(every=10_000, batch_size=1024),
        evaluator="maepp.evaluators.held_out:HeldOutEvaluation",
        reads="clips",
        source_field="source",
    ),
    # A linear probe on a labelled task's scene embeddings.
    "probe": Kind(
        fields={
            "type": choice(("probe",)),
            "task": text("a labelled task's directory", may_be_empty=False),
            "every": EVERY,
            "shots": whole(0, "training clips per class; 0 takes them all"),
            "l2": numbers(
                "the ridge penalty on standardised features; several: the best on the valid split", 0.0, low_open=True
            ),
            "batch_size": whole(1, "200-frame chunks per encoder call, over all devices"),
        },
        defaults=dict(shots=0, l2=1.0, batch_size=256),
        evaluator="maepp.evaluators.probe:ProbeEvaluation",
        reads="task",
        source_field="task",
    ),
}


def settings(entry) -> dict:
    """An entry of config.evals with its kind's defaults for the fields it leaves out."""
    return {**KINDS[entry["type"]].defaults, **dict(entry)}


def evaluates(entry) -> bool:
    """False for an entry whose source field is empty (a held_out entry with source="")."""
    kind = KINDS[entry["type"]]
    return kind.source_field is None or bool(settings(entry)[kind.source_field])
