"""Tar members built by hand must read back with tarfile and webdataset, byte for byte."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from flowdc.writers.tarstream import BLOCK, RECORD, end_of_archive, member_header, padding


def build(members: list[tuple[str, bytes]], mtime: int = 1_700_000_000) -> bytes:
    out = bytearray()
    for name, data in members:
        out += member_header(name, len(data), mtime) + data + padding(len(data))
    out += end_of_archive(len(out))
    return bytes(out)


@pytest.mark.parametrize(
    ("name", "size", "mtime"),
    [("000000001.png", 2048, 1_795_635_791), ("a" * 100, 0, 0), ("k.json", 8**11 - 1, 2**33 - 1)],
)
def test_ustar_header_matches_tarfile(name: str, size: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    assert member_header(name, size, mtime) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def test_stream_reads_back_with_tarfile() -> None:
    members = [
        ("000000000.jpg", b"\xff\xd8" + bytes(range(256)) * 3),
        ("000000000.json", b'{"key": "000000000"}'),
        ("empty.txt", b""),
        ("exact.bin", b"x" * BLOCK),
        ("n" * 120 + ".png", b"long name"),  # over ustar's 100 bytes: PAX
        ("caf\u00e9/\u00e9t\u00e9.png", b"non-ascii name"),  # PAX as well
    ]
    data = build(members)
    assert len(data) % RECORD == 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        got = [(m.name, tar.extractfile(m).read(), m.mtime, m.mode) for m in tar]  # type: ignore[union-attr]
    assert [(n, d) for n, d, _, _ in got] == members
    assert {(mt, mode) for _, _, mt, mode in got} == {(1_700_000_000, 0o644)}


def test_stream_reads_back_with_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    shard = tmp_path / "000000.tar"
    shard.write_bytes(build([(f"{i:09d}.{ext}", f"{ext}{i}".encode()) for i in range(5) for ext in ("png", "json")]))
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(5)]
    assert [(s["png"], s["json"]) for s in samples] == [(f"png{i}".encode(), f"json{i}".encode()) for i in range(5)]


def test_end_of_archive_pads_to_whole_records() -> None:
    for offset in (0, BLOCK, RECORD - 2 * BLOCK, RECORD - BLOCK, 3 * RECORD + 7 * BLOCK):
        tail = end_of_archive(offset)
        assert len(tail) >= 2 * BLOCK and (offset + len(tail)) % RECORD == 0 and not any(tail)
