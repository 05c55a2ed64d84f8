"""`python -m maepp.tools.bench loop`: the real maepp.train loop (input pipeline, prefetch, step,
metrics, a final checkpoint) for N steps on the config's source, against `bench step` on the same
config in the same process: how much of the step's speed the whole loop keeps.

    python -m maepp.tools.bench loop --config audiomaepp:micro \\
        --config.data.source=prepared:OUT/audio_clips/2.0.0 [--steps 100] [--json]

Rates leave out the first step (compilation); held-out evaluation and profiling are off. The
last line is JSON: loop and step steps/s, their ratio, and the loop's input-wait fraction.
"""

import tempfile

from absl import flags

from maepp import program
from maepp.tools.bench.report import report
from maepp.tools.bench.step_timing import bench_step
from maepp.train_loop import train

_CONFIG = program.config_file_flag("config", program.installed("audiomaepp:micro"), "Experiment config.")
_STEPS = flags.DEFINE_integer("steps", 100, "Loop steps after the first (compiling) one.")


def bench_loop(config, n_steps: int) -> dict:
    config = config.copy_and_resolve_references()
    config.total_steps = n_steps + 1
    config.warmup_steps = min(config.warmup_steps, n_steps)
    config.checkpoint_every = config.total_steps
    config.evals = {}
    config.profile.first_step = 0
    with tempfile.TemporaryDirectory(prefix="maepp-bench-loop-") as workdir:
        loop = train(config, workdir)
    step = bench_step(config, n_steps)
    step_steps_per_s = 1e3 / step["step_ms"]
    return dict(
        source=config.data.source,
        frontend=config.data.frontend,
        global_batch=config.batch_size,
        steps=n_steps,
        devices=step["devices"],
        loop_steps_per_s=round(loop["run_steps_per_s"], 3),
        step_steps_per_s=round(step_steps_per_s, 3),
        ratio=round(loop["run_steps_per_s"] / step_steps_per_s, 3),
        input_wait=round(loop["run_input_wait"], 4),
    )


def main(argv):
    del argv
    r = bench_loop(_CONFIG.value, _STEPS.value)
    report(
        r,
        f"train loop on {r['source']} ({r['frontend']} front end), global batch {r['global_batch']} on "
        f"{r['devices']}: {r['loop_steps_per_s']} steps/s, {r['input_wait']:.1%} of the time waiting for input",
        f"bench step, same config: {r['step_steps_per_s']} steps/s; loop / step = {r['ratio']}",
    )
