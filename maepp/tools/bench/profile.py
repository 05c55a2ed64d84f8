"""Where a compiled step's device time goes: a jax.profiler trace read back and joined to the HLO.

Every kernel in the trace names the HLO instruction it runs (its `hlo_op`). The compiled
module's text gives that instruction's opcode, its fused computation and the JAX op it came
from (`op_name`, which carries the flax module path, e.g. `.../encoder/blocks_3/attn/...`), and
from those each kernel gets one category:

    attention        softmax attention itself (scores, softmax, weighted sum), forward and backward
    matmul           every other matrix product (cuBLAS, Triton or cuDNN GEMMs)
    layernorm        the LayerNorms, forward and backward
    optimizer        the update: gradient norm, AdamW, the finite-step select
    copy/transpose   layout changes and copies
    elementwise      everything else (activations, residual adds, loss, masking, casts)
"""

import collections
import dataclasses
import glob
import os
import re

from jax.profiler import ProfileData

CATEGORIES = ("matmul", "attention", "layernorm", "elementwise", "optimizer", "copy/transpose")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\s([\w\-]+)\(")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LAYER_NORM = re.compile(r"/(norm\d|ln|encoder_norm|decoder_norm)/")
_ATTENTION_PROJECTIONS = ("/attn/qkv/", "/attn/proj/")
_MATMUL_MARKS = (" dot(", "__cublas", "__triton_gemm")  # opcodes and backends, never instruction names


@dataclasses.dataclass(frozen=True)
class Instruction:
    opcode: str
    op_name: str
    line: str  # its own line in the module's text
    body: str  # for a fusion, the computation it calls


def hlo_instructions(hlo_text: str) -> dict:
    """name -> Instruction for every instruction of an HLO module's text."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = bodies.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    instructions = {}
    for lines in bodies.values():
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            calls = _CALLS.search(line)
            body = "\n".join(bodies.get(calls.group(1), ())) if calls else ""
            # A fusion XLA built often carries no op_name of its own: its root's (or, for a tuple
            # root, its first instruction's) then says where it came from.
            op_name = _OP_NAME.search(line) or _OP_NAME.search(_root_line(body)) or _OP_NAME.search(body)
            instructions[match.group(1)] = Instruction(match.group(2), op_name.group(1) if op_name else "", line, body)
    return instructions


def _root_line(body: str) -> str:
    return next((line for line in body.splitlines() if line.lstrip().startswith("ROOT")), "")


def _root_opcode(body: str) -> str:
    match = _INSTRUCTION.match(_root_line(body))
    return match.group(2) if match else ""


def categorise(instruction: Instruction | None, kernel_name: str) -> str:
    """One of CATEGORIES for a kernel, from its HLO instruction (or its name where that is unknown)."""
    name = kernel_name.lower()
    if instruction is None:
        if "fmha" in name or "flash" in name:
            return "attention"
        if any(mark in name for mark in ("gemm", "xmma", "nvjet", "cutlass")):
            return "matmul"
        if "norm" in name:  # maepp's Pallas kernels: swiglu_norm_forward, swiglu_norm_backward
            return "layernorm"
        return "copy/transpose" if "memcpy" in name or "copy" in name else "elementwise"
    op_name, text = instruction.op_name, instruction.line + "\n" + instruction.body
    if "cudnn$fmha" in text or ("/attn/" in op_name and not any(p in op_name for p in _ATTENTION_PROJECTIONS)):
        return "attention"
    if "/optimizer/" in op_name:
        return "optimizer"
    if instruction.opcode == "dot" or any(mark in text for mark in _MATMUL_MARKS):
        return "matmul"
    if _LAYER_NORM.search(op_name):
        return "layernorm"
    if instruction.opcode in ("copy", "transpose") or _root_opcode(instruction.body) in ("copy", "transpose"):
        return "copy/transpose"
    return "elementwise"


def _hlo_op(event) -> str:
    stats = dict(event.stats)
    if "hlo_op" in stats:
        return str(stats["hlo_op"])
    for value in stats.values():  # a kernel's annotation, "name:#hlo_op=fusion.3,hlo_module=...#"
        match = re.search(r"hlo_op=([\w.\-]+)", str(value))
        if match:
            return match.group(1)
    return ""


def kernel_instruction(kernel: str, hlo_op: str, instructions: dict) -> str:
    """The HLO instruction a kernel ran, or "" for a library kernel (cuBLAS, cuDNN) inside a graph.

    XLA names the kernels it emits after their instruction, '.' written '_' ("loop_add_fusion_3"
    runs "loop_add_fusion.3"). That name is the one to trust: on GPUs a whole step is often one
    CUDA graph, and then every kernel's `hlo_op` is the graph's ("command_buffer_1").
    """
    for name in (kernel, re.sub(r"_(\d+)$", r".\1", kernel)):
        if name in instructions:
            return name
    instruction = instructions.get(hlo_op)
    return hlo_op if instruction and not hlo_op.startswith("command_buffer") else ""


def kernel_events(xplane_path: str):
    """(kernel name, hlo op, duration ns) of every device kernel; on a CPU, of every XLA op."""
    profile = ProfileData.from_file(xplane_path)
    planes = [p for p in profile.planes if p.name.startswith("/device:")]
    if planes:
        return [(e.name, _hlo_op(e), e.duration_ns) for p in planes for line in p.lines for e in line.events]
    return [
        (e.name, _hlo_op(e), e.duration_ns)
        for p in profile.planes
        for line in p.lines
        for e in line.events
        if _hlo_op(e)
    ]


def summarise(xplane_path: str, hlo_text: str, n_steps: int, top: int = 10) -> dict:
    """Per-step device time by category and the `top` most expensive kernels (per step)."""
    instructions = hlo_instructions(hlo_text)
    by_category = collections.Counter()
    by_kernel = collections.defaultdict(lambda: [0.0, 0, "", ""])
    for kernel, hlo_op, duration_ns in kernel_events(xplane_path):
        name = kernel_instruction(kernel, hlo_op, instructions)
        instruction = instructions.get(name)
        category = categorise(instruction, kernel)
        by_category[category] += duration_ns
        entry = by_kernel[(name or kernel, category)]
        entry[0] += duration_ns
        entry[1] += 1
        entry[2] = kernel
        entry[3] = instruction.op_name if instruction else ""
    total = sum(by_category.values())
    return dict(
        device_ms_per_step=round(total / n_steps / 1e6, 3),
        share={c: round(by_category[c] / total, 4) for c in CATEGORIES} if total else {},
        ms_per_step={c: round(by_category[c] / n_steps / 1e6, 3) for c in CATEGORIES},
        top_kernels=[
            dict(
                hlo_op=op,
                kernel=kernel,
                category=category,
                ms_per_step=round(ns / n_steps / 1e6, 3),
                launches_per_step=count / n_steps,
                op_name=_short(op_name),
            )
            for (op, category), (ns, count, kernel, op_name) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[
                :top
            ]
        ],
    )


def _short(op_name: str) -> str:
    """The model path of an op name, without the jit/jvp wrappers: 'bwd encoder/blocks_3/attn/...'."""
    segments = op_name.split(";")[0].split("/")
    while segments and "(" in segments[0]:  # jit(train_step), jvp(...), transpose(jvp(...))
        segments.pop(0)
    path = "/".join(s for s in segments if s != "MaskedAutoencoder._encode_tokens")
    return ("bwd " if "transpose(jvp(" in op_name else "") + path


def newest_xplane(log_dir: str) -> str:
    paths = sorted(glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {log_dir}: the trace was not written")
    return paths[-1]


def markdown(summary: dict) -> str:
    """The summary as two Markdown tables: categories, then the top kernels."""
    lines = ["| category | ms per step | share |", "| --- | --- | --- |"]
    for category in CATEGORIES:
        lines.append(f"| {category} | {summary['ms_per_step'][category]} | {summary['share'][category]:.1%} |")
    lines.append(f"| all kernels | {summary['device_ms_per_step']} | |")
    lines += ["", "| kernel | category | ms per step | launches | from |", "| --- | --- | --- | --- | --- |"]
    for k in summary["top_kernels"]:
        lines.append(
            f"| `{k['kernel'][:48]}` | {k['category']} | {k['ms_per_step']} | {k['launches_per_step']:g} | "
            f"{k['op_name'][:80]} |"
        )
    return "\n".join(lines)
