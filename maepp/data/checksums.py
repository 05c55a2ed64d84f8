"""The CRC32C checksums of prepared clips (maepp/data/clip_store.py). For each chunk of
CHUNK_BYTES of a clip's payload, counted from the clip's first byte (its last chunk shorter), the
table keeps the CRC32C of the clip's bytes from its start to that chunk's end: a running CRC.

A read of whole chunks [j, k) is then checked with one CRC over the bytes read: the running CRC
before chunk j, continued over them (google-crc32c's `extend`), must give the one after chunk
k - 1. One call per read, whatever it spans; only a read that fails is walked chunk by chunk to
name the bad one. A crop of the log_mel store (32,000 bytes) reads the
4 KB chunks around it, 36 KB on average; a block reads whole clips. CRC32C is what TFRecord frames
its records with and GCS checks objects with; google-crc32c computes it with the CPU's own
instruction (26 GB/s measured here). The table is 4 bytes per 4 KB, 1/1024 of the data.
"""

import google_crc32c
import numpy as np

CHUNK_BYTES = 4096
KIND = "crc32c_running"  # manifest.json's checksums.kind for this table


def chunk_count(payload_bytes, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """How many chunks payloads of these sizes hold (at least one, for an empty payload)."""
    return np.maximum(1, -(-np.asarray(payload_bytes, np.int64) // chunk_bytes))


def running_checksums(payload) -> list:
    """A clip's payload -> the CRC32C of its bytes up to each chunk's end."""
    view, crc, running = memoryview(payload), 0, []
    for start in range(0, max(len(view), 1), CHUNK_BYTES):
        crc = google_crc32c.extend(crc, bytes(view[start : start + CHUNK_BYTES]))
        running.append(crc)
    return running


def matches(data: bytes, before: int, after: int) -> bool:
    """data: whole chunks of a payload; before: the running CRC up to their start (0 at the
    clip's start); after: the one at their end."""
    return google_crc32c.extend(before, data) == after


def first_bad_chunk(data: bytes, before: int, running: list, chunk_bytes: int) -> int:
    """data: whole chunks of a payload that do not match; before: the running CRC up to their
    start; running: the table's values at each chunk's end. -> the index of the first chunk whose
    own bytes are wrong, each judged from the table's value before it."""
    befores = [before, *running[:-1]]
    return next(
        k
        for k, (start, end) in enumerate(zip(befores, running))
        if not matches(data[k * chunk_bytes : (k + 1) * chunk_bytes], start, end)
    )
