"""The probe evaluator (maepp/evaluators/probe.py): which clips it fits, the closed-form fit against
float64 algebra, scene embeddings on a mesh against export's, and in a training run the score
maepp.downstream.evaluate gets from the same checkpoint."""
import json

import numpy as np
import pytest
import soundfile

from maepp.downstream import ridge
from maepp.downstream.tasks import load_task
from tests.helpers import PROBE, logged_scalars, ridge_score_of, run_module


def _task(directory, seconds: dict) -> object:
    """A labelled folder: {(split, label): [clip seconds, ...]} of procedural sound."""
    rng = np.random.default_rng(0)
    for (split, label), lengths in seconds.items():
        for i, length in enumerate(lengths):
            path = directory / split / label / f"{i:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, 0.1 * rng.standard_normal(int(length * 16000)).astype(np.float32), 16000)
    return load_task(directory)


def test_shots_cap_the_training_clips_of_each_class_in_the_tasks_order(tmp_path):
    task = _task(tmp_path, {("train", "a"): [0.5] * 5, ("train", "b"): [0.5] * 3, ("test", "a"): [0.5] * 2,
                            ("test", "b"): [0.5]})
    train, test = ridge.probe_clips(task, shots=2)
    fold = task.folds[0]
    every = fold.train + fold.valid  # the probe tunes nothing: it fits on both
    for label in ("a", "b"):  # each class's first two, in the task's order
        assert [c for c in train if c[1] == [label]] == [c for c in every if c[1] == [label]][:2]
    assert train == [c for c in every if c in train] and len(train) == 4
    assert test == fold.test and len(test) == 3
    assert ridge.probe_clips(task, shots=0)[0] == every


def test_the_closed_form_fit_is_float64_ridge_regression_on_standardised_features():
    rng = np.random.default_rng(1)
    x, test = rng.standard_normal((40, 12)).astype(np.float32), rng.standard_normal((9, 12)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    logits = np.asarray(ridge.ridge_logits(x, y, test, 2.0))
    mean, std = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64) + 1e-6
    z, z_test = (x - mean) / std, (test - mean) / std
    weights = np.linalg.solve(z.T @ z + 2.0 * np.eye(12), z.T @ (y - y.mean(0)))
    np.testing.assert_allclose(logits, z_test @ weights + y.mean(0), rtol=1e-4, atol=1e-5)


def test_scene_embeddings_on_eight_devices_are_exports(tmp_path):
    """Clips of 0.7 to 4.3 s: one to three chunks, their padding weighted out, rows of a batch
    spread over 8 devices; every scene embedding is what maepp.export computes on the host. A
    damaged clip is left out and named."""
    import jax

    from maepp import sharding
    from maepp.config_checks import evaluator_settings
    from maepp.configs import audiomaepp
    from maepp.evaluators.probe import ProbeEvaluation
    from maepp.export.artifact import local_embedder
    from maepp.models import MaskedAutoencoder, ModelSpec
    from maepp.optim import optimizer

    config = audiomaepp.get_config("micro")
    (tmp_path / "train" / "b").mkdir(parents=True)
    (tmp_path / "train" / "b" / "damaged.wav").write_bytes(b"RIFF" + bytes(40))  # counted, left out
    task = _task(tmp_path, {("train", "a"): [0.7, 2.0, 4.3, 1.5, 2.2], ("train", "b"): [3.1, 0.9],
                            ("test", "a"): [2.5], ("test", "b"): [4.0, 1.0]})
    mesh = sharding.make_mesh(config.mesh)
    model = MaskedAutoencoder(ModelSpec.from_config(config.model))
    state, shardings = sharding.create_sharded_state(model, optimizer(config), mesh, jax.random.key(0))
    settings = evaluator_settings(dict(PROBE, task=str(tmp_path), batch_size=8))
    probe = ProbeEvaluation("kw", settings, config, model, mesh, shardings.params, task)
    got = np.asarray(probe.scene_embeddings(state.params))
    embedder = local_embedder(model, jax.device_get(state.params))
    assert list(probe.unreadable) == ["train/b/damaged.wav"] and len(probe.kept) == 10
    for row, (path, _) in enumerate(probe.kept):
        waveform, _ = soundfile.read(task.root / path, dtype="float32")
        np.testing.assert_allclose(got[row], embedder.scene(waveform, 16000), rtol=1e-4, atol=1e-5)


@pytest.mark.e2e
def test_a_runs_probe_scores_are_logged_and_downstream_evaluate_reproduces_them(repo_root, trained_run,
                                                                                probed_config, tmp_path):
    """The shared run evaluates its probe at steps 30 and 60; from each checkpoint,
    maepp.downstream.evaluate's ridge probe with the same shots and l2 gets the same accuracy (at
    step 60 as a user runs it, at step 30 through its library, in this process)."""
    logged = logged_scalars(trained_run, "classes/accuracy")
    assert sorted(logged) == [30, 60]
    assert sorted(logged_scalars(trained_run, "eval_seconds/classes")) == [30, 60]
    task = probed_config.parent / "classes_task"
    out = run_module(repo_root, "maepp.downstream.evaluate", "--workdir", str(trained_run), "--step", "60",
                     "--task", str(task), "--probes", "ridge", "--shots", str(PROBE["shots"]), "--l2", "1.0")
    assert logged[60] == pytest.approx(json.loads(out.strip().splitlines()[-1])["ridge"]["mean"], abs=1e-6)
    score = ridge_score_of(trained_run, 30, task, tmp_path / "step_30.npz")
    assert logged[30] == pytest.approx(score, abs=1e-6)  # TensorBoard keeps float32
