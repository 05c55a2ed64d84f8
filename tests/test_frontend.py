"""The TF and JAX log-mel front ends against the librosa reference on audio files, and the
filterbanks and front ends against the release's own torchaudio front end."""

import librosa
import numpy as np
import pytest
import soundfile
import torch

from maepp.audio import filterbanks, jax_frontend, reference, sliced_dft, tf_frontend
from maepp.audio.constants import F_MAX, F_MIN, HOP, N_FFT, N_MELS, SAMPLE_RATE
from maepp.audio.decode import load_audio
from maepp.data.synthetic import synthetic_clip
from tests import torchaudio_reference
from tests.helpers import LOG_MEL_TOLERANCE

TOLERANCE = LOG_MEL_TOLERANCE  # tests/helpers.py says why


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


# Both filterbanks on 16 kHz files; the default one on resampled stereo too.
KINDS_AND_FILTERBANKS = [("16k", "torchaudio"), ("16k", "librosa"), ("44k_stereo", "torchaudio")]


@pytest.mark.parametrize("kind,filterbank", KINDS_AND_FILTERBANKS)
def test_tf_frontend_matches_librosa(audio_files, kind, filterbank):
    for path in audio_files[kind]:
        waveform = load_audio(path)
        expected = reference.log_mel(waveform, filterbank)
        got = tf_frontend.log_mel(waveform, filterbank).numpy()
        assert got.shape == expected.shape == (1 + len(waveform) // 160, 80)
        np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0, err_msg=str(path))


@pytest.mark.parametrize("kind,filterbank", KINDS_AND_FILTERBANKS)
def test_jax_frontend_matches_librosa(audio_files, kind, filterbank):
    for path in audio_files[kind]:
        waveform = load_audio(path)
        got = np.asarray(jax_frontend.log_mel(waveform[None], filterbank))[0]
        expected = reference.log_mel(waveform, filterbank)
        np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0, err_msg=str(path))


@pytest.fixture(scope="module")
def torchaudio_outputs():
    """The release's front end (torchaudio.transforms.MelSpectrogram) on procedural clips, computed
    by torchaudio in float64, as tests/torchaudio_reference.py stored it: torchaudio itself cannot
    be installed here."""
    stored = np.load(torchaudio_reference.PATH)
    n_clips = len([key for key in stored if key.startswith("pcm_")])
    clips = [
        dict(
            waveform=stored[f"pcm_{i}"].astype(np.float32) / 32768.0,
            log_mel=stored[f"log_mel_{i}"],
            standardised=stored[f"standardised_{i}"],
        )
        for i in range(n_clips)
    ]
    return stored["filterbank"], clips


def test_filterbanks_are_their_references(torchaudio_outputs):
    torchaudio_fb, _ = torchaudio_outputs
    np.testing.assert_array_equal(filterbanks.mel_filterbank("torchaudio"), torchaudio_fb)  # value for value
    librosa_fb = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX, htk=True, norm=None, dtype=np.float64
    ).T
    np.testing.assert_array_equal(filterbanks.mel_filterbank("librosa"), librosa_fb.astype(np.float32))
    # The two differ only in rounding: the float32 build is up to 7.8e-6 off.
    assert 5e-6 < np.abs(librosa_fb - torchaudio_fb).max() < 1e-5


def _float64_log_mel_bound(waveform: np.ndarray, filterbank: np.ndarray) -> np.ndarray:
    """A guaranteed bound [frames, 80] on how far two float64 computations of log(power @
    filterbank + eps) can differ, whatever FFT code path and CPU each ran on.

    An FFT's error in every bin is at most its error's 2-norm, ||y - y*|| <= log2(n) eta ||y||
    with eta = mu + gamma_4 (sqrt(2) + mu) ~ 6.7 u per stage (Higham, Accuracy and Stability of
    Numerical Algorithms, 2nd ed., Theorem 24.2); 8 u per stage here, for both computations. A
    bin's power is then off by at most 2 |X_k| delta + delta^2; the filterbank's sum of 201
    non-negative terms adds at most 201 u of the mel value, again on both sides."""
    u = 2.0**-53
    padded = np.pad(waveform.astype(np.float64), N_FFT // 2, mode="reflect")
    starts = HOP * np.arange(1 + (len(padded) - N_FFT) // HOP)
    frames = padded[starts[:, None] + np.arange(N_FFT)] * torch.hann_window(N_FFT, dtype=torch.float64).numpy()
    spectrum = np.fft.rfft(frames, axis=1)  # [frames, 201]
    delta = 2 * 8 * u * np.log2(N_FFT) * np.sqrt(N_FFT) * np.linalg.norm(frames, axis=1, keepdims=True)
    mel = np.abs(spectrum) ** 2 @ filterbank
    mel_error = (2 * np.abs(spectrum) * delta + delta**2) @ filterbank + 2 * 201 * u * mel
    return mel_error / (mel + np.finfo(np.float32).eps)


def test_torch_stft_with_the_torchaudio_filterbank_is_torchaudio(torchaudio_outputs):
    """torchaudio's MelSpectrogram is torch.stft's power times its filterbank: with ours, the
    release's log-mels come out. Compared in float64, where a guaranteed bound (~1e-9) separates
    the filterbanks (4e-5 apart): float32 FFTs of two CPUs differ by up to 1.2e-3 in quiet bins."""
    _, clips = torchaudio_outputs
    banks = {name: filterbanks.mel_filterbank(name).astype(np.float64) for name in filterbanks.NAMES}
    for clip in clips:
        waveform = torch.from_numpy(clip["waveform"].astype(np.float64))
        spectrum = torch.stft(
            waveform,
            N_FFT,
            HOP,
            N_FFT,
            torch.hann_window(N_FFT, dtype=torch.float64),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = (spectrum.abs() ** 2).numpy().T  # [frames, 201]
        log_mel = {name: np.log(power @ bank + np.finfo(np.float32).eps) for name, bank in banks.items()}
        bound = _float64_log_mel_bound(clip["waveform"], banks["torchaudio"])
        assert bound.max() < 1e-6
        assert np.all(np.abs(log_mel["torchaudio"] - clip["log_mel"]) <= bound)
        assert np.any(np.abs(log_mel["librosa"] - clip["log_mel"]) > bound)


@pytest.mark.parametrize("frontend", ["tf", "jax"])
def test_front_ends_reproduce_torchaudio(torchaudio_outputs, frontend):
    """maepp's front ends give the release's standardised log-mels, computed exactly, in every bin
    to within 1e-5: their float32 results' rounding (a few ulps of |log-mel| < 16 over a std
    above 3.5: 2e-6) and their float32 clip stats over these short clips (20,080 values at most,
    summed pairwise: 15 u of |values| < 16 over that std: 4e-6). Measured: 5e-7. With librosa's
    filterbank they are up to 4e-5 off."""
    _, clips = torchaudio_outputs
    librosa_errors = []
    for clip in clips:
        log_mel = {
            "tf": lambda fb, clip=clip: tf_frontend.log_mel(clip["waveform"], fb).numpy(),
            "jax": lambda fb, clip=clip: np.asarray(jax_frontend.log_mel(clip["waveform"][None], fb))[0],
        }[frontend]
        assert np.abs(log_mel("torchaudio") - clip["standardised"]).max() < 1e-5
        librosa_errors.append(np.abs(log_mel("librosa") - clip["standardised"]).max())
    assert max(librosa_errors) > 2e-5  # the filterbank is what makes the difference


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
    frames = np.stack(
        [
            np.sin(2 * np.pi * 1000 * t) + 1e-6 * np.sin(2 * np.pi * 6000 * t),
            0.5 * np.sign(np.sin(2 * np.pi * 440 * t)) + 1e-5 * np.cos(2 * np.pi * 7000 * t + 0.3),
            np.random.default_rng(0).standard_normal(N_FFT) * np.linspace(0, 1, N_FFT),
        ]
    )
    frames = frames.astype(np.float32)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    expected = np.abs(np.fft.rfft(frames.astype(np.float64) * window)) ** 2
    got = np.asarray(sliced_dft.power_spectrum(frames))
    assert expected.min() < 1e-12 * expected.max()  # the frames do have bins that quiet
    # Relative to each bin, down to 1e-14 of the frame's peak bin.
    audible = expected > 1e-14 * expected.max(axis=1, keepdims=True)
    # bfloat16 products summed in float32 slices (maepp/audio/sliced_dft.py) keep about 16 bits per bin
    np.testing.assert_allclose(got[audible], expected[audible], rtol=1e-4)


def test_stereo_is_averaged_and_resampled_to_16k(audio_files):
    path = audio_files["44k_stereo"][0]
    samples, rate = soundfile.read(path, dtype="float32")
    waveform = load_audio(path)
    assert rate == 44100 and samples.shape[1] == 2
    assert abs(len(waveform) - round(len(samples) * 16000 / 44100)) <= 1
