r"""Import released PyTorch AudioMAE++ / MAE weights into maepp, and export them back.

    python -m maepp.weights.convert --torch-checkpoint FILE.pth --config configs/audiomaepp.py:base --output DIR
    python -m maepp.weights.convert --params DIR --output-torch FILE.pth

Needs the [torch] extra (pip install -e .[torch]). Checkpoints are read with weights_only=True.
The released block applies LN2 where LN3 stands, and so does maepp's by default: every tensor is
copied as it is, and the imported model computes what the release computes. For a model with
config.model.separate_norm3=True, LN3 takes norm2's values (the released forward pass);
--ln3-from=norm3 takes the stored norm3 instead. Key names and layouts: maepp/weights/release.py.
"""

import sys

from absl import flags

from maepp import program

# Only flags here: JAX and torch load in main(), so that --help answers at once.

_CONFIG = program.config_file_flag("config", None, "Config of the checkpoint's model, e.g. configs/audiomaepp.py:base")
_TORCH_CHECKPOINT = flags.DEFINE_string("torch-checkpoint", None, "Released PyTorch checkpoint (.pth) to import.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write the maepp weights to (must not hold weights).")
_LN3_FROM = flags.DEFINE_enum(
    "ln3-from",
    None,
    ["norm2", "norm3"],
    "Where a separate-LN3 model's LN3 comes from (default norm2; the release's block: norm3).",
)
_PARAMS = flags.DEFINE_string("params", None, "maepp weights directory to export (with --output-torch).")
_OUTPUT_TORCH = flags.DEFINE_string("output-torch", None, "PyTorch state-dict file to write from --params.")


def main(argv):
    del argv
    from maepp.weights.release import StateDictMismatch, UnsafeCheckpoint

    try:
        _convert()
    except (StateDictMismatch, UnsafeCheckpoint, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"maepp.weights.convert: {error}")


def _convert():
    from maepp.models.spec import ModelSpec
    from maepp.weights import store
    from maepp.weights.release import (
        load_torch_state_dict,
        params_to_state_dict,
        save_torch_state_dict,
        state_dict_to_params,
    )

    if _TORCH_CHECKPOINT.value:
        if _CONFIG.value is None or not _OUTPUT.value:
            sys.exit("maepp.weights.convert: --torch-checkpoint needs --config and --output")
        spec = ModelSpec.from_config(_CONFIG.value.model)
        params = state_dict_to_params(load_torch_state_dict(_TORCH_CHECKPOINT.value), spec, _LN3_FROM.value)
        out = store.save(_OUTPUT.value, params, _CONFIG.value)
        print(f"wrote maepp weights of {_TORCH_CHECKPOINT.value} to {out}")
    elif _PARAMS.value:
        if not _OUTPUT_TORCH.value:
            sys.exit("maepp.weights.convert: --params needs --output-torch")
        params, config = store.load(_PARAMS.value)
        spec = ModelSpec.from_config(config.model)
        save_torch_state_dict(params_to_state_dict(params, spec), _OUTPUT_TORCH.value)
        print(f"wrote a PyTorch state dict of {_PARAMS.value} to {_OUTPUT_TORCH.value}")
    else:
        sys.exit(
            "maepp.weights.convert: give --torch-checkpoint FILE.pth (import) or --params DIR (export); see --help"
        )


def run():
    program.run_cli(main, "maepp.weights.convert")


if __name__ == "__main__":
    run()
