"""Held-out evaluation: loss only over valid clips' masked patches, honest pictures, PNG files."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from maepp.evaluators.held_out_step import make_eval_step
from maepp.evaluators.pictures import LEFT, RIGHT, SCALE, colours, panel_origin, reconstruction_grid, write_png
from maepp.models import MASKING_RNG
from maepp.models.patches import patchify
from tests.helpers import model_and_params, spec_for


@functools.cache
def _micro():
    model, params = model_and_params(spec_for())
    return model, params, jax.jit(make_eval_step(model, n_pictures=2))


def _eval(x, valid, seed=3):
    _, params, step = _micro()
    return step(params, x, jnp.asarray(valid), jax.random.key(seed))


def test_eval_loss_is_the_models_loss_over_valid_clips_only():
    model, params, _ = _micro()
    x = jax.random.normal(jax.random.key(0), (4, 200, 80))
    out = _eval(x, [True] * 4)
    loss = jax.jit(lambda p, x: model.apply({"params": p}, x, rngs={MASKING_RNG: jax.random.key(3)})["loss"])(params, x)
    # the same float32 sums, split over batches
    np.testing.assert_allclose(out["error_sum"] / out["masked_patches"], loss, rtol=1e-6)
    assert float(out["masked_patches"]) == 4 * 200  # 80% of 250 patches per clip
    # Padding rows (valid False) count for nothing, whatever they hold.
    half = _eval(x.at[2:].set(0.0), [True, True, False, False])
    garbage = _eval(x.at[2:].set(1e3), [True, True, False, False])
    assert float(half["masked_patches"]) == 2 * 200
    # the same float32 sums, split over batches
    np.testing.assert_allclose(half["error_sum"], garbage["error_sum"], rtol=1e-6)


def test_pictures_keep_visible_patches_and_hide_masked_ones():
    x = jax.random.normal(jax.random.key(1), (4, 200, 80))
    out = _eval(x, [True] * 4)
    pictures = np.asarray(out["pictures"])
    assert pictures.shape == (3, 2, 200, 80)
    np.testing.assert_array_equal(pictures[0], np.asarray(x[:2]))
    original, hidden, reconstructed = (patchify(jnp.asarray(p), (4, 16)) for p in pictures)
    kept = np.all(np.asarray(hidden == original), axis=-1)  # [2, 250] patches shown as they are
    hidden_as_nan = np.all(np.isnan(np.asarray(hidden)), axis=-1)  # drawn hatched, no level
    assert np.all(kept.sum(axis=1) == 50) and np.all(kept ^ hidden_as_nan)
    same = np.all(np.asarray(reconstructed == original), axis=-1)
    np.testing.assert_array_equal(same, kept)  # predictions fill exactly the masked patches


def test_grid_layout_and_png_round_trip(tmp_path):
    pictures = np.zeros((3, 2, 200, 80), np.float32)
    pictures[:, :, :, 0] = 1.0  # lowest mel band loud
    grid = reconstruction_grid(pictures)
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.dtype == np.uint8
    loud, quiet = colours(1.0), colours(0.0)
    for clip in range(2):
        for kind in range(3):
            top, left = panel_origin(clip, kind, 200, 80)
            panel = grid[top : top + 80 * SCALE, left : left + 200 * SCALE]  # each frame and bin drawn SCALE times
            assert np.all(panel[-SCALE:] == loud) and np.all(panel[:-SCALE] == quiet)  # low frequencies at the bottom
    first_row_end = panel_origin(0, 0, 200, 80)[0] + 80 * SCALE
    assert np.all(grid[first_row_end : panel_origin(1, 0, 200, 80)[0], LEFT:-RIGHT] == 255)  # the gap between clips
    title_band = grid[: panel_origin(0, 0, 200, 80)[0]]
    for kind in range(3):  # each column's title is drawn above it
        left = panel_origin(0, kind, 200, 80)[1]
        assert np.any(title_band[:, left : left + 200 * SCALE] < 128)
    path = tmp_path / "pictures" / "step_0000001.png"
    write_png(path, grid)
    np.testing.assert_array_equal(tf.io.decode_png(path.read_bytes()).numpy(), grid)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_masked_patches_are_hatched_in_no_colour_of_the_scale():
    pictures = np.zeros((3, 1, 200, 80), np.float32)
    pictures[1, 0, :4, :16] = np.nan  # the first patch of the masked input
    pictures[0, 0, 0, 0] = 1.0
    grid = reconstruction_grid(pictures)
    top, left = panel_origin(0, 1, 200, 80)
    patch = grid[top + (80 - 16) * SCALE : top + 80 * SCALE, left : left + 4 * SCALE].reshape(-1, 3)
    scale = {tuple(c) for c in colours(np.linspace(0, 1, 1001))}
    assert {tuple(c) for c in patch} == {(190, 190, 190), (235, 235, 235)} and not scale & {tuple(c) for c in patch}


def test_colour_scale_runs_from_dark_to_bright():
    brightness = colours(np.linspace(0, 1, 11)).astype(np.float32) @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(brightness) > 0)  # readable in grey too
    np.testing.assert_array_equal(colours([-1.0, 2.0]), colours([0.0, 1.0]))  # clipped
