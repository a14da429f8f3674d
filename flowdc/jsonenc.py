"""The JSON of per-sample documents (a webdataset sample's .json, a ledger row's metadata).

Written twice a sample, json's own encoder took 5 us for an img2dataset-style record, about 3% of a
webdataset run's event loop; orjson takes 0.3 us. The text is compact UTF-8 JSON. A value JSON has
no type for (a date, a decimal) is written as its str(), as json.dumps(default=str) writes it: a
date column's "2026-12-06", not orjson's own ISO form, whichever encoder wrote it. Bytes (a binary
column; some parquet writers store text so) are written as their text when they are UTF-8, else as
base64, never as Python's b'...' repr. NaN and the infinities are written as null: strict JSON has
no NaN, and the "NaN" json.dumps writes stops other readers (JavaScript's JSON.parse, jq).
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import orjson

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS


def encode_json(document: Any) -> bytes:
    try:
        return orjson.dumps(document, default=_as_text, option=_OPTIONS)
    except orjson.JSONEncodeError:
        # What orjson refuses and json takes: an integer past 64 bits, a string with a lone surrogate
        # (escaped, so the bytes stay UTF-8), nesting past orjson's depth.
        return json.dumps(_finite(document), default=_as_text, separators=(",", ":")).encode()


def _as_text(value: Any) -> str:
    """A value JSON has no type for."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        try:
            return data.decode()
        except UnicodeDecodeError:
            return base64.b64encode(data).decode("ascii")
    return str(value)


def _finite(value: Any) -> Any:
    """NaN and the infinities as None, as orjson writes them, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
