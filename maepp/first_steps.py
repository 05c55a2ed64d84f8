r"""First training steps of a model on the real input pipeline, printing the loss.

    python -m maepp.first_steps --config configs/audiomaepp.py:micro [--steps 40]

Builds the model of the config, streams log-mel crops from config.data.source through the
tf.data pipeline (synthetic audio by default), and runs jitted AdamW steps of the real train
step, sharded over config.mesh. The full trainer (sharding, checkpoints, metrics) is `maepp.train` once it lands.
"""
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from maepp import optim, sharding
from maepp.data.pipeline import SkipReport, train_dataset
from maepp.data.sources import source_from_string
from maepp.models import MaskedAutoencoder, ModelSpec
from maepp.train_step import make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. configs/audiomaepp.py:micro")
_STEPS = flags.DEFINE_integer("steps", 40, "How many train steps to run.")


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/audiomaepp.py:micro")
    spec = ModelSpec.from_config(config.model)
    report = SkipReport()
    batches = train_dataset(
        source_from_string(config.data.source, config.data.data_dir or None),
        seed=config.seed,
        batch_size=config.batch_size,
        crop_frames=spec.input_size[0],
        report=report,
    ).as_numpy_iterator()

    model = MaskedAutoencoder(spec)
    optimizer = optim.adamw(config)
    mesh = sharding.make_mesh(config.mesh)
    init_rng, rng = jax.random.split(jax.random.key(config.seed))
    state, state_shardings = sharding.create_sharded_state(model, optimizer, mesh, init_rng)
    train_step = sharding.sharded_train_step(make_train_step(model, optimizer), state_shardings, mesh)

    print(f"model {spec.block_type} {spec.width}x{spec.depth}, data {config.data.source}, batch "
          f"{config.batch_size}, dtype {spec.dtype}, lr {optim.learning_rate(config):.2e}, mesh {dict(mesh.shape)}")
    losses = []
    start = time.perf_counter()
    for step in range(1, _STEPS.value + 1):
        batch = next(batches)
        log_mel = sharding.global_batch(batch["log_mel"], mesh)
        state, metrics = train_step(state, log_mel, jax.random.fold_in(rng, step))
        losses.append(float(metrics["loss"]))
        if step == 1 or step % 5 == 0 or step == _STEPS.value:
            print(f"step {step:4d}  loss {losses[-1]:.4f}  grad_norm {float(metrics['grad_norm']):.3f}")
    elapsed = time.perf_counter() - start
    print(f"{report.skips} clips skipped ({len(report.reasons)} distinct files)")
    print(f"{len(losses)} steps in {elapsed:.1f}s (first step includes compilation); "
          f"mean loss of the first 5 steps {np.mean(losses[:5]):.4f}, of the last 5 {np.mean(losses[-5:]):.4f}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
