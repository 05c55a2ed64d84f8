"""`python -m maepp.tools.bench step`: the real sharded train step (maepp.train_step, jitted as
maepp.train runs it) on every device this process sees, timed on a device-resident batch of
random log-mels, and its model FLOP utilisation against the chip's bfloat16 peak.

    python -m maepp.tools.bench step --config configs/audiomaepp.py:base --config.batch_size=256 \
        [--config.model.dtype=bfloat16] [--config.data.frontend=device] [--steps 20] [--json] \
        [--variant model.attention=cudnn,batch_size=128 ...] [--profile_dir DIR]

Each --variant is a set of overrides of the config (`key=value`, comma-separated) or of XLA's
compiler options (keys starting `xla_`), timed in this one process after the config itself
(in-process, so XLA's autotuning results carry over and later compiles are quicker). With
--profile_dir, 3 more steps of each are traced with jax.profiler and broken down by category
and kernel (maepp.tools.bench.profile); the breakdown joins the JSON line.

The input pipeline is left out on purpose: this is the ceiling the accelerator sets, which
`maepp.tools.bench data` then has to feed. With --config.data.frontend=device the batch is raw-sample
crops and the step includes the log-mel front end (maepp.audio.jax_frontend), whose cost is then
the difference to the host front end's step time; MFU still counts only the model's FLOPs.
Model FLOPs are maepp.models.counts' analytic count, which tests/test_flops.py holds exactly to
the matrix products traced from the model. XLA's own count
of the compiled step is printed beside them: on the CPU the two agree (tests/test_bench.py); on a
GPU, XLA's count leaves out the matrix products it hands to cuBLAS, so there it is far lower and
says nothing about MFU.
"""

from absl import app, flags

from maepp import program
from maepp.tools.bench import profile
from maepp.tools.bench.report import report
from maepp.tools.bench.step_timing import bench_step

_CONFIG = program.config_file_flag("config", program.installed("audiomaepp:base"), "Experiment config.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps, after two warm-up steps.")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "Overrides timed after the config: key=value[,key=value]; keys xla_* are XLA compiler options."
)
_PROFILE_DIR = flags.DEFINE_string("profile_dir", "", "Trace 3 steps of each run here and print where the time goes.")


def parse_variant(text: str) -> dict:
    """'model.attention=cudnn,xla_gpu_foo=true' -> {'model.attention': 'cudnn', 'xla_gpu_foo': 'true'}."""
    overrides = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise app.UsageError(f"--variant {text!r}: {item!r} is not key=value")
        overrides[key.strip()] = value.strip()
    return overrides


def _compiler_option(value: str):
    """XLA's options are typed: 'true' -> True, '4' -> 4, anything else stays a string."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return int(value) if value.lstrip("-").isdigit() else value


def apply_variant(config, overrides: dict):
    """-> (a copy of config with the overrides, XLA compiler options); values take each field's type."""
    config = config.copy_and_resolve_references()
    compiler_options = {}
    for key, value in overrides.items():
        if key.startswith("xla_"):
            compiler_options[key] = _compiler_option(value)
            continue
        *parents, field = key.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        if field not in section:
            raise app.UsageError(f"--variant: config has no field {key!r}")
        current = section[field]
        if isinstance(current, bool):
            if value.lower() not in ("true", "false"):
                raise app.UsageError(f"--variant {key}={value!r}: expected true or false")
            section[field] = value.lower() == "true"
        else:
            section[field] = type(current)(value)
    return config, compiler_options


def main(argv):
    del argv
    if _STEPS.value < 1:
        raise app.UsageError("--steps must be at least 1")
    variants = [{}] + [parse_variant(text) for text in _VARIANTS.value]
    applied = [apply_variant(_CONFIG.value, overrides) for overrides in variants]  # every typo before any timing
    for i, (overrides, (config, compiler_options)) in enumerate(zip(variants, applied)):
        profile_dir = _PROFILE_DIR.value and f"{_PROFILE_DIR.value}/run{i}"
        try:
            r = dict(variant=overrides, **bench_step(config, _STEPS.value, compiler_options, profile_dir))
        except Exception as error:  # noqa: BLE001 - one variant the backend refuses must not end a sweep on a GPU
            report(
                dict(variant=overrides, error=f"{type(error).__name__}: {error}"[:2000]),
                f"train step {overrides}: failed: {type(error).__name__}: {str(error)[:500]}",
            )
            continue
        mfu = (
            f"MFU {r['mfu']:.1%} of {r['peak_bf16_tflops_per_device']:.0f} TFLOP/s"
            if r["mfu"]
            else "MFU n/a (no peak known)"
        )
        report(
            r,
            f"train step {overrides or '(config)'}, width {r['width']} depth {r['depth']} {r['dtype']}, "
            f"global batch {r['global_batch']} on {r['devices']}, mesh {r['mesh']}: {r['step_ms']} ms "
            f"({r['clips_per_s']} clips/s), compiled in {r['compile_s']} s",
            f"model {r['model_tflop_per_step']} TFLOP per step (XLA counts {r['xla_tflop_per_step']}): "
            f"{r['achieved_tflops_per_device']} TFLOP/s per device, {mfu}",
            *([profile.markdown(r["profile"])] if r["profile"] else []),
        )
