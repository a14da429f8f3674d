"""URL redaction: the one helper every written or logged URL goes through."""

from __future__ import annotations

import random
import string
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdc.urls import (
    DEFAULT_SECRET_PARAMS,
    _mask_params,
    _redact_params,
    host_and_problem,
    host_key,
    redact_url,
    redact_urls_in,
    scheme_error,
    secret_param_names,
    url_redactor,
)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://h/a.jpg", "http://h/a.jpg"),
    ("http://h/a.jpg?w=100&h=80", "http://h/a.jpg?w=100&h=80"),
    ("https://alice:pw@h:8080/a.jpg", "https://***@h:8080/a.jpg"),
    ("https://ghp_TOKEN@h/a.jpg", "https://***@h/a.jpg"),  # a token as the user name
    ("http://u:p@ss@h/x", "http://***@h/x"),  # an unescaped '@' in the password
    ("http://u:pa?ss@h/x", "http://***@h/x"),  # a '?' in it: still masked, not taken for a query
    ("http://h/a?token=T&monkey=1&turkey=2", "http://h/a?token=***&monkey=1&turkey=2"),
    ("http://h/a?Key=K&KEY=K2&key=", "http://h/a?Key=***&KEY=***&key="),
    ("http://h/a?X-Amz-Signature=S&X-Amz-Credential=C&X-Amz-Date=D",
     "http://h/a?X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=D"),
    ("http://h/a?sv=2022&sig=S%2F1%3D", "http://h/a?sv=2022&sig=***"),  # Azure SAS
    ("http://h/a?%74oken=T", "http://h/a?%74oken=***"),  # a percent-encoded name is still `token`
    ("http://h/a?x=1;sig=S", "http://h/a?x=1;sig=***"),
    ("http://h/cb#access_token=T&state=s", "http://h/cb#access_token=***&state=s"),
    ("http://h/a?token", "http://h/a?token"),  # no value, nothing to hide
    ("http://h/path/user@example.com.jpg?a=1", "http://h/path/user@example.com.jpg?a=1"),  # '@' in the path
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


_NAMES = secret_param_names()
_names = st.sampled_from(sorted(_NAMES)).flatmap(
    lambda name: st.tuples(st.just(name), st.lists(st.booleans(), min_size=len(name), max_size=len(name)))).map(
    lambda case: "".join(c.upper() if up else c for c, up in zip(*case, strict=True)))
_padding = st.text(alphabet=" \t\x0b\x1c\x1f", max_size=2)
_params = st.tuples(_padding, _names | st.text(alphabet="akeyts_-%2B+=", max_size=6), _padding,
                    st.sampled_from(["=", ""]), st.text(alphabet="aS1%=+ ", max_size=4))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("&;"), _params), max_size=5)
       | st.text(alphabet="keyKEY=&; \x1c%+", max_size=12))
def test_the_quick_pass_over_a_query_masks_what_the_full_parse_masks(query: list | str) -> None:
    """Most queries hold no secret: one search decides it. It must never leave unmasked what
    parsing every parameter would mask."""
    if isinstance(query, list):
        query = "".join(sep + "".join(param) for sep, param in query)[1:]
    assert _redact_params(query, _NAMES) == _mask_params(query, _NAMES)


def test_names_are_whole_and_configurable() -> None:
    """Only listed names, matched whole and in any case; a run's own list replaces the defaults."""
    names = secret_param_names(["Session", "hmac"])
    assert redact_url("http://h/a?session=S&hmac=H&token=T", names) == "http://h/a?session=***&hmac=***&token=T"
    assert redact_url("http://h/a?mysession=S", names) == "http://h/a?mysession=S"
    assert {"token", "sig", "x-amz-signature", "key", "api_key", "password"} <= set(DEFAULT_SECRET_PARAMS)


def test_redactor_on_and_off() -> None:
    url = "https://u:p@h/a?sig=S"
    assert url_redactor(True)(url) == "https://***@h/a?sig=***"
    assert url_redactor(True, ["other"])(url) == "https://***@h/a?sig=S"
    assert url_redactor(False)(url) is url


def test_redact_urls_in_text() -> None:
    """Every URL inside free text (a tool's stderr, a message) is redacted; other text is left alone."""
    text = 'PUT "https://u:p@h/o?X-Amz-Signature=S&x=1" failed; see s3://b/k?token=T (key=abc)'
    assert redact_urls_in(text) == ('PUT "https://***@h/o?X-Amz-Signature=***&x=1" failed; '
                                    "see s3://b/k?token=*** (key=abc)")


def _full_parse_host(url: str) -> str:
    try:
        netloc = urlsplit(url.strip()).netloc
    except ValueError:
        return ""
    return netloc.rpartition("@")[2].lower()


def test_host_key_and_scheme_check_agree_with_a_full_parse() -> None:
    """The per-row shortcut (no urlsplit for plain http(s) URLs) answers as a full parse would."""
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "/?#@:[]. \t\n%&=-_~é"
    for _ in range(20_000):
        url = rng.choice(["http://", "https://", "HTTP://", "HtTpS://"]) + "".join(
            rng.choice(alphabet) for _ in range(rng.randint(0, 15)))
        assert host_key(url) == _full_parse_host(url), url
        try:
            parsed = urlsplit(url.strip())
            parsed.port  # noqa: B018 -- a port out of range (or not a number) raises, as aiohttp's check does
            expected = None if parsed.netloc else "invalid_url"
        except ValueError:
            expected = "invalid_url"
        assert scheme_error(url) == expected, url
        assert host_and_problem(url) == (host_key(url), expected), url
    assert host_key("http://User:pw@Img.Example.org:8080/a.jpg?x=1") == "img.example.org:8080"
    assert scheme_error("http:///a.jpg") == "invalid_url"
    assert scheme_error("http://127.0.0.2:99999/p.png") == "invalid_url"  # aiohttp: error:ValueError, late
    assert scheme_error("http://h.example:65535/p.png") is None and scheme_error("http://h.example:/p") is None
    # A URL whose bytes were not UTF-8 (manifest.as_text): refused, not fetched as another address.
    assert host_and_problem("http://h.example/caf\ufffd.jpg")[1] == "invalid_url"
    assert scheme_error("http://h.example/\ufffd") == "invalid_url"
    assert scheme_error("http://h.example/café.jpg") is None
