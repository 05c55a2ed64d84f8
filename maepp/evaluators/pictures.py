"""Input / masked input / reconstruction pictures, for TensorBoard and as PNG files.

One row per held-out clip and one column per kind, under the column's title. Each panel is a
log-mel spectrogram drawn SCALE times its size, frequency upwards and time to the right, with mel
bins on the left and seconds below; a clip's three panels share its input's colour scale, which
the bar on the right shows. A masked patch (NaN in the masked input) is hatched grey, which is
no colour of the scale, so that it cannot be taken for a quiet one.
"""

import numpy as np
import tensorflow as tf
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from maepp.audio.constants import HOP, SAMPLE_RATE

TITLES = ("input", "masked input", "reconstruction")
SCALE = 2  # screen pixels per frame and per mel bin
GAP = 6  # white pixels between panels
LEFT, TOP, BOTTOM, RIGHT = 40, 16, 24, 64  # margins for the bin axis, titles, the time axis, the colour bar
BAR_WIDTH = 10
FRAME_SECONDS = HOP / SAMPLE_RATE
# matplotlib's viridis at five points, interpolated between them: dark is quiet, yellow loud, and
# it stays readable in grey and to colour-blind eyes.
ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)
INK = (0, 0, 0)
HATCH = ((190, 190, 190), (235, 235, 235))  # masked patches: grey stripes, off the colour scale


def colours(levels) -> np.ndarray:
    """Levels in [0, 1], any shape -> uint8 RGB [..., 3] on the colour scale."""
    position = np.clip(np.asarray(levels, np.float32), 0.0, 1.0) * (len(ANCHORS) - 1)
    below = np.minimum(np.floor(position).astype(np.int64), len(ANCHORS) - 2)
    weight = (position - below)[..., None]
    return np.round(ANCHORS[below] * (1 - weight) + ANCHORS[below + 1] * weight).astype(np.uint8)


def panel_origin(clip: int, kind: int, time: int, freq: int) -> tuple:
    """(top, left) pixel of a panel [freq * SCALE, time * SCALE] in the grid."""
    return TOP + clip * (freq * SCALE + GAP), LEFT + kind * (time * SCALE + GAP)


def reconstruction_grid(pictures) -> np.ndarray:
    """[3, n, time, freq] (input, masked, reconstruction) -> uint8 RGB [H, W, 3]."""
    pictures = np.asarray(pictures, np.float32)
    kinds, n, time, freq = pictures.shape
    height = TOP + n * (freq * SCALE + GAP) - GAP + BOTTOM
    width = LEFT + kinds * (time * SCALE + GAP) - GAP + RIGHT
    grid = np.full((height, width, 3), 255, np.uint8)
    for clip in range(n):
        low, high = pictures[0, clip].min(), pictures[0, clip].max()
        for kind in range(kinds):
            # [freq, time], the lowest bin at the bottom
            levels = ((pictures[kind, clip] - low) / max(high - low, 1e-6)).T[::-1]
            top, left = panel_origin(clip, kind, time, freq)
            masked = np.isnan(levels).repeat(SCALE, axis=0).repeat(SCALE, axis=1)
            panel = colours(np.nan_to_num(levels)).repeat(SCALE, axis=0).repeat(SCALE, axis=1)
            rows, columns = np.indices(masked.shape)
            stripes = np.asarray(HATCH, np.uint8)[((rows + columns) // 3) % 2]
            grid[top : top + freq * SCALE, left : left + time * SCALE] = np.where(masked[..., None], stripes, panel)
    bar_left = width - RIGHT + GAP
    bar = colours(np.linspace(1.0, 0.0, freq * SCALE))[:, None]  # loud at the top
    grid[TOP : TOP + freq * SCALE, bar_left : bar_left + BAR_WIDTH] = bar
    image = Image.fromarray(grid)
    _label(ImageDraw.Draw(image), kinds, n, time, freq, bar_left)
    return np.asarray(image)


def _label(draw, kinds: int, n: int, time: int, freq: int, bar_left: int):
    font = ImageFont.load_default()
    for kind in range(kinds):
        _, left = panel_origin(0, kind, time, freq)
        draw.text((left, 2), TITLES[kind] if kind < len(TITLES) else f"kind {kind}", fill=INK, font=font)
    for clip in range(n):
        top, _ = panel_origin(clip, 0, time, freq)
        for mel_bin in (0, freq // 2, freq - 1):
            y = top + (freq - 1 - mel_bin) * SCALE + SCALE // 2
            draw.line([(LEFT - 4, y), (LEFT - 1, y)], fill=INK)
            draw.text((LEFT - 6, y), str(mel_bin), fill=INK, font=font, anchor="rm")
    draw.text((2, 2), "mel", fill=INK, font=font)
    bottom = panel_origin(n - 1, 0, time, freq)[0] + freq * SCALE
    ticks = np.arange(0.0, time * FRAME_SECONDS + 1e-9, 0.5)
    for kind in range(kinds):
        _, left = panel_origin(0, kind, time, freq)
        for seconds in ticks[1:] if kind else ticks:  # a panel's 0 would touch the last panel's end
            x = left + round(seconds / FRAME_SECONDS) * SCALE
            draw.line([(x, bottom + 1), (x, bottom + 4)], fill=INK)
            last = kind == kinds - 1 and seconds == ticks[-1]
            draw.text((x, bottom + 5), f"{seconds:g} s" if last else f"{seconds:g}", fill=INK, font=font, anchor="mt")
    draw.text((bar_left + BAR_WIDTH + 3, TOP), "loud", fill=INK, font=font, anchor="lt")
    draw.text((bar_left + BAR_WIDTH + 3, TOP + freq * SCALE), "quiet", fill=INK, font=font, anchor="lb")


def write_png(path, image: np.ndarray):
    """uint8 [H, W, 1|3] -> a PNG file at path (local or gs://); written whole, then moved over
    whatever is there (a resumed run redraws the pictures of steps it repeats)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    try:
        partial.write_bytes(tf.io.encode_png(image).numpy())
    except OSError as error:  # a full disk: name the picture, and leave no part of it
        partial.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    partial.replace(path)
