"""flowdc.jsonenc: the per-sample JSON encoder writes what json.JSONEncoder(default=str) writes."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flowdc.jsonenc import json_encoder

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                               max_size=4),
                         max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_the_text_is_json_encoders_own(document: Any) -> None:
    for ensure_ascii in (True, False):
        assert json_encoder(ensure_ascii)(document) == json.JSONEncoder(default=str,
                                                                        ensure_ascii=ensure_ascii).encode(document)


def test_what_json_cannot_hold_is_written_as_its_text() -> None:
    """default=str: a manifest's date or decimal column comes out as its text, not as an error."""
    document = {"day": datetime.date(2026, 12, 6), "label": "héron", "nan": math.nan, "n": [1, 2.5]}
    assert json_encoder()(document) == '{"day": "2026-12-06", "label": "h\\u00e9ron", "nan": NaN, "n": [1, 2.5]}'
    assert json_encoder(ensure_ascii=False)(document) == (
        '{"day": "2026-12-06", "label": "héron", "nan": NaN, "n": [1, 2.5]}')
