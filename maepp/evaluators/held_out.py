"""Periodic reconstruction loss on held-out clips (config.data.eval_source), with pictures.

Every process reads its share of the held-out source (eval_dataset) and runs the same number
of global batches, padding with invalid rows once its share is used up, so the jitted step
runs in lockstep on every host. Masks come from fold_in(seed, batch number): the same at every
evaluation, so losses of different steps are comparable.
"""
import math

import jax
import numpy as np

from maepp import sharding
from maepp.audio import filterbanks
from maepp.data.pipeline import SkipReport, eval_dataset
from maepp.data.sources import source_from_string
from maepp.evaluators.held_out_step import make_eval_step

N_PICTURES = 4


class HeldOutEvaluation:
    def __init__(self, config, model, mesh, params_shardings, source=None):
        self.source = source or source_from_string(config.data.eval_source, config.data.data_dir or None)
        if config.eval_batch_size % jax.process_count():
            raise ValueError(f"config.eval_batch_size {config.eval_batch_size} is not divisible by "
                             f"{jax.process_count()} processes")
        self.local_batch = config.eval_batch_size // jax.process_count()
        self.crop_frames = model.spec.input_size[0]
        share = math.ceil(len(self.source) / jax.process_count())
        self.n_batches = math.ceil(share / self.local_batch)
        self.mesh = mesh
        self.rng = jax.random.key(config.seed + 2)
        self.report = SkipReport()
        self.filterbank = filterbanks.from_config(config)
        rows = sharding.batch_sharding(mesh)
        self.step = jax.jit(
            make_eval_step(model, min(N_PICTURES, config.eval_batch_size)),
            in_shardings=(params_shardings, rows, rows, sharding.replicated(mesh)),
            out_shardings=sharding.replicated(mesh),
        )

    def _local_batches(self):
        """This process's batches, then all-padding ones: always n_batches of them."""
        batches = eval_dataset(
            self.source, batch_size=self.local_batch, crop_frames=self.crop_frames,
            process_index=jax.process_index(), process_count=jax.process_count(), report=self.report,
            filterbank=self.filterbank,
        ).as_numpy_iterator()
        padding = dict(log_mel=np.zeros((self.local_batch, self.crop_frames, 80), np.float32),
                       valid=np.zeros((self.local_batch,), bool))
        for _ in range(self.n_batches):
            yield next(batches, padding)

    def __call__(self, params):
        """-> (loss over all held-out clips' masked patches, pictures [3, n, T, F] numpy)."""
        error_sum, masked_patches, pictures = 0.0, 0.0, None
        for number, batch in enumerate(self._local_batches()):
            out = self.step(
                params,
                sharding.global_batch(batch["log_mel"], self.mesh),
                sharding.global_batch(batch["valid"], self.mesh),
                jax.random.fold_in(self.rng, number),
            )
            error_sum += float(out["error_sum"])
            masked_patches += float(out["masked_patches"])
            if pictures is None:
                pictures = np.asarray(out["pictures"])
        if not masked_patches:
            raise ValueError(f"held-out source {len(self.source)} clips gave no usable audio: "
                             f"{self.report.reasons}")
        return error_sum / masked_patches, pictures
