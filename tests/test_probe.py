"""The probe evaluator (maepp/evaluators/probe.py): which clips it fits, the closed-form fit against
float64 algebra, scene embeddings on a mesh against export's, and in a training run the score
maepp.downstream.evaluate gets from the same checkpoint."""

import json

import numpy as np
import pytest
import soundfile

from maepp.downstream import ridge
from maepp.downstream.tasks import load_task
from maepp.evaluator_kinds import RunContext
from tests.helpers import PROBE, logged_scalars, ridge_score_of, run_module


def _run_context(config, model, mesh, shardings) -> RunContext:
    return RunContext(model, mesh, shardings.params, config.audio.filterbank, config.seed)


def _task(directory, seconds: dict) -> object:
    """A labelled folder: {(split, label): [clip seconds, ...]} of procedural sound."""
    rng = np.random.default_rng(0)
    for (split, label), lengths in seconds.items():
        for i, length in enumerate(lengths):
            path = directory / split / label / f"{i:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, 0.1 * rng.standard_normal(int(length * 16000)).astype(np.float32), 16000)
    return load_task(directory)


def test_shots_cap_the_fitting_clips_of_each_class_in_the_tasks_order(tmp_path):
    task = _task(
        tmp_path, {("train", "a"): [0.5] * 5, ("train", "b"): [0.5] * 3, ("test", "a"): [0.5] * 2, ("test", "b"): [0.5]}
    )
    train, choosing, test = ridge.probe_clips(task, shots=2)
    fold = task.folds[0]
    every = fold.train + fold.valid  # one penalty: nothing to choose, it fits on both
    for label in ("a", "b"):  # each class's first two, in the task's order
        assert [c for c in train if c[1] == [label]] == [c for c in every if c[1] == [label]][:2]
    assert train == [c for c in every if c in train] and len(train) == 4 and choosing == []
    assert test == fold.test and len(test) == 3
    assert ridge.probe_clips(task, shots=0)[0] == every
    # Several penalties: fit on train (capped), choose on all of valid.
    train, choosing, test = ridge.probe_clips(task, shots=2, choosing=True)
    assert all(c in fold.train for c in train) and len(train) == 4
    assert choosing == fold.valid and test == fold.test


def test_the_closed_form_fit_is_float64_ridge_regression_on_standardised_features():
    rng = np.random.default_rng(1)
    x, test = rng.standard_normal((40, 12)).astype(np.float32), rng.standard_normal((9, 12)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    logits = np.asarray(ridge.ridge_logits(x, y, test, 2.0))
    mean, std = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64) + 1e-6
    z, z_test = (x - mean) / std, (test - mean) / std
    weights = np.linalg.solve(z.T @ z + 2.0 * np.eye(12), z.T @ (y - y.mean(0)))
    np.testing.assert_allclose(logits, z_test @ weights + y.mean(0), rtol=1e-4, atol=1e-5)


def test_the_penalty_taken_is_the_first_of_the_best_on_the_choosing_clips():
    """Logits of 3 penalties for 4 choosing clips then 2 test clips: the second and third tie best
    on the choosing clips (3 of 4 right); the second is taken, and its fit's test score reported."""
    right, wrong = [1.0, 0.0], [0.0, 1.0]  # for a clip of class 0
    logits = np.array(
        [
            [wrong, wrong, right, right, right, right],
            [right, right, right, wrong, wrong, right],
            [right, wrong, right, right, right, right],
        ]
    )
    best, score = ridge.choose(logits, 4, np.zeros(4, int), np.zeros(2, int), multilabel=False)
    assert (best, score) == (1, 0.5)
    assert ridge.choose(logits[:1, 4:], 0, None, np.zeros(2, int), multilabel=False) == (0, 1.0)  # nothing to choose


def test_scene_embeddings_on_eight_devices_are_exports(tmp_path):
    """Clips of 0.7 to 4.3 s: one to three chunks, their padding weighted out, rows of a batch
    spread over 8 devices; every scene embedding is what maepp.export computes on the host. A
    damaged clip is left out and named."""
    import jax

    from maepp import sharding
    from maepp.configs import audiomaepp
    from maepp.evaluator_kinds import settings as evaluator_settings
    from maepp.evaluators.probe import ProbeEvaluation
    from maepp.export.artifact import local_embedder
    from maepp.models import MaskedAutoencoder, ModelSpec
    from maepp.optim import optimizer

    config = audiomaepp.get_config("micro")
    (tmp_path / "train" / "b").mkdir(parents=True)
    (tmp_path / "train" / "b" / "damaged.wav").write_bytes(b"RIFF" + bytes(40))  # counted, left out
    task = _task(
        tmp_path,
        {
            ("train", "a"): [0.7, 2.0, 4.3, 1.5, 2.2],
            ("train", "b"): [3.1, 0.9],
            ("test", "a"): [2.5],
            ("test", "b"): [4.0, 1.0],
        },
    )
    mesh = sharding.make_mesh(config.mesh)
    model = MaskedAutoencoder(ModelSpec.from_config(config.model))
    state, shardings = sharding.create_sharded_state(model, optimizer(config), mesh, jax.random.key(0))
    settings = evaluator_settings(dict(PROBE, task=str(tmp_path), batch_size=8))
    probe = ProbeEvaluation("kw", settings, _run_context(config, model, mesh, shardings), task)
    got = np.asarray(probe.scene_embeddings(state.params))
    embedder = local_embedder(model, jax.device_get(state.params))
    assert list(probe.unreadable) == ["train/b/damaged.wav"] and len(probe.rows()) == 10
    for row, (path, _) in enumerate(probe.rows()):
        waveform, _ = soundfile.read(task.root / path, dtype="float32")
        np.testing.assert_allclose(got[row], embedder.scene(waveform, 16000), rtol=1e-4, atol=1e-5)


def test_of_several_penalties_the_best_on_valid_is_taken_as_downstream_evaluate_takes_it(tmp_path):
    """l2=(1e-3, 1, 1e3): the evaluator fits on train, takes the penalty that scores best on valid
    and reports its fit's test score; maepp.downstream's ridge probe on the exported features of
    the same clips takes the same penalty and gets the same score. Parameters holding NaN give no
    score (it would look like a chance-level encoder's) but one line saying so."""
    import jax

    from maepp import sharding
    from maepp.configs import audiomaepp
    from maepp.downstream import features
    from maepp.evaluator_kinds import settings as evaluator_settings
    from maepp.evaluators.probe import ProbeEvaluation
    from maepp.export.artifact import local_embedder
    from maepp.models import MaskedAutoencoder, ModelSpec
    from maepp.optim import optimizer

    rng = np.random.default_rng(2)
    for split, per_label in (("train", 6), ("valid", 4), ("test", 4)):
        for label, hertz in (("low", 300.0), ("high", 2500.0)):
            for i in range(per_label):
                time_s = np.arange(int(1.5 * 16000)) / 16000
                tone = np.sin(2 * np.pi * hertz * (1 + 0.05 * rng.standard_normal()) * time_s)
                clip = (0.3 * tone + 0.05 * rng.standard_normal(len(time_s))).astype(np.float32)
                path = tmp_path / split / label / f"{i}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, clip, 16000)
    task = load_task(tmp_path)
    config = audiomaepp.get_config("micro")
    mesh = sharding.make_mesh(config.mesh)
    model = MaskedAutoencoder(ModelSpec.from_config(config.model))
    state, shardings = sharding.create_sharded_state(model, optimizer(config), mesh, jax.random.key(0))
    l2s = (1e-3, 1.0, 1e3)
    settings = evaluator_settings(dict(PROBE, task=str(tmp_path), batch_size=8, l2=l2s))
    probe = ProbeEvaluation("tones", settings, _run_context(config, model, mesh, shardings), task)
    score, chosen = probe(state.params)
    assert [len(probe.kept[split]) for split in ("fitting", "choosing", "test")] == [12, 8, 8]
    embedder = local_embedder(model, jax.device_get(state.params))
    exported = {
        path: embedder.scene(soundfile.read(tmp_path / path, dtype="float32")[0], 16000) for path in task.paths()
    }
    assert (score, chosen) == pytest.approx(features.ridge_score(task, exported, PROBE["shots"], l2s), abs=1e-6)
    assert chosen in l2s
    broken = jax.tree.map(lambda p: p * np.nan, state.params)
    with pytest.raises(ValueError, match=r"^probe tones: 28 of 28 clips' scene embeddings are not finite: the encoder"):
        probe(broken)


@pytest.mark.e2e
def test_a_runs_probe_scores_are_logged_and_downstream_evaluate_reproduces_them(
    repo_root, trained_run, probed_config, tmp_path
):
    """The shared run evaluates its probe at steps 30 and 60; from each checkpoint,
    maepp.downstream.evaluate's ridge probe with the same shots and l2 gets the same accuracy (at
    step 60 as a user runs it, at step 30 through its library, in this process)."""
    logged = logged_scalars(trained_run, "classes/accuracy")
    assert sorted(logged) == [30, 60]
    assert sorted(logged_scalars(trained_run, "eval_seconds/classes")) == [30, 60]
    task = probed_config.parent / "classes_task"
    out = run_module(
        repo_root,
        "maepp.downstream.evaluate",
        "--workdir",
        str(trained_run),
        "--step",
        "60",
        "--task",
        str(task),
        "--probes",
        "ridge",
        "--shots",
        str(PROBE["shots"]),
        "--l2",
        "1.0",
    )
    assert logged[60] == pytest.approx(json.loads(out.strip().splitlines()[-1])["ridge"]["mean"], abs=1e-6)
    score = ridge_score_of(trained_run, 30, task, tmp_path / "step_30.npz")
    assert logged[30] == pytest.approx(score, abs=1e-6)  # TensorBoard keeps float32
