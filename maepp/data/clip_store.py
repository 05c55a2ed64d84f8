"""Prepared clips, layout 2.0.0: shards of payloads end to end, and an index of where each clip lies.

    OUTPUT/NAME/2.0.0/NAME-SPLIT.clips-00000-of-00012.npy    a shard: its clips' payloads, one after another
    OUTPUT/NAME/2.0.0/NAME-SPLIT.clips-00000-of-00012.json   the shard's clips: names, lengths, stats
    OUTPUT/NAME/2.0.0/NAME-SPLIT.index.npy                   every clip's shard, byte offset, length, stats
    OUTPUT/NAME/2.0.0/manifest.json                          store, filterbank, counts, hours, shards, skipped files
    OUTPUT/NAME/2.0.0/holdout/                               prepare --holdout's split, a prepared folder of its own

A shard is a NumPy .npy file, so any tool reads it, of one of three stores:
    log_mel  float16 [frames, 80]: each clip's standardised log-mel (docs/reference.md, "Input"),
             short clips tiled to MIN_FRAMES. A crop is rows of it: one read of exactly its bytes.
    pcm      int16 [samples]: 16-bit audio; a crop reads exactly the samples its frames cover.
    flac     uint8 [bytes]: each clip's FLAC file; a crop reads its clip's FLAC bytes.
The index gives each clip's payload as a byte range, and its length and log-mel stats, so start-up
reads one file and every read is one range request of a known size: local files and gs://
objects alike, through TensorStore's key-value stores (its own concurrent HTTP client on GCS).
maepp 0.1 reads this layout only (maepp/data/sources.py refuses the 0.0.x records: source).
"""

import collections
import io
import json
import os
import threading

import numpy as np

from maepp.audio.constants import N_MELS
from maepp.audio.decode import decode_segment, decode_soundfile
from maepp.data import checksums

VERSION = "2.0.0"
STORES = ("log_mel", "pcm", "flac")
AUDIO_STORES = ("pcm", "flac")  # they keep each clip's samples and log-mel stats: a crop decodes only its own
MIN_FRAMES = 200  # log_mel store: short clips are tiled to this many frames (one 2 s crop)
PAYLOADS = {
    "log_mel": (np.dtype(np.float16), (N_MELS,)),
    "pcm": (np.dtype(np.int16), ()),
    "flac": (np.dtype(np.uint8), ()),
}
# Reads in flight per process over GCS: a crop's read waits tens of milliseconds there.
GCS_REQUESTS_IN_FLIGHT = 256


class DamagedClip(ValueError):
    """A stored clip holds what no clip can, and config.data.damaged_clips is "stop"."""


def _limit_bits(frames) -> np.ndarray:
    """The float16 bit patterns (sign cleared) of the largest magnitude a clip of `frames` frames,
    standardised by its sample std, can hold: sqrt(n) for n values, plus float16 rounding."""
    values = np.maximum(np.asarray(frames, np.float64), 1) * N_MELS
    return np.float16(np.minimum(np.sqrt(values) * 1.01 + 1.0, 65504.0)).view(np.uint16)


def damaged_rows(crops, frames_of) -> dict:
    """log_mel crops [k, frames, 80] float16 -> {row: (frame, band, value)} for each crop holding
    what no standardised log-mel can: a value not finite, or beyond _limit_bits of its clip's
    length (frames_of(rows) -> those rows' clip lengths, asked only for rows that could be
    damaged). Damage within that (a flipped low bit) cannot be told from audio: no checksums."""
    # Float16 magnitudes order as their bit patterns with the sign cleared; inf and NaN lie above all.
    bits = np.asarray(crops).view(np.uint16) & np.uint16(0x7FFF)
    largest = bits.reshape(len(bits), -1).max(axis=1)
    rows = np.flatnonzero(largest > _limit_bits(1))  # a one-frame clip's bound is the smallest
    if not len(rows):
        return {}
    found = {}
    for row, limit in zip(rows, _limit_bits(frames_of(rows))):
        if largest[row] > limit:
            frame, band = np.unravel_index(int(np.argmax(bits[row])), bits[row].shape)
            found[int(row)] = (int(frame), int(band), np.asarray(crops)[row, frame, band])
    return found


def damage_reason(shard: str, clip: int, name: str, frames: int, where: tuple) -> str:
    frame, band, value = where
    return (
        f"{shard}: clip {clip} ({name}) is damaged: its stored log-mel holds {value} (crop frame {frame}, mel "
        f"band {band}), which no standardised clip of {frames} frames can"
    )


def shard_name(name: str, split: str, shard: int, n_shards: int) -> str:
    return f"{name}-{split}.clips-{shard:05d}-of-{n_shards:05d}.npy"


# One record per clip: its shard, its payload's byte offset there and stored units (rows, samples
# or bytes), its own length (frames before tiling, or samples), its log-mel stats (audio stores).
INDEX_DTYPE = np.dtype(
    [
        ("shard", "<i4"),
        ("offset", "<i8"),
        ("units", "<i8"),
        ("length", "<i8"),
        ("mean", "<f4"),
        ("std", "<f4"),
        ("chunk", "<i8"),  # its first chunk's place in the checksum table (maepp/data/checksums.py)
    ]
)


def index_name(name: str, split: str) -> str:
    return f"{name}-{split}.index.npy"


def checksums_name(name: str, split: str) -> str:
    return f"{name}-{split}.crc32c.npy"


def npy_header(store: str, units: int) -> bytes:
    """The .npy header of a shard holding `units` payload rows (frames, samples or bytes)."""
    dtype, row = PAYLOADS[store]
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, dict(descr=np.lib.format.dtype_to_descr(dtype), fortran_order=False, shape=(units, *row))
    )
    return buffer.getvalue()


def unit_bytes(store: str) -> int:
    dtype, row = PAYLOADS[store]
    return dtype.itemsize * int(np.prod(row))


def kvstore_spec(directory: str) -> dict:
    """TensorStore's key-value store over a local folder or a gs://bucket/prefix."""
    directory = str(directory).rstrip("/") + "/"
    if directory.startswith("gs://"):
        bucket, _, prefix = directory[len("gs://") :].partition("/")
        return {
            "driver": "gcs",
            "bucket": bucket,
            "path": prefix,
            "context": {"gcs_request_concurrency": {"limit": GCS_REQUESTS_IN_FLIGHT}},
        }
    if "://" in directory:
        raise ValueError(f"{directory}: prepared clips are read from local folders or gs://")
    return {"driver": "file", "path": os.path.abspath(directory) + "/"}


def _listing(directory: str) -> dict:
    """{file name: size} of a prepared folder, in one listing (a local scan, or GCS's list)."""
    if directory.startswith("gs://"):
        from google.cloud import storage

        bucket, _, prefix = directory[len("gs://") :].rstrip("/").partition("/")
        prefix = prefix + "/" if prefix else ""
        blobs = storage.Client().list_blobs(bucket, prefix=prefix, delimiter="/")
        return {blob.name[len(prefix) :]: blob.size for blob in blobs}
    return {entry.name: entry.stat().st_size for entry in os.scandir(directory) if entry.is_file()}


def prepared_below(directory: str) -> list:
    """The prepared datasets (folders holding a manifest.json) one or two levels below a folder:
    what a user who named prepare's --output, or its NAME/ folder, meant."""
    from etils import epath

    root = epath.Path(directory)
    found = [str(m.parent) for pattern in ("*/manifest.json", "*/*/manifest.json") for m in root.glob(pattern)]
    return sorted(found)


class DamagedPayload:
    """What a read returns for a clip whose bytes do not match their checksums: why, in words."""

    def __init__(self, reason: str):
        self.reason = reason


class ClipStoreSource:
    """The clips of a prepared folder (OUTPUT/NAME/2.0.0), local or gs://, as a data source.

    At start the manifest, the index, the checksum table and every shard's .npy header are read
    and checked against each other (one line naming what is wrong). verify: every read is widened
    to whole checksum chunks and checked (maepp/data/checksums.py); a chunk that does not match
    makes its clip a DamagedPayload, which the pipeline stops at or skips (config.data.damaged_clips).
    """

    def __init__(self, directory: str, verify: bool = True):
        import tensorstore as ts

        self.directory, self.verify = str(directory).rstrip("/"), verify
        self._kv = ts.KvStore.open(kvstore_spec(self.directory)).result()
        manifest = self._read_whole("manifest.json")
        if manifest is None:
            below = prepared_below(self.directory)
            if below:
                raise FileNotFoundError(
                    f"{self.directory} holds no manifest.json, but {len(below)} prepared dataset(s) lie below it "
                    f"({', '.join(below[:3])}): name one, e.g. prepared:{below[0]}"
                )
            raise FileNotFoundError(
                f"{self.directory} holds no manifest.json: prepare it with python -m maepp.data.prepare"
            )
        manifest = json.loads(manifest)
        self.manifest = manifest
        if manifest.get("checksums", {}).get("kind") != checksums.KIND:
            raise ValueError(
                f"{self.directory} was prepared by an earlier maepp: its checksums are not the running "
                "CRC32C this one checks; prepare it again into a new --output"
            )
        self._chunk_bytes = manifest["checksums"]["chunk_bytes"]
        self.store, self.filterbank = manifest["store"], manifest["filterbank"]
        self.shards = [shard["file"] for shard in manifest["shards"]]
        self.files = [f"{self.directory}/{shard}" for shard in self.shards]
        index = self._npy(manifest["index"], "index")  # INDEX_DTYPE
        self._checksums = self._npy(manifest["checksums"]["file"], "checksum table")  # uint32
        self._shard, self._offset, self._units = index["shard"], index["offset"], index["units"]
        self._length, self._mean, self._std = index["length"], index["mean"], index["std"]
        self._chunk = index["chunk"]
        self._check_shards(manifest)
        self._check_layout(manifest)
        self._names = {}  # shard -> its clips' names, read when first needed
        self._counting = threading.Lock()
        # byte ranges and their bytes read so far, the clips' payloads (or parts) they served, and
        # the blocks read (read_in_blocks)
        self.reads = self.bytes_read = self.payloads_served = self.blocks_read = 0
        self._blocks = None  # a BlockCache once read_in_blocks is called
        if not len(self):
            raise ValueError(f"{self.directory} holds no clips")

    @property
    def holdout(self):
        """The source string of the split prepare --holdout kept out of these clips, or None."""
        return f"prepared:{self.directory}/{self.manifest['holdout']}" if "holdout" in self.manifest else None

    def _read_whole(self, key: str):
        result = self._kv.read(key).result()
        return result.value if result.state == "value" else None

    def _npy(self, key: str, what: str) -> np.ndarray:
        """A .npy file of the folder, or ValueError naming it."""
        data = self._read_whole(key)
        if data is None:
            raise ValueError(f"{self.directory}/{key} (the {what}) is missing: prepare again into this --output")
        try:
            return np.load(io.BytesIO(data))
        except ValueError as error:
            raise ValueError(
                f"{self.directory}/{key} (the {what}) is not a .npy file ({error}): prepare again into this --output"
            ) from None

    def _check_layout(self, manifest: dict):
        """The manifest, the index, the checksum table and the shards' .npy headers agree."""
        size = unit_bytes(self.store)
        where = f"{self.directory}: manifest.json and {manifest['index']}"
        if len(self._shard) != manifest["clips"]:
            raise ValueError(
                f"{where} disagree: {manifest['clips']:,} clips against {len(self._shard):,}; prepare "
                "again into this --output"
            )
        ends = self._offset + self._units * size
        sizes = np.asarray([shard["bytes"] for shard in manifest["shards"]], np.int64)
        shard_ok = (self._shard >= 0) & (self._shard < len(sizes))
        bad = np.flatnonzero(~shard_ok | (ends > sizes[np.where(shard_ok, self._shard, 0)]))
        chunks = self._chunk + checksums.chunk_count(self._units * size, self._chunk_bytes)
        if len(bad) or (len(chunks) and chunks[-1] != len(self._checksums)):
            clip = int(bad[0]) if len(bad) else len(chunks) - 1
            raise ValueError(
                f"{where} disagree at clip {clip}: its bytes or checksums lie outside what was "
                "written; prepare again into this --output"
            )
        import tensorstore as ts

        headers = [npy_header(self.store, int(self._units[self._shard == n].sum())) for n in range(len(self.shards))]
        with ts.Batch() as batch:
            heads = [
                self._kv.read(shard, batch=batch, byte_range=slice(0, len(header)))
                for shard, header in zip(self.shards, headers)
            ]
        for n, (head, header) in enumerate(zip(heads, headers)):
            units = int(self._units[self._shard == n].sum())
            got = head.result().value
            if got != header:
                raise ValueError(
                    f"{self.files[n]}: its .npy header is not the one prepare wrote (magic bytes "
                    f"{bytes(got[:6])!r}, for {units:,} {self.store} units); the shard is damaged: prepare "
                    "again into this --output (finished shards are kept; delete this one first)"
                )

    def _check_shards(self, manifest: dict):
        """Every shard the manifest names is there, at its size: one listing, before anything runs."""
        listed = _listing(self.directory)
        wrong = []
        for shard in manifest["shards"]:
            size = listed.get(shard["file"])
            if size is None:
                wrong.append(f"{shard['file']} (missing)")
            elif size != shard["bytes"]:
                wrong.append(f"{shard['file']} ({size:,} bytes, not {shard['bytes']:,})")
        if wrong:
            raise ValueError(
                f"{self.directory}: {len(wrong)} of {len(manifest['shards'])} shards do not match "
                f"manifest.json: {', '.join(wrong[:5])}; prepare again into this --output (finished "
                "shards are kept) or restore them"
            )

    def __len__(self):
        return len(self._shard)

    def name(self, index: int) -> str:
        shard = int(self._shard[index])
        if shard not in self._names:
            listing = json.loads(self._read_whole(self.shards[shard].removesuffix(".npy") + ".json"))
            self._names[shard] = listing["clips"]
        first = int(np.searchsorted(self._shard, shard))
        return self._names[shard][index - first]

    def read_in_blocks(self, block_clips: int, blocks_held: int):
        """From now on every read takes its clip from a block: `block_clips` consecutive clips
        read whole (a range request per shard the block spans), at most `blocks_held` of them
        held, the least recently used let go first (maepp/data/order.py BlockOrder)."""
        self._blocks = BlockCache(self, block_clips, blocks_held)

    def _read_ranges(self, ranges) -> list:
        """[(shard, first byte, stop byte)], all read at once -> [bytes]; counted."""
        import tensorstore as ts

        with ts.Batch() as batch:
            futures = [
                self._kv.read(self.shards[shard], batch=batch, byte_range=slice(int(start), int(stop)))
                for shard, start, stop in ranges
            ]
        values = [future.result() for future in futures]
        for (shard, start, _), value in zip(ranges, values):
            if value.state != "value":
                clip = int(np.searchsorted(self._offset[self._shard == shard], start, side="right"))
                raise ValueError(f"{self.files[shard]} is missing (its clip {clip})")
        payloads = [value.value for value in values]
        with self._counting:
            self.reads += len(payloads)
            self.bytes_read += sum(len(payload) for payload in payloads)
        return payloads

    def clip_ranges(self, first: int, stop: int) -> list:
        """Clips [first, stop) of the stored order as byte ranges, one per shard they lie in:
        [(shard, first byte, stop byte, [clip, ...])]."""
        size = unit_bytes(self.store)
        ranges = []
        for shard in np.unique(self._shard[first:stop]):
            clips = np.arange(first, stop)[self._shard[first:stop] == shard]
            ranges.append(
                (
                    int(shard),
                    int(self._offset[clips[0]]),
                    int(self._offset[clips[-1]] + self._units[clips[-1]] * size),
                    clips.tolist(),
                )
            )
        return ranges

    def _read(self, indices, starts, stops) -> list:
        """Payload units [start, stop) of each clip, all read at once -> [bytes]."""
        size = unit_bytes(self.store)
        if self._blocks is not None:
            whole = self._blocks.payloads(indices)
            payloads = [
                whole[int(i)] if isinstance(whole[int(i)], DamagedPayload) else whole[int(i)][a * size : b * size]
                for i, a, b in zip(indices, starts, stops)
            ]
        else:
            # Widened to whole checksum chunks, counted from the clip's first byte, to be checked.
            chunk = self._chunk_bytes if self.verify else 1
            firsts = [a * size // chunk * chunk for a in starts]
            lasts = [min(-(-b * size // chunk) * chunk, int(self._units[i]) * size) for i, b in zip(indices, stops)]
            ranges = [
                (self._shard[i], self._offset[i] + f, self._offset[i] + t) for i, f, t in zip(indices, firsts, lasts)
            ]
            read = self._read_ranges(ranges)
            damaged = self._damaged(indices, firsts, read)
            payloads = [
                damaged.get(k) or memoryview(data)[a * size - first : b * size - first]
                for k, (a, b, first, data) in enumerate(zip(starts, stops, firsts, read))
            ]
        with self._counting:  # once read: a read the pipeline dropped half-way is not counted
            self.payloads_served += len(payloads)
        return payloads

    def _damaged(self, clips, firsts, reads) -> dict:
        """{k: DamagedPayload} for each read that does not match its checksums (one CRC per read;
        maepp/data/checksums.py). reads[k]: bytes of clip clips[k] from firsts[k], a chunk's
        start, to a chunk's end (or the clip's)."""
        if not self.verify:
            return {}
        chunk, clips, firsts = self._chunk_bytes, np.asarray(clips, np.int64), np.asarray(firsts, np.int64)
        reads = [bytes(data) for data in reads]  # google-crc32c takes bytes (a no-op for bytes)
        starts = self._chunk[clips] + firsts // chunk
        stops = starts - (-np.asarray([len(data) for data in reads], np.int64) // chunk)
        befores = np.where(firsts > 0, self._checksums[np.maximum(starts - 1, 0)], 0).tolist()
        afters = self._checksums[stops - 1].tolist()
        return {
            k: self._damage(int(clips[k]), int(firsts[k]), data, befores[k], int(starts[k]), int(stops[k]))
            for k, (data, before, after) in enumerate(zip(reads, befores, afters))
            if data and not checksums.matches(data, before, after)  # an empty read has nothing to check
        }

    def _damage(self, clip: int, first: int, data: bytes, before: int, start: int, stop: int) -> DamagedPayload:
        """A read that failed its check, named: the shard, the clip and the first bad chunk's bytes."""
        chunk = self._chunk_bytes
        bad = checksums.first_bad_chunk(data, before, self._checksums[start:stop].tolist(), chunk)
        at = int(self._offset[clip]) + first + bad * chunk
        end = min(at + chunk, int(self._offset[clip]) + int(self._units[clip]) * unit_bytes(self.store))
        return DamagedPayload(
            f"{self.files[self._shard[clip]]}: clip {clip} ({self.name(clip)}) is damaged: its "
            f"bytes {at:,}-{end:,} do not match their CRC32C checksum"
        )

    # The log_mel store: crops are rows.
    def log_mel_crops(self, indices, fractions, crop_frames: int, centre: bool = False) -> tuple:
        """[k] clips -> (crops [k, crop_frames, 80] float16 as stored, {row: why} for each damaged
        crop, its row zeros). A crop starts at floor(fraction * (room + 1)) of its clip's own
        frames (room = frames - crop_frames), or in the middle (centre). Damaged: bytes that do not
        match their checksums, or values no standardised log-mel holds (damaged_rows). The
        pipeline casts the crops in its graph: NumPy's float16 cast cost more than the reads."""
        indices = np.asarray(indices, np.int64)
        room = np.maximum(self._length[indices] - crop_frames, 0)
        starts = room // 2 if centre else np.floor(np.asarray(fractions) * (room + 1)).astype(np.int64)
        starts = np.minimum(starts, room)
        payloads = self._read(indices, starts, starts + crop_frames)
        zeros = bytes(crop_frames * N_MELS * 2)
        damaged = {row: p.reason for row, p in enumerate(payloads) if isinstance(p, DamagedPayload)}
        crops = np.frombuffer(b"".join(zeros if row in damaged else p for row, p in enumerate(payloads)), np.float16)
        crops = crops.reshape(len(indices), crop_frames, N_MELS)
        for row, where in damaged_rows(crops, lambda rows: self._length[indices[rows]]).items():
            clip = int(indices[row])
            damaged[row] = damage_reason(
                self.files[self._shard[clip]], clip, self.name(clip), int(self._length[clip]), where
            )
        return crops, damaged

    # The audio stores: a crop's samples and the clip's stats.
    def clip_info(self, index: int):
        """(num_samples, mean, std of the whole clip's log-mel), as stored by maepp.data.prepare."""
        return int(self._length[index]), float(self._mean[index]), float(self._std[index])

    def load_segment(self, index: int, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of the clip, reading (pcm) or decoding (flac) only those."""
        if self.store == "pcm":
            return np.frombuffer(self._payload(index, start, stop), np.int16).astype(np.float32) / 32768.0
        return decode_segment(self._flac(index), self.name(index), start, stop)

    def load(self, index: int) -> np.ndarray:
        if self.store == "pcm":
            return self.load_segment(index, 0, int(self._length[index]))
        return decode_soundfile(self._flac(index), self.name(index))

    def _flac(self, index: int) -> bytes:
        return self._payload(index, 0, int(self._units[index]))

    def verify_all(self, batch_clips: int = 256) -> list:
        """Reads every clip whole and checks it against its checksums: -> the damaged clips' reasons."""
        damaged = []
        for first in range(0, len(self), batch_clips):
            indices = np.arange(first, min(first + batch_clips, len(self)))
            payloads = self._read(indices, np.zeros_like(indices), self._units[indices])
            damaged += [p.reason for p in payloads if isinstance(p, DamagedPayload)]
        return damaged

    def _payload(self, index: int, start: int, stop: int):
        """One clip's units [start, stop); DamagedClip where they do not match their checksums."""
        (payload,) = self._read([index], [start], [stop])
        if isinstance(payload, DamagedPayload):
            raise DamagedClip(payload.reason)
        return payload


class BlockCache:
    """A prepared dataset's clips, read a block of `block_clips` consecutive clips at a time and
    held, at most `blocks_held` blocks, the least recently used let go first. Threads asking for a
    block another is reading wait for that read rather than read it again."""

    def __init__(self, source: ClipStoreSource, block_clips: int, blocks_held: int):
        self.source, self.block_clips, self.blocks_held = source, block_clips, blocks_held
        self._held = collections.OrderedDict()  # block -> {clip: its whole payload}
        self._reading = {}  # block -> (an Event set when read, {"clips": ...} the read fills)
        self._lock = threading.Lock()

    def payloads(self, indices) -> dict:
        """{clip: its whole payload} for these clips, reading the blocks not held (at once)."""
        wanted = {int(i) // self.block_clips for i in indices}
        found, waiting, mine = {}, {}, {}
        with self._lock:
            for block in wanted:
                if block in self._held:
                    self._held.move_to_end(block)
                    found.update(self._held[block])
                elif block in self._reading:
                    waiting[block] = self._reading[block]
                else:
                    mine[block] = self._reading[block] = (threading.Event(), {})
        try:
            if mine:
                found.update(self._read(mine))
        finally:
            with self._lock:
                for block, (done, _) in mine.items():
                    del self._reading[block]
                    done.set()
        for block, (done, read) in waiting.items():
            done.wait()
            if "clips" not in read:  # its reader failed: try once more, here
                read["clips"] = self._read({block: (done, read)})
            found.update(read["clips"])
        return found

    def _read(self, blocks: dict) -> dict:
        source, size = self.source, unit_bytes(self.source.store)
        ranges = [
            r
            for block in blocks
            for r in source.clip_ranges(block * self.block_clips, min(len(source), (block + 1) * self.block_clips))
        ]
        payloads = source._read_ranges([(shard, start, stop) for shard, start, stop, _ in ranges])
        clips = {}
        for (_, start, _, members), payload in zip(ranges, payloads):
            view = memoryview(payload)
            wholes = [view[int(source._offset[c]) - start :][: int(source._units[c]) * size] for c in members]
            damaged = source._damaged(members, np.zeros(len(members), np.int64), wholes)
            clips.update((clip, damaged.get(k) or whole) for k, (clip, whole) in enumerate(zip(members, wholes)))
        with source._counting:
            source.blocks_read += len(blocks)
        with self._lock:
            for block, (_, read) in blocks.items():
                read["clips"] = {c: p for c, p in clips.items() if c // self.block_clips == block}
                self._held[block] = read["clips"]
            while len(self._held) > self.blocks_held:
                self._held.popitem(last=False)
        return clips
