"""The two training orders on the worst data for a block shuffle: a prepared dataset whose store
holds each class's clips together (as a store in listing order would hold a folder per class).

    .venv/bin/python benchmarks/order_training.py OUT_DIR [--steps 600] [--clips_per_class 128]

Writes the synthetic `classes` task's audio (maepp.downstream.synthetic_tasks: 5 classes, a
folder each), prepares it in class order (prepare itself stores files by their names' hashes, which
spreads the classes; here that is undone on purpose), then trains micro twice on it, with
config.data.shuffle clips and blocks, each with a probe evaluator on a separate `classes` task,
and prints each run's loss every 100 steps and its probe scores as JSON lines. A run's workdir
is OUT_DIR/clips or OUT_DIR/blocks; re-running resumes them.
"""

import argparse
import json
import pathlib
import subprocess
import sys

from maepp.data import writer
from maepp.downstream.synthetic_tasks import write_task
from maepp.tools.results import scalars

CONFIG = """from maepp.configs import audiomaepp


def get_config():
    config = audiomaepp.get_config("micro")
    config.evals.classes = dict(type="probe", task={task!r}, every=100, shots=0)
    return config
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--clips_per_class", type=int, default=128)
    args = parser.parse_args()
    out = args.out.absolute()
    dataset = out / "prepared" / "audio_clips" / "2.0.0"
    if not (dataset / "manifest.json").exists():
        task = write_task(out / "pretraining_task", "classes", {"train": args.clips_per_class})
        writer.stored_order = lambda name: name.encode()  # the listing's order: each class's folder together
        writer.prepare(task / "train", out / "prepared", clips_per_shard=256, workers=1)
    probe_task = out / "probe_task"
    if not probe_task.exists():
        write_task(probe_task, "classes", {"train": 16, "test": 8}, seed=1)
    (out / "probed.py").write_text(CONFIG.format(task=str(probe_task)))
    orders = {
        "clips": ["--config.data.shuffle=clips"],
        "blocks": [
            "--config.data.shuffle=blocks",
            "--config.data.block_clips=16",
            "--config.data.window_blocks=4",
            "--config.data.streams=8",
        ],
    }
    for name, flags in orders.items():
        workdir = out / name
        subprocess.run(
            [
                sys.executable,
                "-m",
                "maepp.train",
                "--config",
                str(out / "probed.py"),
                "--workdir",
                str(workdir),
                f"--config.data.source=prepared:{dataset}",
                f"--config.total_steps={args.steps}",
                "--config.evals.held_out.every=100",
                "--config.checkpoint_every=300",
                *flags,
            ],
            check=True,
        )
        logged = scalars(workdir)
        losses, held_out, probe = logged["loss"], logged["held_out/loss"], logged["classes/accuracy"]
        print(
            json.dumps(
                dict(
                    order=name,
                    loss={s: round(v, 4) for s, v in losses.items() if s % 100 == 0},
                    held_out_loss={s: round(v, 4) for s, v in held_out.items()},
                    probe_accuracy={s: round(v, 4) for s, v in probe.items()},
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
