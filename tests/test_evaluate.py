"""Downstream evaluation: task layouts, probes, and the encoder against its references."""

import dataclasses
import json

import numpy as np
import pytest
import soundfile
from PIL import Image

from maepp.downstream import probes, synthetic_tasks
from maepp.downstream.tasks import load_task
from tests.helpers import logged_scalars, run_module


def _wav(path, seconds=0.3):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(seconds * 16000)), 16000)


def test_labelled_folder_holds_out_a_fixed_fifth_of_train(tmp_path):
    for split, n in (("train", 10), ("test", 3)):
        for label in ("dog", "cat"):
            for i in range(n):
                _wav(tmp_path / split / label / f"{i}.wav")
    task = load_task(tmp_path)
    (fold,) = task.folds
    assert task.labels == ["cat", "dog"] and not task.multilabel
    assert len(fold.train) == 16 and len(fold.valid) == 4 and len(fold.test) == 6
    assert not {p for p, _ in fold.train} & {p for p, _ in fold.valid}
    assert ("train/dog/3.wav", ["dog"]) in fold.train + fold.valid
    assert load_task(tmp_path).folds[0].valid == fold.valid  # fixed, not reshuffled


def test_hear_kfold_task_rotates_test_and_valid_folds(tmp_path):
    (tmp_path / "task_metadata.json").write_text(
        json.dumps(
            dict(
                task_name="toy",
                prediction_type="multilabel",
                split_mode="new_split_kfold",
                nfolds=3,
                embedding_type="scene",
            )
        )
    )
    for i in range(3):
        names = {f"f{i}_{j}.wav": ["a", "b"] if j else ["c"] for j in range(2)}
        (tmp_path / f"fold{i:02d}.json").write_text(json.dumps(names))
        for name in names:
            _wav(tmp_path / "16000" / f"fold{i:02d}" / name)
    task = load_task(tmp_path)
    assert task.name == "toy" and task.multilabel and task.labels == ["a", "b", "c"]
    assert len(task.folds) == 3 and len(task.paths()) == 6
    second = task.folds[1]
    assert {p for p, _ in second.test} == {"16000/fold01/f1_0.wav", "16000/fold01/f1_1.wav"}
    assert {p for p, _ in second.valid} == {"16000/fold02/f2_0.wav", "16000/fold02/f2_1.wav"}
    assert {p for p, _ in second.train} == {"16000/fold00/f0_0.wav", "16000/fold00/f0_1.wav"}


def test_not_a_task_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a task"):
        load_task(tmp_path)


def _blobs(n, separation, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n).astype(np.int32)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    x[np.arange(n), y] += separation
    return probes.Split(x, y)


@pytest.mark.parametrize("settings", [probes.LINEAR, probes.HEAR_MLP], ids=["linear", "mlp"])
def test_probes_learn_what_is_there_and_nothing_else(settings):
    if settings.hidden:  # the MLP learns these blobs in 100 epochs; HEAR's 500 took 13 s of the suite
        settings = dataclasses.replace(settings, max_epochs=100)
    train, valid, test = (_blobs(n, 4.0, seed) for n, seed in ((300, 0), (100, 1), (200, 2)))
    assert probes.evaluate_probe(train, valid, test, 3, False, settings, seed=0) > 0.95
    noise = [probes.Split(s.x, np.random.default_rng(9).permutation(s.y)) for s in (train, valid, test)]
    assert probes.evaluate_probe(*noise, 3, False, settings, seed=0) < 0.5  # chance is 1/3


def test_scores_and_interval():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.5]])
    assert probes.score(logits, np.array([0, 1, 1]), multilabel=False) == pytest.approx(2 / 3)
    labels = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    assert probes.score(logits, labels, multilabel=True) == pytest.approx(1.0)
    mean, half = probes.mean_and_interval([0.8, 0.9, 1.0])
    # t(0.975, 2) to 7 digits
    assert mean == pytest.approx(0.9) and half == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)


@pytest.mark.e2e
def test_evaluate_cli_probes_a_trained_run_on_a_synthetic_task(repo_root, trained_run, tmp_path):
    task = synthetic_tasks.write_task(tmp_path / "sounds", "classes", {"train": 12, "test": 6}, seconds=1.0)
    out = run_module(
        repo_root,
        "maepp.downstream.evaluate",
        "--workdir",
        str(trained_run),
        "--task",
        str(task),
        "--seeds",
        "2",
        "--probes",
        "linear",
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["task"] == "sounds" and result["metric"] == "accuracy" and result["clips"] == 90
    assert len(result["linear"]["scores"]) == 2
    assert result["linear"]["mean"] > 0.4  # 5 classes: chance is 0.2
    assert (trained_run / "evaluations" / "sounds" / "encoder.npz").exists()
    # Kept beside the features, where the results table finds it.
    kept = trained_run / "evaluations" / "sounds" / "scores_encoder.json"
    assert json.loads(kept.read_text()) == result
    from maepp.tools.results import draw, run_row

    row = run_row(trained_run)
    assert row["scores"]["sounds encoder linear"] == result["linear"]["mean"]
    # The run's evaluators as the results table reads them: the shared run's held-out loss and probe.
    assert row["steps"] == 60
    assert row["scores"]["held_out loss (final)"] == logged_scalars(trained_run, "held_out/loss")[60]
    probe = logged_scalars(trained_run, "classes/accuracy")
    assert sorted(probe) == [30, 60] and row["scores"]["classes accuracy (last)"] == probe[60]
    assert row["scores"]["classes accuracy (best)"] == max(probe.values())
    assert draw([row], tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as picture:  # two panels: the loss and the score
        assert picture.format == "PNG" and picture.size == (1000, 360)


@pytest.mark.parametrize("rate", synthetic_tasks.MODULATION_RATES_HZ)
def test_modulated_noise_swings_at_its_rate(rate):
    waveform = synthetic_tasks.modulated_noise(np.random.default_rng(int(rate)), rate, seconds=2.0)
    frame_energy = (waveform[: 2 * 16000].reshape(400, 80) ** 2).mean(axis=1)  # 200 Hz energy envelope
    spectrum = np.abs(np.fft.rfft(frame_energy - frame_energy.mean()))
    assert np.fft.rfftfreq(400, 1 / 200)[np.argmax(spectrum)] == rate


@pytest.mark.e2e
def test_synthetic_task_cli_writes_a_labelled_folder(repo_root, tmp_path):
    out = run_module(
        repo_root,
        "maepp.downstream.synthetic_tasks",
        "--task",
        "modulation",
        "--output",
        str(tmp_path / "am"),
        "--train",
        "3",
        "--test",
        "2",
        "--seconds",
        "0.5",
    )
    assert "wrote the modulation task" in out
    task = load_task(tmp_path / "am")
    assert task.labels == sorted(f"am_{r:g}hz" for r in synthetic_tasks.MODULATION_RATES_HZ)
    (fold,) = task.folds
    assert len(fold.train) + len(fold.valid) == 12 and len(fold.test) == 8
    assert soundfile.info(tmp_path / "am" / fold.test[0][0]).duration == 0.5


def test_nan_features_stop_evaluate_in_one_line_naming_how_many_clips(tmp_path):
    """An encoder whose weights hold NaN: a probe on its features would score like chance."""
    import jax

    from maepp.audio import filterbanks
    from maepp.downstream import features
    from tests.helpers import model_and_params, spec_for

    task = synthetic_tasks.write_task(tmp_path / "sounds", "classes", {"train": 2, "test": 1}, seconds=1.0)
    model, params = model_and_params(spec_for("micro"))
    broken = jax.tree.map(lambda leaf: leaf * np.nan, params)
    embedder = features.features_embedder("encoder", model, broken, filterbanks.DEFAULT)
    with pytest.raises(ValueError) as stopped:
        features.task_features(load_task(task), embedder, tmp_path / "features.npz", None)
    assert str(stopped.value).startswith("15 of 15 clips' features are not finite (first: ")
    assert "check its weights" in str(stopped.value) and "\n" not in str(stopped.value)


def test_one_seed_has_no_interval_and_the_json_is_strict():
    from maepp.downstream import features
    from maepp.downstream.tasks import Fold, Task

    task_features = {f"c{i}.wav": np.full(4, float(i % 2), np.float32) for i in range(6)}
    split = [(f"c{i}.wav", ["ab"[i % 2]]) for i in range(6)]
    task = Task("t", None, False, ["a", "b"], [Fold(split, split, split)])
    results = features.evaluate(task, task_features, seeds=1, probe_names=("linear",))
    assert results["linear"]["ci95"] is None and len(results["linear"]["scores"]) == 1

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    assert json.loads(json.dumps(results, allow_nan=False), parse_constant=refuse)["linear"]["ci95"] is None


@pytest.mark.parametrize("probe", ["linear", "ridge"])
def test_a_split_whose_every_clip_was_skipped_is_named_in_one_line(probe):
    from maepp.downstream import features
    from maepp.downstream.tasks import Fold, Task

    readable = {f"c{i}.wav": np.full(4, float(i % 2), np.float32) for i in range(6)}
    split = [(f"c{i}.wav", ["ab"[i % 2]]) for i in range(6)]
    unreadable = [(f"bad{i}.wav", ["ab"[i % 2]]) for i in range(3)]
    task = Task("t", None, False, ["a", "b"], [Fold(split, split, unreadable)])
    with pytest.raises(ValueError) as refused:
        features.evaluate(task, readable, seeds=1, probe_names=(probe,))
    where = "fold 0 test" if probe == "linear" else "test"
    assert str(refused.value).startswith(f"every clip of the {where} split (3, first: bad0.wav) was skipped")
    assert "\n" not in str(refused.value)


def test_a_task_of_one_class_is_refused(tmp_path):
    for split, clips in (("train", 10), ("test", 3)):
        for i in range(clips):
            _wav(tmp_path / "one" / split / "only_label" / f"{i}.wav")
    with pytest.raises(ValueError, match=r"the task has 1 class \(only_label\): a probe needs two at least"):
        load_task(tmp_path / "one")
