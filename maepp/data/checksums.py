"""The CRC32C checksums of prepared clips (maepp/data/clip_store.py): one per CHUNK_BYTES of each
clip's payload, counted from the clip's first byte (its last chunk shorter).

A reader checks every chunk a read covers: a crop of the log_mel store (32,000 bytes) reads the
chunks around it, 48 KB on average, and a block reads whole clips, every chunk of them. CRC32C is
what TFRecord frames its records with and GCS checks objects with; google-crc32c computes it with
the CPU's own instruction (about 20 GB/s measured here), so checking costs next to nothing.
"""

import google_crc32c
import numpy as np

CHUNK_BYTES = 16384


def chunk_count(payload_bytes) -> np.ndarray:
    """How many chunks payloads of these sizes hold (at least one, for an empty payload)."""
    return np.maximum(1, -(-np.asarray(payload_bytes, np.int64) // CHUNK_BYTES))


def chunk_checksums(payload) -> list:
    """A clip's payload -> the CRC32C of each of its chunks."""
    view = memoryview(payload)
    return [
        google_crc32c.value(bytes(view[start : start + CHUNK_BYTES]))
        for start in range(0, max(len(view), 1), CHUNK_BYTES)
    ]


def first_bad_chunk(data: bytes, expected: list) -> int:
    """data: whole chunks of a payload, from one chunk's start; expected: their checksums. -> the
    index of the first chunk whose checksum differs, or -1. (google-crc32c takes bytes: slicing
    copies each chunk, a microsecond's work.)"""
    for k, checksum in enumerate(expected):
        if google_crc32c.value(data[k * CHUNK_BYTES : (k + 1) * CHUNK_BYTES]) != checksum:
            return k
    return -1
