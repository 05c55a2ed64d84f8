r"""Prints a model's parameter table and FLOPs; the last line is JSON.

python -m maepp.tools.summary --config configs/audiomaepp.py:base
"""

import json
import sys

from absl import flags

from maepp import program

# Only flags here: the model's code (JAX, Flax) loads when asked for, so that --help answers at once.

_CONFIG = program.config_file_flag("config", None, "Experiment config, e.g. configs/audiomaepp.py:base")
flags.mark_flag_as_required("config")


def summarize(spec) -> dict:
    """A ModelSpec's parameter counts and train FLOPs per example."""
    from maepp.models.counts import parameter_counts, train_flops_per_example

    counts = parameter_counts(spec)
    return dict(
        encoder_params=counts["encoder"],
        decoder_params=counts["decoder"],
        train_flops_per_example=train_flops_per_example(spec),
    )


def format_table(spec) -> str:
    """A ModelSpec's parameter table and FLOPs, as printed."""
    from maepp.models.counts import forward_flops, parameter_counts, train_flops_per_example

    counts = parameter_counts(spec)
    flops = forward_flops(spec)
    n_time, n_freq = spec.grid
    lines = [
        f"block {spec.block_type}, dtype {spec.dtype}; input {spec.input_size[0]}x{spec.input_size[1]}, "
        f"patches {spec.patch_size[0]}x{spec.patch_size[1]} -> {n_time}x{n_freq} = {spec.n_tokens} tokens, "
        f"{spec.n_visible} visible (mask ratio {spec.mask_ratio})",
        f"encoder {spec.encoder.width} wide x {spec.encoder.depth} deep, {spec.encoder.heads} heads, "
        f"RoPE {spec.encoder.use_rope}; decoder {spec.decoder.width} x {spec.decoder.depth}, "
        f"{spec.decoder.heads} heads, RoPE {spec.decoder.use_rope}",
        "",
        f"{'parameters':<28}{'count':>16}",
    ]
    lines += [f"{name:<28}{n:>16,}" for name, n in counts["groups"].items()]
    lines += [
        f"{'encoder total':<28}{counts['encoder']:>16,}",
        f"{'decoder total':<28}{counts['decoder']:>16,}",
        "",
        f"{'forward FLOPs / example':<28}{'GFLOP':>16}",
    ]
    lines += [f"{stage:<28}{n / 1e9:>16.3f}" for stage, n in flops.items()]
    lines.append(f"{'train step (3x forward)':<28}{train_flops_per_example(spec) / 1e9:>16.3f}")
    return "\n".join(lines)


def main(argv):
    del argv
    from maepp.config_checks import check_model
    from maepp.models.spec import ModelSpec

    try:
        check_model(_CONFIG.value.model)
    except ValueError as error:
        sys.exit(f"maepp.tools.summary: {error}")
    spec = ModelSpec.from_config(_CONFIG.value.model)
    print(format_table(spec))
    print(json.dumps(summarize(spec)))


def run():
    program.run_cli(main, "maepp.tools.summary")


if __name__ == "__main__":
    run()
