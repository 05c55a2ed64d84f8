r"""One table of many runs: the fields in which their configs differ, steps, the final held-out loss,
each probe's last and best score, clips/s, and the scores maepp.downstream.evaluate left in them.

python -m maepp.tools.results runs/rope                  (a sweep's root: every run below it)
python -m maepp.tools.results runs/a runs/b --csv        (CSV, not markdown)

It also draws RUN_ROOT/results.png (--png elsewhere): each evaluator's figure against steps, a line
per run. Where every run has the same scores, the table ends in an overall score, normalised across
these runs: each score over the best run's, x100, averaged (docs/experiments.md#the-results-table).
"""

import csv
import io
import json
import math
import os
import pathlib
import statistics
import sys

from absl import flags

from maepp import program

_CSV = flags.DEFINE_bool("csv", False, "Print CSV, not a markdown table")
_PNG = flags.DEFINE_string("png", "", "Where the curves go (default: FIRST_DIR/results.png)")


def find_runs(directories: list) -> list:
    """Each directory that holds a run (its config.json), or the runs one or two levels below it."""
    runs = []
    for directory in map(pathlib.Path, directories):
        if (directory / "config.json").is_file():
            runs.append(directory)
            continue
        # In the order they started (a sweep's row order), by when each wrote its config.json.
        configs = [p for pattern in ("*/config.json", "*/*/config.json") for p in directory.glob(pattern)]
        below = [p.parent for p in sorted(configs, key=lambda p: (p.stat().st_mtime, str(p)))]
        if not below:
            raise ValueError(f"{directory} holds no run: no config.json in it or the folders below it")
        runs += below
    return runs


def flat(tree: dict, prefix: str = "") -> dict:
    """{"model.encoder.width": 64, ...} from a nested config."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def scalars(run: pathlib.Path) -> dict:
    """{tag: {step: value}} from a run's TensorBoard files; a step logged twice (a resumed run
    repeats the steps after its checkpoint) keeps its last value."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    tags = {}
    for path in sorted((run / "tensorboard").glob("events.out.tfevents.*"), key=os.path.getmtime):
        events = event_accumulator.EventAccumulator(str(path), size_guidance={"tensors": 0})
        events.Reload()
        for tag in events.Tags()["tensors"]:
            for event in events.Tensors(tag):
                value = tensor_util.make_ndarray(event.tensor_proto)
                if value.ndim == 0 and value.dtype.kind in "fiu":  # not the text summaries
                    tags.setdefault(tag, {})[event.step] = float(value)
    return tags


def evaluator_curves(config: dict, tags: dict) -> dict:
    """{label: {step: value}}: each held-out evaluator's loss and each probe's score."""
    curves = {}
    for name, entry in config.get("evals", {}).items():
        kind = entry.get("type")
        keys = ("loss",) if kind == "held_out" else ("accuracy", "mAP") if kind == "probe" else ()
        for key in keys:
            if f"{name}/{key}" in tags:
                curves[f"{name} {key}"] = tags[f"{name}/{key}"]
    return curves


def evaluations(run: pathlib.Path) -> dict:
    """{"TASK FEATURES PROBE": mean score} from the files maepp.downstream.evaluate wrote in the run."""
    found = {}
    for path in sorted(run.glob("evaluations/*/scores_*.json")):
        result = json.loads(path.read_text())
        for probe, value in result.items():
            if isinstance(value, dict) and "mean" in value:
                found[f"{result['task']} {result['features']} {probe}"] = value["mean"]
    return found


def run_row(run: pathlib.Path) -> dict:
    """What the table and the picture need of one run."""
    config = json.loads((run / "config.json").read_text())
    tags = scalars(run)
    curves = evaluator_curves(config, tags)
    speeds = list(tags.get("clips_per_s", {}).values())
    row = dict(
        name=run.name,
        config=flat(config),
        steps=max(tags.get("loss", {0: 0})),
        clips_per_s=statistics.median(speeds) if speeds else None,
        curves=curves,
        scores={},
    )
    for label, curve in curves.items():
        last = curve[max(curve)]
        if label.endswith(" loss"):
            row["scores"][f"{label} (final)"] = last
        else:
            row["scores"][f"{label} (last)"] = last
            row["scores"][f"{label} (best)"] = max(curve.values())
    row["scores"].update(evaluations(run))
    return row


def differing_fields(rows: list) -> list:
    fields = sorted({field for row in rows for field in row["config"]})
    return [field for field in fields if len({repr(row["config"].get(field)) for row in rows}) > 1]


def overall_scores(rows: list) -> list | None:
    """Each run's mean over the scores every run has (probe scores, not losses) of its score over
    the best run's, x100; None where fewer than two runs share a score."""
    shared = [
        label
        for label in rows[0]["scores"]
        if not label.endswith("(final)")
        and not label.endswith("(best)")
        and all(label in row["scores"] for row in rows)
    ]
    if len(rows) < 2 or not shared:
        return None
    best = {label: max(row["scores"][label] for row in rows) for label in shared}
    return [statistics.mean(100 * row["scores"][label] / best[label] for label in shared) for row in rows]


def table(rows: list) -> tuple:
    """(header, [cells per run])."""
    fields = differing_fields(rows)
    labels = list(dict.fromkeys(label for row in rows for label in row["scores"]))
    overall = overall_scores(rows)
    header = ["run", *fields, "steps", *labels, "clips/s"] + (["overall"] if overall else [])
    body = []
    for i, row in enumerate(rows):
        cells = [row["name"], *(row["config"].get(field, "") for field in fields), row["steps"]]
        cells += [row["scores"].get(label) for label in labels]
        cells.append(row["clips_per_s"])
        cells += [overall[i]] if overall else []
        body.append(cells)
    return header, body


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)


def markdown(header: list, body: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in cells) + " |" for cells in body]
    return "\n".join(lines)


def csv_text(header: list, body: list) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[("" if v is None else v) for v in cells] for cells in body])
    return buffer.getvalue()


def draw(rows: list, path: pathlib.Path):
    """One panel per evaluator figure, steps across, a labelled line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(label for row in rows for label in row["curves"]))
    if not labels:
        return False
    columns = min(3, len(labels))
    figure, axes = plt.subplots(
        math.ceil(len(labels) / columns),
        columns,
        figsize=(5 * columns, 3.6 * math.ceil(len(labels) / columns)),
        squeeze=False,
    )
    for axis, label in zip(axes.flat, labels):
        for row in rows:
            curve = row["curves"].get(label)
            if curve:
                steps = sorted(curve)
                axis.plot(steps, [curve[s] for s in steps], marker="o", markersize=3, label=row["name"])
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.set_ylabel(label.split(" ")[-1])
        axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(labels) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def main(argv):
    directories = argv[1:]
    if not directories:
        sys.exit("maepp.tools.results: name the runs, or a folder of them: python -m maepp.tools.results DIR...")
    try:
        rows = [run_row(run) for run in find_runs(directories)]
    except (ValueError, json.JSONDecodeError) as error:
        sys.exit(f"maepp.tools.results: {error}")
    header, body = table(rows)
    print(csv_text(header, body) if _CSV.value else markdown(header, body), end="" if _CSV.value else "\n")
    png = pathlib.Path(_PNG.value or pathlib.Path(directories[0]) / "results.png")
    if draw(rows, png):
        print(f"maepp.tools.results: curves in {png}", file=sys.stderr)


def run():
    program.run_cli(main, "maepp.tools.results")


if __name__ == "__main__":
    run()
