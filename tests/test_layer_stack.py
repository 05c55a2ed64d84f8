"""config.model.scan_layers: the stacked block layout computes what the per-block one does, and
checkpoints and weights of either layout load into both."""

import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from maepp import checkpoints, sharding
from maepp.configs import audiomaepp
from maepp.models import MASKING_RNG, MaskedAutoencoder, init_params, layer_stack
from maepp.weights import release, store
from tests.helpers import assert_trees_equal, leaves, model_and_params, restore_targets, spec_for


def _loss_and_grads(model, params, batch):
    loss = lambda p: model.apply({"params": p}, batch, rngs={MASKING_RNG: jax.random.key(3)})["loss"]
    return jax.jit(jax.value_and_grad(loss))(params)


def test_scan_layers_and_remat_change_how_the_step_is_compiled_not_what_it_computes():
    per_block, params = model_and_params(spec_for())
    scanned_spec = spec_for(scan_layers=True, remat="nothing_saveable")
    scanned = MaskedAutoencoder(scanned_spec)
    boxed = init_params(scanned, jax.random.key(0))
    # [depth, ...] per leaf, "layers" first among its logical names (the sharding rules keep it whole).
    qkv = boxed["encoder"]["blocks"]["attn"]["qkv"]["kernel"]
    assert qkv.names == ("layers", "embed", "qkv", "heads", "kv") and qkv.value.shape[0] == scanned_spec.encoder.depth
    stacked = nn.meta.unbox(boxed)
    assert set(stacked["encoder"]) == {"blocks", "encoder_norm"}
    assert_trees_equal(layer_stack.to_layout(params, True), stacked)  # a seed gives the same model in both layouts
    batch = jax.random.normal(jax.random.key(1), (4, 200, 80))
    (loss, grads), (scanned_loss, scanned_grads) = (
        _loss_and_grads(per_block, params, batch),
        _loss_and_grads(scanned, stacked, batch),
    )
    assert float(scanned_loss) == pytest.approx(float(loss), abs=1e-6)  # scan and unrolled blocks fuse differently
    for a, b in zip(leaves(layer_stack.to_layout(scanned_grads, False)), leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)  # as above: float32 rounding, a few ulps

    def dot_count(model, params, grad=True):
        loss = lambda p: model.apply({"params": p}, batch, rngs={MASKING_RNG: jax.random.key(3)})["loss"]
        return jax.jit(jax.grad(loss) if grad else loss).lower(params).as_text().count("dot_general")

    # Scanned: one block to compile per stack. Rematerialised: the backward pass runs the blocks'
    # forward matrix products again.
    assert dot_count(scanned, stacked, grad=False) < dot_count(per_block, params, grad=False)
    assert dot_count(MaskedAutoencoder(spec_for(remat="nothing_saveable")), params) > dot_count(per_block, params)


def test_layouts_convert_both_ways_and_refuse_gaps():
    _, params = model_and_params(spec_for())
    stacked = layer_stack.to_layout(params, True)
    assert layer_stack.is_stacked(stacked) and not layer_stack.is_stacked(params)
    assert jax.tree.structure(layer_stack.to_layout(stacked, True)) == jax.tree.structure(stacked)
    back = layer_stack.to_layout(stacked, False)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert_trees_equal(back, params)
    gap = {"encoder": {"blocks_0": {"w": np.zeros(2)}, "blocks_2": {"w": np.zeros(2)}}}
    with pytest.raises(ValueError, match=r"blocks \[0, 2\] are not numbered 0..1"):
        layer_stack.to_layout(gap, True)


def test_release_weights_import_into_and_export_from_the_stacked_layout():
    _, params = model_and_params(spec_for())
    spec, scanned_spec = spec_for(), spec_for(scan_layers=True)
    state_dict = release.params_to_state_dict(params, spec)
    stacked = release.state_dict_to_params(state_dict, scanned_spec)
    assert layer_stack.is_stacked(stacked)
    assert_trees_equal(stacked, layer_stack.to_layout(params, True))
    exported = release.params_to_state_dict(stacked, scanned_spec)
    assert exported.keys() == state_dict.keys()
    for key, value in state_dict.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


@pytest.mark.e2e
def test_a_run_resumes_and_exports_in_the_other_layout(trained_run, tmp_path, capsys):
    """The shared run saved per-block checkpoints. They restore, optimizer moments included,
    into a scanned model's state; a scanned state's checkpoint restores into the per-block one;
    and maepp's export loads the per-block steps for a config that says scan_layers."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints" / "60", workdir / "checkpoints" / "60")
    config = audiomaepp.get_config("micro")
    mesh = sharding.make_mesh(config.mesh)
    per_block = restore_targets(config, mesh)
    config.model.scan_layers = True
    scanned = restore_targets(config, mesh)
    manager = checkpoints.manager(workdir, keep=3)
    _, reference, _ = checkpoints.restore_latest(manager, *per_block)
    step, state, data = checkpoints.restore_latest(manager, *scanned)
    position, _ = checkpoints.resume_position(data, step)
    assert (step, position) == (60, 60 * 32)
    assert capsys.readouterr().out == (
        "checkpoint step 60 was saved with config.model.scan_layers=False; converted its blocks to scan_layers=True\n"
    )
    assert layer_stack.is_stacked(state.params) and layer_stack.is_stacked(state.opt_state[0].mu)
    assert_trees_equal(layer_stack.to_layout(state, False), reference)

    checkpoints.save(manager, 61, state, position)
    checkpoints.finish_saves(manager)
    step, state, _ = checkpoints.restore_latest(manager, *per_block)
    assert step == 61 and not layer_stack.is_stacked(state.params)
    assert_trees_equal(state, reference)

    (workdir / "config.json").write_text(config.to_json())
    _, params, _, loaded = store.load_model(workdir, step=60)
    assert loaded.endswith("step 60") and layer_stack.is_stacked(params)
    assert_trees_equal(params, layer_stack.to_layout(reference.params, True))
