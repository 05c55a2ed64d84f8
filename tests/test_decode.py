"""Reading audio files: formats, rates, channels, and every kind of bad file."""

import numpy as np
import pytest
import soundfile

from maepp.audio.decode import BadAudio, load_audio
from maepp.data.synthetic import synthetic_clip


def _clip(seconds, rate=16000, seed=0):
    return synthetic_clip(np.random.default_rng(seed), seconds=seconds, sample_rate=rate)[0]


@pytest.mark.parametrize(
    "ext,subtype", [(".wav", "PCM_16"), (".flac", "PCM_24"), (".ogg", "VORBIS"), (".mp3", "MPEG_LAYER_III")]
)
def test_reads_each_format_as_16k_mono(tmp_path, ext, subtype):
    path = tmp_path / f"clip{ext}"
    soundfile.write(path, np.stack([_clip(1.0, 22050), _clip(1.0, 22050, 1)], axis=1), 22050, subtype=subtype)
    waveform = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(len(waveform) - 16000) < 0.02 * 16000  # mp3 adds a little padding


def test_three_channels_at_44k(tmp_path):
    path = tmp_path / "three.wav"
    channels = np.stack([_clip(2.0, 44100, s) for s in range(3)], axis=1)
    soundfile.write(path, channels, 44100)
    waveform = load_audio(path)
    assert abs(len(waveform) - 32000) <= 1


@pytest.mark.parametrize(
    "name,make,reason",
    [
        ("empty.wav", lambda p: p.write_bytes(b""), "unreadable"),
        ("zero_frames.wav", lambda p: soundfile.write(p, np.zeros((0, 1), np.float32), 16000), "empty"),
        ("garbage.flac", lambda p: p.write_bytes(b"fLaC" + bytes(range(256)) * 8), "unreadable"),
        ("nan.wav", lambda p: soundfile.write(p, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT"), "NaN"),
        ("silent.wav", lambda p: soundfile.write(p, np.zeros(16000, np.float32), 16000), "silent"),
    ],
)
def test_bad_files_raise_bad_audio_naming_file_and_reason(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(BadAudio) as error:
        load_audio(path)
    assert reason in error.value.reason
    assert str(path) in str(error.value)


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "cut.wav"
    soundfile.write(path, _clip(2.0), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still promises 2 s
    with pytest.raises(BadAudio, match="truncated"):
        load_audio(path)
