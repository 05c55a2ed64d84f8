"""A linear probe on a labelled task, evaluated inside training on the run's current encoder
(config.evals.NAME = dict(type="probe", task=DIR, every=N, shots=K); docs/training.md#evaluators).

The task's clips (maepp/downstream/ridge.py picks them) become standardised log-mels cut into
200-frame chunks, as maepp.export cuts them, once per run at the first evaluation. Every process
decodes every clip (it needs all clips' lengths to agree on the chunk order) and keeps the chunk
rows its devices hold. An evaluation runs the encoder over global batches of chunks sharded like
training batches, adds each chunk's frame embeddings into its clip's scene embedding (the mean of
the clip's frames, as export computes it) on the devices, fits the closed-form ridge probe there
(one fit per penalty when l2 lists several, to choose from on the task's valid split), and brings
back only the logits of the clips it scores: once, the same on every process, which checks that
all processes agree on the score.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from maepp import distributed, sharding
from maepp.audio import filterbanks
from maepp.audio.decode import BadAudio, load_audio
from maepp.audio.stft import standardized_log_mel
from maepp.downstream import ridge
from maepp.evaluator_kinds import Metrics, RunContext, every_batch
from maepp.export.artifact import chunk_frames_function, frame_size
from maepp.export.embed import chunks, n_frame_embeddings


class ProbeEvaluation:
    def __init__(self, name: str, settings: dict, run: RunContext, task):
        """settings: the entry of config.evals (maepp.evaluator_kinds.settings); task: its
        labelled task (maepp.downstream.tasks.load_task)."""
        model, mesh = run.model, run.mesh
        self.name, self.task, self.mesh = name, task, mesh
        self.batch_size = settings["batch_size"]
        self.l2s = ridge.penalties(settings["l2"])
        self.splits = dict(
            zip(("fitting", "choosing", "test"), ridge.probe_clips(task, settings["shots"], choosing=len(self.l2s) > 1))
        )
        self.metric = "mAP" if task.multilabel else "accuracy"
        self.filterbank = filterbanks.mel_filterbank(run.filterbank)
        self.chunk_length, self.patch_frames = model.spec.input_size[0], model.spec.patch_size[0]
        self.batches = None  # made at the first evaluation: this process's rows of every batch
        self.kept, self.unreadable = {}, {}  # split -> (path, labels) of its clips read; path -> why, of those left out
        self.frame_size = frame_size(model.spec)
        chunk_frames = chunk_frames_function(model)

        def add_chunks(params, log_mel_chunks, frame_weights, clip_ids, sums):
            """sums [clips, E] + each chunk's frames [B, 50, E], weighted by 1 / its clip's frames
            (0 on padding), into its clip's row."""
            frames = chunk_frames(params, log_mel_chunks).astype(jnp.float32)
            per_chunk = jnp.einsum("bf,bfe->be", frame_weights, frames)
            return sums + jax.ops.segment_sum(per_chunk, clip_ids, num_segments=sums.shape[0])

        split, whole = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        self.add_chunks = jax.jit(
            add_chunks,
            in_shardings=(run.params_shardings, split, split, split, whole),
            out_shardings=whole,
            donate_argnums=4,
        )

        def fit(sums, fitting_rows, scored_rows, fitting_y):
            """Scene embeddings [clips, E] -> the scored (choosing, then test) clips' logits
            [L, m, C] of the ridge probe fitted with each penalty."""
            return ridge.ridge_logits_per_penalty(sums[fitting_rows], fitting_y, sums[scored_rows], self.l2s)

        self.fit = jax.jit(fit, in_shardings=(whole,) * 4, out_shardings=whole)

    def _prepare(self, between):
        """Decodes every clip once (every process all of them, in one order: a stop is agreed
        between two). Keeps this process's rows of each global batch (chunks, frame weights,
        clip ids) on the host, and the readable clips' rows and training labels on the devices;
        a clip that cannot be read is left out and named at every evaluation."""
        started = time.perf_counter()
        kept = {split: [] for split in self.splits}
        log_mels = []
        clips = [(split, path, labels) for split, labelled in self.splits.items() for path, labels in labelled]
        for split, path, labels in between(clips, "clips read"):
            try:
                waveform = load_audio(self.task.root / path)
            except BadAudio as error:
                self.unreadable[path] = error.reason
                continue
            kept[split].append((path, labels))
            log_mels.append(standardized_log_mel(waveform, self.filterbank))
        if any(labelled and not kept[split] for split, labelled in self.splits.items()):
            raise ValueError(f"probe {self.name}: no readable clips in a split of {self.task.root}: {self.unreadable}")
        pieces = [chunks(log_mel, self.chunk_length) for log_mel in log_mels]
        frames = np.array([n_frame_embeddings(len(log_mel), self.patch_frames) for log_mel in log_mels])
        clip_ids = np.concatenate([np.full(len(piece), clip, np.int32) for clip, piece in enumerate(pieces)])
        per_chunk = self.chunk_length // self.patch_frames
        first = np.concatenate([np.arange(len(piece)) * per_chunk for piece in pieces])
        valid = np.clip(frames[clip_ids] - first, 0, per_chunk)  # frames of each chunk that are not padding
        weights = (np.arange(per_chunk)[None] < valid[:, None]) / frames[clip_ids][:, None]
        total = -(-len(clip_ids) // self.batch_size) * self.batch_size
        rows = sharding.process_rows(self.mesh, self.batch_size)
        every_chunk = np.concatenate(pieces)
        self.batches = []
        for start in range(0, total, self.batch_size):
            mine = start + rows
            held = mine < len(clip_ids)  # rows past the last chunk are padding: weight 0, clip 0
            index = np.where(held, mine, 0)
            self.batches.append(
                (
                    np.where(held[:, None, None], every_chunk[index], 0.0).astype(np.float32),
                    np.where(held[:, None], weights[index], 0.0).astype(np.float32),
                    np.where(held, clip_ids[index], 0).astype(np.int32),
                )
            )
        n_fitting = len(kept["fitting"])
        whole = sharding.replicated(self.mesh)
        self.kept = kept  # the rows of scene_embeddings: fitting, choosing, then test clips
        self.fitting_rows = jax.device_put(np.arange(n_fitting), whole)
        self.scored_rows = jax.device_put(np.arange(n_fitting, len(log_mels)), whole)
        self.fitting_y = jax.device_put(ridge.targets(kept["fitting"], self.task.labels), whole)
        self.choosing_y = ridge.scored_labels(kept["choosing"], self.task)
        self.test_y = ridge.scored_labels(kept["test"], self.task)
        choosing = f", {len(kept['choosing'])} to choose l2 on" if kept["choosing"] else ""
        self.prepared = (
            f"{n_fitting} fitting{choosing} and {len(kept['test'])} test clips read in "
            f"{time.perf_counter() - started:.1f} s"
        )

    def rows(self) -> list:
        """(path, labels) of each row of scene_embeddings: the fitting clips, the choosing clips,
        then the test clips, each in the task's order."""
        return [clip for split in self.kept.values() for clip in split]

    def scene_embeddings(self, params, between=every_batch):
        """-> [clips, E] replicated on the devices: the scene embedding of each clip of rows()."""
        if self.batches is None:
            self._prepare(between)
        sums = jax.device_put(np.zeros((len(self.rows()), self.frame_size), np.float32), sharding.replicated(self.mesh))
        for rows in between(self.batches):
            sums = self.add_chunks(params, *(sharding.global_batch(r, self.mesh, self.batch_size) for r in rows), sums)
        return sums

    def __call__(self, params, between=every_batch) -> tuple:
        """-> (the probe's test score, the penalty it was fitted with) for these encoder parameters,
        the same on every process."""
        embeddings = self.scene_embeddings(params, between)
        broken = int(jax.device_get(jnp.sum(~jnp.all(jnp.isfinite(embeddings), axis=1))))
        if broken:  # a score from them would look like a chance-level encoder's, not a broken one's
            raise ValueError(
                f"probe {self.name}: {broken} of {len(self.rows())} clips' scene embeddings are not "
                "finite: the encoder's parameters hold NaN or inf"
            )
        logits = self.fit(embeddings, self.fitting_rows, self.scored_rows, self.fitting_y)
        best, score = ridge.choose(
            jax.device_get(logits), len(self.kept["choosing"]), self.choosing_y, self.test_y, self.task.multilabel
        )
        scores = distributed.every_process([score, best])
        if np.any(scores != scores[0]):
            raise RuntimeError(
                f"probe {self.name}: the processes computed different scores and penalties "
                f"{scores.tolist()} from the same features; their devices disagree"
            )
        return score, self.l2s[best]

    def run(self, params, between=every_batch) -> Metrics:
        """The probe's score (and the penalty it chose, when it had several), the same on every process."""
        first = self.batches is None
        score, l2 = self(params, between)
        scalars = {self.metric: score}
        text = f"probe {self.name} {self.metric} {score:.4f}"
        if len(self.l2s) > 1:  # the penalty chosen on the valid split
            scalars["l2"] = l2
            text += f" (l2 {l2:g} by valid)"
        text += f" ({self.prepared})" if first else ""
        if jax.process_count() > 1:  # __call__ has compared every process's score
            text += f" (the same on {jax.process_count()} processes)"
        if self.unreadable:
            text += f" | {len(self.unreadable)} clips unreadable: {sorted(self.unreadable.items())[:3]}"
        return Metrics(text=text, scalars=scalars)
