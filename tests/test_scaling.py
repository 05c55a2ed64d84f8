"""docs/scaling.md is what maepp.tools.scaling computes, and its arithmetic holds."""

import math

from maepp.hardware import SYSTEMS
from maepp.tools import scaling


def test_docs_scaling_md_regenerates(repo_root):
    assert (repo_root / "docs" / "scaling.md").read_text() == scaling.report(), (
        "docs/scaling.md is stale: run python -m maepp.tools.scaling > docs/scaling.md"
    )


def test_state_bytes_follow_the_sharding_rules():
    params = scaling._logical_params("base")
    n = sum(math.prod(shape) for shape, _ in params)
    replicated = scaling.state_bytes_per_device(params, dict(data=8, fsdp=1, model=1))
    assert replicated == 16 * n  # 4 float32 copies, nothing split
    fsdp = scaling.state_bytes_per_device(params, dict(data=1, fsdp=8, model=1))
    # Every matrix has an embed axis: only norms, biases and tokens of other axes stay whole.
    assert replicated / 8 <= fsdp < replicated / 7
    mesh = scaling.recommended_mesh(params, SYSTEMS["v5e-64"])
    assert mesh["data"] * mesh["fsdp"] == 64 and mesh["dcn_data"] == 1
    huge = scaling._logical_params("huge")
    tight = scaling.recommended_mesh(huge, SYSTEMS["v5e-64"])
    assert tight["fsdp"] > 1 and scaling.state_bytes_per_device(huge, scaling.whole_mesh(tight)) <= 0.25 * 16 * 2**30


def test_multi_slice_and_multi_node_meshes_are_data_parallel_across_the_slices_or_nodes():
    huge = scaling._logical_params("huge")
    for name, granules, per_granule in (("2xv5e-256", 2, 256), ("4xv5p-128", 4, 64), ("4x8xH100", 4, 8)):
        mesh = scaling.recommended_mesh(huge, SYSTEMS[name])
        assert mesh["dcn_data"] == granules and mesh["data"] * mesh["fsdp"] == per_granule, name
        memory = SYSTEMS[name].chip.memory_gib
        assert scaling.state_bytes_per_device(huge, scaling.whole_mesh(mesh)) <= 0.25 * memory * 2**30
