"""The TF and JAX log-mel front ends against the librosa reference, on audio files."""
import numpy as np
import pytest
import soundfile

from maepp.audio import jax_frontend, reference, sliced_dft, tf_frontend
from maepp.audio.constants import N_FFT
from maepp.audio.decode import load_audio
from maepp.data.synthetic import synthetic_clip

TOLERANCE = 1e-4  # absolute, on the standardised log-mel


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """16 kHz mono files and 44.1 kHz stereo files of procedural audio of every class."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(7)
    files = {"16k": [], "44k_stereo": []}
    for i in range(5):
        clip, _ = synthetic_clip(rng, seconds=[2.0, 3.3, 10.0, 1.0, 2.5][i])
        path = root / f"mono_{i}.flac"
        soundfile.write(path, clip, 16000)
        files["16k"].append(path)
        left, _ = synthetic_clip(rng, seconds=2.5, sample_rate=44100)
        right, _ = synthetic_clip(rng, seconds=2.5, sample_rate=44100)
        path = root / f"stereo_{i}.wav"
        soundfile.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
        files["44k_stereo"].append(path)
    return files


@pytest.mark.parametrize("kind", ["16k", "44k_stereo"])
def test_tf_frontend_matches_librosa(audio_files, kind):
    for path in audio_files[kind]:
        waveform = load_audio(path)
        expected = reference.log_mel(waveform)
        got = tf_frontend.log_mel(waveform).numpy()
        assert got.shape == expected.shape == (1 + len(waveform) // 160, 80)
        np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0, err_msg=str(path))


@pytest.mark.parametrize("kind", ["16k", "44k_stereo"])
def test_jax_frontend_matches_librosa(audio_files, kind):
    for path in audio_files[kind]:
        waveform = load_audio(path)
        got = np.asarray(jax_frontend.log_mel(waveform[None]))[0]
        np.testing.assert_allclose(got, reference.log_mel(waveform), atol=TOLERANCE, rtol=0, err_msg=str(path))


def test_jax_frontend_standardises_each_clip_of_a_batch():
    rng = np.random.default_rng(0)
    batch = np.stack([synthetic_clip(rng)[0] for _ in range(3)] + [np.zeros(32000, np.float32)])
    got = np.asarray(jax_frontend.log_mel(batch))
    for clip, mel in zip(batch, got):
        np.testing.assert_allclose(mel, reference.log_mel(clip), atol=TOLERANCE, rtol=0)
    np.testing.assert_array_equal(got[-1], 0.0)  # silence: zeros, not NaN


def test_sliced_dft_resolves_bins_120_db_under_the_peak():
    """Where a float32 FFT's rounding noise (~140 dB under the frame) swamps the quiet bin."""
    t = np.arange(N_FFT) / 16000
    frames = np.stack([
        np.sin(2 * np.pi * 1000 * t) + 1e-6 * np.sin(2 * np.pi * 6000 * t),
        0.5 * np.sign(np.sin(2 * np.pi * 440 * t)) + 1e-5 * np.cos(2 * np.pi * 7000 * t + 0.3),
        np.random.default_rng(0).standard_normal(N_FFT) * np.linspace(0, 1, N_FFT),
    ])
    frames = frames.astype(np.float32)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    expected = np.abs(np.fft.rfft(frames.astype(np.float64) * window)) ** 2
    got = np.asarray(sliced_dft.power_spectrum(frames))
    assert expected.min() < 1e-12 * expected.max()  # the frames do have bins that quiet
    # Relative to each bin, down to 1e-14 of the frame's peak bin.
    audible = expected > 1e-14 * expected.max(axis=1, keepdims=True)
    np.testing.assert_allclose(got[audible], expected[audible], rtol=1e-4)


def test_stereo_is_averaged_and_resampled_to_16k(audio_files):
    path = audio_files["44k_stereo"][0]
    samples, rate = soundfile.read(path, dtype="float32")
    waveform = load_audio(path)
    assert rate == 44100 and samples.shape[1] == 2
    assert abs(len(waveform) - round(len(samples) * 16000 / 44100)) <= 1
