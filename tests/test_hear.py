"""The HEAR API passes the real validator (PyPI hearvalidator), on a maepp.train run."""

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from maepp.export import hear

pytestmark = pytest.mark.e2e  # every test reads the shared trained run

needs_validator = pytest.mark.skipif(
    importlib.util.find_spec("hearvalidator") is None, reason="the [hear] extra (hearvalidator) is not installed"
)


@needs_validator
def test_hear_validator_passes_on_a_trained_run(repo_root, trained_run):
    validator = pathlib.Path(sys.executable).parent / "hear-validator"
    result = subprocess.run(
        [str(validator), "maepp.hear", "--model", str(trained_run), "--device", "cpu"],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Looks good!" in result.stdout


def test_scene_embedding_is_the_mean_of_the_timestamp_embeddings(trained_run):
    model = hear.load_model(str(trained_run))
    assert model.sample_rate == 16000 and model.scene_embedding_size == model.timestamp_embedding_size == 320
    audio = torch.rand(3, 17120) * 2 - 1  # 1.07 s, as the validator sends
    frames, times = hear.get_timestamp_embeddings(audio, model)
    assert frames.shape == (3, 27, 320) and frames.dtype == torch.float32 and times.shape == (3, 27)
    np.testing.assert_allclose(times[0, :2].numpy(), [15.0, 55.0])
    assert float(times.max()) <= 1070.0
    scene = hear.get_scene_embeddings(audio, model)
    # float32 means, summed in another order
    np.testing.assert_allclose(scene.numpy(), frames.numpy().mean(axis=1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(scene[0], scene[1])


@pytest.mark.parametrize(
    "audio,message",
    [
        (torch.zeros(0, 16000), r"audio must be \[clips, samples\] with at least one of each, not \[0, 16000\]"),
        (torch.zeros(2, 0), r"audio must be \[clips, samples\] with at least one of each, not \[2, 0\]"),
        (
            torch.tensor([[0.1] * 8000, [float("nan")] + [0.0] * 7999]),
            r"1 of 2 clips hold NaN or inf samples \(first: clip 1\)",
        ),
        (torch.tensor([[float("inf")] * 8000]), r"1 of 1 clips hold NaN or inf samples \(first: clip 0\)"),
    ],
    ids=["no clips", "no samples", "nan", "inf"],
)
def test_the_hear_api_refuses_input_no_embedding_could_be_made_of(trained_run, audio, message):
    model = hear.load_model(str(trained_run))
    for call in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(ValueError, match=rf"^maepp\.hear: {message}"):
            call(audio, model)
