"""Where clips come from, chosen by one config string; every source is random access.

    synthetic          procedural audio made on the fly (the embedded default, no download)
    synthetic:N[:SEED] the same with N distinct clips per epoch (from SEED: another set of clips)
    folder:PATH        any tree of audio files (maepp.audio.decode), any rate and channel count
    prepared:DIR       a dataset written by `python -m maepp.data.prepare` (DIR = OUTPUT/NAME/2.0.0), local or gs://
    tfds:NAME[:SPLIT]  a TFDS audio dataset prepared (as ArrayRecord) in data_dir, maybe gs://

A source (ClipSource) maps a clip index to a 16 kHz mono waveform, or raises BadAudio. Random
access lets the pipeline's order be a pure function of (seed, epoch, position), so resuming needs
only a position number, not a saved shuffle buffer (maepp/data/order.py).
"""

from typing import Protocol

import numpy as np
from absl import logging
from etils import epath

from maepp.audio.decode import AUDIO_EXTENSIONS, load_audio
from maepp.data.listing import list_audio_files
from maepp.data.synthetic import synthetic_clip

DEFAULT_SYNTHETIC_CLIPS = 4096


class ClipSource(Protocol):
    """What every source offers the pipelines, the evaluators and export."""

    # a prepared dataset's store (maepp.data.clip_store.STORES; the dataset has a `directory`), or
    # None: audio loaded whole
    store: str | None
    filterbank: str | None  # the filterbank its stored log-mels or stats were made with; None: any
    holdout: str | None  # the source string of the split `prepare --holdout` kept out of it, if any

    def __len__(self) -> int: ...

    def name(self, index: int) -> str: ...

    def load(self, index: int) -> np.ndarray: ...


class AudioLoadedWhole:
    """The ClipSource fields of every source that is not a prepared dataset."""

    store = filterbank = holdout = None


class SyntheticSource(AudioLoadedWhole):
    def __init__(self, n_clips: int = DEFAULT_SYNTHETIC_CLIPS, seconds: float = 3.0, seed: int = 0):
        self.n_clips, self.seconds, self.seed = n_clips, seconds, seed

    def __len__(self):
        return self.n_clips

    def name(self, index: int) -> str:
        return f"synthetic:{index}"

    def load(self, index: int) -> np.ndarray:
        return synthetic_clip(np.random.default_rng([self.seed, index]), seconds=self.seconds)[0]


class FolderSource(AudioLoadedWhole):
    def __init__(self, root):
        self.root = epath.Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder source {self.root} is not a directory")
        names, self.left_out = list_audio_files(self.root)
        for name, reason in self.left_out.items():
            logging.warning("left out %s: %s", name, reason)
        self._names = names
        self.files = [self.root / name for name in names]
        if not self.files:
            raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {self.root}")

    def __len__(self):
        return len(self.files)

    def name(self, index: int) -> str:
        return self._names[index]

    def encoded(self, index: int) -> bytes:
        """The file's bytes as stored."""
        return self.files[index].read_bytes()

    def load(self, index: int) -> np.ndarray:
        return load_audio(self.files[index])


def source_from_string(spec: str, data_dir=None) -> ClipSource:
    """'synthetic', 'synthetic:N[:SEED]', 'folder:PATH', 'prepared:DIR' or 'tfds:NAME[:SPLIT]' -> a source."""
    kind, _, argument = spec.partition(":")
    if kind == "synthetic":
        n_clips, _, seed = argument.partition(":")
        return SyntheticSource(int(n_clips or DEFAULT_SYNTHETIC_CLIPS), seed=int(seed or 0))
    if kind == "folder" and argument:
        return FolderSource(argument)
    if kind == "prepared" and argument:
        from maepp.data.clip_store import ClipStoreSource

        return ClipStoreSource(argument)
    if kind == "records":  # prepare's layout before 2.0.0 (maepp 0.0.x)
        raise ValueError(
            f"data source {spec!r}: records: shards are prepare's layout of maepp 0.0.x, which maepp "
            "0.1 does not read; prepare the audio again (python -m maepp.data.prepare), or train with "
            "maepp 0.0.x"
        )
    # Imported here: it needs TensorFlow and TFDS, which take seconds to import and which the
    # other sources (and export, which lists folders through this module) do without.
    if kind == "tfds" and argument:
        from maepp.data.tfds_source import tfds_source

        name, _, split = argument.partition(":")
        return tfds_source(name, split or "train", data_dir)
    raise ValueError(
        f"data source {spec!r} not understood; use 'synthetic', 'synthetic:N[:SEED]', 'folder:PATH', "
        "'prepared:DIR' or 'tfds:NAME[:SPLIT]'"
    )
