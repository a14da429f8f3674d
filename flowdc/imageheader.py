"""Size and format of a JPEG or PNG read straight from its header, without Pillow.

The default decode check (`--verify header`) runs once per stored sample. Pillow's header open
costs 20-60 us a body, most of it Python object set-up; on a run of small images that was the
largest per-sample cost the images work added. JPEG and PNG are nearly every body in the datasets
we serve, so those two are walked here in a few microseconds. The walk is strict: anything it does
not fully recognise (another format, a multi-picture JPEG, an odd bit depth, a broken chunk)
returns None and Pillow decides, so this never accepts a body Pillow's header open would refuse
on the structure it reads, and always reports the same size and format name.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {  # colour type -> allowed bit depths (PNG spec, table 11.1)
    0: (1, 2, 4, 8, 16),
    2: (8, 16),
    3: (1, 2, 4, 8),
    4: (8, 16),
    6: (8, 16),
}
# Start-of-frame markers carry the size; C4 (DHT), C8 (reserved) and CC (DAC) share the range but do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8))  # RSTn carry no length
_SOI, _SOS, _EOI, _DQT, _DHP = 0xD8, 0xDA, 0xD9, 0xDB, 0xDE
# Application segments Pillow reads fields from at fixed offsets: (marker, prefix) -> least payload.
_APP_MINIMUM = {(0xE0, b"JFIF"): 7, (0xEE, b"Adobe"): 7, (0xE2, b"ICC_PROFILE\x00"): 14}
_MAX_SEGMENTS = 256  # a header with more is odd enough for Pillow to judge


def header_size(body: bytes) -> tuple[int, int, str] | None:
    """(width, height, Pillow's format name) for a well-formed JPEG or PNG header, else None."""
    if body[:3] == b"\xff\xd8\xff":
        return _jpeg(body)
    if body[:8] == PNG_SIGNATURE:
        return _png(body)
    return None


def _jpeg(body: bytes) -> tuple[int, int, str] | None:
    pos, end, view = 2, len(body), memoryview(body)
    size: tuple[int, int] | None = None
    for _ in range(_MAX_SEGMENTS):
        if pos + 1 >= end or body[pos] != 0xFF:
            return None
        marker = body[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker < 0xC0 or marker in (_SOI, _EOI, _DHP) or pos + 4 > end:
            # Pillow refuses markers below C0 and reads DHP as a frame; a second SOI or an EOI before the scan is odd
            return None
        (length,) = struct.unpack_from(">H", body, pos + 2)
        if length < 2 or pos + 2 + length > end:
            return None
        if marker == _SOS:
            return (size[0], size[1], "JPEG") if size is not None else None
        payload = view[pos + 4 : pos + 2 + length]  # a view: an EXIF or ICC segment is not copied
        if marker in _SOF_MARKERS:
            if size is not None or length < 8:
                return None
            precision, height, width, layers = struct.unpack_from(">BHHB", payload)
            if precision != 8 or layers not in (1, 3, 4) or not width or not height or length != 8 + 3 * layers:
                return None
            size = (width, height)
        elif not _segment_ok(marker, payload):
            return None
        pos += 2 + length
    return None


def _segment_ok(marker: int, payload: memoryview) -> bool:
    """The segments whose fields Pillow reads at open hold together (the rest it skips)."""
    if marker == _DQT:
        return _tables_fit(payload)
    if 0xE0 <= marker <= 0xEF:
        return _app_ok(marker, payload)
    return True


def _tables_fit(payload: memoryview) -> bool:
    """Quantisation tables (65 or 129 bytes each, by their precision nibble) fill the segment exactly."""
    at = 0
    while at < len(payload):
        at += 65 if payload[at] < 16 else 129
    return at == len(payload)


def _app_ok(marker: int, payload: memoryview) -> bool:
    if marker == 0xE2 and payload[:4] == b"MPF\x00":
        return False  # a multi-picture file: Pillow names it MPO
    return all(
        len(payload) >= least for (app, prefix), least in _APP_MINIMUM.items()
        if app == marker and payload[: len(prefix)] == prefix
    )


def _png(body: bytes) -> tuple[int, int, str] | None:
    pos, end, view = 8, len(body), memoryview(body)
    size: tuple[int, int] | None = None
    for _ in range(_MAX_SEGMENTS):
        if pos + 8 > end:
            return None
        length, kind = struct.unpack_from(">I4s", body, pos)
        data_end = pos + 8 + length
        if data_end + 4 > end:
            return None
        if kind == b"IDAT":
            return (size[0], size[1], "PNG") if size is not None else None
        (crc,) = struct.unpack_from(">I", body, data_end)
        if zlib.crc32(view[pos + 4 : data_end]) != crc:
            return None
        if kind == b"IHDR":
            if size is not None or length != 13:
                return None
            width, height, depth, colour = struct.unpack_from(">IIBB", body, pos + 8)
            if not width or not height or depth not in _PNG_MODES.get(colour, ()):
                return None
            size = (width, height)
        elif size is None:
            return None  # IHDR must come first
        pos = data_end + 4
    return None
