"""Peak matrix rates of the chips maepp runs on, for model FLOP utilisation (maepp.bench step)."""

# Dense bfloat16 matrix peak per chip, FLOP/s (vendor datasheets; H100/H200 SXM without
# sparsity). MFU is quoted against this peak whatever the compute dtype, as is customary.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def peak_flops(device_kind: str):
    """The table's peak for a jax device_kind ("NVIDIA H100 80GB HBM3", "TPU v4", ...), or None."""
    for name, peak in PEAK_BF16_FLOPS.items():
        if name.lower() in device_kind.lower():
            return peak
    return None
