"""SeenKeys: duplicate url_based keys caught across merges, in about 8 bytes a key."""

from __future__ import annotations

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
