r"""Benchmarks that print figures; the last line of each is JSON.

    python -m maepp.tools.bench data --source prepared:DIR|folder:DIR [--clips 256] [--json]
    python -m maepp.tools.bench scale [--processes 4] [--clips 20000] [--shuffle blocks] [--latency_ms 30] [--json]
    python -m maepp.tools.bench order [--clips 200000] [--batch_size 1024] [--block_clips 128] [--json]
    python -m maepp.tools.bench export [--workdir RUN | --model_config configs/audiomaepp.py:base] [--json]
    python -m maepp.tools.bench step [--config configs/audiomaepp.py:base] [--steps 10] [--json]
    python -m maepp.tools.bench loop [--config audiomaepp:micro] [--steps 100] [--json]
    python -m maepp.tools.bench swiglu_norm [--shapes 512x251x1024] [--num_warps 4,8] [--json]
    python -m maepp.tools.bench table RESULTS.jsonl   (docs/performance.md's speed table from a results file)

Each subcommand is a module of this package and imports only what it times: `step` needs
jax, flax and optax alone, so it runs on an accelerator machine without TensorFlow or librosa.
"""

import importlib
import sys

from maepp import program

SUBCOMMANDS = ("data", "scale", "order", "export", "step", "loop", "swiglu_norm", "table")


def run():
    if len(sys.argv) < 2 or sys.argv[1] not in SUBCOMMANDS:
        asked = len(sys.argv) == 2 and sys.argv[1] in ("--help", "-h", "--helpshort")
        print(
            __doc__.strip() + "\n\n`python -m maepp.tools.bench SUBCOMMAND --help` lists a subcommand's flags.",
            file=sys.stdout if asked else sys.stderr,
        )
        sys.exit(0 if asked else 1)
    subcommand = sys.argv[1]
    module = importlib.import_module(f"maepp.tools.bench.{subcommand}")
    program.run_cli(module.main, f"maepp.tools.bench {subcommand}", argv=[sys.argv[0], *sys.argv[2:]])
