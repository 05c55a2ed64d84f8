"""The front end's numbers (docs/reference.md#input), shared by every implementation of it."""

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
F_MIN, F_MAX = 50.0, 8000.0
LOG_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07
STD_EPS = 1e-8


def crop_span(crop_frames: int) -> int:
    """Samples that the centred frames of a crop cover: 32,240 for 200 frames."""
    return (crop_frames - 1) * HOP + N_FFT
