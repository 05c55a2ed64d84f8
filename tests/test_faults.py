"""Faults injected into real runs, one test each, and the table of them in docs/reliability.md.

The table is made from FAULTS below (`python -m tests.test_faults > docs/reliability.md`), and a
test holds the file to it, so the page cannot drift from what is tested.
"""

import dataclasses
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from maepp import checkpoints, sharding
from maepp.configs import audiomaepp
from maepp.train_loop import train
from maepp.workdir_lock import WorkdirInUse, WorkdirLock
from tests.helpers import (
    SHORT_JOB,
    TRAINED_RUN,
    PausePoint,
    assert_trees_equal,
    fake_devices_environment,
    logged_scalars,
    paused_at,
    restore_targets,
    saved_params,
    train_command,
)


@dataclasses.dataclass(frozen=True)
class Fault:
    fault: str
    user_sees: str
    survives: str
    test: str


# (field, value, the start of what maepp.train says)
BAD_CONFIGS = [
    ("log_every", 0, "must be a whole number of at least 1"),
    ("checkpoint_every", 0, "must be a whole number of at least 1"),
    ("evals.held_out.every", 0, "must be a whole number of at least 1"),
    ("evals.held_out.type", "prob", "use one of ('held_out', 'probe')"),
    ("keep_checkpoints", 0, "must be a whole number of at least 1"),
    ("batch_size", 0, "must be a whole number of at least 1"),
    ("batch_size", -4, "must be a whole number of at least 1"),
    ("optimizer.base_learning_rate", -0.1, "must be a finite number in (0.0, inf)"),
    ("model.mask_ratio", 0.999, "leaves 0 of 250 tokens visible"),
    ("evals.held_out.source", "folder:/nonexistent", "folder source /nonexistent is not a directory"),
    ("audio.filterbank", "htk", "use one of ('torchaudio', 'librosa')"),
    ("model.swiglu_norm", "pallas", "runs on one device only, not 8"),
]

MISSPELT = {
    "--config.batchsize=16": "maepp.train: --config.batchsize: no field 'batchsize'; did you mean 'batch_size'?",
    "--config.model.mask_ration=0.7": "maepp.train: --config.model.mask_ration: no field 'model.mask_ration'; "
    "did you mean 'model.mask_ratio'?",
    "--config=configs/audiomaepp.py:mirco": "maepp.train: --config configs/audiomaepp.py:mirco: unknown model size "
    "'mirco'; choose one of micro, tiny, small, medium, base, large, huge; "
    "did you mean 'micro'?",
    "--config.evals.digits.task=/data/digits": "maepp.train: --config.evals.digits.task: no field 'evals.digits'; "
    "config.evals has held_out; an evaluator is added in a config file, after get_config: from maepp.configs import "
    "audiomaepp / def get_config(size='base'): config = audiomaepp.get_config(size); config.evals.digits = "
    "dict(type='probe', task='/data/task', every=5000); return config (docs/training.md#evaluators)",
}


FAULTS = [
    Fault(
        "SIGKILL right after an evaluation, before the checkpoint that follows it",
        "the re-run resumes from the step before and redraws that evaluation's picture over the killed run's",
        "everything",
        "test_a_storm_of_sigkills_and_ctrl_cs_ends_bit_exact_with_the_uninterrupted_run",
    ),
    Fault(
        "a second run started on a workdir in use",
        "`maepp.train: W is in use by another run (pid P on H, "
        "started T) ...` before anything is compiled; the first run goes on",
        "the first run, untouched",
        "test_a_second_run_on_a_workdir_in_use_is_refused",
    ),
    Fault(
        "`W/lock` or `W/lock.json` taken by a folder",
        "one line: `maepp.train: W/lock is a folder where maepp keeps its lock file: move it away`",
        "the folder; no stray file is left beside it",
        "test_lock_paths_taken_by_folders_are_refused_and_leave_nothing",
    ),
    Fault(
        "the run holding a workdir was killed (SIGKILL) without letting go",
        "the next run takes the workdir over",
        "all checkpoints",
        "test_a_killed_runs_workdir_is_taken_over",
    ),
    Fault(
        "newest checkpoint damaged: truncated array file",
        "a line naming the step and why; resumes from the one before, the damaged one moved to `<step>.damaged-<time>`",
        "every older step; the damaged one, set aside",
        "test_a_damaged_newest_checkpoint_is_skipped[truncated]",
    ),
    Fault(
        "newest checkpoint damaged: garbage in `state/_METADATA`",
        "as above",
        "as above",
        "test_a_damaged_newest_checkpoint_is_skipped[metadata]",
    ),
    Fault(
        "newest checkpoint damaged: an empty step directory",
        "as above",
        "as above",
        "test_a_damaged_newest_checkpoint_is_skipped[empty]",
    ),
    Fault(
        "export or hear with the newest checkpoint damaged",
        "a line naming the skipped step; the newest that restores is used",
        "everything",
        "test_export_weights_skip_a_damaged_newest_checkpoint",
    ),
    Fault(
        "a real filesystem fills while a checkpoint is written (a 12 MB tmpfs, 5.5 MB of it taken by another file)",
        "one line, exit status 1: `maepp.train: saving checkpoints failed (... No space left on device ...); the "
        "newest complete checkpoint is step 4 in W/checkpoints. Free space or fix the directory, then re-run the "
        "same command to resume from it`; the run stops at the first step after the save's threads end",
        "every complete checkpoint; with the space freed, the same command resumes and ends with the uninterrupted "
        "run's losses and parameters, bit for bit",
        "test_a_save_that_fills_a_real_filesystem_stops_the_run_and_it_resumes_bit_exact",
    ),
    Fault(
        "the disk fills while a held-out picture is written, before any checkpoint (files capped at 48 KB)",
        "one line, exit status 1: `maepp.train: out of space (File too large: "
        "WORKDIR/pictures/held_out/step_0000005.png); "
        "the newest complete checkpoint is none in DIR. Free space, then re-run the same command to resume from "
        "it`",
        "every complete checkpoint; no part of the picture is left",
        "test_a_full_disk_while_a_picture_is_written_stops_the_run_in_one_line",
    ),
    Fault(
        "prepare's output filesystem fills (a 1 MB tmpfs)",
        "one line, exit status 1: `maepp.data.prepare: out of space (OSError: [Errno 28] No space left on device "
        "...); what was finished is kept: free space, then run the same command again to go on from it`",
        "every finished shard; with room, the same command keeps them and writes the rest",
        "test_prepare_on_a_full_filesystem_says_so_in_one_line_and_goes_on_once_there_is_room",
    ),
    Fault(
        "`--config.evals.NAME.shots=4` where the config file's probe entry leaves `shots` at its default",
        "taken like any field the entry names (a bad value is refused by its check, in one line); a misspelt "
        "setting: `... no field 'evals.NAME.shot'; did you mean 'evals.NAME.shots'? ...`",
        "nothing was written",
        "test_a_setting_an_evaluator_entry_left_out_is_set_from_the_command_line",
    ),
    Fault(
        "two `maepp.export --artifact` runs on one directory at once",
        "one writes it; the other: `... was written by another run meanwhile; choose a new artifact directory`",
        "the finished artifact, whole; no partial folder of either run",
        "tests/test_export.py::test_artifact_runs_with_only_jax_and_numpy",
    ),
    Fault(
        "`maepp.downstream.evaluate --seeds 1`",
        "the text says `(1 seed: no interval)`; the JSON line's interval is `null`, strict JSON (no NaN)",
        "the scores",
        "tests/test_evaluate.py::test_one_seed_has_no_interval_and_the_json_is_strict",
    ),
    Fault(
        "a workdir on a read-only filesystem",
        "one line, exit status 1: `maepp.train: W cannot be written (Read-only file system: W): this run keeps "
        "its lock there and everything it writes; choose a folder this user may write`",
        "nothing was written",
        "test_read_only_places_are_one_line_and_evaluate_writes_where_it_is_told",
    ),
    Fault(
        "`maepp.downstream.evaluate` of a run on a read-only filesystem",
        "one line, exit status 1: `... RUN/evaluations cannot be written (Read-only file system): give "
        "--output_dir a folder this user may write`; with `--output_dir DIR` it evaluates, into DIR/TASK/",
        "the run, untouched",
        "test_read_only_places_are_one_line_and_evaluate_writes_where_it_is_told",
    ),
    Fault(
        "SIGTERM (or Ctrl-C, or a preemption notice) while an evaluation runs",
        "the evaluation ends before its next batch (a probe's first, also before its next clip read): "
        "`step N | NAME: stopped after K batches (S s), not "
        "written`, then `stop requested: saved step N, exiting`",
        "step N, saved within a batch's time; nothing of the stopped evaluation is written",
        "tests/test_loop.py::test_a_stop_during_an_evaluation_ends_it_between_batches_and_saves_at_once",
    ),
    Fault(
        "a batch that does not divide over the devices (4 fake devices)",
        "one line naming config.batch_size and the multiple it needs; the process exits at once",
        "nothing was written",
        "test_bad_config_fails_fast",
    ),
    *[
        Fault(
            f"`--config.{field}={value}`",
            f"one line: `config.{field}={value!r}: {message} ...`, before compilation",
            "nothing was written",
            f"test_bad_configs_are_one_line_before_compilation[{field}={value}]",
        )
        for field, value, message in BAD_CONFIGS
    ],
    *[
        Fault(
            f"`{argument}` (a misspelt field or size)",
            f"`{message}`",
            "nothing was written",
            f"test_a_misspelt_config_field_or_size_is_one_line_naming_the_nearest[{argument}]",
        )
        for argument, message in MISSPELT.items()
    ],
    Fault(
        "export `--output` naming a file export did not write (a text file)",
        "one line before any work: `... exists and was not written by maepp.export; pass --overwrite ...`",
        "the file",
        "test_export_refuses_outputs_it_did_not_write[file]",
    ),
    Fault(
        "export `--output` naming an existing directory",
        "one line before any work",
        "the directory",
        "test_export_refuses_outputs_it_did_not_write[directory]",
    ),
    Fault(
        "a leftover `OUT.npz.parts/` holding someone's files (no plan.json)",
        "one line before any work: move it away",
        "the folder and its files (export never deletes a folder it did not make)",
        "test_export_refuses_outputs_it_did_not_write[parts]",
    ),
    Fault(
        "a file name that is not valid UTF-8, and a symlink loop, in prepare's or export's input folder",
        "both left out, each named with the reason (manifest.json's `skipped`, and the log)",
        "every other file, prepared",
        "test_odd_file_names_and_symlink_loops_are_left_out_by_name",
    ),
    Fault(
        "`prepare --name ../../x`",
        "one line: `--name '../../x': use lower-case letters, digits and _ ...`",
        "nothing is written outside `--output`",
        "test_prepare_names_stay_inside_the_output",
    ),
    Fault(
        "`maepp.weights.convert` of a checkpoint as the release's trainer writes it "
        "(`{'model': ..., 'args': argparse.Namespace(...)}`)",
        "it imports; the Namespace is read as inert data",
        "everything",
        "test_convert_reads_trainer_checkpoints_and_refuses_code[trainer]",
    ),
    Fault(
        "`maepp.weights.convert` of a pickle that would run code (`os.system`)",
        "one line: `... asks to run posix.system when loaded ...; refusing it`",
        "nothing runs, nothing is written",
        "test_convert_reads_trainer_checkpoints_and_refuses_code[malicious]",
    ),
    Fault(
        "SIGTERM to one of two processes",
        "both stop at one agreed step, save it and exit 0",
        "the saved step; the run resumes from it on one process (`resumed step N saved by 2 processes on 1 "
        "processes`) with the uninterrupted run's losses",
        "tests/test_train.py::test_a_fresh_run_split_over_two_processes_stops_together_on_sigterm_and_resumes_on_one",
    ),
    Fault(
        "two runs started together on one gs:// workdir",
        "one holds it; the other: `... is in use by another run (pid P on H, started T) ...`",
        "the first run, untouched",
        "tests/test_gcs.py::test_of_two_runs_starting_together_exactly_one_holds_the_workdir",
    ),
    Fault(
        "a gs:// workdir's lease taken over by another run",
        "one line, exit status 1: `maepp.train: "
        "gs://B/W/lock.json was taken over by another run (pid P on H, ...); this run stopped before its next save`",
        "every checkpoint it had written",
        "tests/test_gcs.py::test_a_gs_workdir_taken_over_killed_and_resumed_ends_as_an_uninterrupted_run",
    ),
    Fault(
        "a run on a gs:// workdir killed (SIGKILL)",
        "the next run waits out what is left of the dead run's "
        "lease (`... waiting up to N s for its lease to run out ...`; alone in "
        "`test_a_dead_runs_lease_is_waited_out_then_taken_over`), takes it over and resumes",
        "the run: its final parameters equal an uninterrupted run's bit for bit",
        "tests/test_gcs.py::test_a_gs_workdir_taken_over_killed_and_resumed_ends_as_an_uninterrupted_run",
    ),
    Fault(
        "a shard of a prepared dataset deleted, another truncated",
        "one line before anything runs, naming "
        "each: `... 2 of 3 shards do not match manifest.json: F (missing), G (1,000 bytes, not N) ...`",
        "the data, untouched",
        "tests/test_prepare.py::test_a_missing_or_truncated_shard_is_refused_naming_it",
    ),
    Fault(
        "`maepp.data.prepare --workers 2` (Beam's local runner, two worker processes) killed (SIGKILL to all) "
        "after two shards",
        "the same command resumes: finished shards are kept; it prints its progress bar and summary, nothing else",
        "the output, byte for byte what an uninterrupted run writes",
        "tests/test_prepare.py::test_beam_with_two_workers_writes_what_one_process_writes_and_a_"
        "killed_run_resumes_to_it",
    ),
    Fault(
        "Ctrl-C (to the whole process group, as a terminal sends it) as `maepp.data.prepare --workers 2` starts "
        "its worker processes",
        "one line (`maepp.data.prepare: interrupted; what was finished is kept ...`), exit "
        "130 in about a second; the workers ignore Ctrl-C and end with prepare's connection; their log file is "
        "removed",
        "the finished shards; the same command goes on to an uninterrupted run's bytes",
        "tests/test_prepare.py::test_beam_with_two_workers_writes_what_one_process_writes_and_a_"
        "killed_run_resumes_to_it",
    ),
    Fault(
        "a gs:// run killed (SIGKILL) during its final save, its files written but not committed",
        "the same command resumes from the newest committed step and saves the last one again (a step without "
        "Orbax's commit_success.txt is never taken for a finished run)",
        "the run: its final parameters equal an uninterrupted run's bit for bit",
        "tests/test_gcs.py::test_a_gs_run_killed_during_its_final_save_finishes_it_again",
    ),
    Fault(
        "a process of a two-process job killed (SIGKILL)",
        "the other prints one line and exits: `maepp.train: a "
        "collective failed: another process of the job stopped (...)` or, when JAX's heartbeat check notices "
        "first, `maepp.train: process 1 stopped answering (JAX's report: FILE)`, then `; this process stopped too. "
        "The newest complete checkpoint is step N in DIR; the same command resumes from it ...: COMMAND`",
        "every complete checkpoint",
        "tests/test_train.py::test_a_process_that_loses_the_other_says_so_in_one_line",
    ),
    Fault(
        "the same, under `launch/local.sh --max_restarts 1`",
        "`local.sh: a training process exited with status "
        "137; the others were stopped; restart 1 of 1, from the newest checkpoint`; the job resumes",
        "the run: its final parameters equal an uninterrupted run's bit for bit; run_info.jsonl counts the restart",
        "tests/test_train.py::test_a_job_that_lost_a_process_is_restarted_by_its_launcher_and_ends_as_if_uninterrupted",
    ),
    Fault(
        "a storm of 3 SIGKILLs and 3 Ctrl-Cs: SIGKILL at a random moment of start-up and while a save is written "
        "but not committed; Ctrl-C after a random step; Ctrl-C twice, the second while the save the first asked "
        "for is written; SIGKILL after the last evaluation, its save written but not committed (checkpoints "
        "every 10 steps)",
        "each re-run resumes from the newest complete checkpoint; unfinished saves are removed. Ctrl-C: one line, "
        "exit status 130: `maepp.train: stopped by Ctrl-C after saving step N in DIR; the same command resumes "
        "from it`; a second Ctrl-C: `maepp.train: interrupted again: exiting now; the newest complete checkpoint "
        "is step N in DIR`",
        "the run: every step's loss, the held-out loss and the final parameters equal the uninterrupted run's "
        "bit for bit",
        "test_a_storm_of_sigkills_and_ctrl_cs_ends_bit_exact_with_the_uninterrupted_run",
    ),
    Fault(
        "an internal fault mid-run (the pictures folder's path taken by a file, found at the first evaluation)",
        "its traceback, then one line: `stopped by the error above. The newest complete checkpoint is step N in "
        "DIR; once the cause is fixed, resume from it with: COMMAND`; a save in flight is let finish",
        "every complete checkpoint; the printed command is the one that was run",
        "test_an_internal_fault_names_what_survived_and_the_command_that_resumes",
    ),
    Fault(
        "a second `maepp.export` started on an output an export is writing",
        "one line, exit status 1: `maepp.export: OUT.npz.parts is in use by another export (pid P on H, started "
        "T): two exports to one output would write over each other's blocks ...`",
        "the first export, untouched",
        "tests/test_export.py::test_ctrl_c_stops_an_export_in_one_line_and_keeps_its_finished_blocks",
    ),
    Fault(
        "Ctrl-C during `maepp.export`",
        "one line, exit status 130: `maepp.export: interrupted; what was finished "
        "is kept, and the same command goes on from it`",
        "every finished block; the same command resumes "
        "from them (as after a SIGKILL: test_export_killed_halfway_and_restarted_equals_an_uninterrupted_export)",
        "tests/test_export.py::test_ctrl_c_stops_an_export_in_one_line_and_keeps_its_finished_blocks",
    ),
    Fault(
        "a prepared clip's stored bytes overwritten (0xFF: float16 NaN), as by a bad sector",
        "`config.data.damaged_clips='stop'` (the default): one line naming the shard, the clip's index and name, "
        "the value, and both ways on; `'skip'`: the clips that stand in for it are read, and it is counted in "
        "`skipped_clips`",
        "every other clip; nothing damaged reaches a step",
        "tests/test_prepare.py::test_a_damaged_clip_stops_the_stream_naming_it_or_is_skipped_and_counted",
    ),
    Fault(
        "a prepared shard zeroed at its own size, header included (what a crash can leave on ext4)",
        "one line before anything runs: `SHARD: its .npy header is not the one prepare wrote (magic bytes ...)`",
        "the data, untouched",
        "tests/test_integrity.py::test_a_shard_zeroed_at_its_own_size_is_refused_at_start_naming_it",
    ),
    Fault(
        "64 bytes of a log_mel clip flipped (values a few standard deviations off, within every bound)",
        "`damaged_clips='stop'`: one line naming the shard, the clip and the bytes that fail their CRC32C "
        "checksum; `'skip'`: counted, and stood in for",
        "every other clip; nothing damaged reaches a step",
        "tests/test_integrity.py::test_64_flipped_bytes_in_a_log_mel_clip_are_caught_by_its_checksum",
    ),
    Fault(
        "random bytes over a clip of a pcm shard",
        "the same line (or counted, with 'skip'), naming the shard, the clip and the bytes",
        "every other clip",
        "tests/test_integrity.py::test_random_bytes_in_a_pcm_shard_stop_the_stream_or_are_skipped_and_counted",
    ),
    Fault(
        "a manifest that claims 100 more clips than the index holds; a deleted index or checksum table",
        "one line before anything runs, naming the file and what disagrees",
        "the data, untouched",
        "tests/test_integrity.py::test_a_manifest_claiming_more_clips_than_the_index_holds_is_refused_at_start",
    ),
    Fault(
        "`prepare --verify DIR` over a dataset with a damaged clip",
        "a line per damaged clip (shard, clip, bytes), then one summary line; exit status 1",
        "the data, untouched",
        "tests/test_integrity.py::test_prepare_verify_checks_every_clip_and_names_the_damaged_ones",
    ),
    Fault(
        "`maepp.data.prepare --workers 2` killed (SIGKILL to prepare alone) with shards left",
        "its workers see prepare gone and exit within a shard or two (Beam's own worker wrote on to the end)",
        "the finished shards; a re-run races no orphan",
        "tests/test_prepare.py::test_the_workers_of_a_killed_prepare_end_with_it",
    ),
    Fault(
        "`maepp.downstream.evaluate` of an encoder whose weights hold NaN",
        "one line: `N of N clips' features are not finite (first: CLIP): ...`, not a chance-level score",
        "nothing is scored",
        "tests/test_evaluate.py::test_nan_features_stop_evaluate_in_one_line_naming_how_many_clips",
    ),
    Fault(
        "the HEAR API given no clips, no samples, or a NaN or inf sample",
        "one line: `maepp.hear: ...`, naming the clip",
        "nothing is embedded",
        "tests/test_hear.py::test_the_hear_api_refuses_input_no_embedding_could_be_made_of",
    ),
    Fault(
        "`maepp.downstream.evaluate` on a task one of whose splits has no readable clip",
        "one line: `every clip of the fold 0 test split (3, first: bad0.wav) was skipped as unreadable (the "
        "export's lines above say why): a probe needs at least one in each split` (was `need at least one array "
        "to stack`)",
        "nothing is scored",
        "tests/test_evaluate.py::test_a_split_whose_every_clip_was_skipped_is_named_in_one_line",
    ),
    Fault(
        "a probe task of one class",
        "one line when the task is loaded (the config check, or evaluate): `... a probe needs two at least`",
        "nothing is scored",
        "tests/test_evaluate.py::test_a_task_of_one_class_is_refused",
    ),
    Fault(
        "a long clip embedded (maepp.export, maepp.hear and evaluate share the path): 10 minutes of audio",
        "nothing: the front end takes it in blocks of 2,048 frames",
        "memory: a peak of 70 MB measured (about 0.4 GB an hour of audio: the float32 log-mel, its chunks, the "
        "embeddings, one block's spectra) besides the decoded audio (0.23 GB an hour); the whole-clip float64 "
        "STFT took 673 MB for the same clip (4 GB an hour)",
        "tests/test_export.py::test_a_long_clips_memory_is_its_log_mel_and_embeddings_not_its_spectra",
    ),
]


def reliability_page() -> str:
    lines = [
        "# Faults tried, what the user sees, and what survives",
        "",
        "Made from `tests/test_faults.py` (`python -m tests.test_faults > docs/reliability.md`); each row is "
        "a test that injects the fault into a real run and checks the outcome.",
        "",
        "| fault | what the user sees | what survives | test |",
        "| --- | --- | --- | --- |",
    ]
    for f in FAULTS:
        test = f.test if "::" in f.test else f"tests/test_faults.py::{f.test}"
        lines.append(f"| {f.fault} | {f.user_sees} | {f.survives} | `{test}` |")
    return "\n".join(lines) + "\n"


@pytest.mark.e2e
def test_the_reliability_page_is_made_from_this_table(repo_root):
    assert (repo_root / "docs" / "reliability.md").read_text() == reliability_page(), (
        "docs/reliability.md is stale: python -m tests.test_faults > docs/reliability.md"
    )


def _copy_run(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir, ignore=shutil.ignore_patterns("lock", "lock.json", "plugins"))
    return workdir


@pytest.mark.e2e
def test_a_second_run_on_a_workdir_in_use_is_refused(repo_root, tmp_path):
    with WorkdirLock(tmp_path / "busy"):  # the first run, holding the workdir
        result = subprocess.run(train_command(tmp_path / "busy"), cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"maepp.train: {tmp_path / 'busy'} is in use by another run (pid {os.getpid()} on ")
    assert not (tmp_path / "busy" / "checkpoints").exists()
    assert result.stdout == ""  # refused before it says where it would write


@pytest.mark.parametrize("name", ["lock", "lock.json"])
def test_lock_paths_taken_by_folders_are_refused_and_leave_nothing(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(WorkdirInUse, match=f"^{tmp_path / name} is a folder where maepp keeps its lock file: move it"):
        WorkdirLock(tmp_path).acquire()
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize("holder", ["run", "export"])
def test_a_folder_on_a_filesystem_no_lock_can_hold_is_refused_naming_who_would_hold_it(holder):
    with pytest.raises(ValueError) as refused:
        WorkdirLock("s3://bucket/folder", holder=holder)
    assert str(refused.value) == (
        f"s3://bucket/folder: this {holder} keeps its files on a local or shared disk, or on gs:// (a s3:// "
        f"folder could not be held by one {holder} at a time)"
    )


@pytest.mark.e2e
def test_a_killed_runs_workdir_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from maepp.workdir_lock import WorkdirLock; "
            f"lock = WorkdirLock({str(tmp_path)!r}); lock.acquire(); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirInUse, match=f"pid {holder.pid} on "):
        WorkdirLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with WorkdirLock(tmp_path) as lock:  # the kernel let go of the dead run's lease
        assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid() == lock.me["pid"]
    assert not (tmp_path / "lock.json").exists()


def _damage(step_dir, how: str):
    if how == "truncated":
        array_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 10_000]
        for path in array_files:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
        assert array_files
    elif how == "metadata":
        (step_dir / "state" / "_METADATA").write_text("not json {")
    else:
        shutil.rmtree(step_dir)
        step_dir.mkdir()


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["truncated", "metadata", "empty"])
def test_a_damaged_newest_checkpoint_is_skipped(trained_run, tmp_path, how, capsys):
    workdir = _copy_run(trained_run, tmp_path)
    _damage(workdir / "checkpoints" / "60", how)
    config = audiomaepp.get_config("micro")
    targets = restore_targets(config, sharding.make_mesh(config.mesh))
    manager = checkpoints.manager(workdir, keep=3)
    step, restored, data = checkpoints.restore_latest(manager, *targets)
    assert (step, data) == (30, {"position": 30 * 32, "processes": 1})
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(restored.params))
    printed = capsys.readouterr().out
    assert printed.startswith("checkpoint step 60 is damaged (") and "skipped it, moved to" in printed
    aside = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith("60.damaged-")]
    assert len(aside) == 1 and manager.all_steps(read=True) == [30]


@pytest.mark.e2e
def test_export_weights_skip_a_damaged_newest_checkpoint(trained_run, tmp_path, capsys):
    from maepp.weights import store

    workdir = _copy_run(trained_run, tmp_path)
    _damage(workdir / "checkpoints" / "60", "truncated")
    _, _, _, loaded = store.load_model(workdir)
    assert "step 30" in loaded
    assert "skipped damaged checkpoints: step 60 (" in capsys.readouterr().out


@pytest.mark.e2e
def test_a_full_disk_while_a_picture_is_written_stops_the_run_in_one_line(repo_root, tmp_path):
    """Files capped at 48 KB (ulimit -f), as on a full disk: the TensorBoard events (6 KB) fit, a
    held-out picture (about 200 KB) does not, and it comes first: an evaluation precedes the first
    save. SIGXFSZ is ignored, so a too-large write fails (EFBIG) instead of killing. (A save on a
    really full filesystem: the tmpfs test below.)"""
    command = " ".join(
        shlex.quote(word)
        for word in train_command(
            tmp_path / "full",
            "--config.total_steps=12",
            "--config.warmup_steps=1",
            "--config.checkpoint_every=10",
            "--config.log_every=5",
            "--config.batch_size=8",
            "--config.evals.held_out.every=5",
            "--config.evals.held_out.source=synthetic:16:1",
            "--config.evals.held_out.batch_size=8",
        )
    )
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR="")  # the cache's files would hit the cap too
    result = subprocess.run(
        ["bash", "-c", f"ulimit -f 48; trap '' XFSZ; exec {command}"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "stopped at step" not in result.stdout
    picture = tmp_path / "full" / "pictures" / "held_out" / "step_0000005.png"
    assert last == (
        f"maepp.train: out of space (File too large: {picture}); the newest complete checkpoint is none in "
        f"{tmp_path / 'full' / 'checkpoints'}. Free space, then re-run the same command to resume from it"
    )
    assert list(picture.parent.iterdir()) == []  # no part of the picture is left


@pytest.mark.e2e
def test_a_save_that_fills_a_real_filesystem_stops_the_run_and_it_resumes_bit_exact(repo_root, tmp_path):
    """A real full filesystem (ENOSPC from a tmpfs mounted in a mount namespace of the test's own,
    not a file-size cap): the run stops in one line naming step 4 and trains no step to the end;
    with the other file removed, the same command resumes from step 4 and ends with the
    uninterrupted run's losses and parameters, bit for bit. The workdir is on a 12 MB tmpfs, 5.5 MB
    of it taken by another file: a micro checkpoint is 3.3 MB, so the step-4 save fits and the
    step-8 one fills the filesystem."""
    reference = subprocess.run(
        train_command(tmp_path / "reference", *SHORT_JOB), cwd=repo_root, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    mounted, results = tmp_path / "small_disk", tmp_path / "results"
    mounted.mkdir()
    results.mkdir()
    command = shlex.join(train_command(mounted / "run", *SHORT_JOB))
    # The tmpfs lives as long as the namespace: both runs, then a copy of the workdir, inside it.
    script = f"""
        mount -t tmpfs -o size=12m tmpfs {mounted} || exit 77
        head -c 5767168 /dev/zero > {mounted}/other
        {command} > {results}/first.out 2> {results}/first.err; echo $? > {results}/first.rc
        rm {mounted}/other
        {command} > {results}/second.out 2> {results}/second.err; echo $? > {results}/second.rc
        cp -r {mounted}/run {results}/run
    """
    namespace = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "bash", "-c", script], cwd=repo_root, capture_output=True, text=True
    )
    if namespace.returncode == 77:
        pytest.skip(f"no tmpfs can be mounted here: {namespace.stderr.strip()}")
    assert namespace.returncode == 0, namespace.stderr[-3000:]

    first = (results / "first.err").read_text().strip().splitlines()
    assert (results / "first.rc").read_text().strip() == "1"
    assert len(first) == 1, first[-20:]  # one line, no traceback before it
    assert first[0].startswith("maepp.train: saving checkpoints failed (") and "No space left on device" in first[0]
    assert f"the newest complete checkpoint is step 4 in {mounted / 'run' / 'checkpoints'}" in first[0]
    assert "stopped at step" not in (results / "first.out").read_text()

    assert (results / "second.rc").read_text().strip() == "0", (results / "second.err").read_text()[-3000:]
    second = (results / "second.out").read_text()
    assert "resumed from step 4 " in second and "stopped at step 12" in second
    assert logged_scalars(results / "run") == logged_scalars(tmp_path / "reference")
    assert_trees_equal(saved_params(results / "run", 12), saved_params(tmp_path / "reference", 12))


@pytest.mark.e2e
def test_prepare_on_a_full_filesystem_says_so_in_one_line_and_goes_on_once_there_is_room(repo_root, tmp_path):
    """prepare's output on a 1 MB tmpfs (in a mount namespace of the test's own): 16 clips of 5 s
    in shards of 4 (320 KB a shard) fill it at the fourth shard; one line, exit status 1. Remounted
    at 8 MB, the same command keeps the three finished shards and writes the rest."""
    import soundfile

    from maepp.data.synthetic import synthetic_clip

    audio, mounted, results = tmp_path / "audio", tmp_path / "small_disk", tmp_path / "results"
    for folder in (audio, mounted, results):
        folder.mkdir()
    rng = np.random.default_rng(0)
    for number in range(16):
        soundfile.write(audio / f"{number:02d}.wav", synthetic_clip(rng, 5.0)[0], 16000)
    command = shlex.join(
        [sys.executable, "-m", "maepp.data.prepare", "--input", str(audio), "--output", str(mounted / "out")]
    )
    command += " --clips_per_shard 4 --workers 1"
    script = f"""
        mount -t tmpfs -o size=1m tmpfs {mounted} || exit 77
        {command} > {results}/full.out 2> {results}/full.err; echo $? > {results}/full.rc
        ls --full-time {mounted}/out/audio_clips/2.0.0 > {results}/kept
        mount -o remount,size=8m {mounted}
        {command} > {results}/room.out 2> {results}/room.err; echo $? > {results}/room.rc
        ls --full-time {mounted}/out/audio_clips/2.0.0 > {results}/after
        cp {mounted}/out/audio_clips/2.0.0/manifest.json {results}/
    """
    namespace = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "bash", "-c", script], cwd=repo_root, capture_output=True, text=True
    )
    if namespace.returncode == 77:
        pytest.skip(f"no tmpfs can be mounted here: {namespace.stderr.strip()}")
    assert namespace.returncode == 0, namespace.stderr[-3000:]
    assert (results / "full.rc").read_text().strip() == "1"
    lines = (results / "full.err").read_text().splitlines()
    said = [line for line in lines if line.strip() and not line.startswith("prepare:")]  # not the progress bar
    assert said == [
        "maepp.data.prepare: out of space (OSError: [Errno 28] No space left on device [while running 'write']); "
        "what was finished is kept: free space, then run the same command again to go on from it"
    ], said
    assert (results / "room.rc").read_text().strip() == "0", (results / "room.err").read_text()[-3000:]
    assert json.loads((results / "manifest.json").read_text())["clips"] == 16
    kept = {line for line in (results / "kept").read_text().splitlines() if line.endswith(".npy")}
    after = (results / "after").read_text().splitlines()
    assert len(kept) == 3 and kept <= set(after)  # untouched
    assert not [line for line in after if line.endswith(".tmp")]  # the shard the disk cut short, written again


@pytest.mark.e2e
def test_read_only_places_are_one_line_and_evaluate_writes_where_it_is_told(repo_root, trained_run, tmp_path):
    """A shelf of runs on a read-only filesystem (a bind mount remounted read-only, in a mount
    namespace of the test's own): maepp.train with a workdir there is refused in one line;
    maepp.downstream.evaluate of the shared run, kept there, refuses to write beside it in one
    line and, given --output_dir, evaluates it."""
    from maepp.downstream import synthetic_tasks

    shelf, results = tmp_path / "shelf", tmp_path / "results"
    results.mkdir()
    (shelf / "run" / "checkpoints").mkdir(parents=True)  # what evaluate reads: the config, a checkpoint
    shutil.copy(trained_run / "config.json", shelf / "run" / "config.json")
    shutil.copytree(trained_run / "checkpoints" / "60", shelf / "run" / "checkpoints" / "60")
    task = synthetic_tasks.write_task(tmp_path / "sounds", "classes", {"train": 4, "test": 2}, seconds=1.0)
    train_there = shlex.join(train_command(shelf / "new", *SHORT_JOB))
    evaluate = shlex.join(
        [sys.executable, "-m", "maepp.downstream.evaluate", "--workdir", str(shelf / "run"), "--task", str(task)]
    )
    evaluate += " --seeds 1 --probes ridge"
    script = f"""
        mount --bind {shelf} {shelf} && mount -o remount,bind,ro {shelf} || exit 77
        {train_there} > {results}/train.out 2> {results}/train.err; echo $? > {results}/train.rc
        {evaluate} > {results}/beside.out 2> {results}/beside.err; echo $? > {results}/beside.rc
        {evaluate} --output_dir {results}/evaluations > {results}/told.out 2> {results}/told.err
        echo $? > {results}/told.rc
    """
    namespace = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "bash", "-c", script], cwd=repo_root, capture_output=True, text=True
    )
    if namespace.returncode == 77:
        pytest.skip(f"no read-only bind mount can be made here: {namespace.stderr.strip()}")
    assert namespace.returncode == 0, namespace.stderr[-3000:]
    said = {name: (results / f"{name}.err").read_text().strip().splitlines() for name in ("train", "beside")}
    assert [(results / f"{name}.rc").read_text().strip() for name in ("train", "beside")] == ["1", "1"]
    assert said["train"] == [
        f"maepp.train: {shelf / 'new'} cannot be written (Read-only file system: {shelf / 'new'}): this run "
        "keeps its lock there and everything it writes; choose a folder this user may write"
    ]
    assert said["beside"][-1] == (
        f"maepp.downstream.evaluate: {shelf / 'run' / 'evaluations'} cannot be written (Read-only file system): "
        "give --output_dir a folder this user may write"
    )
    assert not any("Traceback" in line for line in said["beside"])
    assert (results / "told.rc").read_text().strip() == "0", (results / "told.err").read_text()[-3000:]
    scores = json.loads((results / "told.out").read_text().strip().splitlines()[-1])
    assert scores["clips"] == 30 and scores["ridge"]["mean"] > 0.2  # 5 classes: chance is 0.2
    assert json.loads((results / "evaluations" / "sounds" / "scores_encoder.json").read_text()) == scores


class _Launch:
    """One maepp.train process, its console lines collected as they come; `pauses` hold it at
    named points (tests/helpers.py PausePoint)."""

    def __init__(self, repo_root, workdir, overrides, *pauses):
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            train_command(workdir, *overrides),
            cwd=repo_root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, **paused_at(*pauses)),
        )
        self.lines, self.errors = [], []
        self._readers = [
            threading.Thread(target=lines.extend, args=(stream,), daemon=True)
            for stream, lines in ((self.process.stdout, self.lines), (self.process.stderr, self.errors))
        ]
        for reader in self._readers:
            reader.start()

    def signal_at(self, pause: PausePoint, number=signal.SIGKILL):
        """Waits until the run is held at the point, signals it, and lets it go on."""
        pause.wait(self.process)
        self.process.send_signal(number)
        pause.release()

    def kill_at(self, pause: PausePoint):
        self.signal_at(pause)
        self.process.wait()

    def last_error(self) -> str:
        self.process.wait(timeout=600)
        for reader in self._readers:  # both streams read to their end
            reader.join()
        return self.errors[-1].strip() if self.errors else ""

    def resumed_from(self) -> list:
        return [int(line.split()[3]) for line in self.lines if line.startswith("resumed from step")]


def _unfinished_saves(workdir) -> list:
    """Orbax writes a step under a temporary name and renames it when complete."""
    return sorted(p.name for p in (workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


@pytest.mark.e2e
@pytest.mark.long(seconds=100)
def test_a_storm_of_sigkills_and_ctrl_cs_ends_bit_exact_with_the_uninterrupted_run(repo_root, trained_run, tmp_path):
    """The second half of the shared uninterrupted run (from its step-30 checkpoint), hit by three
    SIGKILLs and three Ctrl-Cs, then run to the end. The first SIGKILL comes at a moment drawn
    from a seeded generator; the others come where the run is held (maepp/pause_points.py): once
    the step-40 save is written but not committed, after a step drawn from the generator (two
    Ctrl-Cs, the second during the save the first asked for), and once the save of step 60,
    after its evaluation, is written but not committed. Checkpoints every 10 steps instead of 30
    give the storm more to break, and change no number."""
    rng = random.Random(2026)
    start_up_s, after_step = rng.uniform(2.0, 8.0), rng.randint(42, 48)
    workdir = tmp_path / "storm"
    shutil.copytree(trained_run / "checkpoints" / "30", workdir / "checkpoints" / "30")
    overrides = [*TRAINED_RUN, "--config.checkpoint_every=10", "--config.profile.first_step=0"]

    first = _Launch(repo_root, workdir, overrides)  # killed wherever it is
    while time.monotonic() - first.started < start_up_s:
        assert first.process.poll() is None
        time.sleep(0.01)
    first.process.kill()
    first.process.wait()
    resumed_from = first.resumed_from()

    during_save_40 = PausePoint(tmp_path, "save_written@40")
    second = _Launch(repo_root, workdir, overrides, during_save_40)
    second.kill_at(during_save_40)
    assert len(_unfinished_saves(workdir)) == 1 and 40 not in checkpoints.complete_steps(workdir)
    resumed_from += second.resumed_from() + _stopped_by_ctrl_c(repo_root, workdir, overrides, tmp_path, after_step)

    during_save_60 = PausePoint(tmp_path, "save_written@60")
    third = _Launch(repo_root, workdir, overrides, during_save_60)
    third.kill_at(during_save_60)
    picture = workdir / "pictures" / "held_out" / "step_0000060.png"
    assert picture.exists() and 60 not in checkpoints.complete_steps(workdir)
    drawn_by_third = picture.stat().st_mtime_ns
    resumed_from += third.resumed_from()

    final = _Launch(repo_root, workdir, overrides)
    assert final.process.wait(timeout=600) == 0
    final.last_error()
    assert any(line.startswith("stopped at step 60") for line in final.lines)
    resumed_from += final.resumed_from()
    assert len(resumed_from) >= 5 and min(resumed_from) == 30, resumed_from  # the first kill may come before its line
    assert _unfinished_saves(workdir) == []
    # The picture of step 60 the last killed run drew was drawn again, over it.
    assert sorted(p.name for p in (workdir / "pictures" / "held_out").iterdir()) == ["step_0000060.png"]
    assert picture.stat().st_mtime_ns > drawn_by_third
    # Bit for bit: every step's loss, the held-out loss, the final parameters.
    assert logged_scalars(workdir) == {step: v for step, v in logged_scalars(trained_run).items() if step > 30}
    assert logged_scalars(workdir, "held_out/loss") == {60: logged_scalars(trained_run, "held_out/loss")[60]}
    assert_trees_equal(saved_params(workdir, 60), saved_params(trained_run, 60))


def _stopped_by_ctrl_c(repo_root, workdir, overrides, tmp_path, after: int) -> list:
    """Ctrl-C once, while the run is held after logging step `after`: the run saves the next step
    and exits 130 in one line. Then Ctrl-C twice, the second while the save the first asked for
    is written but not committed: the run exits at once, 130, its save left unfinished (never
    taken for the newest). -> the steps the two runs resumed from."""
    logged = PausePoint(tmp_path, f"logged@{after}")
    once = _Launch(repo_root, workdir, overrides, logged)
    once.signal_at(logged, signal.SIGINT)
    line = once.last_error()
    assert once.process.returncode == 130, once.errors[-5:]
    saved = after + 1
    assert line == (
        f"maepp.train: stopped by Ctrl-C after saving step {saved} in {workdir / 'checkpoints'}; the "
        "same command resumes from it"
    )
    assert checkpoints.complete_steps(workdir)[-1] == saved and _unfinished_saves(workdir) == []

    logged, during_save = PausePoint(tmp_path, f"logged@{saved + 1}"), PausePoint(tmp_path, f"save_written@{saved + 2}")
    twice = _Launch(repo_root, workdir, overrides, logged, during_save)
    twice.signal_at(logged, signal.SIGINT)
    during_save.wait(twice.process)
    twice.process.send_signal(signal.SIGINT)
    line = twice.last_error()
    assert twice.process.returncode == 130, twice.errors[-5:]
    assert (
        line == f"maepp.train: interrupted again: exiting now; the newest complete checkpoint is "
        f"step {saved} in {workdir / 'checkpoints'}"
    )
    assert checkpoints.complete_steps(workdir)[-1] == saved and _unfinished_saves(workdir)  # the next run removes it
    return once.resumed_from() + twice.resumed_from()


@pytest.mark.e2e
def test_an_internal_fault_names_what_survived_and_the_command_that_resumes(repo_root, tmp_path):
    workdir = tmp_path / "w"
    # tests/test_loop.py's run: the same compiled steps, from the compilation cache.
    command = train_command(
        workdir,
        "--config.total_steps=10",
        "--config.warmup_steps=1",
        "--config.checkpoint_every=4",
        "--config.evals.held_out.every=5",
        "--config.log_every=7",
        "--config.evals.held_out.source=synthetic:16:1",
        "--config.batch_size=8",
        "--config.evals.held_out.batch_size=8",
    )
    workdir.mkdir()
    (workdir / "pictures").write_text("a file where the run's pictures folder goes")
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    *traceback, last = result.stderr.strip().splitlines()
    assert any("pictures" in line and "Error" in line for line in traceback), result.stderr[-2000:]
    survived = f"step 4 in {workdir / 'checkpoints'}"  # the first evaluation, at step 5
    assert last == (
        f"maepp.train: stopped by the error above. The newest complete checkpoint is {survived}; once the "
        f"cause is fixed, resume from it with: {shlex.join(command)}"
    )
    assert (workdir / "checkpoints" / "4" / "state").is_dir() and _unfinished_saves(workdir) == []


@pytest.mark.parametrize("field,value,message", BAD_CONFIGS, ids=[f"{f}={v}" for f, v, _ in BAD_CONFIGS])
def test_bad_configs_are_one_line_before_compilation(tmp_path, field, value, message):
    config = audiomaepp.get_config("micro")
    node = config
    *parents, leaf = field.split(".")
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    with pytest.raises(ValueError) as error:
        train(config, tmp_path / "w")
    assert str(error.value).startswith(f"config.{field}={value!r}: {message}"), str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "w").exists()  # refused before the workdir was taken: nothing built or compiled


@pytest.mark.e2e
def test_bad_config_fails_fast(repo_root, tmp_path):
    """On 4 fake devices a batch of 6 cannot be split: one line, and the process exits (it used to
    hang in the tf.data iterator's destructor), before it has loaded TensorFlow."""
    env = fake_devices_environment(4)
    python, *rest = train_command(tmp_path / "w", "--config.batch_size=6")
    result = subprocess.run(
        [python, "-X", "importtime", *rest], cwd=repo_root, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    *imports, last = result.stderr.strip().splitlines()
    assert (
        last
        == "maepp.train: config.batch_size=6: must be a multiple of 4: the mesh splits a batch 4 ways over 4 devices"
    )
    assert "maepp.sharding" in "".join(imports)  # Python's import log, one line per module
    assert not [line for line in imports if line.split("|")[-1].strip() == "tensorflow"]


@pytest.mark.e2e
@pytest.mark.parametrize("argument", list(MISSPELT))
def test_a_misspelt_config_field_or_size_is_one_line_naming_the_nearest(repo_root, tmp_path, argument):
    result = subprocess.run(
        train_command(tmp_path / "w", argument), cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip() == MISSPELT[argument]
    assert not (tmp_path / "w").exists()


@pytest.mark.e2e
def test_a_setting_an_evaluator_entry_left_out_is_set_from_the_command_line(repo_root, tmp_path):
    """The config file's probe entry names no `shots`; --config.evals.kw.shots reaches the config
    all the same (a bad value shows it: the check of the value it set refuses it), and a misspelt
    setting is named."""
    config = tmp_path / "with_a_probe.py"
    config.write_text(
        "from maepp.configs import audiomaepp\n\n\n"
        "def get_config(size='micro'):\n"
        "    config = audiomaepp.get_config(size)\n"
        "    config.evals.kw = dict(type='probe', task='/data/task', every=5)\n"
        "    return config\n"
    )
    for argument, said in [
        (
            "--config.evals.kw.shots=-1",
            "config.evals.kw.shots=-1: must be a whole number of at least 0 (training clips per class; 0 takes "
            "them all)",
        ),
        (
            "--config.evals.kw.shot=4",
            "--config.evals.kw.shot: no field 'evals.kw.shot'; did you mean 'evals.kw.shots'? ('shots': a setting "
            "of probe evaluators, 0 unless set)",
        ),
    ]:
        command = train_command(tmp_path / "w", argument, config=f"{config}:micro")
        result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and result.stderr.strip() == f"maepp.train: {said}"


@pytest.mark.e2e
@pytest.mark.parametrize("what", ["file", "directory", "parts"])
def test_export_refuses_outputs_it_did_not_write(repo_root, trained_run, tmp_path, what):
    output = tmp_path / "out.npz"
    if what == "file":
        output.write_text("my notes")
    elif what == "directory":
        output.mkdir()
    else:
        (tmp_path / "out.npz.parts").mkdir()
        (tmp_path / "out.npz.parts" / "mine.txt").write_text("keep me")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maepp.export",
            "--workdir",
            str(trained_run),
            "--input",
            str(tmp_path / "nowhere"),
            "--output",
            str(output),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("maepp.export: ") and ("move it away" if what == "parts" else "--output") in last
    if what == "file":
        assert "--overwrite" in last and output.read_text() == "my notes"
    if what == "parts":
        assert (tmp_path / "out.npz.parts" / "mine.txt").read_text() == "keep me"


def test_odd_file_names_and_symlink_loops_are_left_out_by_name(tmp_path):
    import soundfile

    from maepp.data.sources import FolderSource
    from maepp.data.synthetic import synthetic_clip
    from maepp.data.writer import prepare

    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in ("good.wav", "sub/also_good.wav"):
        soundfile.write(root / name, synthetic_clip(np.random.default_rng(0), 2.5)[0], 16000)
    odd = os.fsencode(str(root)) + b"/caf\xe9.wav"  # Latin-1, not UTF-8
    shutil.copy(root / "good.wav", odd)
    os.symlink(root, root / "sub" / "loop")
    manifest = prepare(root, tmp_path / "out", workers=1)
    assert manifest["clips"] == 2
    assert manifest["skipped"]["caf\\xe9.wav"].startswith("the file name is not valid UTF-8")
    assert manifest["skipped"]["sub/loop"].startswith("a symlink loop")
    folder = FolderSource(root)
    assert len(folder) == 2 and set(folder.left_out) == {"caf\\xe9.wav", "sub/loop"}


def test_prepare_names_stay_inside_the_output(tmp_path):
    from maepp.data.writer import prepare

    with pytest.raises(ValueError, match=r"--name '\.\./\.\./x': use lower-case letters"):
        prepare(tmp_path, tmp_path / "out" / "deep", name="../../x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["trainer", "malicious"])
def test_convert_reads_trainer_checkpoints_and_refuses_code(repo_root, tmp_path, kind):
    import argparse

    torch = pytest.importorskip("torch")
    from maepp.weights import release
    from tests.helpers import model_and_params, spec_for

    spec = spec_for()
    _, params = model_and_params(spec)
    state_dict = {k: torch.from_numpy(v) for k, v in release.params_to_state_dict(params, spec).items()}
    extra = argparse.Namespace(lr=1e-4, model="mae_plusplus_micro") if kind == "trainer" else _Pwn()
    torch.save({"model": state_dict, "args": extra, "epoch": 99}, tmp_path / "ckpt.pth")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maepp.weights.convert",
            "--torch-checkpoint",
            str(tmp_path / "ckpt.pth"),
            "--config",
            "audiomaepp:micro",
            "--output",
            str(tmp_path / "imported"),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if kind == "trainer":
        assert result.returncode == 0, result.stderr[-2000:]
        assert (tmp_path / "imported" / "config.json").exists()
    else:
        assert result.returncode == 1 and not (tmp_path / "pwned").exists()
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .endswith(
                "asks to run posix.system when loaded, which is neither weights nor a known trainer record; "
                "refusing it (only tensors, containers and argparse / ml_collections configs load)"
            )
        )
        assert not (tmp_path / "imported").exists()


def _resume(repo_root, workdir, *overrides):
    result = subprocess.run(
        train_command(workdir, *TRAINED_RUN, *overrides), cwd=repo_root, capture_output=True, text=True, timeout=600
    )
    return result.returncode, result.stdout, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


@pytest.mark.parametrize(
    "override,named",
    [
        ("--config.model.encoder.width=128", "model.encoder.width 64 -> 128"),
        ("--config.data.source=synthetic:64", "data.source 'synthetic' -> 'synthetic:64'"),
    ],
)
@pytest.mark.e2e
def test_resuming_with_settings_of_another_run_is_refused_and_the_run_kept(
    repo_root, trained_run, tmp_path, override, named
):
    """A resume that would make another run (another model's shapes, another data source) is one
    line naming each change, and touches nothing: no checkpoint is called damaged or moved, and
    config.json keeps the run's settings."""
    workdir = _copy_run(trained_run, tmp_path)
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    saved = (workdir / "config.json").read_text()
    code, _, last = _resume(repo_root, workdir, "--config.total_steps=70", override)
    assert code == 1 and last.startswith(f"maepp.train: the workdir holds a run with other settings: {named}. ")
    assert last.endswith(f"(--resume_with_changed={named.split()[0]})")
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    assert (workdir / "config.json").read_text() == saved


@pytest.mark.e2e
def test_a_finished_run_run_again_says_so_in_one_line_without_compiling(repo_root, trained_run, tmp_path):
    workdir = _copy_run(trained_run, tmp_path)
    python, *rest = train_command(workdir, *TRAINED_RUN)
    result = subprocess.run(
        [python, "-X", "importtime", *rest], cwd=repo_root, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and result.stdout.strip() == (
        f"maepp.train: {workdir} has finished: its newest checkpoint is step 60 of config.total_steps=60; to train "
        "on, raise --config.total_steps"
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()}  # Python's import log
    assert "maepp.checkpoints" in imported and not {"maepp.train_loop", "tensorflow"} & imported  # nothing built


@pytest.mark.e2e
def test_a_resumed_run_says_what_changed_and_what_it_does(repo_root, trained_run, tmp_path):
    """Safe changes are resumed with, each said with its effect: a longer run recomputes the
    schedule; a change meant deliberately (--resume_with_changed) goes through."""
    workdir = _copy_run(trained_run, tmp_path)
    code, out, _ = _resume(
        repo_root, workdir, "--config.total_steps=62", "--config.seed=3", "--resume_with_changed=seed"
    )
    assert code == 0 and "resumed from step 60 " in out
    assert "config.total_steps changed from 60 to 62: the cosine schedule is recomputed for the new length" in out
    assert "config.seed changed from 0 to 3: takes effect from this step on" in out
    assert '"seed": 3' in (workdir / "config.json").read_text()


class _Pwn:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


if __name__ == "__main__":
    sys.stdout.write(reliability_page())
