"""The frozen encoder as a function of log-mel chunks, and its jax.export artifact.

DIR/encoder.jax_export  serialized f(weights, chunks [b, 200, 80]) -> frames [b, 50, 5 * D],
                        b symbolic (any batch), for the platforms it was exported for
DIR/weights.npz         the encoder's weights w0000, w0001, ... and the mel filterbank
DIR/meta.json           frame size, chunk length, patch frames, number of weights, config
"""

import json
import os
import shutil
import uuid

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maepp.audio import filterbanks
from maepp.audio.constants import SAMPLE_RATE
from maepp.export import embed
from maepp.models import MaskedAutoencoder

EXPORT_PLATFORMS = ("cpu", "cuda", "tpu")


def frame_size(spec) -> int:
    """5 * D for the release's grid: one token per frequency patch of a time step."""
    return spec.grid[1] * spec.encoder.width


def chunk_frames_function(model: MaskedAutoencoder):
    """-> f(params, chunks [B, 200, 80]) -> frame embeddings [B, 50, 5 * D] float32; jit it."""
    n_time, _ = model.spec.grid

    def chunk_frames(params, log_mel_chunks):
        tokens = model.apply({"params": params}, log_mel_chunks, method=MaskedAutoencoder.encode)  # [B, 250, D]
        # Time-major tokens (t * 5 + f): one row of 5 frequency patches per time step.
        return tokens.reshape(tokens.shape[0], n_time, -1)

    return chunk_frames


def local_embedder(
    model: MaskedAutoencoder, params, batch_size: int = 64, filterbank: str = filterbanks.DEFAULT
) -> embed.Embedder:
    """An Embedder running the jitted encoder with its batch split over this host's devices;
    filterbank: the one the encoder trained with (maepp.audio.filterbanks.from_config)."""
    devices = jax.local_devices()
    batch_size = -(-batch_size // len(devices)) * len(devices)
    mesh = Mesh(np.array(devices), ("data",))
    rows, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    params = jax.device_put(params, replicated)
    step = jax.jit(chunk_frames_function(model), in_shardings=(replicated, rows), out_shardings=rows)
    return embed.Embedder(
        lambda batch: step(params, batch),
        frame_size=frame_size(model.spec),
        filterbank=filterbanks.mel_filterbank(filterbank),
        chunk_length=model.spec.input_size[0],
        patch_frames=model.spec.patch_size[0],
        batch_size=batch_size,
    )


def write_artifact(directory, model: MaskedAutoencoder, params, config) -> epath.Path:
    """Exports the encoder for CPU, GPU and TPU; the directory appears complete or not at all."""
    directory = epath.Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} already exists; choose a new artifact directory")
    leaves, treedef = jax.tree.flatten(params)
    chunk_frames = chunk_frames_function(model)

    def from_weights(weights, log_mel_chunks):
        return chunk_frames(jax.tree.unflatten(treedef, weights), log_mel_chunks)

    batch = jax.export.symbolic_shape("b")[0]
    spec = model.spec
    exported = jax.export.export(jax.jit(from_weights), platforms=EXPORT_PLATFORMS)(
        [jax.ShapeDtypeStruct(np.shape(leaf), jnp.float32) for leaf in leaves],
        jax.ShapeDtypeStruct((batch, *spec.input_size), jnp.float32),
    )
    # Each run writes its own partial folder: of two runs on one directory, the second to rename fails.
    partial = directory.parent / f"{directory.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    (partial / embed.ENCODER_FILE).write_bytes(bytes(exported.serialize()))
    weights = {f"w{i:04d}": np.asarray(leaf, np.float32) for i, leaf in enumerate(leaves)}
    with (partial / embed.WEIGHTS_FILE).open("wb") as file:
        np.savez(file, filterbank=filterbanks.mel_filterbank(filterbanks.from_config(config)), **weights)
    meta = dict(
        frame_size=frame_size(spec),
        chunk_length=spec.input_size[0],
        patch_frames=spec.patch_size[0],
        n_weights=len(leaves),
        sample_rate=SAMPLE_RATE,
        config=config.to_dict(),
    )
    (partial / embed.META_FILE).write_text(json.dumps(meta, indent=2))
    try:
        partial.rename(directory)
    except OSError as error:
        shutil.rmtree(partial)
        if directory.exists():
            raise FileExistsError(
                f"{directory} was written by another run meanwhile; choose a new artifact directory"
            ) from error
        raise
    return directory
