"""Periodic reconstruction loss on held-out clips (config.evals.NAME = dict(type="held_out",
source=...)), with pictures.

Global batch j holds clips j B ... (j + 1) B - 1 of the held-out source, the last one padded
with invalid rows, and every process reads the rows of it its devices hold (eval_dataset), so
the jitted step runs in lockstep on every host and the loss does not depend on the process
count. Masks come from fold_in(seed, batch number): the same at every evaluation, so losses of
different steps are comparable. The sums stay on the devices until the pass ends.
"""

import jax

from maepp import distributed, sharding
from maepp.data.pipeline import SkipReport, eval_dataset
from maepp.evaluator_kinds import Metrics, RunContext, every_batch
from maepp.evaluators.held_out_step import make_eval_step
from maepp.evaluators.pictures import reconstruction_grid

N_PICTURES = 4


class HeldOutEvaluation:
    def __init__(self, name: str, settings: dict, run: RunContext, source):
        """settings: the entry of config.evals (maepp.evaluator_kinds.settings); source: its clips."""
        self.name, self.source, self.batch_size = name, source, settings["batch_size"]
        self.rows = sharding.process_rows(run.mesh, self.batch_size)
        self.crop_frames = run.model.spec.input_size[0]
        self.mesh = run.mesh
        self.rng = jax.random.key(run.seed + 2)
        self.skip_report = SkipReport()
        self.filterbank = run.filterbank
        split = sharding.batch_sharding(run.mesh)
        self.step = jax.jit(
            make_eval_step(run.model, min(N_PICTURES, self.batch_size)),
            in_shardings=(run.params_shardings, split, split, sharding.replicated(run.mesh)),
            out_shardings=sharding.replicated(run.mesh),
        )

    def __call__(self, params, between=every_batch):
        """-> (loss over all held-out clips' masked patches, pictures [3, n, T, F] numpy)."""
        batches = eval_dataset(
            self.source,
            batch_size=self.batch_size,
            rows=self.rows,
            crop_frames=self.crop_frames,
            report=self.skip_report,
            filterbank=self.filterbank,
        ).as_numpy_iterator()
        error_sum = masked_patches = pictures = None
        for number, batch in enumerate(between(batches)):
            out = self.step(
                params,
                sharding.global_batch(batch["log_mel"], self.mesh, self.batch_size),
                sharding.global_batch(batch["valid"], self.mesh, self.batch_size),
                jax.random.fold_in(self.rng, number),
            )
            if number == 0:
                error_sum, masked_patches, pictures = out["error_sum"], out["masked_patches"], out["pictures"]
            else:  # added on the devices, behind the steps: the host waits only once, below
                error_sum, masked_patches = error_sum + out["error_sum"], masked_patches + out["masked_patches"]
        error_sum, masked_patches, pictures = jax.device_get((error_sum, masked_patches, pictures))
        if not masked_patches:
            raise ValueError(
                f"held-out source {len(self.source)} clips gave no usable audio: {self.skip_report.reasons}"
            )
        return float(error_sum) / float(masked_patches), pictures

    def run(self, params, between=every_batch) -> Metrics:
        """The loss and the clips skipped over every process, and the first clips' pictures."""
        loss, pictures = self(params, between)
        skipped = int(distributed.every_process([self.skip_report.skips]).sum())
        label = "held-out loss" if self.name == "held_out" else f"{self.name} loss"
        return Metrics(
            text=f"{label} {loss:.4f}" + (f", {skipped} clips skipped" if skipped else ""),
            scalars=dict(loss=loss, skipped_clips=skipped),
            images=dict(reconstruction=reconstruction_grid(pictures)),
        )
