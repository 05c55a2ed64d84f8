r"""Runs every row of an experiment file (configs/experiments/), each into WORKDIR_ROOT/ROW/.

python -m maepp.tools.sweep --config configs/experiments/rope.py --workdir_root runs/rope --arg size=micro
python -m maepp.tools.sweep --config configs/experiments/rope.py --workdir_root runs/rope --dry_run
python -m maepp.tools.sweep --config configs/experiments/rope.py --workdir_root /shared/rope --launcher slurm
python -m maepp.tools.sweep --config configs/experiments/rope.py --workdir_root gs://BUCKET/rope \
    --launcher tpu --tpu NAME --zone ZONE -- --config.data.source=prepared:gs://BUCKET/audioset

Flags after -- go to every row's maepp.train. --launcher local trains the rows one after another
here; a row that has finished says so and the next starts, so the same command again resumes the
unfinished ones. slurm writes one job array, a task per row, each running launch/slurm.sbatch;
tpu prints one launch/tpu_pod.sh command per row, each on a TPU of its own (NAME-ROW).
"""

import importlib.util
import os
import pathlib
import shlex
import subprocess
import sys

from absl import flags

from maepp import program

_CONFIG = flags.DEFINE_string("config", None, "An experiment file, e.g. configs/experiments/rope.py")
_WORKDIR_ROOT = flags.DEFINE_string("workdir_root", None, "Each row trains in WORKDIR_ROOT/ROW (local or gs://)")
_ROWS = flags.DEFINE_list("rows", [], "Only these rows (default: every row the file lists)")
_ARG = flags.DEFINE_string("arg", "", "Added to each row's config argument, e.g. size=micro: ROW,size=micro")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print each row's command; run nothing")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "slurm", "tpu"], "Where the rows run")
_MAX_RESTARTS = flags.DEFINE_integer("max_restarts", 0, "slurm and tpu: restarts of a row's job after a failure")
_SCRIPT = flags.DEFINE_string("script", "", "slurm: the job array's file (default: maepp-sweep-EXPERIMENT.sbatch here)")
_TPU = flags.DEFINE_string("tpu", "", "tpu: the TPU names' prefix; row ROW runs on NAME-ROW")
_ZONE = flags.DEFINE_string("zone", "", "tpu: the TPUs' zone")
flags.mark_flags_as_required(["config", "workdir_root"])

_REPO = pathlib.Path(__file__).resolve().parents[2]  # launch/ sits beside maepp/ in a checkout


def experiment_rows(path: str) -> list:
    """The rows an experiment file lists (its rows()); ValueError, one line, if it lists none."""
    if not os.path.isfile(path):
        raise ValueError(f"--config {path}: there is no such file (the experiments are in configs/experiments/)")
    spec = importlib.util.spec_from_file_location("maepp_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "rows", None)):
        raise ValueError(f"--config {path} is not an experiment file: it has no rows() (configs/experiments/)")
    return list(module.rows())


def row_config(path: str, row: str, arg: str) -> str:
    """The --config value of one row: FILE:ROW, or FILE:ROW,ARG."""
    return f"{path}:{row},{arg}" if arg else f"{path}:{row}"


def join(root: str, row: str) -> str:
    return f"{root.rstrip('/')}/{row}"


def train_command(path: str, row: str, arg: str, root: str, extra: list) -> list:
    command = [
        sys.executable,
        "-m",
        "maepp.train",
        "--config",
        row_config(path, row, arg),
        "--workdir",
        join(root, row),
    ]
    return command + extra


def tpu_command(path: str, row: str, arg: str, root: str, extra: list) -> list:
    tpu = f"{_TPU.value}-{row.replace('_', '-')}"  # TPU names take lower-case letters, digits and hyphens
    command = ["launch/tpu_pod.sh", "--tpu", tpu, "--zone", _ZONE.value, "--workdir", join(root, row)]
    command += ["--config", row_config(path, row, arg), "--max_restarts", str(_MAX_RESTARTS.value)]
    return command + (["--", *extra] if extra else [])


def slurm_array(path: str, rows: list, arg: str, root: str, extra: list) -> str:
    """A Slurm job array over the rows: task i runs launch/slurm.sbatch for rows[i], with that
    script's resources and its requeueing (the #SBATCH lines are copied from it)."""
    launcher = _REPO / "launch" / "slurm.sbatch"
    name = pathlib.Path(path).stem
    directives = [
        line
        for line in launcher.read_text().splitlines()
        if line.startswith("#SBATCH") and not line.startswith(("#SBATCH --job-name", "#SBATCH --output"))
    ]
    quoted = " ".join(shlex.quote(word) for word in extra)
    return "\n".join(
        [
            "#!/usr/bin/env bash",
            f"# The rows of {path} as one Slurm job array, written by maepp.tools.sweep; submit with",
            f"#   sbatch {_SCRIPT.value or f'maepp-sweep-{name}.sbatch'}",
            "# Task i trains rows[i] through launch/slurm.sbatch, whose resources and requeueing it takes.",
            f"#SBATCH --job-name=maepp-{name}",
            f"#SBATCH --array=0-{len(rows) - 1}",
            "#SBATCH --output=slurm-maepp-%A_%a.out",
            *directives,
            "set -euo pipefail",
            f"rows=({' '.join(shlex.quote(row) for row in rows)})",
            "row=${rows[$SLURM_ARRAY_TASK_ID]}",
            f"cd {shlex.quote(str(_REPO))}",
            f"exec bash launch/slurm.sbatch --max_restarts {_MAX_RESTARTS.value} "
            f'{shlex.quote(path)}:"$row"{shlex.quote("," + arg) if arg else ""} '
            f'{shlex.quote(root.rstrip("/"))}/"$row"{" " + quoted if quoted else ""}',
            "",
        ]
    )


def run_locally(path: str, rows: list, arg: str, root: str, extra: list) -> int:
    """Trains the rows one after another; returns the exit status (0 when every row finished)."""
    failed = []
    for i, row in enumerate(rows, 1):
        command = train_command(path, row, arg, root, extra)
        print(f"maepp.tools.sweep: row {i} of {len(rows)}, {row}: {shlex.join(command)}", flush=True)
        status = subprocess.run(command).returncode
        if status == 130:  # Ctrl-C: the row kept what it finished
            print("maepp.tools.sweep: interrupted; the same command resumes the unfinished rows", flush=True)
            return 130
        if status != 0:
            failed.append(f"{row} (exit {status})")
    if failed:
        print(
            f"maepp.tools.sweep: {len(rows) - len(failed)} of {len(rows)} rows finished; failed: {', '.join(failed)}; "
            "the same command resumes them",
            flush=True,
        )
        return 1
    print(f"maepp.tools.sweep: every row has finished: python -m maepp.tools.results {root}", flush=True)
    return 0


def main(argv):
    extra = argv[1:]
    path, arg, root = _CONFIG.value, _ARG.value, _WORKDIR_ROOT.value
    try:
        listed = experiment_rows(path)
    except ValueError as error:
        sys.exit(f"maepp.tools.sweep: {error}")
    unknown = [row for row in _ROWS.value if row not in listed]
    if unknown:
        sys.exit(f"maepp.tools.sweep: --rows {','.join(unknown)}: not rows of {path}; its rows are {', '.join(listed)}")
    rows = [row for row in listed if row in _ROWS.value] if _ROWS.value else listed
    for row in rows:  # every row's config, checked before anything runs
        try:
            program.load_config(row_config(path, row, arg))
        except ValueError as error:
            sys.exit(f"maepp.tools.sweep: row {row}: {error}")
    launcher = _LAUNCHER.value
    if launcher == "tpu" and not (_TPU.value and _ZONE.value):
        sys.exit("maepp.tools.sweep: --launcher tpu needs --tpu NAME and --zone ZONE")
    if launcher == "slurm":
        script = _SCRIPT.value or f"maepp-sweep-{pathlib.Path(path).stem}.sbatch"
        text = slurm_array(path, rows, arg, root, extra)
        if _DRY_RUN.value:
            print(text, end="")
            return
        pathlib.Path(script).write_text(text)
        print(f"maepp.tools.sweep: {len(rows)} rows in {script}; submit with: sbatch {script}")
        return
    if launcher == "tpu" or _DRY_RUN.value:
        command = tpu_command if launcher == "tpu" else train_command
        for row in rows:
            print(shlex.join(command(path, row, arg, root, extra)))
        return
    sys.exit(run_locally(path, rows, arg, root, extra))


def run():
    program.run_cli(main, "maepp.tools.sweep")


if __name__ == "__main__":
    run()
