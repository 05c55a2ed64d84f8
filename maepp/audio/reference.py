"""The log-mel front end in NumPy/librosa: the reference the fast versions are tested against.

PAPER.md, "Input": 16 kHz, n_fft 400, periodic Hann window 400, hop 160, 80 HTK mel bins
50-8000 Hz without filter normalisation, power 2, centred frames with reflect padding (as
torchaudio), log(mel + float32 eps), then per-clip standardisation with the unbiased std.
"""
import librosa
import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
F_MIN, F_MAX = 50.0, 8000.0
LOG_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07
STD_EPS = 1e-8


def mel_filterbank() -> np.ndarray:
    """[N_FFT // 2 + 1, N_MELS] float32 HTK filterbank, no normalisation."""
    fb = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX, htk=True, norm=None)
    return fb.T.astype(np.float32)


def standardize(log_mel: np.ndarray) -> np.ndarray:
    """(x - mean) / (unbiased std + 1e-8) over the whole clip.

    The shift by the first value changes nothing mathematically but makes a constant (silent)
    clip exactly zero, so rounding noise in its mean is not divided by std + 1e-8 ~ 1e-8.
    """
    log_mel = log_mel - log_mel.flat[0]
    return (log_mel - log_mel.mean()) / (log_mel.std(ddof=1) + STD_EPS)


def log_mel(waveform: np.ndarray) -> np.ndarray:
    """16 kHz mono waveform [samples] -> standardised log-mel [frames, 80] float32, time-major."""
    mel = librosa.feature.melspectrogram(
        y=np.asarray(waveform, np.float32),
        sr=SAMPLE_RATE,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=N_FFT,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=N_MELS,
        fmin=F_MIN,
        fmax=F_MAX,
        htk=True,
        norm=None,
    )
    return standardize(np.log(mel + LOG_EPS)).T.astype(np.float32)
