"""Multi-index hashing of binary codes (Norouzi et al., CVPR 2012) in one open-addressing table.

A code of `bits` bits is cut into `segments` segments of bits // segments bits. Two codes within
r bits of each other agree, by pigeonhole, on some segment up to floor(r / segments) flipped bits;
so a query probes, for every segment, its value and every value within `flips` bit flips, and the
stored rows found there are the candidates, verified with the exact Hamming distance over all bits.
Every stored code within segments x (flips + 1) - 1 bits is found; farther ones mostly are.

All segments share one linear-probing hash table (per slot a 32-bit fingerprint of the probed
key and a 32-bit row id), kept at most half full and doubled as rows arrive; inserts and
queries are batched and run as a few vectorised numpy passes, so a probe is one random memory
read and a query costs the same at 10k and at 10M stored rows (plus the random rows that share a
segment with it, ~n x probes / 2^segment_bits). The fingerprint only prunes: a false match costs a
distance computation, never a wrong answer.

faiss's `IndexBinaryMultiHash` does the same search with one `std::unordered_map` of vectors per
segment (several dependent cache misses per probe, ~880 bytes per stored row): 7.7k checks/s at
10M rows on this project's benchmark (benchmarks/dedup_scale.py measures both in one run).
"""

from __future__ import annotations

import itertools

import numpy as np

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MAX_LOAD = 0.5


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose every output bit depends on every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _C1
    x = x ^ (x >> np.uint64(27))
    x = x * _C2
    return x ^ (x >> np.uint64(31))


class GrowingArray:
    """Rows appended per shard, read per query: a buffer that doubles when full, so n appends cost
    O(n) copying in all, however inserts and queries interleave."""

    def __init__(self, dtype, width: int | None = None):
        self._tail = () if width is None else (width,)
        self._buffer = np.zeros((1024, *self._tail), dtype)
        self.n = 0

    def append(self, rows) -> None:
        rows = np.asarray(rows, self._buffer.dtype)
        if self.n + len(rows) > len(self._buffer):
            grown = np.zeros((max(2 * len(self._buffer), self.n + len(rows)), *self._tail), self._buffer.dtype)
            grown[: self.n] = self._buffer[: self.n]
            self._buffer = grown
        self._buffer[self.n : self.n + len(rows)] = rows
        self.n += len(rows)

    @property
    def array(self) -> np.ndarray:
        return self._buffer[: self.n]


class _Words(GrowingArray):
    """Codes as rows of big-endian uint64 words (zero-padded)."""

    def __init__(self, nbytes: int):
        self.nbytes, self.width = nbytes, (nbytes + 7) // 8
        super().__init__(np.uint64, self.width)

    def of(self, codes: np.ndarray) -> np.ndarray:
        codes = np.ascontiguousarray(codes, np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.nbytes:
            raise ValueError(f"codes of {codes.shape[-1] if codes.ndim else 0} bytes, {self.nbytes} expected")
        padded = np.zeros((len(codes), self.width * 8), np.uint8)
        padded[:, : self.nbytes] = codes
        return padded.view(">u8").astype(np.uint64)


class MultiIndexHash:
    """Binary codes of `bits` bits; `add` appends rows (ids 0, 1, ...), `range_search` finds them."""

    def __init__(self, bits: int, segments: int, flips: int):
        self.bits, self.segments, self.flips = bits, segments, flips
        self.segment_bits = bits // segments
        if not 1 <= self.segment_bits <= 64:
            raise ValueError(f"{segments} segments of a {bits}-bit code give {self.segment_bits}-bit segments "
                             "(1..64 needed)")
        if bits % 8:
            raise ValueError(f"codes of {bits} bits: a whole number of bytes is needed")
        self.words = _Words(bits // 8)
        s = self.segment_bits
        self.flip_masks = np.array([sum(1 << b for b in combo) for k in range(flips + 1)
                                    for combo in itertools.combinations(range(s), k)], np.uint64)
        self._allocate(1 << 10)

    def _allocate(self, size: int) -> None:
        # the table: per slot the key's 32-bit fingerprint (high half; 0: empty) and the row id (low
        # half), so a probe that hits has its id in the word it read. (numpy asks the kernel for
        # transparent huge pages for large arrays: fewer TLB misses on random reads)
        self.slots = np.zeros(size, np.uint64)

    @property
    def ntotal(self) -> int:
        return self.words.n

    @property
    def exact_up_to(self) -> int:
        return self.segments * (self.flips + 1) - 1

    # -- keys ------------------------------------------------------------------------------------
    def _segment_values(self, words: np.ndarray) -> np.ndarray:
        """[n, segments] uint64: the segments' bit values (segment j: bits j*s .. j*s+s-1, MSB first)."""
        s = self.segment_bits
        out = np.empty((len(words), self.segments), np.uint64)
        for j in range(self.segments):
            w, off = divmod(j * s, 64)
            v = (words[:, w] << np.uint64(off)) >> np.uint64(64 - s)
            if off + s > 64:
                v |= words[:, w + 1] >> np.uint64(128 - off - s)
            out[:, j] = v
        return out

    def _slots(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Home slot (int64) and 32-bit fingerprint (as uint64, never 0 = empty) of each (segment, value):
        segment j's values live in their own key space."""
        seg = np.arange(self.segments, dtype=np.uint64).reshape((1, -1) + (1,) * (values.ndim - 2))
        h = _mix(values ^ _mix(seg * _GOLDEN + _GOLDEN))
        pos = (h & np.uint64(len(self.slots) - 1)).astype(np.int64)
        fp = h >> np.uint64(32)
        fp[fp == 0] = 1
        return pos, fp

    # -- inserts ---------------------------------------------------------------------------------
    def add(self, codes: np.ndarray) -> None:
        words = self.words.of(codes)
        if not len(words):
            return
        first = self.words.n
        if first + len(words) >= 2**32:
            raise ValueError("a partition holds at most 2^32 codes: use more dedup partitions")
        self.words.append(words)
        needed = self.words.n * self.segments
        if needed > _MAX_LOAD * len(self.slots):
            size = len(self.slots)
            while needed > _MAX_LOAD * size:
                size *= 2
            self._rebuild(size)
        else:
            self._place(words, first)

    def _rebuild(self, size: int) -> None:
        self._allocate(size)
        chunk = 1 << 20
        stored = self.words.array
        for start in range(0, len(stored), chunk):
            self._place(stored[start : start + chunk], start)

    def _place(self, words: np.ndarray, first_id: int) -> None:
        pos, fp = self._slots(self._segment_values(words))
        ids = np.repeat(np.arange(first_id, first_id + len(words), dtype=np.uint64), self.segments)
        entries = (fp.ravel() << np.uint64(32)) | ids
        pos = pos.ravel()
        mask = len(self.slots) - 1
        while len(pos):
            free = np.flatnonzero(np.take(self.slots, pos) == 0)
            won = np.zeros(len(pos), bool)
            if len(free):
                _, first = np.unique(pos[free], return_index=True)  # one new entry per free slot
                winners = free[first]
                self.slots[pos[winners]] = entries[winners]
                won[winners] = True
            rest = ~won
            pos, entries = (pos[rest] + 1) & mask, entries[rest]

    # -- queries ---------------------------------------------------------------------------------
    def range_search(self, codes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stored codes within `radius` bits of each query, as faiss lays out a range search:
        (lims [q + 1], distances, ids), query i's answers at lims[i]:lims[i + 1], ids ascending."""
        q_words = self.words.of(codes)
        nq = len(q_words)
        if not nq or not self.words.n:
            return np.zeros(nq + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        values = self._segment_values(q_words)[:, :, None] ^ self.flip_masks[None, None, :]
        pos, fingerprint = self._slots(values)
        pos, fingerprint = pos.ravel(), fingerprint.ravel()
        probe_query = np.repeat(np.arange(nq, dtype=np.int32), self.segments * len(self.flip_masks))
        mask = len(self.slots) - 1
        found_q, found_id = [], []
        while len(pos):  # a key's entries lie in the run of occupied slots from its home slot on
            stored = np.take(self.slots, pos)
            hit = np.flatnonzero((stored >> np.uint64(32)) == fingerprint)
            if len(hit):
                found_q.append(probe_query[hit])
                found_id.append(stored[hit] & np.uint64(0xFFFFFFFF))
            occupied = stored != 0
            pos, fingerprint, probe_query = (pos[occupied] + 1) & mask, fingerprint[occupied], probe_query[occupied]
        if not found_q:
            return np.zeros(nq + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        q = np.concatenate(found_q).astype(np.int64)
        ids = np.concatenate(found_id).astype(np.int64)
        # np.take, not fancy indexing: 4-8x faster on rows of a large 2-D array
        counts = np.bitwise_count(np.take(q_words, q, axis=0) ^ np.take(self.words.array, ids, axis=0))
        dist = counts.sum(axis=1, dtype=np.int64)
        near = dist <= radius
        # a near row is found through several of its segments: one answer per (query, row), and
        # answers in (query, row) order
        pairs, first = np.unique(q[near] * np.int64(self.words.n) + ids[near], return_index=True)
        q, ids, dist = q[near][first], ids[near][first], dist[near][first]
        lims = np.searchsorted(q, np.arange(nq + 1))
        return lims.astype(np.int64), dist, ids


class DigestIndex:
    """Exact duplicates: a 32-byte digest -> the row number of the first one stored.

    The same open addressing (home slot from the digest's first word, slot = row + 1, at most
    half full) over the digests themselves: ~60 bytes per row where a Python dict of bytes takes
    ~200, and a shard's lookups in a few vectorised passes."""

    def __init__(self, nbytes: int = 32):
        self.words = _Words(nbytes)
        self.slots = np.zeros(1 << 10, np.int64)

    @property
    def ntotal(self) -> int:
        return self.words.n

    def _home(self, words: np.ndarray) -> np.ndarray:
        return (_mix(words[:, 0]) & np.uint64(len(self.slots) - 1)).astype(np.int64)

    def find(self, digests: list[bytes]) -> np.ndarray:
        """Row number of each digest (-1: not stored)."""
        words = self.words.of(np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), -1))
        return self._find(words)

    def _find(self, words: np.ndarray) -> np.ndarray:
        out = np.full(len(words), -1, np.int64)
        if not len(words) or not self.words.n:
            return out
        mask = len(self.slots) - 1
        pos, active = self._home(words), np.arange(len(words))
        while len(active):
            row = np.take(self.slots, pos) - 1
            occupied = row >= 0
            same = np.zeros(len(active), bool)
            same[occupied] = (np.take(self.words.array, row[occupied], axis=0) == words[active[occupied]]).all(axis=1)
            out[active[same]] = row[same]
            go_on = occupied & ~same
            active, pos = active[go_on], (pos[go_on] + 1) & mask
        return out

    def add(self, digests: list[bytes]) -> np.ndarray:
        """Store the digests not stored yet (the first of equal ones in the batch); returns the
        positions in `digests` that were stored, in order (they got the next row numbers)."""
        if not digests:
            return np.zeros(0, np.int64)
        words = self.words.of(np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), -1))
        fresh = np.flatnonzero(self._find(words) < 0)
        _, first = np.unique(words[fresh], axis=0, return_index=True)
        fresh = fresh[np.sort(first)]
        start = self.words.n
        self.words.append(words[fresh])
        if self.words.n > _MAX_LOAD * len(self.slots):
            size = len(self.slots)
            while self.words.n > _MAX_LOAD * size:
                size *= 2
            self.slots = np.zeros(size, np.int64)
            self._place(self.words.array, 0)
        else:
            self._place(words[fresh], start)
        return fresh

    def _place(self, words: np.ndarray, first_row: int) -> None:
        mask = len(self.slots) - 1
        pos, rows = self._home(words), np.arange(first_row, first_row + len(words), dtype=np.int64)
        while len(pos):
            free = np.flatnonzero(np.take(self.slots, pos) == 0)
            won = np.zeros(len(pos), bool)
            if len(free):
                _, first = np.unique(pos[free], return_index=True)
                winners = free[first]
                self.slots[pos[winners]] = rows[winners] + 1
                won[winners] = True
            pos, rows = (pos[~won] + 1) & mask, rows[~won]
