r"""First training steps of a model on log-mels of synthetic audio, printing the loss.

    python -m maepp.first_steps --config configs/audiomaepp.py:micro [--steps 40]

Builds the model of the config, computes standardised log-mels (librosa reference front end)
of procedurally generated clips, and runs jitted AdamW steps of the real train step. The full
trainer (sharding, checkpoints, metrics) is `maepp.train` once it lands; this is its first mile.
"""
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from maepp import optim
from maepp.audio.reference import log_mel
from maepp.data.synthetic import synthetic_clip
from maepp.models import MaskedAutoencoder, ModelSpec
from maepp.train_step import create_state, make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. configs/audiomaepp.py:micro")
_STEPS = flags.DEFINE_integer("steps", 40, "How many train steps to run.")
_POOL = flags.DEFINE_integer("clips", 64, "How many synthetic clips to draw the batches from.")


def log_mel_pool(n_clips: int, frames: int, seed: int) -> np.ndarray:
    """[n_clips, frames', 80] standardised log-mels of synthetic 3 s clips (frames' > frames)."""
    rng = np.random.default_rng(seed)
    mels = [log_mel(synthetic_clip(rng, seconds=3.0)[0]) for _ in range(n_clips)]
    if mels[0].shape[0] < frames:
        raise ValueError(f"synthetic clips give {mels[0].shape[0]} frames, fewer than the {frames} the model needs")
    return np.stack(mels)


def random_crops(rng: np.random.Generator, pool: np.ndarray, batch: int, frames: int) -> np.ndarray:
    """[batch, frames, 80]: random clips of the pool at random start frames."""
    clips = rng.integers(len(pool), size=batch)
    starts = rng.integers(pool.shape[1] - frames + 1, size=batch)
    return np.stack([pool[c, s : s + frames] for c, s in zip(clips, starts)])


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/audiomaepp.py:micro")
    spec = ModelSpec.from_config(config.model)
    frames = spec.input_size[0]
    print(f"computing log-mels of {_POOL.value} synthetic clips (librosa; the first call compiles numba caches)")
    pool = log_mel_pool(_POOL.value, frames, config.seed)

    model = MaskedAutoencoder(spec)
    optimizer = optim.adamw(config)
    rng = jax.random.key(config.seed)
    init_rng, rng = jax.random.split(rng)
    state = create_state(model, optimizer, init_rng)
    train_step = jax.jit(make_train_step(model, optimizer), donate_argnums=0)
    batch_rng = np.random.default_rng(config.seed)

    print(f"model {spec.block_type} {spec.width}x{spec.depth}, batch {config.batch_size}, dtype {spec.dtype}, "
          f"lr {optim.learning_rate(config):.2e}, devices {jax.devices()}")
    losses = []
    start = time.perf_counter()
    for step in range(1, _STEPS.value + 1):
        batch = random_crops(batch_rng, pool, config.batch_size, frames)
        state, metrics = train_step(state, batch, jax.random.fold_in(rng, step))
        losses.append(float(metrics["loss"]))
        if step == 1 or step % 5 == 0 or step == _STEPS.value:
            print(f"step {step:4d}  loss {losses[-1]:.4f}  grad_norm {float(metrics['grad_norm']):.3f}")
    elapsed = time.perf_counter() - start
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"{len(losses)} steps in {elapsed:.1f}s (first step includes compilation); "
          f"mean loss of the first 5 steps {first:.4f}, of the last 5 {last:.4f}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
