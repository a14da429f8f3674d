"""flowdc.jsonenc: per-sample JSON that any strict reader parses back to the document."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flowdc.jsonenc import encode_json

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(st.characters(codec="utf-8")))
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                               max_size=4),
                         max_leaves=12)


def without_non_finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: without_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_non_finite(v) for v in value]
    return value


def strict_loads(data: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(data.decode("utf-8"), parse_constant=refuse)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_a_strict_reader_reads_the_document_back(document: Any) -> None:
    """Big integers (which orjson refuses) included; NaN and the infinities come back as null."""
    assert strict_loads(encode_json(document)) == without_non_finite(document)


def test_what_json_cannot_hold_is_written_as_its_text() -> None:
    """A manifest's date or decimal column comes out as its str(), as json.dumps(default=str) wrote it."""

    @dataclasses.dataclass
    class Point:
        x: int

    document = {"day": datetime.date(2026, 12, 6), "at": datetime.datetime(2026, 12, 6, 5, 30),
                "price": decimal.Decimal("1.10"), "point": Point(1), "label": "héron", "nan": math.nan,
                "n": [1, 2.5]}
    assert encode_json(document).decode() == (
        '{"day":"2026-12-06","at":"2026-12-06 05:30:00","price":"1.10","point":"'
        + str(Point(1)).replace('"', '\\"') + '","label":"héron","nan":null,"n":[1,2.5]}')


def test_what_orjson_refuses_is_written_all_the_same() -> None:
    document = {"id": 2**70, "inf": [math.inf], "lone": "a\ud800b"}
    text = encode_json(document)
    assert strict_loads(text) == {"id": 2**70, "inf": [None], "lone": "a\ud800b"}
    text.decode("utf-8")  # the surrogate is escaped, not written as bytes no reader takes


def test_bytes_are_written_as_text_or_base64() -> None:
    """A binary manifest column: UTF-8 bytes as their text, others as base64, never as b'...'."""
    document = {"text": b"caf\xc3\xa9", "raw": b"\xff\x00", "array": bytearray(b"ok"),
                "nested": [memoryview(b"\x89PNG")]}
    assert strict_loads(encode_json(document)) == {"text": "café", "raw": "/wA=", "array": "ok", "nested": ["iVBORw=="]}
    assert strict_loads(encode_json({"raw": b"\xff", "big": 2**70})) == {"raw": "/w==", "big": 2**70}  # json's path too
