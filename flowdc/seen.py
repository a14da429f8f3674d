"""The url_based keys a run has seen, in 8 bytes each, so duplicate URLs are caught in bounded memory.

A Python set of key strings costs about 100 bytes a key: 4 GB for a 40M-row manifest. Here a key
is kept as the first 64 of its 80 bits, in a sorted numpy array, with a small set for the latest
ones that is merged in once it grows. Two different URLs sharing 64 bits is about a 1 in 20,000
chance over 40M rows, and would only mark the second one a duplicate.
"""

from __future__ import annotations

import numpy as np

MERGE_EVERY = 1 << 20  # recent keys kept in a set (~100 MB) before they are merged into the array


def key_bits(key: str) -> int:
    """The first 64 bits of a url_based key (hex), as a signed int64."""
    return int.from_bytes(bytes.fromhex(key[:16]), "big", signed=True)


class SeenKeys:
    def __init__(self, merge_every: int = MERGE_EVERY) -> None:
        self._sorted = np.empty(0, dtype=np.int64)
        self._recent: set[int] = set()
        self._merge_every = merge_every

    def __len__(self) -> int:
        return self._sorted.size + len(self._recent)

    def __contains__(self, key: str) -> bool:
        return self._has(key_bits(key))

    def add(self, key: str) -> bool:
        """Remember `key`; True when it was not seen before."""
        return self.add_bits(key_bits(key))

    def add_bits(self, bits: int) -> bool:
        """Remember a 64-bit value (a key's bits, a row identity); True when it was not seen before."""
        if self._has(bits):
            return False
        self._recent.add(bits)
        if len(self._recent) >= self._merge_every:
            self._merge()
        return True

    def add_all(self, values: np.ndarray) -> np.ndarray:
        """add_bits for each of `values` (distinct int64s), without a Python call per value: which
        were new. (A manifest batch's identities: 20k calls of add_bits cost the event loop 25 ms.)"""
        new = np.ones(values.size, dtype=bool)
        listed = values.tolist()
        known = self._recent.intersection(listed)
        if known:
            new &= ~np.isin(values, np.fromiter(known, dtype=np.int64, count=len(known)))
        if self._sorted.size:
            at = np.minimum(np.searchsorted(self._sorted, values), self._sorted.size - 1)
            new &= self._sorted[at] != values
        self._recent.update(values[new].tolist() if known or self._sorted.size else listed)
        if len(self._recent) >= self._merge_every:
            self._merge()
        return new

    def nbytes(self) -> int:
        """Roughly what the keys cost: 8 bytes each once merged."""
        return self._sorted.nbytes + 100 * len(self._recent)

    def _has(self, bits: int) -> bool:
        if bits in self._recent:
            return True
        if not self._sorted.size:  # until the first merge: no numpy call per key
            return False
        i = int(np.searchsorted(self._sorted, bits))
        return i < self._sorted.size and int(self._sorted[i]) == bits

    def _merge(self) -> None:
        recent = np.fromiter(self._recent, dtype=np.int64, count=len(self._recent))
        merged = np.concatenate([self._sorted, recent])  # the recent keys are new by construction
        merged.sort(kind="stable")  # radix sort for integers: linear, 0.2 s at 40M keys
        self._sorted = merged
        self._recent.clear()
