r"""Ahead-of-time compile of the real train step for accelerators this machine does not have,
and its memory per device against the chip's HBM.

    python -m maepp.tools.compile_check --config configs/audiomaepp.py:large --topology v5e:4x4 \
        [--num_slices 2] [--config.mesh.fsdp=4] [--json]
    python -m maepp.tools.compile_check --config configs/audiomaepp.py:base --topology h100:8
    python -m maepp.tools.compile_check --config configs/audiomaepp.py:huge --topology h100:4x8 \
        --config.mesh.dcn_data=4

TPU slices (v4, v5e, v5p, v6e; --num_slices of them, joined by the data-centre network) need
libtpu at the version jax's `tpu` extra names; H100s (h100:N, N GPUs of one node; h100:NODESxN,
nodes of N GPUs, each node a granule) need jax's CUDA plugin at jax's version. `make` installs both into
.venv/aot-plugins, which only this module puts on its path, so no other program loads them
(`pip install maepp[tpu,gpu-aot]` puts them in the environment instead, and MAEPP_AOT_PLUGINS
names another folder that holds them). The step is lowered
with the config's mesh over the topology's abstract devices and compiled on this CPU: by
libtpu, or by XLA's GPU compiler against maepp/tools/targets/h100.pbtxt, the description XLA wrote
of a real H100 80GB HBM3 (less the fields this jaxlib does not parse). XLA's memory_analysis()
gives the per-device bytes. Exits 1, naming the config change to try, when the step does not
fit: libtpu refuses such a program itself; XLA's GPU compiler does not, so the peak is compared
with HBM here.

It is a program, not a library: importing it sets JAX_PLATFORMS, TPU_WORKER_HOSTNAMES,
TPU_ACCELERATOR_TYPE and XLA_FLAGS and puts the plugin folder on sys.path, because jax and
libtpu read them once, when they load, which this module's own imports below do.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import sys
import threading
import time

from absl import flags

# libtpu looks for a TPU VM's metadata at start-up; these say there is none to find, and this
# process computes on the CPU: the TPU is only a compile target.
os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several compile checks may run at once
# With no GPU to time candidates on, XLA's GPU compiler cannot autotune: take cuBLAS's default
# GEMM algorithms instead of Triton tilings it would have to pick by timing (without this flag it
# fails: "Couldn't find output tile sizes"). The flags mean nothing to the TPU and CPU compilers.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=0"]
).strip()
# `make` installs them into .venv/aot-plugins: the environment's own prefix, wherever maepp is installed.
PLUGIN_DIR = pathlib.Path(os.environ.get("MAEPP_AOT_PLUGINS", pathlib.Path(sys.prefix) / "aot-plugins"))
if PLUGIN_DIR.is_dir():
    sys.path.insert(0, str(PLUGIN_DIR))

from maepp import quiet_start  # noqa: E402

# jax's CUDA plugin, found on that path, loads its libraries with jax and its backend with the
# first devices asked for; on a machine without CUDA each says so (maepp/quiet_start.py).
with quiet_start.notices_kept_off():
    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies

from maepp import optim, program, sharding  # noqa: E402
from maepp.audio import filterbanks, jax_frontend  # noqa: E402
from maepp.config_checks import check_model  # noqa: E402
from maepp.hardware import CHIPS  # noqa: E402
from maepp.models import MaskedAutoencoder, ModelSpec  # noqa: E402
from maepp.train_step import make_train_step  # noqa: E402

_CONFIG = program.config_file_flag("config", None, "Experiment config, e.g. configs/audiomaepp.py:large")
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU slice (v5e:4x4, v4:2x2x2, v5p:2x2x4), GPUs of one node (h100:8) or nodes of GPUs (h100:4x8)."
)
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "TPU slices of --topology in the job (multi-slice).")
_JSON = flags.DEFINE_bool("json", False, "Print only the JSON line.")
flags.mark_flags_as_required(["config", "topology"])

GIB = 2**30
GPU_TARGETS = {"h100": pathlib.Path(__file__).parent / "targets" / "h100.pbtxt"}
TPU_CHIPS = ("v4", "v5e", "v5p", "v6e")


@dataclasses.dataclass
class MemoryReport:
    topology: str
    slices: int
    devices: int
    mesh: tuple
    per_device_batch: int
    arguments_bytes: int | None  # the train state's shards and the batch's (None: refused, see below)
    temporaries_bytes: int  # activations, gradients, optimizer temporaries
    peak_bytes: int  # arguments + outputs - donated aliases + temporaries; the temporaries alone
    # when libtpu refused the program as over HBM (a lower bound)
    hbm_gib: float
    compile_s: float  # lowering and compiling the step, on this machine's CPU

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.hbm_gib * GIB


def abstract_devices(topology: str, num_slices: int = 1) -> list:
    """Devices of a TPU slice ("v5e:4x4", num_slices of them), of one node of N GPUs ("h100:8") or of
    nodes of N GPUs, each node a granule ("h100:4x8"), for compiling only."""
    chip, _, shape = topology.partition(":")
    if chip not in TPU_CHIPS and chip not in GPU_TARGETS:
        raise ValueError(
            f"topology {topology!r}: chip {chip!r} unknown; use one of {', '.join(TPU_CHIPS + tuple(GPU_TARGETS))}"
        )
    if num_slices < 1 or (num_slices > 1 and chip in GPU_TARGETS):
        raise ValueError(
            f"--num_slices {num_slices}: TPU slices only, at least 1; name GPU nodes in the topology (e.g. {chip}:4x8)"
        )
    nodes, _, gpus = shape.rpartition("x") if chip in GPU_TARGETS else ("", "", "")
    if chip in GPU_TARGETS and not re.fullmatch(r"([1-9]\d*x)?[1-9]\d*", shape):
        raise ValueError(
            f"topology {topology!r}: name the GPUs of one node, e.g. {chip}:8, or nodes x GPUs, e.g. {chip}:4x8"
        )
    plugin, extra = ("jax_plugins.xla_cuda12", "gpu-aot") if chip in GPU_TARGETS else ("libtpu", "tpu")
    if importlib.util.find_spec(plugin) is None:
        raise ValueError(
            f"compiling for {chip} needs {plugin}, which is not installed: pip install 'maepp[{extra}]', "
            f"or in a checkout run make (it installs it into .venv/aot-plugins), or set "
            f"MAEPP_AOT_PLUGINS to a folder that holds it (looked in {PLUGIN_DIR})"
        )
    if chip in GPU_TARGETS:
        return topologies.get_topology_desc(
            platform="cuda",
            topology_name="",
            topology=f"1x{nodes or 1}x{gpus}",
            target_config=GPU_TARGETS[chip].read_text(),
        ).devices
    # v4 and v5p chips hold two TensorCores that JAX drives as one device ("megacore"), as on a
    # real slice; libtpu's default description lists each core.
    options = dict(chip_config_name="megacore") if CHIPS[chip].megacore else {}
    return topologies.get_topology_desc(
        platform="tpu", topology_name=topology, num_slices=num_slices, **options
    ).devices


def compile_train_step(config, topology: str, num_slices: int = 1) -> MemoryReport:
    chip = topology.split(":")[0]
    with quiet_start.notices_kept_off():
        jax.devices()  # the backends start here, the CUDA plugin's among them
        devices = abstract_devices(topology, num_slices)
    mesh = sharding.make_mesh(config.mesh, devices)
    check_model(config.model)
    model = MaskedAutoencoder(ModelSpec.from_config(config.model))
    optimizer = optim.optimizer(config)
    state, shardings = sharding.abstract_state(model, optimizer, mesh)
    if config.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(
            f"config.batch_size {config.batch_size} does not divide over data x fsdp = "
            f"{mesh.shape['data'] * mesh.shape['fsdp']} devices"
        )
    # Raw-sample crops in (the front end in the step), or log-mels.
    to_log_mel = jax_frontend.in_train_step(config.data.frontend, filterbanks.from_config(config))
    inputs = (
        jax_frontend.crop_shapes(config.batch_size, model.spec.input_size[0])
        if to_log_mel
        else jax.ShapeDtypeStruct((config.batch_size, *model.spec.input_size), jnp.float32)
    )
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh)), inputs
    )
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
    step = sharding.sharded_train_step(make_train_step(model, optimizer, to_log_mel), shardings, mesh)
    common = dict(
        topology=topology,
        slices=num_slices,
        devices=len(devices),
        mesh=tuple(mesh.shape.values()),
        per_device_batch=config.batch_size // (mesh.shape["data"] * mesh.shape["fsdp"]),
        hbm_gib=CHIPS[chip].memory_gib,
    )
    start = time.perf_counter()
    try:
        memory = step.lower(state, batch, rng).compile().memory_analysis()
    except jax.errors.JaxRuntimeError as error:
        # libtpu refuses a program over HBM at compile time, naming only its temporaries.
        over = re.search(r"RESOURCE_EXHAUSTED: .*HLO temporaries \(([\d.]+)G\)", str(error))
        if not over:
            raise
        temporaries = int(float(over.group(1)) * GIB)
        return MemoryReport(
            **common,
            arguments_bytes=None,
            temporaries_bytes=temporaries,
            peak_bytes=temporaries,
            compile_s=time.perf_counter() - start,
        )
    peak = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    return MemoryReport(
        **common,
        arguments_bytes=memory.argument_size_in_bytes,
        temporaries_bytes=memory.temp_size_in_bytes,
        peak_bytes=peak,
        compile_s=time.perf_counter() - start,
    )


def advice(report: MemoryReport) -> str:
    data, fsdp, _ = report.mesh
    shard = f"shard the state further (--config.mesh.fsdp={fsdp * 2} --config.mesh.data={max(data // 2, 1)})"
    halve = (
        f"halve the per-device batch ({report.per_device_batch}) with --config.optimizer.accumulate_steps=2 "
        f"and half --config.batch_size"
    )
    # Whichever is larger, the state (arguments) or the activations (temporaries), goes first.
    state_first = report.arguments_bytes is not None and report.arguments_bytes > report.temporaries_bytes
    first, second = (shard, halve) if state_first else (halve, shard)
    return f"it needs {report.peak_gib:.1f} GiB per device of {report.hbm_gib} GiB: {first}, or {second}"


def _ticking(every_s: float = 20.0):
    """Prints the time spent so far every every_s seconds until the returned event is set: a
    compile for a big slice takes minutes, and says nothing while it runs."""
    done, started = threading.Event(), time.perf_counter()

    def tick():
        while not done.wait(every_s):
            print(f"  still compiling: {time.perf_counter() - started:.0f} s", flush=True)

    threading.Thread(target=tick, name="maepp-compile-ticks", daemon=True).start()
    return done


def main(argv):
    del argv
    config = _CONFIG.value
    done = None
    if not _JSON.value:
        slices = f" x {_NUM_SLICES.value} slices" if _NUM_SLICES.value > 1 else ""
        encoder = config.model.encoder
        print(
            f"compiling the train step of a {config.model.block_type} encoder {encoder.width} wide, {encoder.depth} "
            f"blocks, at global batch {config.batch_size}, for {_TOPOLOGY.value}{slices} on this CPU (measured on a "
            "2-core VM: micro 27 s, tiny on v5e:2x2 7 min; the time so far every 20 s)",
            flush=True,
        )
        done = _ticking()
    try:
        report = compile_train_step(config, _TOPOLOGY.value, _NUM_SLICES.value)
    except ValueError as error:
        sys.exit(f"maepp.tools.compile_check: {error}")
    finally:
        if done is not None:
            done.set()
    if not _JSON.value:
        slices = f" x {report.slices} slices" if report.slices > 1 else ""
        print(
            f"{report.topology}{slices}: {report.devices} devices, mesh (data, fsdp, model) = {report.mesh}, "
            f"{report.per_device_batch} examples per device; compiled in {report.compile_s:.1f} s"
        )
        if report.arguments_bytes is None:
            print(
                f"per device: libtpu refused the program: its temporaries alone take "
                f"{report.temporaries_bytes / GIB:.3f} GiB of {report.hbm_gib} GiB HBM"
            )
        else:
            print(
                f"per device: state and batch {report.arguments_bytes / GIB:.3f} GiB, temporaries "
                f"{report.temporaries_bytes / GIB:.3f} GiB, peak {report.peak_gib:.3f} GiB of {report.hbm_gib} GiB HBM"
            )
    print(
        json.dumps(
            dict(
                dataclasses.asdict(report),
                peak_gib=round(report.peak_gib, 3),
                fits=report.fits,
                compile_s=round(report.compile_s, 1),
            )
        )
    )
    if not report.fits:
        sys.exit(f"maepp.tools.compile_check: the train step does not fit on {report.topology}: {advice(report)}")


def run():
    program.run_cli(main, "maepp.tools.compile_check")


if __name__ == "__main__":
    run()
