r"""docs/scaling.md: memory of the train state per device, and the recommended meshes.

    python -m maepp.tools.scaling > docs/scaling.md
    python -m maepp.tools.scaling --check 8xH100 [--sizes base,large] >> docs/scaling_checks.jsonl

--check compiles the train step ahead of time (maepp.tools.compile_check) on each size's recommended
mesh for that hardware and prints one JSON line per size; docs/scaling.md shows the lines
collected in docs/scaling_checks.jsonl beside what the table predicts.

Computed from the real parameter shapes (eval_shape, nothing allocated) and their logical axis
names mapped by maepp.sharding.LOGICAL_RULES, so the table follows the model code. A test
checks that the committed file is what this prints.
"""

import json
import math
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
from absl import flags

from maepp import program
from maepp.configs.audiomaepp import model_config
from maepp.data.clip_store import GCS_REQUESTS_IN_FLIGHT
from maepp.hardware import SYSTEMS
from maepp.models import MaskedAutoencoder, ModelSpec, init_params, sizes
from maepp.models.counts import train_flops_per_example
from maepp.sharding import LOGICAL_RULES

GIB = 2**30
SIZES = list(sizes.PAPER_SIZES)
# fp32 master weights + fp32 gradients + AdamW's two fp32 moments: 4 copies of every parameter.
STATE_COPIES = 4
# The state may take this share of a device's memory; activations and XLA's buffers get the rest.
STATE_SHARE = 0.25
GLOBAL_BATCH = 1024
CHECKS = pathlib.Path("docs/scaling_checks.jsonl")
# Measured input figures (maepp.tools.bench data and scale on a 2-core CPU VM) and GPU step rates.
INPUT_RESULTS = pathlib.Path("benchmarks/results/cpu_2026-12-05.jsonl")
CHECKED_READ = 1.13  # a 32,000-byte crop's read, widened to the 4 KB checksum chunks around it (measured: 1.126)
H100_RESULTS = pathlib.Path("benchmarks/results/h100_2026-11-25.jsonl")
# AudioSet-2M as the recipe trains it (docs/reference.md#pretraining-recipe): about 2.05M clips of 10 s.
AUDIOSET_CLIPS, AUDIOSET_CLIP_S = 2_050_000, 10.0
CROP_BYTES = 200 * 80 * 2  # a 2 s crop of the log_mel store: 200 rows of 80 float16 values
# Where no step rate was measured (TPU v5e), base's rate at the MFU it reached on an H200 at
# batch 128 (docs/performance.md).
ASSUMED_MFU = 0.295

_CHECK = flags.DEFINE_enum("check", None, list(SYSTEMS), "Compile the recommended meshes for this hardware.")
_SIZES = flags.DEFINE_list("sizes", SIZES, "Sizes to --check.")


def _logical_params(size: str):
    """[(shape, logical axis names)] of every parameter of configs/audiomaepp.py:<size>."""
    model = MaskedAutoencoder(ModelSpec.from_config(model_config(size, "macaron_swiglu")))
    boxed = jax.eval_shape(lambda rng: init_params(model, rng), jax.random.key(0))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return [(leaf.value.shape, leaf.names) for leaf in leaves]


def state_bytes_per_device(params, mesh: dict) -> int:
    """Bytes of the train state on one device of a {data, fsdp, model} mesh (largest shard)."""
    rules = dict(LOGICAL_RULES)
    total = 0
    for shape, names in params:
        elements = 1
        for dim, name in zip(shape, names):
            axes = rules.get(name)
            axes = (axes,) if isinstance(axes, str) else (axes or ())
            elements *= math.ceil(dim / math.prod(mesh[axis] for axis in axes))
        total += elements * 4 * STATE_COPIES
    return total


def recommended_mesh(params, system) -> dict:
    """The config's mesh fields for a system (maepp.hardware.System): inside each slice or node,
    the least FSDP (a power of two) that fits the state in STATE_SHARE of memory, data parallel
    over the rest; data parallel across slices or nodes (dcn_data). Tensor parallelism is not
    needed at these widths."""
    per_granule, memory = system.devices // system.granules, system.chip.memory_gib
    fsdp = 1
    while fsdp < per_granule and state_bytes_per_device(
        params, dict(data=system.devices // fsdp, fsdp=fsdp, model=1)
    ) > (STATE_SHARE * memory * GIB):
        fsdp *= 2
    return dict(data=per_granule // fsdp, fsdp=fsdp, model=1, dcn_data=system.granules)


def whole_mesh(mesh: dict) -> dict:
    """The config's mesh fields -> the sizes of the mesh's (data, fsdp, model) axes."""
    return dict(data=mesh["data"] * mesh["dcn_data"], fsdp=mesh["fsdp"], model=mesh["model"])


def predicted_arguments_bytes(params, mesh: dict, global_batch: int = GLOBAL_BATCH) -> int:
    """What the compiled step's arguments should take per device: the state's shards without
    the gradients (3 of the 4 copies: they are not arguments) plus the global batch's shard."""
    per_device_batch = global_batch // (mesh["data"] * mesh["fsdp"])
    return state_bytes_per_device(params, mesh) * 3 // 4 + per_device_batch * 200 * 80 * 4


def check(hardware: str, sizes):
    """Yields compile_check's report for each size on its recommended mesh, as each finishes (a
    subprocess each: the compilers it loads are kept out of this process)."""
    system = SYSTEMS[hardware]
    for size in sizes:
        mesh = recommended_mesh(_logical_params(size), system)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "maepp.tools.compile_check",
                "--config",
                f"audiomaepp:{size}",
                "--topology",
                system.topology,
                f"--num_slices={system.slices}",
                f"--config.mesh.data={mesh['data']}",
                f"--config.mesh.fsdp={mesh['fsdp']}",
                f"--config.mesh.dcn_data={mesh['dcn_data']}",
                f"--config.batch_size={GLOBAL_BATCH}",
                "--json",
            ],
            capture_output=True,
            text=True,
        )
        lines = result.stdout.strip().splitlines()
        if not lines:  # a compile that failed outright, not one that does not fit
            raise RuntimeError(f"compile_check for {size} on {hardware} failed:\n{result.stderr[-2000:]}")
        yield dict(hardware=hardware, size=size, **json.loads(lines[-1]))


def _checks_section(all_params) -> list:
    if not CHECKS.exists():
        return []
    lines = [
        "## Checked by compiling",
        "",
        f"`python -m maepp.tools.scaling --check HARDWARE` compiled the train step at global batch {GLOBAL_BATCH}",
        "on these recommended meshes with `maepp.tools.compile_check` (libtpu, or XLA's GPU compiler with",
        "`maepp/tools/targets/h100.pbtxt`) and read XLA's `memory_analysis()` per device. Arguments are the",
        "state's shards (without gradients) and the batch's; the prediction is this page's count of",
        "them. Peak adds activations and temporaries, which the table above does not count.",
        "",
        "| hardware | size | mesh | batch per device | arguments (GiB) | predicted (GiB) | difference | peak (GiB) "
        "| fits |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for line in CHECKS.read_text().splitlines():
        r = json.loads(line)
        mesh = dict(zip(("data", "fsdp", "model"), r["mesh"]))
        predicted = predicted_arguments_bytes(all_params[r["size"]], mesh)
        if r["arguments_bytes"] is None:  # refused by libtpu as over HBM: only its temporaries are known
            measured, peak = f"- | {predicted / GIB:.3f} | -", f"over {r['peak_bytes'] / GIB:.2f}"
        else:
            difference = r["arguments_bytes"] / predicted - 1
            measured = f"{r['arguments_bytes'] / GIB:.3f} | {predicted / GIB:.3f} | {difference:+.1%}"
            peak = f"{r['peak_bytes'] / GIB:.2f}"
        lines.append(
            f"| {r['hardware']} | {r['size']} | ({r['mesh'][0]},{r['mesh'][1]},{r['mesh'][2]}) "
            f"| {r['per_device_batch']} "
            f"| {measured} | {peak} of {r['hbm_gib']} | {'yes' if r['fits'] else 'NO'} |"
        )
    return [*lines, ""]


def _results(path: pathlib.Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _audioset_section() -> list:
    """Data at AudioSet scale, in each training order: per-host bytes and requests, the job's
    requests, the latency a host can wait on, and host cores, from measured ratios."""
    measured = _results(INPUT_RESULTS)
    scales = {r["shuffle"]: r for r in _results(INPUT_RESULTS) if r["bench"] == "scale" and r["latency_ms"]}
    data = next(
        (
            r
            for r in measured
            if r["bench"] == "data"
            and r["layout"] == "2.0.0"
            and r["store"] == "log_mel"
            and r["clip_seconds"] == AUDIOSET_CLIP_S
            and r["frontend"] == "host"
        ),
        None,
    )
    h100 = next(
        (
            r
            for r in _results(H100_RESULTS)
            if r["width"] == 768 and r["dtype"] == "bfloat16" and r["global_batch"] == 128 and r["mesh"] == [1, 1, 1]
        ),
        None,
    )
    if not (set(scales) == {"clips", "blocks"} and data and h100):
        return []
    hours = AUDIOSET_CLIPS * AUDIOSET_CLIP_S / 3600
    dataset = hours * data["bytes_per_hour"]
    clip_bytes = dataset / AUDIOSET_CLIPS
    # Bytes a crop costs: its own, widened to the 4 KB checksum chunks around it (clips), or its
    # whole clip, read with its block (blocks). Requests per crop: as measured (clips), or a
    # block's requests over its clips (blocks): in AudioSet each block is read once an epoch.
    per_crop = {
        "clips": (CROP_BYTES * CHECKED_READ, scales["clips"]["requests_per_crop"]),
        "blocks": (clip_bytes, scales["blocks"]["requests_per_crop_at_scale"]),
    }
    flops = train_flops_per_example(ModelSpec.from_config(model_config("base")))
    systems = [
        (
            "v5e-64",
            16,
            4,
            ASSUMED_MFU * SYSTEMS["v5e-64"].chip.peak_bf16_flops / flops,
            f"{ASSUMED_MFU:.1%} MFU (estimated)",
        ),
        ("4x8xH100", 4, 8, h100["clips_per_s"], "measured on one H100"),
    ]
    lines = [
        "## AudioSet at scale",
        "",
        "From measured ratios. `python -m maepp.tools.bench scale` "
        f"({scales['clips']['machine']}, {scales['clips']['date']}): {scales['clips']['processes']} processes "
        f"read {scales['clips']['clips']:,} clips of 2 s in {scales['clips']['shards']} shards of the log_mel "
        "store from a GCS API server on 127.0.0.1, each its share of every batch, through links that held every "
        f"request {scales['clips']['latency_ms']:g} ms and a bucket limit of "
        f"{scales['clips']['bucket_rps']:,.0f} requests/s:",
        "",
    ]
    for order, scale in scales.items():
        lines.append(
            f"- {order}: {scale['requests_per_crop']} requests per crop, {scale['crops_per_s_per_process']:,.0f} "
            f"crops/s per process (the 2 cores' limit, not the link's), {scale['read_per_process_over_dataset']} of "
            f"the dataset per process per epoch (1/{scale['processes']} plus what the pipeline read ahead), "
            f"{scale['local_disk_bytes_written']:,} bytes written to local disk"
            + (
                f"; {scale['requests_per_block']} requests per block of {scale['block_clips']} clips read (one per "
                f"shard it spans), so {scale['requests_per_crop_at_scale']} per crop where each block is read once "
                "an epoch, as in AudioSet (here the next epoch's blocks read ahead count too): the table's figure;"
                if order == "blocks"
                else ";"
            )
        )
    lines += [
        "",
        f"`bench data` on 10 s clips: {data['bytes_per_hour'] / 1e6:.1f} MB per hour of audio, "
        f"{data['pipeline_crops_per_s_per_core']:,.0f} crops/s per host core. AudioSet-2M "
        f"({AUDIOSET_CLIPS / 1e6:.2f}M clips of {AUDIOSET_CLIP_S:.0f} s, {hours:,.0f} hours) then takes "
        f"{dataset / 1e9:.0f} GB; each host reads its share in place. A crop costs its own bytes widened to the "
        f"checksum chunks around it ({CHECKED_READ}x) in the clip order, its whole clip "
        f"({clip_bytes / CROP_BYTES:.1f}x) in the block order. A host keeps {GCS_REQUESTS_IN_FLIGHT} requests "
        "in flight, so it keeps its chips fed while a request takes no longer than the last column. GCS starts "
        "a bucket at about 5,000 reads/s and doubles it at most every 20 minutes: a job above that is "
        "throttled (429, 503) for its first hour or more.",
        "",
        "| base, bfloat16 | order | hosts x chips | clips/s per chip | read per host per epoch | requests/s per host "
        "| requests/s, the job | read/s per host | host cores per chip | latency a host can wait |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, hosts, chips, per_chip, how in systems:
        per_host_s = per_chip * chips
        for order, (crop_bytes, requests_per_crop) in per_crop.items():
            requests = per_host_s * requests_per_crop
            lines.append(
                f"| {name} | {order} | {hosts} x {chips} | {per_chip:,.0f} ({how}) | "
                f"{AUDIOSET_CLIPS / hosts * crop_bytes / 1e9:.1f} GB | {requests:,.0f} | {requests * hosts:,.0f} | "
                f"{per_host_s * crop_bytes / 1e6:,.0f} MB | {per_chip / data['pipeline_crops_per_s_per_core']:.2f} | "
                f"{GCS_REQUESTS_IN_FLIGHT / requests * 1e3:,.0f} ms |"
            )
    return [*lines, ""]


def report() -> str:
    lines = [
        "# Scaling maepp: memory per device and recommended meshes",
        "",
        "Generated by `python -m maepp.tools.scaling > docs/scaling.md` from the real parameter shapes of",
        "`configs/audiomaepp.py:<size>` (encoder and decoder) and `maepp.sharding.LOGICAL_RULES`; do not",
        "edit by hand. The train state is counted as 4 float32 copies of every parameter: master",
        "weights, gradients, and AdamW's two moments. bfloat16 compute casts on the fly and adds no",
        "stored copy. Activations come on top and are not counted here: they scale with the",
        "per-device batch, which is why the recommendation below leaves 75% of each device to them.",
        "",
        "## Train state per device (GiB) on 8 devices",
        "",
        "| size | parameters | data parallel (8,1,1) | FSDP (1,8,1) | tensor parallel (1,1,8) | FSDP x TP (1,4,2) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    meshes = [
        dict(data=8, fsdp=1, model=1),
        dict(data=1, fsdp=8, model=1),
        dict(data=1, fsdp=1, model=8),
        dict(data=1, fsdp=4, model=2),
    ]
    all_params = {size: _logical_params(size) for size in SIZES}
    for size, params in all_params.items():
        n = sum(math.prod(shape) for shape, _ in params)
        cells = [f"{state_bytes_per_device(params, mesh) / GIB:.2f}" for mesh in meshes]
        lines.append(f"| {size} | {n / 1e6:.1f}M | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Recommended meshes",
        "",
        f"Inside each slice (or node): the smallest FSDP degree that keeps the state under {STATE_SHARE:.0%} of a",
        "device's memory, data parallel over the remaining devices, `mesh.model=1`. Across the slices of",
        "a multi-slice TPU job, or the nodes of a GPU cluster, data parallel (`G x (D,F,1)`: G slices or",
        "nodes). Set them with `--config.mesh.data=D --config.mesh.fsdp=F [--config.mesh.dcn_data=G]`",
        "(on TPUs dcn_data takes the slices left over by default; GPU nodes must be named, and",
        "launch/slurm.sbatch's tasks, one per GPU, are grouped into nodes by SLURM_NODEID).",
        "",
        "| size | "
        + " | ".join(f"{name} ({system.devices} x {system.chip.memory_gib} GiB)" for name, system in SYSTEMS.items())
        + " |",
        "| --- |" + " --- |" * len(SYSTEMS),
    ]
    for size, params in all_params.items():
        cells = []
        for system in SYSTEMS.values():
            mesh = recommended_mesh(params, system)
            state = state_bytes_per_device(params, whole_mesh(mesh)) / GIB
            granules = f"{mesh['dcn_data']} x " if mesh["dcn_data"] > 1 else ""
            cells.append(f"{granules}({mesh['data']},{mesh['fsdp']},1): {state:.2f} GiB")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Batch and learning rate",
        "",
        "The recipe (docs/reference.md#pretraining-recipe) uses a global batch of "
        f"{GLOBAL_BATCH} at lr 1.5e-4 x batch / 256 = 6e-4. The",
        "global batch (`config.batch_size`) is split over data x fsdp, so it must divide by their product.",
        "Keep the global batch when the device count changes; the",
        "per-device batch shrinks or grows with it:",
        "",
        "| hardware | devices | per-device batch at 1024 |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {system.devices} | {GLOBAL_BATCH // system.devices} |" for name, system in SYSTEMS.items()]
    lines += [
        "",
        "If a per-device batch does not fit, use `config.optimizer.accumulate_steps=k` with",
        "`batch_size = 1024 / k`: the effective batch stays 1024 and so does the learning rate (it is",
        "computed from batch_size x accumulate_steps). Changing the effective batch B scales the",
        "peak rate linearly, lr = 1.5e-4 x B / 256, as `maepp.optim.learning_rate` does.",
        "",
    ]
    return "\n".join(lines + _checks_section(all_params) + _audioset_section())


def main(argv):
    del argv
    if _CHECK.value:
        for result in check(_CHECK.value, _SIZES.value):
            print(json.dumps(result), flush=True)
        return
    print(report(), end="")


def run():
    program.run_cli(main, "maepp.tools.scaling")


if __name__ == "__main__":
    run()
