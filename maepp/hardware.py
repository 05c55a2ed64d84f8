"""The chips and systems maepp knows: peak rate (for MFU), memory per device, and the slices
and nodes the scaling guide plans for. One table, read by bench step, compile_check and scaling."""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Chip:
    device_kinds: tuple  # what jax's device_kind contains on this chip
    peak_bf16_flops: float  # dense bfloat16 matrix peak per device (vendor datasheets, no sparsity)
    memory_gib: float  # per device as JAX sees it
    megacore: bool = False  # two TensorCores JAX drives as one device (v4, v5p)


# Keys are the chip names of compile_check's topologies ("v5e:4x4", "h100:8"). MFU is quoted
# against the bfloat16 peak whatever the compute dtype, as is customary.
CHIPS = {
    "v4": Chip(("TPU v4",), 275e12, 32, megacore=True),
    "v5e": Chip(("TPU v5 lite", "TPU v5e"), 197e12, 16),
    "v5p": Chip(("TPU v5p",), 459e12, 95, megacore=True),
    "v6e": Chip(("TPU v6 lite",), 918e12, 32),
    "a100": Chip(("A100",), 312e12, 80),
    "h100": Chip(("H100",), 989e12, 80),
    "h200": Chip(("H200",), 989e12, 141),
}


def topology_devices(topology: str) -> int:
    """Devices JAX sees on a topology: one per chip ("v5e:8x8" -> 64, megacore included), or the
    GPUs ("h100:8", "h100:4x8" -> 32)."""
    return math.prod(int(n) for n in topology.partition(":")[2].split("x"))


@dataclasses.dataclass(frozen=True)
class System:
    topology: str  # compile_check's --topology: one TPU slice ("v5e:16x16"), or GPU nodes ("h100:4x8")
    slices: int = 1  # TPU slices joined by the data-centre network (compile_check's --num_slices)

    @property
    def chip(self) -> Chip:
        return CHIPS[self.topology.partition(":")[0]]

    @property
    def devices(self) -> int:
        return topology_devices(self.topology) * self.slices

    @property
    def granules(self) -> int:
        """The parts a hybrid mesh's dcn_* axes span: TPU slices, or GPU nodes (h100:NODESxN)."""
        shape = self.topology.partition(":")[2].split("x")
        return self.slices if self.chip is not CHIPS["h100"] or len(shape) == 1 else int(shape[0])


# Systems docs/scaling.md plans for, by name.
SYSTEMS = {
    "v4-8": System("v4:2x2x1"),
    "v4-32": System("v4:2x2x4"),
    "v5e-64": System("v5e:8x8"),
    "v5p-128": System("v5p:4x4x4"),
    "8xH100": System("h100:8"),
    "2xv5e-256": System("v5e:16x16", slices=2),
    "4xv5p-128": System("v5p:4x4x4", slices=4),
    "4x8xH100": System("h100:4x8"),
}


def peak_flops(device_kind: str):
    """The peak of a jax device_kind ("NVIDIA H100 80GB HBM3", "TPU v4", ...), or None if unknown."""
    for chip in CHIPS.values():
        if any(kind.lower() in device_kind.lower() for kind in chip.device_kinds):
            return chip.peak_bf16_flops
    return None
