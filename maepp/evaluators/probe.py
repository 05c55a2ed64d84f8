"""A linear probe on a labelled task, evaluated inside training on the run's current encoder
(config.evals.NAME = dict(type="probe", task=DIR, every=N, shots=K); docs/training.md#evaluators).

The task's clips (maepp/downstream/ridge.py picks them) become standardised log-mels cut into
200-frame chunks, as maepp.export cuts them, once per run at the first evaluation. Every process
decodes every clip (it needs all clips' lengths to agree on the chunk order) and keeps the chunk
rows its devices hold. An evaluation runs the encoder over global batches of chunks sharded like
training batches, adds each chunk's frame embeddings into its clip's scene embedding (the mean of
the clip's frames, as export computes it) on the devices, fits the closed-form ridge probe there,
and brings back only the test clips' logits: once, the same on every process, which checks that
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
from maepp.downstream import probes, ridge
from maepp.export.artifact import chunk_frames_function, frame_size
from maepp.export.embed import chunks, n_frame_embeddings


class ProbeEvaluation:
    def __init__(self, name: str, settings: dict, config, model, mesh, params_shardings, task):
        """settings: the entry of config.evals (config_checks.evaluator_settings); task: its
        labelled task (maepp.downstream.tasks.load_task)."""
        self.name, self.task, self.mesh = name, task, mesh
        self.batch_size = settings["batch_size"]
        self.train_clips, self.test_clips = ridge.probe_clips(task, settings["shots"])
        self.metric = "mAP" if task.multilabel else "accuracy"
        self.filterbank = filterbanks.mel_filterbank(filterbanks.from_config(config))
        self.chunk_length, self.patch_frames = model.spec.input_size[0], model.spec.patch_size[0]
        self.batches = None  # made at the first evaluation: this process's rows of every batch
        self.kept, self.unreadable = [], {}  # (path, labels) of the clips read; path -> why, of those left out
        self.frame_size = frame_size(model.spec)
        chunk_frames = chunk_frames_function(model)

        def add_chunks(params, log_mel_chunks, frame_weights, clip_ids, sums):
            """sums [clips, E] + each chunk's frames [B, 50, E], weighted by 1 / its clip's frames
            (0 on padding), into its clip's row."""
            frames = chunk_frames(params, log_mel_chunks).astype(jnp.float32)
            per_chunk = jnp.einsum("bf,bfe->be", frame_weights, frames)
            return sums + jax.ops.segment_sum(per_chunk, clip_ids, num_segments=sums.shape[0])

        split, whole = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        self.add_chunks = jax.jit(add_chunks, in_shardings=(params_shardings, split, split, split, whole),
                                  out_shardings=whole, donate_argnums=4)
        l2 = settings["l2"]

        def fit(sums, train_rows, test_rows, train_y):
            """Scene embeddings [clips, E] -> the test clips' logits [m, C] of the ridge probe."""
            return ridge.ridge_logits(sums[train_rows], train_y, sums[test_rows], l2)

        self.fit = jax.jit(fit, in_shardings=(whole,) * 4, out_shardings=whole)

    def _prepare(self):
        """Decodes every clip once. Keeps this process's rows of each global batch (chunks, frame
        weights, clip ids) on the host, and the readable clips' rows and training labels on the
        devices; a clip that cannot be read is left out and named at every evaluation."""
        started = time.perf_counter()
        kept = {"train": [], "test": []}
        log_mels = []
        for split, labelled in (("train", self.train_clips), ("test", self.test_clips)):
            for path, labels in labelled:
                try:
                    waveform = load_audio(self.task.root / path)
                except BadAudio as error:
                    self.unreadable[path] = error.reason
                    continue
                kept[split].append((path, labels))
                log_mels.append(standardized_log_mel(waveform, self.filterbank))
        if not kept["train"] or not kept["test"]:
            raise ValueError(f"probe {self.name}: no readable clips in a split of {self.task.root}: "
                             f"{self.unreadable}")
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
            self.batches.append((np.where(held[:, None, None], every_chunk[index], 0.0).astype(np.float32),
                                 np.where(held[:, None], weights[index], 0.0).astype(np.float32),
                                 np.where(held, clip_ids[index], 0).astype(np.int32)))
        n_train = len(kept["train"])
        whole = sharding.replicated(self.mesh)
        self.kept = kept["train"] + kept["test"]  # the rows of scene_embeddings
        self.train_rows = jax.device_put(np.arange(n_train), whole)
        self.test_rows = jax.device_put(np.arange(n_train, len(log_mels)), whole)
        self.train_y = jax.device_put(ridge.targets(kept["train"], self.task.labels), whole)
        self.test_y = ridge.scored_labels(kept["test"], self.task)
        self.prepared = f"{n_train} training and {len(kept['test'])} test clips read in " \
                        f"{time.perf_counter() - started:.1f} s"

    def scene_embeddings(self, params):
        """-> [clips, E] replicated on the devices: the scene embedding of each clip of self.kept
        (training clips first, then test clips, in the task's order)."""
        if self.batches is None:
            self._prepare()
        sums = jax.device_put(np.zeros((len(self.kept), self.frame_size), np.float32), sharding.replicated(self.mesh))
        for rows in self.batches:
            sums = self.add_chunks(params, *(sharding.global_batch(r, self.mesh, self.batch_size) for r in rows), sums)
        return sums

    def __call__(self, params) -> float:
        """-> the probe's test score with these encoder parameters (the same on every process)."""
        logits = self.fit(self.scene_embeddings(params), self.train_rows, self.test_rows, self.train_y)
        score = probes.score(np.asarray(jax.device_get(logits)), self.test_y, self.task.multilabel)
        scores = distributed.every_process([score])[:, 0]
        if np.any(scores != scores[0]):
            raise RuntimeError(f"probe {self.name}: the processes computed different scores {scores.tolist()} from "
                               "the same features; their devices disagree")
        return score

    def evaluate(self, params, step: int, writer, workdir) -> str:
        """Evaluates; the score to TensorBoard (NAME/accuracy or NAME/mAP); -> its part of the console line."""
        del workdir
        first = self.batches is None
        score = self(params)
        writer.write_scalars(step, {f"{self.name}/{self.metric}": score})
        text = f"probe {self.name} {self.metric} {score:.4f}" + (f" ({self.prepared})" if first else "")
        if jax.process_count() > 1:  # __call__ has compared every process's score
            text += f" (the same on {jax.process_count()} processes)"
        if self.unreadable:
            text += f" | {len(self.unreadable)} clips unreadable: {sorted(self.unreadable.items())[:3]}"
        return text
