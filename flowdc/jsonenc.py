"""The JSON encoding of per-sample documents (a webdataset sample's .json, a ledger row's metadata).

json.JSONEncoder.encode builds its C encoder and a closure afresh at every call, which costs more
than encoding a small dict (1.7 us against 0.5 us for `{"label": ...}`); at two documents a sample
that was a percent of a thumbnail run's event loop. Here the C encoder is built once. The text is
json.JSONEncoder(default=str)'s, byte for byte, except that a document that contains itself is not
looked for (a manifest row's columns cannot).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _encoder
from typing import Any


def json_encoder(ensure_ascii: bool = True) -> Callable[[Any], str]:
    """A function that encodes a document as json.JSONEncoder(default=str, ensure_ascii=...) does."""
    reference = json.JSONEncoder(default=str, ensure_ascii=ensure_ascii)
    make = _encoder.c_make_encoder
    if make is None:  # an interpreter without json's C accelerator
        return reference.encode
    quote = _encoder.encode_basestring_ascii if ensure_ascii else _encoder.encode_basestring
    encode_chunks = make(None, reference.default, quote, None, reference.key_separator, reference.item_separator,
                         False, False, True)  # sort_keys, skipkeys, allow_nan: the reference's

    def encode(document: Any) -> str:
        return "".join(encode_chunks(document, 0))

    return encode
