"""Embeddings export: frame order, restartable export of many clips, the jax.export artifact."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from maepp.audio.constants import SAMPLE_RATE
from maepp.export import artifact, clips, embed
from maepp.weights import store
from tests.helpers import PausePoint, model_and_params, spec_for, two_at_once

# One xdist worker runs this whole module, so its module fixture is built once.
pytestmark = pytest.mark.xdist_group("export")


def test_frame_t_is_made_of_time_step_t_only():
    """With no attention (depth 0) a token sees only its own patch: changing log-mel frames
    100-103 of a clip must change frame embedding 25 and nothing else, in the right chunk."""
    model, params = model_and_params(spec_for(**{"encoder.depth": 0}))
    embedder = artifact.local_embedder(model, params, batch_size=8)
    log_mel = np.random.default_rng(0).normal(size=(450, 80)).astype(np.float32)
    changed = log_mel.copy()
    changed[300:304] += 1.0  # chunk 1 (frames 200-399), its time step 25 -> clip frame 75
    before, after = embedder.frames_of_log_mels([log_mel, changed])
    assert before.shape == (113, 5 * 64)  # ceil(450 / 4)
    differs = np.flatnonzero(np.any(before != after, axis=1))
    assert differs.tolist() == [75]


def _write_clips(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        seconds = rng.uniform(0.3, 2.5)
        tone = np.sin(2 * np.pi * rng.uniform(100, 4000) * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)
        soundfile.write(folder / f"clip_{i:04d}.wav", (0.3 * tone + 0.01 * rng.normal(size=tone.shape)), SAMPLE_RATE)
    (folder / "clip_0200.wav").write_bytes(b"RIFF not really a wav file")  # a corrupt clip mid-list


@pytest.fixture(scope="module")
def clips_400(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "clips"
    _write_clips(folder, 400)
    return folder


def _export_command(run, inputs, output, *extra):
    return [
        sys.executable,
        "-m",
        "maepp.export",
        "--workdir",
        str(run),
        "--input",
        str(inputs),
        "--output",
        str(output),
        "--block_clips",
        "40",
        *extra,
    ]


@pytest.mark.e2e
def test_ctrl_c_stops_an_export_in_one_line_and_keeps_its_finished_blocks(repo_root, trained_run, clips_400, tmp_path):
    """Held after its second block, the export refuses a second one on its output; then Ctrl-C."""
    output, block_1 = tmp_path / "out.npz", PausePoint(tmp_path, "exported@1")
    process = subprocess.Popen(
        _export_command(trained_run, clips_400, output),
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **block_1.environment),
    )
    parts = tmp_path / "out.npz.parts"
    block_1.wait(process)
    second = subprocess.run(
        _export_command(trained_run, clips_400, output), cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 1
    assert (
        second.stderr.strip()
        .splitlines()[-1]
        .startswith(f"maepp.export: {parts} is in use by another export (pid {process.pid} on ")
    ), second.stderr[-2000:]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "maepp.export: interrupted; what was finished is kept, and the same command goes on from it"
    )
    # The lease is let go with its files: what is left is the finished blocks and the plan.
    assert sorted(p.name for p in parts.iterdir()) == ["block_000000.npz", "block_000001.npz", "plan.json"]
    assert not output.exists()


@pytest.mark.e2e
def test_export_killed_halfway_and_restarted_equals_an_uninterrupted_export(
    repo_root, trained_run, clips_400, tmp_path
):
    reference = tmp_path / "reference.npz"
    subprocess.run(_export_command(trained_run, clips_400, reference), cwd=repo_root, check=True, capture_output=True)
    output, block_4 = tmp_path / "restarted.npz", PausePoint(tmp_path, "exported@4")
    process = subprocess.Popen(
        _export_command(trained_run, clips_400, output),
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, **block_4.environment),
    )
    parts = tmp_path / "restarted.npz.parts"
    block_4.wait(process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not output.exists() and len(list(parts.glob("block_*.npz"))) == 5
    assert not list(parts.glob("*.tmp"))  # a block is whole or absent
    finished = subprocess.run(
        _export_command(trained_run, clips_400, output), cwd=repo_root, check=True, capture_output=True, text=True
    )
    assert "399 clips embedded" in finished.stdout and "1 skipped" in finished.stdout
    assert "clip_0200.wav" in finished.stderr  # the bad clip is named
    got, want = np.load(output), np.load(reference)
    assert sorted(got.files) == sorted(want.files)
    for key in want.files:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert not parts.exists()
    # Rows stay aligned with paths around the skipped clip.
    assert got["embeddings"].shape == (399, 5 * 64) and "clip_0200.wav" not in got["paths"].tolist()
    assert got["skipped_paths"].tolist() == ["clip_0200.wav"]
    model, params, _, _ = store.load_model(trained_run)
    alone = artifact.local_embedder(model, params)
    row = got["paths"].tolist().index("clip_0201.wav")
    waveform, _ = soundfile.read(clips_400 / "clip_0201.wav")
    # export batches clips, alone one: XLA may sum in another order
    np.testing.assert_allclose(got["embeddings"][row], alone.scene(waveform, SAMPLE_RATE), atol=1e-5)


@pytest.mark.e2e
def test_timestamps_and_csv_input(trained_run, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, seconds in (("a.wav", 0.5), ("b.flac", 3.3)):
        soundfile.write(folder / name, 0.1 * rng.normal(size=int(seconds * SAMPLE_RATE)), SAMPLE_RATE)
    (tmp_path / "list.csv").write_text("path,label\nfew/b.flac,x\nfew/a.wav,y\n")
    model, params, _, _ = store.load_model(trained_run)
    embedder = artifact.local_embedder(model, params, batch_size=8)
    source = clips.input_source(str(tmp_path / "list.csv"))
    clips.export(source, embedder, tmp_path / "out.npz", timestamps=True)
    out = np.load(tmp_path / "out.npz")
    assert out["paths"].tolist() == ["few/b.flac", "few/a.wav"]
    lengths = [int(np.ceil((1 + int(s * SAMPLE_RATE) // 160) / 4)) for s in (3.3, 0.5)]  # 83, 13
    assert np.diff(out["frame_offsets"]).tolist() == lengths
    first = out["timestamps_ms"][: lengths[0]]
    np.testing.assert_allclose(first[:3], [15.0, 55.0, 95.0])
    # float32 means over ~50 frames
    np.testing.assert_allclose(out["embeddings"][0], out["frame_embeddings"][: lengths[0]].mean(axis=0), rtol=1e-6)


@pytest.mark.e2e
def test_artifact_runs_with_only_jax_and_numpy(repo_root, trained_run, tmp_path):
    model, params, config, _ = store.load_model(trained_run)
    # Two runs on one directory at once: each writes a folder of its own, one renames it in place,
    # the other is refused and removes its own; a run after them is refused before it writes.
    (directory,), (refused,) = two_at_once(
        lambda: artifact.write_artifact(tmp_path / "artifact", model, params, config), FileExistsError
    )
    assert str(refused) == f"{directory} was written by another run meanwhile; choose a new artifact directory"
    assert [path.name for path in tmp_path.iterdir()] == ["artifact"]  # no partial folder left
    with pytest.raises(FileExistsError, match="already exists; choose a new artifact directory"):
        artifact.write_artifact(directory, model, params, config)
    waveform = np.random.default_rng(2).uniform(-1, 1, size=int(4.2 * SAMPLE_RATE))
    np.save(tmp_path / "wave.npy", waveform)
    want = artifact.local_embedder(model, params).frames(waveform, SAMPLE_RATE)
    # A fresh interpreter where the training stack cannot be imported at all.
    script = f"""
import sys
for name in ("flax", "optax", "orbax", "tensorflow", "librosa", "maepp.models", "maepp.train"):
    sys.modules[name] = None
import numpy as np
from maepp.export import embed
frames = embed.load({str(directory)!r}).frames(np.load({str(tmp_path / "wave.npy")!r}), 16000)
np.save({str(tmp_path / "frames.npy")!r}, frames)
"""
    subprocess.run([sys.executable, "-c", script], cwd=repo_root, check=True, capture_output=True)
    got = np.load(tmp_path / "frames.npy")
    assert got.shape == want.shape == (106, 5 * 64)  # ceil((1 + 67200 // 160) / 4)
    np.testing.assert_allclose(got, want, atol=1e-5)  # jax.export's program against the jitted one: fusions may differ
    assert embed.load(directory).frame_size == 320


def test_a_clip_at_another_rate_or_with_channels_is_refused_not_embedded():
    from maepp.audio import filterbanks

    embedder = embed.Embedder(
        lambda batch: np.zeros((len(batch), 50, 8), np.float32),
        frame_size=8,
        filterbank=filterbanks.mel_filterbank(),
        batch_size=2,
    )
    second = np.zeros(SAMPLE_RATE)
    assert embedder.frames(second, SAMPLE_RATE).shape == (26, 8)  # 101 log-mel frames -> ceil(101 / 4)
    with pytest.raises(ValueError, match=r"sample_rate=22050: .* librosa.resample\(waveform, orig_sr=22050"):
        embedder.scene(np.zeros(22050), 22050)
    with pytest.raises(ValueError, match=r"shape \(16000, 2\): .* one channel"):
        embedder.scene(np.zeros((SAMPLE_RATE, 2)), SAMPLE_RATE)


def test_a_long_clips_memory_is_its_log_mel_and_embeddings_not_its_spectra():
    """Ten minutes of audio through the artifact's path (front end, chunks, embeddings). Its
    whole-clip float64 STFT peaked at 673 MB (4 GB an hour); in blocks it holds the float32
    log-mel, its chunks and the embeddings (19 MB each here) and one block's spectra (about 30 MB)."""
    import tracemalloc

    from maepp.audio import filterbanks

    embedder = embed.Embedder(
        lambda batch: np.zeros((len(batch), 50, 320), np.float32),
        frame_size=320,
        filterbank=filterbanks.mel_filterbank(),
        batch_size=64,
    )
    waveform = (0.3 * np.sin(np.arange(600 * SAMPLE_RATE) * 0.05)).astype(np.float32)
    tracemalloc.start()
    try:
        frames = embedder.frames(waveform, SAMPLE_RATE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames.shape == (15001, 320)
    log_mel_bytes = 60001 * 80 * 4
    assert peak < 5 * log_mel_bytes, f"peak {peak / 1e6:.0f} MB"  # 70 MB measured; the STFT alone took 673 MB
