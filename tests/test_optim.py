"""The optimizer recipe: decay mask, lr scaling and schedule, gradient accumulation."""

import jax
import numpy as np
import pytest

from maepp import optim
from maepp.configs import audiomaepp
from maepp.models import MASKING_RNG
from maepp.train_step import create_state, make_train_step
from maepp.weights import release
from tests.helpers import model_and_params, spec_for


def _config(**changes):
    config = audiomaepp.get_config("micro")
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def test_weight_decay_falls_on_the_tensors_the_release_decays():
    """The release (timm's param_groups_weight_decay, no skip list) decays every trainable tensor
    of more than one dimension that is not a bias: 26 of its 78 at micro dimensions."""
    spec = spec_for()
    _, params = model_and_params(spec)
    mask = optim.decay_mask(params)
    entries = release.mapping(spec)
    ours = {e.torch_key for e in entries if release._lookup(mask, e.path)}
    theirs = {e.torch_key for e in entries if len(e.torch_shape) > 1 and not e.torch_key.endswith(".bias")}
    assert ours == theirs
    assert (len(theirs), len(entries)) == (26, 78)
    assert {"cls_token", "decoder.mask_token", "encoder.blocks.0.attn.qkv_layer.weight"} <= ours


def test_schedule_warms_up_to_batch_scaled_peak_then_decays_to_zero():
    config = _config(
        **{"batch_size": 512, "optimizer.base_learning_rate": 1.5e-4, "total_steps": 1000, "warmup_steps": 100}
    )
    rate = optim.schedule(config)
    assert optim.learning_rate(config) == pytest.approx(3e-4)  # 1.5e-4 x 512 / 256
    assert float(rate(0)) == 0.0 and float(rate(50)) == pytest.approx(1.5e-4)
    assert float(rate(100)) == pytest.approx(3e-4)
    assert float(rate(550)) == pytest.approx(1.5e-4, rel=1e-3)  # half way down the cosine
    assert float(rate(1000)) == pytest.approx(0.0, abs=1e-12)  # cos(pi) in float32 leaves ~1e-15


def test_accumulation_schedule_counts_updates_and_scales_by_effective_batch():
    plain = _config(**{"batch_size": 64, "total_steps": 200, "warmup_steps": 20})
    accumulated = _config(**{"batch_size": 32, "total_steps": 400, "warmup_steps": 40, "optimizer.accumulate_steps": 2})
    assert optim.learning_rate(plain) == optim.learning_rate(accumulated)
    for update in (0, 10, 20, 120, 200):
        assert float(optim.schedule(plain)(update)) == float(optim.schedule(accumulated)(update))


def test_accumulated_update_equals_one_update_on_the_mean_gradient():
    """Two accumulated half batches == AdamW applied once to the mean of their gradients."""
    model, _ = model_and_params(spec_for())
    accumulated = _config(**{"warmup_steps": 0, "total_steps": 20, "optimizer.accumulate_steps": 2})
    plain = _config(**{"warmup_steps": 0, "total_steps": 10, "batch_size": 64})
    halves = [jax.random.normal(jax.random.key(i), (2, 200, 80)) for i in (1, 2)]
    rngs = [jax.random.key(10 + i) for i in (1, 2)]

    opt = optim.optimizer(accumulated)
    step = jax.jit(make_train_step(model, opt))
    state = create_state(model, opt, jax.random.key(0))
    start = state.params
    after_one, _ = step(state, halves[0], rngs[0])
    for a, b in zip(jax.tree.leaves(after_one.params), jax.tree.leaves(start)):
        np.testing.assert_array_equal(a, b)  # no update yet
    after_two, _ = step(after_one, halves[1], rngs[1])

    def loss(params, x, rng):
        return model.apply({"params": params}, x, rngs={MASKING_RNG: rng})["loss"]

    @jax.jit
    def reference_update(params):
        grads = [jax.grad(loss)(params, x, rng) for x, rng in zip(halves, rngs)]
        mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
        reference_opt = optim.optimizer(plain)
        updates, _ = reference_opt.update(mean_grad, reference_opt.init(params), params)
        return jax.tree.map(lambda p, u: p + u, params, updates)

    expected = reference_update(start)
    moved = 0
    for a, b, p in zip(jax.tree.leaves(after_two.params), jax.tree.leaves(expected), jax.tree.leaves(start)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # a mean of two gradients against their sum halved
        moved += int(np.any(np.asarray(a) != np.asarray(p)))
    # Every parameter moved but the release's unused norm3 (no gradient, no decay: LayerNorm).
    unused = [path for path, _ in jax.tree_util.tree_leaves_with_path(start) if "norm3" in jax.tree_util.keystr(path)]
    assert moved == len(jax.tree.leaves(start)) - len(unused) and len(unused) == 6
