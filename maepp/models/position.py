"""Fixed sin-cos position tables (not parameters: never trained, never weight-decayed).

Laid out exactly as the MAE / AudioMAE++ release builds them, so imported weights see the
same positions they were trained with (maepp.weights.convert checks this against the checkpoint).
"""

import numpy as np


def sincos_1d(width: int, positions: np.ndarray) -> np.ndarray:
    """[M] positions -> [M, width]: sin of all frequencies, then cos of all frequencies."""
    if width % 2:
        raise ValueError(f"sin-cos position width must be even, got {width}")
    omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d_table(width: int, grid: tuple, cls_token: bool) -> np.ndarray:
    """Encoder table, [(1 if cls_token) + n_time * n_freq, width] float32.

    The first half of the channels encodes the frequency index, the second half the time index
    (MAE's meshgrid(w, h) convention); rows in time-major token order. The CLS row is zeros.
    """
    n_time, n_freq = grid
    if width % 4:
        raise ValueError(f"2D sin-cos position width must be divisible by 4, got {width}")
    time_idx, freq_idx = np.meshgrid(np.arange(n_time), np.arange(n_freq), indexing="ij")
    table = np.concatenate([sincos_1d(width // 2, freq_idx), sincos_1d(width // 2, time_idx)], axis=1)
    return _with_cls_row(table, cls_token)


def sincos_1d_table(width: int, n_tokens: int, cls_token: bool) -> np.ndarray:
    """Decoder table over the flattened token index, [(1 if cls_token) + n_tokens, width]."""
    return _with_cls_row(sincos_1d(width, np.arange(n_tokens)), cls_token)


def _with_cls_row(table, cls_token):
    if cls_token:
        table = np.concatenate([np.zeros((1, table.shape[1])), table], axis=0)
    return table.astype(np.float32)
