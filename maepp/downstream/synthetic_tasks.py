r"""Labelled synthetic tasks for maepp.downstream.evaluate, written as a labelled folder (maepp/downstream/tasks.py).

    python -m maepp.downstream.synthetic_tasks --task classes|modulation --output DIR [--train 100] [--test 50]

classes: the default dataset's sound classes (maepp/data/synthetic.py) with their labels kept.
    Per-band log-mel statistics already separate most of them; the mixtures are the hard part.
modulation: coloured noise whose loudness swings at 2, 4, 8 or 16 Hz, with random depth, colour,
    phase and level. Every class has the same spectrum and the same spread of loudness, so
    per-band log-mel means and stds are at chance by design; telling the classes apart needs
    the temporal pattern across frames, which masked reconstruction has to learn.
"""

import collections
import pathlib
import sys

import numpy as np
import scipy.signal
import soundfile
from absl import flags

from maepp import program
from maepp.audio.constants import SAMPLE_RATE
from maepp.data.synthetic import CLASSES, synthetic_clip

MODULATION_RATES_HZ = (2.0, 4.0, 8.0, 16.0)


def modulated_noise(rng: np.random.Generator, rate_hz: float, seconds: float = 2.0) -> np.ndarray:
    """-> waveform [seconds * 16 kHz] float32 in [-1, 1]: noise under a sinusoidal envelope of rate_hz."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = rng.standard_normal(len(t))
    alpha = rng.uniform(0.0, 0.95)  # one-pole low-pass of random strength, as the noise bursts have
    carrier = scipy.signal.lfilter([1 - alpha], [1, -alpha], noise) + 0.3 * noise
    depth = rng.uniform(0.5, 1.0)
    envelope = 1 - depth * 0.5 * (1 + np.sin(2 * np.pi * rate_hz * t + rng.uniform(0, 2 * np.pi)))
    signal = carrier * envelope
    signal = signal / np.max(np.abs(signal)) * rng.uniform(0.1, 0.9)
    signal = signal + rng.uniform(1e-4, 1e-2) * rng.standard_normal(len(t))
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


def _modulation_label(rate_hz: float) -> str:
    return f"am_{rate_hz:g}hz"


def _class_clips(rng, wanted: int, seconds: float):
    """-> (label, waveform) until every class has `wanted` clips (the classes come at random)."""
    counts = dict.fromkeys(CLASSES, 0)
    while min(counts.values()) < wanted:
        waveform, label = synthetic_clip(rng, seconds=seconds)
        if counts[CLASSES[label]] < wanted:
            counts[CLASSES[label]] += 1
            yield CLASSES[label], waveform


def _modulation_clips(rng, wanted: int, seconds: float):
    for _ in range(wanted):
        for rate in MODULATION_RATES_HZ:
            yield _modulation_label(rate), modulated_noise(rng, rate, seconds)


TASKS = {"classes": _class_clips, "modulation": _modulation_clips}


def write_task(directory, task: str, per_split: dict, seconds: float = 2.0, seed: int = 0) -> pathlib.Path:
    """Writes directory/<split>/<label>/NNNN.wav, per_split = {"train": n, "test": m} clips of each label."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} not understood; use one of {', '.join(TASKS)}")
    directory = pathlib.Path(directory)
    rng = np.random.default_rng(seed)
    for split, wanted in per_split.items():
        written = collections.Counter()
        for label, waveform in TASKS[task](rng, wanted, seconds):
            folder = directory / split / label
            folder.mkdir(parents=True, exist_ok=True)
            soundfile.write(folder / f"{written[label]:04d}.wav", waveform, SAMPLE_RATE)
            written[label] += 1
    return directory


_TASK = flags.DEFINE_enum("task", "classes", list(TASKS), "Which labelled task to write.")
_OUTPUT = flags.DEFINE_string("output", None, "Task directory to write (train/ and test/ go in it).", required=True)
_TRAIN = flags.DEFINE_integer("train", 100, "Training clips per label.")
_TEST = flags.DEFINE_integer("test", 50, "Test clips per label.")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Clip length.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    del argv
    output = pathlib.Path(_OUTPUT.value)
    if output.exists() and any(output.iterdir()):
        sys.exit(f"maepp.downstream.synthetic_tasks: --output {output} is not empty; give a new directory")
    directory = write_task(
        output, _TASK.value, {"train": _TRAIN.value, "test": _TEST.value}, _SECONDS.value, _SEED.value
    )
    print(f"wrote the {_TASK.value} task to {directory}")


def run():
    program.run_cli(main, "maepp.downstream.synthetic_tasks")


if __name__ == "__main__":
    run()
