"""Inputs of another length than the paper's 2 s: configs/experiments/long_inputs.py's 10 s
(1000 frames) trains, resumes, exports and serves through the HEAR API."""

import numpy as np
import pytest
import soundfile
import torch

from maepp.audio.constants import SAMPLE_RATE
from tests.helpers import train

LONG = "configs/experiments/long_inputs.py:rope,size=micro"
SHORT_RUN = [
    "--config.batch_size=8",
    "--config.warmup_steps=1",
    "--config.log_every=2",
    "--config.checkpoint_every=2",
    "--config.evals.held_out.every=2",
    "--config.evals.held_out.source=synthetic:8:1",
    "--config.evals.held_out.batch_size=8",
    "--config.profile.first_step=0",
]


@pytest.mark.e2e
@pytest.mark.long(seconds=60)
def test_ten_second_inputs_train_resume_export_and_embed_a_25_s_clip_every_40_ms(repo_root, tmp_path):
    from maepp.audio import filterbanks
    from maepp.export import artifact, clips, hear
    from maepp.weights import store

    workdir = tmp_path / "long"
    first = train(repo_root, workdir, "--config.total_steps=2", *SHORT_RUN, config=LONG)
    assert "stopped at step 2" in first and "held-out loss" in first
    second = train(repo_root, workdir, "--config.total_steps=4", *SHORT_RUN, config=LONG)
    assert "resumed from step 2 of" in second and "stopped at step 4" in second

    model, params, config, _ = store.load_model(workdir)
    assert tuple(model.spec.input_size) == (1000, 80) and model.spec.encoder.use_rope
    seconds = 25
    rng = np.random.default_rng(0)
    waveform = (0.1 * rng.normal(size=seconds * SAMPLE_RATE)).astype(np.float32)
    (tmp_path / "clips").mkdir()
    soundfile.write(tmp_path / "clips" / "long.wav", waveform, SAMPLE_RATE, subtype="FLOAT")  # the same samples
    embedder = artifact.local_embedder(model, params, batch_size=2, filterbank=filterbanks.from_config(config))
    clips.export(clips.input_source(str(tmp_path / "clips")), embedder, tmp_path / "out.npz", timestamps=True)
    out = np.load(tmp_path / "out.npz")
    frames = int(np.ceil((1 + seconds * SAMPLE_RATE // 160) / 4))  # a frame embedding per 4 log-mel frames
    assert frames == 626 and out["frame_embeddings"].shape == (frames, 5 * 64)
    times = out["timestamps_ms"]
    np.testing.assert_allclose(np.diff(times), 40.0)
    assert times[0] == 15.0 and seconds * 1000 - 40 <= times[-1] <= seconds * 1000 + 40  # the whole clip

    model = hear.load_model(str(workdir))
    embeddings, stamps = hear.get_timestamp_embeddings(torch.from_numpy(waveform)[None], model)
    assert embeddings.shape == (1, frames, 5 * 64) and torch.isfinite(embeddings).all()
    np.testing.assert_allclose(stamps[0].numpy(), times)
    # The same encoder, the same 10 s chunks: the HEAR API's frames are the export's.
    np.testing.assert_allclose(embeddings[0].numpy(), out["frame_embeddings"], rtol=1e-4, atol=1e-5)
