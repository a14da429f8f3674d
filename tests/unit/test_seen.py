"""SeenKeys: duplicate url_based keys caught across merges, in about 8 bytes a key."""

from __future__ import annotations

import numpy as np

from flowdc.seen import SeenKeys
from flowdc.writers.naming import url_key


def test_a_key_is_new_once_across_merges() -> None:
    seen = SeenKeys(merge_every=7)
    keys = [url_key(f"http://h/{i}.jpg") for i in range(100)]
    assert all(seen.add(k) for k in keys)  # 14 merges on the way
    assert len(seen) == 100
    assert not any(seen.add(k) for k in keys)  # merged or recent, each is now a duplicate
    assert all(k in seen for k in keys)
    assert url_key("http://h/never.jpg") not in seen


def test_keys_cost_about_eight_bytes_each() -> None:
    seen = SeenKeys(merge_every=1000)
    for i in range(200_000):
        seen.add(url_key(f"http://host{i % 97}.example/{i}.jpg"))
    assert len(seen) == 200_000
    assert seen.nbytes() < 200_000 * 10  # a set of the key strings takes about 100 bytes a key


def test_a_batch_is_new_where_a_set_says_so_across_merges() -> None:
    """add_all against a plain set: values seen in earlier batches, recent or merged, are not new."""
    rng = np.random.default_rng(5)
    seen, reference = SeenKeys(merge_every=7), set()
    for size in (1, 5, 12, 3, 30, 8, 50, 2):
        batch = np.unique(rng.integers(-60, 60, size=size)).astype(np.int64)
        expected = [int(v) not in reference for v in batch]
        assert seen.add_all(batch).tolist() == expected
        reference.update(batch.tolist())
        assert seen.add_bits(1000 + size) == (1000 + size not in reference)  # one at a time, in between
        reference.add(1000 + size)
    assert len(seen) == len(reference)
    assert seen._sorted.size  # the merged array was looked at, not only the recent set
