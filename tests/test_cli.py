"""The command-line entry points, run as a user runs them."""

import importlib.metadata
import json
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import run_module as _run


@pytest.mark.parametrize(
    "config,encoder_params,decoder_params",
    [("configs/audiomaepp.py:base", 141_855_744, 12_158_528), ("configs/mae.py:huge", 629_765_120, None)],
)
@pytest.mark.e2e
def test_summary_prints_a_table_and_json_last(repo_root, config, encoder_params, decoder_params):
    out = _run(repo_root, "maepp.tools.summary", "--config", config).strip().splitlines()
    summary = json.loads(out[-1])
    assert set(summary) == {"encoder_params", "decoder_params", "train_flops_per_example"}
    assert summary["encoder_params"] == encoder_params
    if decoder_params:
        assert summary["decoder_params"] == decoder_params
    assert any(line.startswith("encoder total") for line in out)


@pytest.mark.e2e
def test_summary_flops_follow_the_overrides(repo_root):
    def flops(*overrides):
        out = _run(repo_root, "maepp.tools.summary", "--config", "configs/audiomaepp.py:base", *overrides)
        return json.loads(out.strip().splitlines()[-1])["train_flops_per_example"]

    base = flops()
    # A lower mask ratio means more visible tokens in the encoder: more work.
    assert flops("--config.model.mask_ratio=0.5") > 1.5 * base
    assert base / 1e9 == pytest.approx(62.67, abs=0.01)  # the figure docs/reference.md gives, to 2 decimals


# One flag of each program's own, which its --help must list (absl alone lists only the flags of
# sys.argv[0]'s module: for a console script, the wrapper, which has none).
OWN_FLAG = {
    "maepp-train": "--resume_with_changed",
    "maepp-prepare": "--clips_per_shard",
    "maepp-export": "--[no]overwrite",
    "maepp-evaluate": "--probes",
    "maepp-synthetic-task": "--seconds",
    "maepp-summary": "--config",
    "maepp-sweep": "--workdir_root",
    "maepp-results": "--png",
    "maepp-convert": "--torch-checkpoint",
    "maepp-compile-check": "--num_slices",
    "maepp-scaling": "--sizes",
    "maepp-bench": "swiglu_norm",
}


def _console_scripts() -> dict:
    scripts = importlib.metadata.entry_points(group="console_scripts")
    return {script.name: script.value for script in scripts if script.value.startswith("maepp.")}


def test_every_console_script_is_known_here():
    assert set(_console_scripts()) == set(OWN_FLAG)


@pytest.mark.e2e
@pytest.mark.parametrize("script", sorted(OWN_FLAG))
def test_help_of_each_console_script_lists_its_own_flags_and_exits_0(script):
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert OWN_FLAG[script] in result.stdout


@pytest.mark.parametrize(
    "module,message",
    [
        (
            "maepp.train",
            "maepp.train: flag --config=None: Flag --config must have a value other than None.; "
            "flag --workdir=None: Flag --workdir must have a value other than None.",
        ),
        (
            "maepp.downstream.evaluate",
            "maepp.downstream.evaluate: flag --task=None: Flag --task must have a value other than None.",
        ),
    ],
)
@pytest.mark.e2e
def test_a_missing_required_flag_is_one_line(repo_root, module, message):
    arguments = ["--workdir", "w"] if module == "maepp.downstream.evaluate" else []
    result = subprocess.run(
        [sys.executable, "-m", module, *arguments], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"{message} (--help lists the flags)"


@pytest.mark.e2e
def test_verbosity_brings_the_libraries_logs_back(repo_root, tmp_path):
    """Off by default (the shared run, conftest's trained_run, prints nothing on stderr)."""
    from tests.helpers import train_command

    command = train_command(
        tmp_path / "w",
        "--config.total_steps=1",
        "--config.warmup_steps=0",
        "--config.evals.held_out.source=",
        "--config.profile.first_step=0",
        "--verbosity=0",
    )
    stderr = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, check=True).stderr.splitlines()
    assert any(line.startswith("I") and "checkpoint" in line.lower() for line in stderr), stderr  # Orbax's saves
