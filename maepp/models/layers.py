"""Building blocks shared by the encoder and the decoder.

Every parameter carries logical axis names (flax `with_logical_partitioning`), which the
sharding rules map onto mesh axes:
  embed    model width            mlp    FFN / SwiGLU hidden width
  heads    attention heads        kv     per-head width
  qkv      the q/k/v triple       patch  values of one spectrogram patch
  norm     LayerNorm over width   decoder_embed  decoder width where it meets the encoder width
Parameters are float32; `dtype` is the compute dtype (float32 or bfloat16).
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maepp.models import swiglu_norm

LAYER_NORM_EPS = 1e-6  # docs/reference.md#model: pre-norm LayerNorm eps 1e-6


def xavier_uniform(n_in_dims: int):
    """Xavier-uniform over the kernel seen as a matrix [prod(in dims), prod(out dims)].

    This is what PyTorch's xavier_uniform_ does on the released Linear weights, whatever
    shape we give the kernel here (e.g. qkv as [D, 3, heads, head_dim]).
    """

    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[:n_in_dims])
        fan_out = math.prod(shape[n_in_dims:])
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


class Linear(nn.Module):
    """y = x . kernel + bias, contracting the last `len(axes) - len(features)` dims of x.

    defer_bias: return (x . kernel, bias) instead, for a caller whose own kernel adds the bias.
    """

    features: Sequence[int]
    axes: Sequence[str]  # logical names of the kernel: input dims, then output dims
    dtype: Any = jnp.float32
    defer_bias: bool = False

    @nn.compact
    def __call__(self, x):
        features = tuple(self.features)
        n_in = len(self.axes) - len(features)
        kernel_shape = tuple(x.shape[x.ndim - n_in :]) + features
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(xavier_uniform(n_in), tuple(self.axes)), kernel_shape
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.axes[n_in:])), features
        )
        y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=n_in)
        return (y, bias) if self.defer_bias else y + bias.astype(self.dtype)


def _norm_initializers(axis_name: str):
    """(scale, bias) initialisers of every LayerNorm here: (1, 0), logically named."""
    return (
        nn.with_logical_partitioning(nn.initializers.ones, (axis_name,)),
        nn.with_logical_partitioning(nn.initializers.zeros, (axis_name,)),
    )


def layer_norm(dtype, name: str, axis_name: str = "norm"):
    """LayerNorm(eps 1e-6) with logically named scale and bias, initialised to (1, 0)."""
    scale_init, bias_init = _norm_initializers(axis_name)
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, scale_init=scale_init, bias_init=bias_init, name=name)


class NormParams(nn.Module):
    """A LayerNorm's parameters alone, named and initialised as layer_norm's, for a kernel that
    normalises by itself: -> (scale [features], bias [features])."""

    axis_name: str

    @nn.compact
    def __call__(self, features: int):
        scale_init, bias_init = _norm_initializers(self.axis_name)
        return self.param("scale", scale_init, (features,)), self.param("bias", bias_init, (features,))


def rotary(x, positions):
    """Rotary position embedding on x [batch, n, heads, head_dim] at positions [batch, n].

    Rotates adjacent channel pairs (2i, 2i+1) by position / 10000^(2i / head_dim), the layout of
    rotary-embedding-torch that the release's RoPE ablation used; computed in float32. Positions
    are the tokens' true grid positions, also for the visible subset the encoder sees.
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / 10000 ** (jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, n, half]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    pairs = x.astype(jnp.float32).reshape((*x.shape[:-1], half, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")
CUDNN_SEQUENCE_MULTIPLE = 64  # cuDNN's flash attention refuses the encoder's 51 tokens unpadded


def padded_attention(q, k, v, implementation: str, multiple: int = CUDNN_SEQUENCE_MULTIPLE):
    """Attention over [batch, n, heads, head_dim] with n padded up to a multiple of `multiple`.

    The padding is masked out as keys by sequence lengths, and its query rows are dropped, so the
    result is plain attention over the n tokens (tests check this with the "xla" implementation).
    """
    length = q.shape[1]
    padded = -(-length // multiple) * multiple
    pad = ((0, 0), (0, padded - length), (0, 0), (0, 0))
    lengths = jnp.full((q.shape[0],), length, jnp.int32)
    out = jax.nn.dot_product_attention(
        *(jnp.pad(t, pad) for t in (q, k, v)),
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
    return out[:, :length]


def resolved_attention(implementation: str, dtype, backend: str) -> str:
    """What "auto" attention runs as: cuDNN's on GPUs in bfloat16, where it is faster; XLA's elsewhere."""
    if implementation != "auto":
        return implementation
    return "cudnn" if jnp.dtype(dtype) == jnp.bfloat16 and backend == "gpu" else "xla"


def attention(q, k, v, implementation: str = "auto"):
    """Softmax attention over [batch, n, heads, head_dim].

    "xla": XLA's own ops. "cudnn": cuDNN's fused flash attention (GPUs, bfloat16 inputs), 1.23x
    the base model's train step on an H200 (docs/performance.md). "auto": cuDNN where it applies.
    """
    implementation = resolved_attention(implementation, q.dtype, jax.default_backend())
    if implementation == "xla":
        return jax.nn.dot_product_attention(q, k, v)
    return padded_attention(q, k, v, implementation)


class SelfAttention(nn.Module):
    """Multi-head self-attention; qkv laid out (3, heads, head_dim) as in the release."""

    heads: int
    use_rope: bool = False
    dtype: Any = jnp.float32
    implementation: str = "auto"  # one of ATTENTION_IMPLEMENTATIONS

    @nn.compact
    def __call__(self, x, positions):  # x [batch, n, width], positions [batch, n]
        width = x.shape[-1]
        head_dim = width // self.heads
        qkv = Linear((3, self.heads, head_dim), ("embed", "qkv", "heads", "kv"), self.dtype, name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [batch, n, heads, head_dim]
        if self.use_rope:
            q, k = rotary(q, positions), rotary(k, positions)
        out = attention(q, k, v, self.implementation)
        return Linear((width,), ("heads", "kv", "embed"), self.dtype, name="proj")(out)


class FeedForward(nn.Module):
    """Linear(D, 4D) -> activation -> Linear(4D, D)."""

    activation: str  # "silu" (Macaron half-step FFN) or "gelu" (ViT MLP, exact erf as torch)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = Linear((4 * width,), ("embed", "mlp"), self.dtype, name="layer1")(x)
        h = nn.silu(h) if self.activation == "silu" else nn.gelu(h, approximate=False)
        return Linear((width,), ("mlp", "embed"), self.dtype, name="layer2")(h)


def swiglu_hidden(width: int) -> int:
    """SwiGLU hidden width int(8D/3) (docs/reference.md#sizes: 2048 for D=768)."""
    return 8 * width // 3


SWIGLU_NORM_IMPLEMENTATIONS = ("auto", "xla", "pallas")


def fused_swiglu_norm(implementation: str, hidden_shape, dtype) -> bool:
    """Whether SwiGLU's gate, product and LN_h run as maepp.models.swiglu_norm's kernels.

    "xla": never. "pallas": wherever their tiling applies (a power-of-two hidden width), in
    Pallas's interpreter off GPUs. "auto": so on one GPU in bfloat16. The kernels carry no
    sharding rule (XLA would gather a sharded batch onto every device), so "auto" leaves meshes
    of several devices to XLA, and maepp.config_checks refuses "pallas" on them.
    """
    implementation = resolved_swiglu_norm(implementation, dtype, jax.default_backend(), jax.device_count())
    return implementation == "pallas" and swiglu_norm.applies(hidden_shape)


def resolved_swiglu_norm(implementation: str, dtype, backend: str, device_count: int) -> str:
    """What "auto" runs as: the Pallas kernels on one GPU in bfloat16, XLA's ops elsewhere."""
    if implementation != "auto":
        return implementation
    return "pallas" if jnp.dtype(dtype) == jnp.bfloat16 and backend == "gpu" and device_count == 1 else "xla"


class SwiGLU(nn.Module):
    """W_o . LN_h( SiLU(W_g x) * (W_v x) ), hidden int(8D/3) (docs/reference.md#model)."""

    dtype: Any = jnp.float32
    norm_implementation: str = "xla"  # one of SWIGLU_NORM_IMPLEMENTATIONS

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        hidden = swiglu_hidden(width)
        fused = fused_swiglu_norm(self.norm_implementation, (*x.shape[:-1], hidden), self.dtype)
        value = Linear((hidden,), ("embed", "mlp"), self.dtype, defer_bias=fused, name="value")(x)
        gate = Linear((hidden,), ("embed", "mlp"), self.dtype, defer_bias=fused, name="gate")(x)
        if fused:
            (value, value_bias), (gate, gate_bias) = value, gate
            scale, bias = NormParams("mlp", name="ln")(hidden)
            h = swiglu_norm.swiglu_norm(gate, value, gate_bias, value_bias, scale, bias, LAYER_NORM_EPS)
        else:
            h = layer_norm(self.dtype, "ln", axis_name="mlp")(nn.silu(gate) * value)
        return Linear((width,), ("mlp", "embed"), self.dtype, name="project")(h)
