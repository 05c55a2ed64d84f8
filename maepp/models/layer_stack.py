"""The two layouts of the blocks in a parameter tree (config.model.scan_layers):

    per block (False):  encoder/blocks_0/attn/qkv/kernel [D, 3, heads, head_dim], blocks_1/...
    stacked   (True):   encoder/blocks/attn/qkv/kernel   [depth, D, 3, heads, head_dim]

The stacked layout is what nn.scan over the blocks creates. The release's weights, parameter
counts and per-block tools speak the per-block one. The functions here convert any tree holding
such dicts, params or the optimizer's moments alike, so a checkpoint of one layout restores into
the other (maepp.checkpoints).
"""

import re

import jax
import jax.numpy as jnp

STACKED = "blocks"
_PER_BLOCK = re.compile(r"blocks_(\d+)$")


def _per_block_indices(node) -> list:
    return sorted(int(m.group(1)) for m in map(_PER_BLOCK.match, node) if m)


def _holds_blocks(node) -> bool:
    return isinstance(node, dict) and (STACKED in node or bool(_per_block_indices(node)))


def _stack(node: dict) -> dict:
    indices = _per_block_indices(node)
    if not indices:
        return node
    if indices != list(range(len(indices))):
        raise ValueError(f"blocks {indices} are not numbered 0..{len(indices) - 1}: cannot stack them")
    blocks = [node[f"blocks_{i}"] for i in indices]
    rest = {key: value for key, value in node.items() if not _PER_BLOCK.match(key)}
    return {**rest, STACKED: jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)}


def _unstack(node: dict) -> dict:
    if STACKED not in node:
        return node
    stacked = node[STACKED]
    depth = jax.tree.leaves(stacked)[0].shape[0]
    rest = {key: value for key, value in node.items() if key != STACKED}
    return {**rest, **{f"blocks_{i}": jax.tree.map(lambda leaf, i=i: leaf[i], stacked) for i in range(depth)}}


def to_layout(tree, stacked: bool):
    """`tree` with every dict of blocks in the stacked (True) or per-block (False) layout; a
    dict already in that layout, and everything around the dicts, is left as it is."""
    convert = _stack if stacked else _unstack
    return jax.tree.map(lambda node: convert(node) if _holds_blocks(node) else node, tree, is_leaf=_holds_blocks)


def is_stacked(params) -> bool:
    """Whether a parameter tree (or an Orbax metadata tree of one) has the stacked layout."""
    return STACKED in params["encoder"]
