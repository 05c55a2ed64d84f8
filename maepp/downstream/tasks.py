"""Labelled downstream tasks, on disk or in a bucket (gs://), as maepp.downstream.evaluate reads them.

DIR/train/<label>/*.wav, DIR/test/<label>/*.wav [, DIR/valid/<label>/*.wav]
    a labelled folder (any audio format); without valid/, a fixed fifth of train is held out.
DIR/task_metadata.json + DIR/<split>.json + DIR/16000/<split>/<file>
    a HEAR task (hear-preprocess output). split_mode "trainvaltest" uses train/valid/test;
    k-fold tasks (fold00 ...) test on each fold in turn, validate on the next, train on the rest.
"""

import dataclasses
import json

import numpy as np
from etils import epath

from maepp.audio.decode import AUDIO_EXTENSIONS


@dataclasses.dataclass
class Fold:
    train: list  # [(path relative to Task.root, [label, ...]), ...]
    valid: list
    test: list


@dataclasses.dataclass
class Task:
    name: str
    root: epath.Path
    multilabel: bool
    labels: list  # the vocabulary, sorted
    folds: list

    def paths(self) -> list:
        """Every clip any fold uses, each once, in a fixed order."""
        return sorted(
            {path for fold in self.folds for split in (fold.train, fold.valid, fold.test) for path, _ in split}
        )


def _labelled_folder(directory: epath.Path, split: str) -> list:
    split_dir = directory / split
    return sorted(
        (str(path.relative_to(directory)), [path.parent.name])
        for path in split_dir.glob("*/*")
        if path.suffix.lower() in AUDIO_EXTENSIONS
    )


def _hear_split(directory: epath.Path, split: str) -> list:
    labels = json.loads((directory / f"{split}.json").read_text())
    return sorted((f"16000/{split}/{name}", list(values)) for name, values in labels.items())


def load_task(directory) -> Task:
    directory = epath.Path(directory)
    metadata_path = directory / "task_metadata.json"
    if metadata_path.exists():
        metadata = json.loads(metadata_path.read_text())
        if metadata.get("embedding_type", "scene") != "scene":
            raise ValueError(f"{directory}: only scene-level tasks are supported, not {metadata['embedding_type']!r}")
        if metadata.get("split_mode") == "trainvaltest":
            folds = [Fold(*(_hear_split(directory, s) for s in ("train", "valid", "test")))]
        else:
            splits = [_hear_split(directory, f"fold{i:02d}") for i in range(int(metadata["nfolds"]))]
            folds = [
                Fold(
                    train=[c for j, s in enumerate(splits) if j not in (i, (i + 1) % len(splits)) for c in s],
                    valid=splits[(i + 1) % len(splits)],
                    test=splits[i],
                )
                for i in range(len(splits))
            ]
        multilabel = metadata.get("prediction_type") == "multilabel"
        name = metadata.get("task_name", directory.name)
    elif (directory / "train").is_dir() and (directory / "test").is_dir():
        train, test = _labelled_folder(directory, "train"), _labelled_folder(directory, "test")
        if (directory / "valid").is_dir():
            valid = _labelled_folder(directory, "valid")
        else:
            order = np.random.default_rng(0).permutation(len(train))
            held = set(order[: len(train) // 5].tolist())
            valid = [c for i, c in enumerate(train) if i in held]
            train = [c for i, c in enumerate(train) if i not in held]
        folds, multilabel, name = [Fold(train, valid, test)], False, directory.name
    else:
        raise FileNotFoundError(
            f"{directory} is not a task: it needs train/ and test/ folders of <label>/ "
            "folders, or a HEAR task_metadata.json"
        )
    labels = sorted(
        {
            label
            for fold in folds
            for split in (fold.train, fold.valid, fold.test)
            for _, values in split
            for label in values
        }
    )
    for fold in folds:
        if not (fold.train and fold.valid and fold.test):
            raise ValueError(f"{directory}: a split of the task has no clips")
    if len(labels) < 2:
        raise ValueError(
            f"{directory}: the task has {len(labels)} class ({', '.join(labels) or 'none'}): a probe "
            "needs two at least, or every score is 1"
        )
    return Task(name, directory, multilabel, labels, folds)
