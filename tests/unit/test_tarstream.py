"""Tar members built by hand must read back with tarfile and webdataset, byte for byte."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from flowdc.writers.tarstream import BLOCK, RECORD, TarStream, end_of_archive, member_header, padding


def build(members: list[tuple[str, bytes]], mtime: int = 1_700_000_000) -> bytes:
    """The archive assembled piece by piece, without TarStream's buffering."""
    out = bytearray()
    for name, data in members:
        out += member_header(name, len(data), mtime) + data + padding(len(data))
    out += end_of_archive(len(out))
    return bytes(out)


class CountingFile(io.BytesIO):
    writes = 0

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        self.writes += 1
        return super().write(data)


def stream(members: list[tuple[str, bytes]], write_bytes: int, mtime: int = 1_700_000_000) -> CountingFile:
    out = CountingFile()
    tar = TarStream(out, write_bytes)
    for name, data in members:
        tar.add(name, data, mtime)
    tar.finish()
    assert tar.offset == len(out.getvalue())
    return out


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
    data = stream(members, 1 << 20).getvalue()
    assert data == build(members) and len(data) % RECORD == 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        got = [(m.name, tar.extractfile(m).read(), m.mtime, m.mode) for m in tar]  # type: ignore[union-attr]
    assert [(n, d) for n, d, _, _ in got] == members
    assert {(mt, mode) for _, _, mt, mode in got} == {(1_700_000_000, 0o644)}


def test_stream_reads_back_with_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    shard = tmp_path / "000000.tar"
    members = [(f"{i:09d}.{ext}", f"{ext}{i}".encode()) for i in range(5) for ext in ("png", "json")]
    shard.write_bytes(stream(members, 4096).getvalue())
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(5)]
    assert [(s["png"], s["json"]) for s in samples] == [(f"png{i}".encode(), f"json{i}".encode()) for i in range(5)]


def test_end_of_archive_pads_to_whole_records() -> None:
    for offset in (0, BLOCK, RECORD - 2 * BLOCK, RECORD - BLOCK, 3 * RECORD + 7 * BLOCK):
        tail = end_of_archive(offset)
        assert len(tail) >= 2 * BLOCK and (offset + len(tail)) % RECORD == 0 and not any(tail)


def test_small_pieces_are_gathered_and_large_ones_pass_straight_through() -> None:
    buffer = 8 * BLOCK
    small = [(f"{i:09d}.json", b"{}" * 10) for i in range(40)]  # two blocks each with its header
    large = [("big.png", bytes(range(256)) * 40), ("fits.png", b"y" * (buffer - BLOCK)), ("tail.json", b"{}")]
    out = stream(small + large, buffer)
    assert out.getvalue() == build(small + large)
    # 40 small members are 80 blocks: ten buffers. The large body is one write of its own.
    assert out.writes <= 10 + 6, out.writes
