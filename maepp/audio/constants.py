"""The front end's numbers (PAPER.md, "Input"), shared by every implementation of it."""
import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
F_MIN, F_MAX = 50.0, 8000.0
LOG_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07
STD_EPS = 1e-8
