"""Input / masked input / reconstruction pictures, for TensorBoard and as PNG files."""
import numpy as np
import tensorflow as tf
from etils import epath

GAP = 2  # white pixels between panels


def reconstruction_grid(pictures) -> np.ndarray:
    """[3, n, time, freq] (input, masked, reconstruction) -> uint8 [H, W, 1].

    One row per clip, one column per kind; each panel has frequency upwards and time to the
    right, and a clip's three panels share the input's grey scale.
    """
    pictures = np.asarray(pictures, np.float32)
    kinds, n, time, freq = pictures.shape
    grid = np.full((n * (freq + GAP) - GAP, kinds * (time + GAP) - GAP), 255, np.uint8)
    for clip in range(n):
        low, high = pictures[0, clip].min(), pictures[0, clip].max()
        scale = 255.0 / max(high - low, 1e-6)
        for kind in range(kinds):
            panel = np.clip((pictures[kind, clip] - low) * scale, 0, 255).T[::-1]  # [freq, time]
            top, left = clip * (freq + GAP), kind * (time + GAP)
            grid[top : top + freq, left : left + time] = np.round(panel).astype(np.uint8)
    return grid[..., None]


def write_png(path, image: np.ndarray):
    """uint8 [H, W, 1|3] -> a PNG file at path (local or gs://); written whole, then moved over
    whatever is there (a resumed run redraws the pictures of steps it repeats)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(tf.io.encode_png(image).numpy())
    partial.replace(path)
