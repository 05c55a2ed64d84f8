"""`python -m maepp.tools.bench swiglu_norm`: SwiGLU's gate, product and inner LayerNorm, forward
and backward, as XLA compiles the model's ops and as maepp.models.swiglu_norm's kernels under
each tiling asked for, at the base model's shapes (batch 512: decoder 512 x 251 rows of 1024,
encoder 512 x 51 rows of 2048).

    python -m maepp.tools.bench swiglu_norm [--shapes 512x251x1024,512x51x2048] \
        [--tile_elements 2048,4096,8192] [--programs 528,2112] [--num_warps 4,8] [--num_stages 1,2,3]

GB/s counts the bytes the fused pair must move at least (read g and v, write y; read dy, g and
v, write dg and dv): how near each comes to the memory's bandwidth. On a CPU the kernels run in
Pallas's interpreter, so only a GPU's figures mean anything.
"""

import itertools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import flags

from maepp.models import swiglu_norm
from maepp.models.layers import LAYER_NORM_EPS, layer_norm
from maepp.tools.bench.report import report

_SHAPES = flags.DEFINE_string("shapes", "512x251x1024,512x51x2048", "Shapes batch x tokens x hidden, comma-separated.")
_TILE_ELEMENTS = flags.DEFINE_string("tile_elements", "2048,4096,8192", "Values per tile, comma-separated.")
_PROGRAMS = flags.DEFINE_string("programs", "528,2112", "Programs the backward pass aims for, comma-separated.")
_NUM_WARPS = flags.DEFINE_string("num_warps", "4,8", "Triton warps per program, comma-separated.")
_NUM_STAGES = flags.DEFINE_string("num_stages", "1,2,3", "Triton pipeline stages, comma-separated.")
_ITERATIONS = flags.DEFINE_integer("iterations", 20, "Timed forward-and-backward passes per case.")


def _ints(text: str) -> list:
    return [int(x) for x in text.split(",") if x]


def xla_swiglu_norm(g, v, gate_bias, value_bias, scale, bias):
    """What maepp.models.layers.SwiGLU computes with norm_implementation "xla", after its matrix products."""
    gate, value = g + gate_bias.astype(g.dtype), v + value_bias.astype(v.dtype)
    norm = layer_norm(g.dtype, "ln", axis_name="mlp")
    return norm.apply({"params": {"scale": scale, "bias": bias}}, nn.silu(gate) * value)


def _time_pass(forward, args, cotangent, iterations: int) -> float:
    """ms per forward-and-backward pass."""
    step = jax.jit(lambda *a: jax.vjp(forward, *a)[1](cotangent))
    for _ in range(2):
        jax.block_until_ready(step(*args))
    start = time.perf_counter()
    for _ in range(iterations):
        out = step(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / iterations * 1e3


def _say(line: str):
    """Printed as it comes: a sweep cut off by a time limit still leaves what it measured."""
    if not flags.FLAGS.json:
        print(line, flush=True)


def main(argv):
    del argv
    results = []
    for shape_text in _SHAPES.value.split(","):
        batch, tokens, hidden = (int(x) for x in shape_text.split("x"))
        keys = jax.random.split(jax.random.key(0), 3)
        g, v, cotangent = (jax.random.normal(k, (batch, tokens, hidden), jnp.bfloat16) for k in keys)
        args = (g, v, jnp.zeros(hidden), jnp.zeros(hidden), jnp.ones(hidden), jnp.zeros(hidden))
        gigabytes = 8 * g.size * g.dtype.itemsize / 1e9
        xla_ms = _time_pass(xla_swiglu_norm, args, cotangent, _ITERATIONS.value)
        cases = [dict(implementation="xla", ms=round(xla_ms, 3), gb_per_s=round(gigabytes / xla_ms * 1e3))]
        _say(_case_line(shape_text, cases[0]))
        tilings = dict.fromkeys(
            swiglu_norm.tiling(batch * tokens, hidden, *options)
            for options in itertools.product(
                _ints(_TILE_ELEMENTS.value), _ints(_PROGRAMS.value), _ints(_NUM_WARPS.value), _ints(_NUM_STAGES.value)
            )
        )
        for tiling in filter(None, tilings):
            forward = lambda *a, t=tiling: swiglu_norm.swiglu_norm(*a, LAYER_NORM_EPS, t)
            try:
                ms = _time_pass(forward, args, cotangent, _ITERATIONS.value)
            except Exception as error:  # noqa: BLE001 - one tiling Triton refuses must not end a sweep on a GPU
                cases.append(dict(implementation="pallas", tiling=tiling._asdict(), error=str(error)[:300]))
            else:
                cases.append(
                    dict(
                        implementation="pallas",
                        tiling=tiling._asdict(),
                        ms=round(ms, 3),
                        gb_per_s=round(gigabytes / ms * 1e3),
                        speedup=round(xla_ms / ms, 3),
                    )
                )
            _say(_case_line(shape_text, cases[-1]))
        results.append(dict(shape=[batch, tokens, hidden], device=jax.devices()[0].device_kind, cases=cases))
        best = min((c for c in cases if "ms" in c), key=lambda c: c["ms"])
        _say(
            f"{shape_text}: fastest {best['implementation']} {best.get('tiling', '')} "
            f"({best['ms']} ms against XLA's {xla_ms:.3f} ms)"
        )
    report(dict(swiglu_norm=results))


def _case_line(shape_text: str, case: dict) -> str:
    timing = f"{case['ms']} ms, {case['gb_per_s']} GB/s" if "ms" in case else f"failed: {case['error']}"
    return f"{shape_text} {case['implementation']} {tuple(case.get('tiling', {}).values()) or ''}: {timing}"
