"""Embeddings of every clip of a folder, CSV list or TFDS dataset into one .npz, restartably.

Clips are taken in blocks of block_clips; each finished block is written whole to
OUT.npz.parts/ (written, then renamed), so a restarted export recomputes nothing it finished
and a killed one leaves no half block. One export at a time holds that folder
(maepp/workdir_lock.py): a second one on the same output is refused, naming the first.
The blocks are put together into OUT.npz at the end:

    embeddings       [N, E] float32  scene embedding (mean of the frame embeddings) per clip
    paths            [N] str         the clips as the input names them (relative to a folder)
    skipped_paths    [K] str         clips that could not be read, with skipped_reasons [K]
  with timestamps:
    frame_embeddings [F, E] float32  every clip's frame embeddings, clip after clip
    frame_offsets    [N + 1] int64   clip i's frames are rows frame_offsets[i]:frame_offsets[i+1]
    timestamps_ms    [F] float64     centre of each frame embedding in its clip
"""

import csv
import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from etils import epath
from tqdm import tqdm

from maepp import pause_points
from maepp.audio.decode import BadAudio, load_audio
from maepp.data.sources import AudioLoadedWhole, FolderSource
from maepp.export.embed import Embedder
from maepp.workdir_lock import WorkdirLock

EXPORTS_CLASH = (
    "two exports to one output would write over each other's blocks. Let that one finish, or give this one "
    "another --output"
)


class FileListSource(AudioLoadedWhole):
    """Audio files named relative to a root directory (or absolute), in a given order."""

    def __init__(self, root, names):
        self.root, self.names = epath.Path(root), list(names)

    def __len__(self):
        return len(self.names)

    def name(self, index: int) -> str:
        return self.names[index]

    def load(self, index: int) -> np.ndarray:
        return load_audio(self.root / self.names[index])


def csv_source(csv_path) -> FileListSource:
    """Clips listed in a CSV: the 'path' column (or the first one); relative paths are taken
    from the CSV's directory, and named as written."""
    csv_path = epath.Path(csv_path)
    with csv_path.open() as file:
        rows = [row for row in csv.reader(file) if row]
    column = 0
    if rows and "path" in rows[0]:  # a header row
        column, rows = rows[0].index("path"), rows[1:]
    names = [row[column] for row in rows]
    if not names:
        raise ValueError(f"{csv_path} lists no clips")
    return FileListSource(csv_path.parent, names)


def input_source(spec: str, data_dir=None):
    """--input: a folder of audio, a .csv list of files, or tfds:NAME[:SPLIT]."""
    if spec.startswith("tfds:"):
        from maepp.data.tfds_source import tfds_source  # TensorFlow and TFDS: only for this input

        name, _, split = spec[len("tfds:") :].partition(":")
        return tfds_source(name, split or "train", data_dir)
    if spec.endswith(".csv"):
        return csv_source(spec)
    return FolderSource(spec)


def _plan(source, block_clips: int, timestamps: bool, model: str) -> dict:
    names = hashlib.sha256("\n".join(source.name(i) for i in range(len(source))).encode()).hexdigest()
    return dict(n_clips=len(source), names_sha256=names, block_clips=block_clips, timestamps=timestamps, model=model)


WRITTEN_BY = "maepp.export"  # kept in every npz it writes: the files it may overwrite


def _save_npz(path: epath.Path, **arrays):
    partial = path.with_name(path.name + ".tmp")
    with partial.open("wb") as file:
        np.savez(file, **arrays)
    partial.replace(path)


def _load_npz(path: epath.Path) -> dict:
    with path.open("rb") as file, np.load(file) as arrays:
        return dict(arrays)


def check_output(output, overwrite: bool = False):
    """Refuses, before any work, an --output that is a directory, or a file export did not write
    (unless overwrite), or a leftover OUT.parts folder that is not an export's."""
    output = epath.Path(output)
    if output.is_dir():
        raise FileExistsError(f"--output {output} is a directory; name the .npz file to write")
    if output.exists() and not overwrite:
        try:
            ours = str(_load_npz(output).get("written_by", "")) == WRITTEN_BY
        except Exception:  # noqa: BLE001 - not an npz at all
            ours = False
        if not ours:
            raise FileExistsError(
                f"--output {output} exists and was not written by maepp.export; "
                "pass --overwrite to replace it, or name another file"
            )
    parts = output.with_name(output.name + ".parts")
    ours = (parts / "plan.json").exists() or (parts / "lock.json").exists()  # an export's, maybe starting
    if parts.exists() and any(parts.iterdir()) and not ours:
        raise FileExistsError(f"{parts} exists and is not an unfinished export (no plan.json); move it away")


def _embed_block(source, embedder: Embedder, indices, timestamps: bool, workers: ThreadPoolExecutor) -> dict:
    def read(index):
        try:
            return embedder.log_mel(source.load(index)), None
        except BadAudio as error:
            return None, error.reason

    read_back = list(workers.map(read, indices))
    good = [i for i, (log_mel, _) in zip(indices, read_back) if log_mel is not None]
    frames = embedder.frames_of_log_mels([log_mel for log_mel, _ in read_back if log_mel is not None])
    size = embedder.frame_size
    block = dict(
        embeddings=np.stack([f.mean(axis=0) for f in frames]) if frames else np.zeros((0, size), np.float32),
        paths=np.array([source.name(i) for i in good], dtype=str),
        skipped_paths=np.array([source.name(i) for i, (lm, _) in zip(indices, read_back) if lm is None], dtype=str),
        skipped_reasons=np.array([reason for lm, reason in read_back if lm is None], dtype=str),
    )
    if timestamps:
        block["frame_embeddings"] = np.concatenate(frames) if frames else np.zeros((0, size), np.float32)
        block["frame_counts"] = np.array([len(f) for f in frames], np.int64)
        block["timestamps_ms"] = (
            np.concatenate([embedder.timestamps_ms(len(f)) for f in frames]) if frames else np.zeros((0,))
        )
    return block


def _assemble(blocks: list, timestamps: bool) -> dict:
    out = {
        key: np.concatenate([b[key] for b in blocks])
        for key in ("embeddings", "paths", "skipped_paths", "skipped_reasons")
    }
    if timestamps:
        out["frame_embeddings"] = np.concatenate([b["frame_embeddings"] for b in blocks])
        counts = np.concatenate([b["frame_counts"] for b in blocks])
        out["frame_offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out["timestamps_ms"] = np.concatenate([b["timestamps_ms"] for b in blocks])
    return out


def export(
    source,
    embedder: Embedder,
    output,
    *,
    timestamps=False,
    block_clips=256,
    model="",
    workers=4,
    log=sys.stderr,
    overwrite=False,
) -> dict:
    """Embeds every clip of source into output (.npz); -> counts. Resumes an interrupted export."""
    output = epath.Path(output)  # local, gs:// or any tf.io.gfile filesystem
    check_output(output, overwrite)
    parts = output.with_name(output.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    lease = WorkdirLock(parts, holder="export", clash=EXPORTS_CLASH)
    lease.acquire()
    try:
        result = _embed_blocks(source, embedder, output, parts, timestamps, block_clips, model, workers, log)
    finally:
        lease.release(remove_lock_file=True)
    if not any(parts.iterdir()):
        parts.rmdir()
    for name, reason in zip(result["skipped_paths"], result["skipped_reasons"]):
        print(f"skipped {name}: {reason}", file=log)
    return dict(clips=len(result["paths"]), skipped=len(result["skipped_paths"]), output=str(output))


def _embed_blocks(source, embedder, output, parts, timestamps, block_clips, model, workers, log) -> dict:
    """The export itself, in the held parts folder: its blocks, then OUT.npz; -> what OUT.npz holds."""
    plan = _plan(source, block_clips, timestamps, model)
    plan_path = parts / "plan.json"
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
        raise ValueError(f"{parts} holds an unfinished export of other clips or settings; delete it to start over")
    plan_path.write_text(json.dumps(plan))
    n_blocks = -(-len(source) // block_clips)
    blocks_of = [range(n * block_clips, min(len(source), (n + 1) * block_clips)) for n in range(n_blocks)]
    to_do = [n for n in range(n_blocks) if not (parts / f"block_{n:06d}.npz").exists()]
    # tqdm's rate and ETA count only this run's clips: a resumed export starts at what was done.
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(
            total=len(source),
            initial=len(source) - sum(len(blocks_of[n]) for n in to_do),
            unit="clip",
            desc="embedded",
            file=log,
            mininterval=1.0,
        ) as bar,
    ):
        for number in to_do:
            indices = list(blocks_of[number])
            _save_npz(parts / f"block_{number:06d}.npz", **_embed_block(source, embedder, indices, timestamps, pool))
            bar.update(len(indices))
            pause_points.reached("exported", number)
    blocks = [_load_npz(parts / f"block_{number:06d}.npz") for number in range(n_blocks)]
    result = _assemble(blocks, timestamps)
    _save_npz(output, **result, written_by=np.array(WRITTEN_BY))
    for number in range(n_blocks):  # only what this export wrote; a folder with more stays
        (parts / f"block_{number:06d}.npz").unlink()
    plan_path.unlink()
    return result
