"""Experiment files (configs/experiments/), the sweep that runs their rows, and the results table
that gathers the runs."""

import csv
import importlib
import io
import pathlib
import subprocess
import sys

import pytest

from tests.test_launch import _fake_slurm

EXPERIMENTS = sorted(
    path.stem
    for path in (pathlib.Path(__file__).parents[1] / "configs" / "experiments").glob("*.py")
    if path.stem != "__init__"
)


def _sweep(repo_root, *args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "maepp.tools.sweep", *map(str, args)], cwd=repo_root, capture_output=True, text=True
    )
    assert not check or result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_row_of_every_experiment_passes_the_config_checks_at_its_size_and_at_micro(name):
    from maepp.config_checks import check_train_config

    experiment = importlib.import_module(f"maepp.configs.experiments.{name}")
    assert experiment.rows()
    for row in experiment.rows():
        for arg in (row, f"{row},size=micro"):
            config = experiment.get_config(arg)
            check_train_config(config, n_devices=1, batch_devices=1)
        assert config.batch_size == 32 and config.total_steps == 300  # micro's CPU budget
    with pytest.raises(ValueError, match="this experiment's rows are"):
        experiment.get_config("no_such_row")
    with pytest.raises(ValueError, match="the one option is size=SIZE"):
        experiment.get_config(f"{experiment.rows()[0]},steps=5")


def test_each_experiment_row_sets_what_its_table_varies():
    from maepp.configs.experiments import blocks, decoder_width, rope

    assert [(c.model.block_type, c.model.encoder.width) for c in map(blocks.get_config, blocks.rows())] == [
        ("vit", 768),
        ("vit", 1024),
        ("vit", 1280),
        ("macaron_swiglu", 768),
        ("macaron_swiglu", 1024),
        ("macaron_swiglu", 1280),
    ]
    ropes = [(c.model.encoder.use_rope, c.model.decoder.use_rope) for c in map(rope.get_config, rope.rows())]
    assert ropes == [(False, False), (True, False), (False, True), (True, True)]
    widths = [
        (c.model.encoder.width, c.model.decoder.width) for c in map(decoder_width.get_config, decoder_width.rows())
    ]
    assert widths == [(1024, 384), (1024, 512), (1024, 768)]


def test_the_plain_ffn_row_has_the_swiglu_rows_encoder_parameters_within_one_percent():
    from maepp.configs.experiments import swiglu_vs_ffn
    from maepp.models import ModelSpec
    from maepp.models.counts import parameter_counts

    swiglu, ffn = (
        parameter_counts(ModelSpec.from_config(swiglu_vs_ffn.get_config(row).model))["encoder"]
        for row in ("swiglu", "ffn")
    )
    assert swiglu == 8_921_856  # tiny's AudioMAE++ encoder (docs/reference.md#sizes)
    assert abs(ffn - swiglu) / swiglu < 0.01, (swiglu, ffn)
    widened = swiglu_vs_ffn.get_config("ffn").model.encoder
    assert (widened.width, widened.heads, widened.depth) == (248, 4, 12)  # head size 62, near tiny's 64


@pytest.mark.e2e
def test_a_dry_run_prints_each_rows_training_command_with_the_flags_after_the_double_dash(repo_root):
    out = _sweep(
        repo_root,
        "--config",
        "configs/experiments/rope.py",
        "--workdir_root",
        "gs://b/rope",
        "--arg",
        "size=micro",
        "--dry_run",
        "--",
        "--config.total_steps=10",
    ).stdout.splitlines()
    assert [line.split(" -m ")[1] for line in out] == [
        f"maepp.train --config configs/experiments/rope.py:{row},size=micro --workdir gs://b/rope/{row} "
        "--config.total_steps=10"
        for row in ("neither", "encoder", "decoder", "both")
    ]


@pytest.mark.e2e
def test_tpu_rows_each_get_a_launch_command_on_a_tpu_of_their_own(repo_root):
    out = _sweep(
        repo_root,
        "--config",
        "configs/experiments/decoder_width.py",
        "--workdir_root",
        "gs://b/dec",
        "--launcher",
        "tpu",
        "--tpu",
        "pod",
        "--zone",
        "us-east5-a",
        "--rows",
        "width_384,width_768",
    ).stdout.splitlines()
    assert out == [
        f"launch/tpu_pod.sh --tpu pod-width-{w} --zone us-east5-a --workdir gs://b/dec/width_{w} "
        f"--config configs/experiments/decoder_width.py:width_{w} --max_restarts 0"
        for w in (384, 768)
    ]


@pytest.mark.e2e
def test_unknown_rows_and_files_that_are_not_experiments_are_refused_in_one_line(repo_root):
    unknown = _sweep(
        repo_root, "--config", "configs/experiments/rope.py", "--workdir_root", "r", "--rows", "al", check=False
    )
    assert unknown.returncode == 1 and unknown.stderr.strip().splitlines() == [
        "maepp.tools.sweep: --rows al: not rows of configs/experiments/rope.py; its rows are neither, encoder, "
        "decoder, both"
    ]
    plain = _sweep(repo_root, "--config", "configs/audiomaepp.py", "--workdir_root", "r", check=False)
    assert plain.returncode == 1 and "is not an experiment file: it has no rows()" in plain.stderr


@pytest.mark.e2e
def test_the_slurm_array_runs_its_tasks_row_through_the_slurm_launcher(repo_root, tmp_path):
    script = tmp_path / "array.sbatch"
    out = _sweep(
        repo_root,
        "--config",
        "configs/experiments/rope.py",
        "--workdir_root",
        "/shared/rope",
        "--launcher",
        "slurm",
        "--script",
        script,
        "--max_restarts",
        "2",
        "--",
        "--config.batch_size=512",
    ).stdout
    assert f"submit with: sbatch {script}" in out
    text = script.read_text()
    assert "#SBATCH --array=0-3" in text and "#SBATCH --requeue" in text and "#SBATCH --signal=B:TERM@600" in text
    shellcheck = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "shellcheck"), str(script)], capture_output=True, text=True
    )
    assert shellcheck.returncode == 0, shellcheck.stdout
    env = dict(_fake_slurm(tmp_path, "exit 0"), SLURM_ARRAY_TASK_ID="2")
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, timeout=60)
    srun = (tmp_path / "srun.log").read_text().split()
    assert srun[-5:] == [
        "--config",
        "configs/experiments/rope.py:decoder",
        "--workdir",
        "/shared/rope/decoder",
        "--config.batch_size=512",
    ]


EXPERIMENT = """from maepp.configs import experiment

ROWS = {"plain": {"model.encoder.use_rope": False}, "rope": {"model.encoder.use_rope": True}}


def rows():
    return list(ROWS)


def get_config(arg="plain"):
    return experiment.row_config(ROWS, arg, size="micro")
"""

# Eight steps of 8 clips, one checkpoint, no evaluator: tests/test_evaluate.py reads a run's evaluators into
# the results table and its picture (the shared run's).
SHORT = [
    "--config.total_steps=8",
    "--config.batch_size=8",
    "--config.warmup_steps=2",
    "--config.log_every=2",
    "--config.checkpoint_every=8",
    "--config.evals.held_out.source=",
    "--config.profile.first_step=0",
]


@pytest.mark.e2e
@pytest.mark.long(seconds=80)
def test_a_local_sweep_resumes_its_unfinished_rows_and_results_tabulates_them(repo_root, tmp_path):
    experiment = tmp_path / "two_rows.py"
    experiment.write_text(EXPERIMENT)
    root = tmp_path / "runs"
    first = _sweep(repo_root, "--config", experiment, "--workdir_root", root, "--rows", "plain", "--", *SHORT).stdout
    assert "row 1 of 1, plain" in first and "every row has finished" in first
    assert not (root / "rope").exists()
    events = sorted((root / "plain" / "tensorboard").iterdir())
    second = _sweep(repo_root, "--config", experiment, "--workdir_root", root, "--", *SHORT).stdout
    assert "row 1 of 2, plain" in second and f"{root / 'plain'} has finished" in second
    assert "row 2 of 2, rope" in second and "every row has finished" in second
    assert sorted((root / "plain" / "tensorboard").iterdir()) == events  # the finished row ran nothing again
    assert sorted(p.name for p in (root / "rope" / "checkpoints").iterdir() if p.name.isdigit()) == ["8"]

    result = subprocess.run(
        [sys.executable, "-m", "maepp.tools.results", str(root), "--csv"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    )
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    # One row per run, in the order they started; the one field in which they differ is a column
    # (the workdirs differ too, but are not in config.json).
    assert [row["run"] for row in table] == ["plain", "rope"]
    assert list(table[0]) == ["run", "model.encoder.use_rope", "steps", "clips/s"]
    assert [(row["model.encoder.use_rope"], row["steps"]) for row in table] == [("False", "8"), ("True", "8")]
    assert all(float(row["clips/s"]) > 0 for row in table)
    assert "curves" not in result.stderr  # no evaluator, nothing to draw


def test_results_normalises_each_shared_score_by_the_best_runs_and_leaves_out_losses():
    from maepp.tools.results import overall_scores, table

    def row(name, scores):
        return dict(name=name, config={"seed": 0}, steps=10, clips_per_s=5.0, curves={}, scores=scores)

    rows = [
        row("a", {"held_out loss (final)": 0.5, "kw accuracy (last)": 0.8, "esc accuracy (last)": 0.5, "x (best)": 1}),
        row("b", {"held_out loss (final)": 0.4, "kw accuracy (last)": 0.4, "esc accuracy (last)": 0.6, "x (best)": 1}),
        row("c", {"kw accuracy (last)": 0.6, "esc accuracy (last)": 0.3}),
    ]
    # kw: best 0.8; esc: best 0.6.
    assert overall_scores(rows) == pytest.approx([(100 + 500 / 6) / 2, (50 + 100) / 2, (75 + 50) / 2])
    header, body = table(rows)
    assert header[0] == "run" and "seed" not in header and header[-1] == "overall"  # seed: the same in all
    assert [cells[-1] for cells in body] == overall_scores(rows) and body[2][header.index("x (best)")] is None
    assert overall_scores(rows[:1]) is None
