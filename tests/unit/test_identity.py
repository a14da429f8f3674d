"""Row identity: independent of position, of secrets in the URL, and unique per row."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdc.identity import (
    RepeatNumbering,
    _parsed_identity,
    _plain_query_identity,
    base_hashes,
    identity_text,
    idents,
    mix,
    number_repeats,
)
from flowdc.ledger import url_hash
from flowdc.urls import DEFAULT_SECRET_PARAMS, redact_url


def test_identity_text_drops_user_info_and_secret_parameters_only() -> None:
    assert identity_text(" https://u:p@Img.example/a.jpg?w=1&X-Amz-Signature=abc&sig=2 ") == \
        "https://Img.example/a.jpg?w=1"
    assert identity_text("https://h/a.jpg?w=1&h=2") == "https://h/a.jpg?w=1&h=2"
    assert identity_text("https://h/a.jpg") == "https://h/a.jpg"
    renewed = "https://h/a.jpg?X-Amz-Signature=other&X-Amz-Date=20270101"
    assert identity_text(renewed) == identity_text("https://h/a.jpg?X-Amz-Signature=abc")


# Query text: printable ASCII but the characters that send a URL to the full parse (mostly), secret
# names, MASK, separators, and now and then one of those characters.
_PLAIN = st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="%+@#[]")
_QUERY_PIECES = st.lists(st.one_of(
    st.text(_PLAIN, max_size=12),
    st.sampled_from(["sig", "Token", "X-Amz-Date", "w", "&w=***&", "&sig=1&", "=", "&", "&&", "?", "/", " ", ";"]),
    st.sampled_from(["%2F", "+", "@", "#", "[", "]"]),
), max_size=8)


@settings(max_examples=800, deadline=None)
@given(scheme=st.sampled_from(["http://", "https://", "http://", "https://", "HTTP://", "ftp://"]),
       host=st.sampled_from(["h", "Img.example:8080", "127.0.0.3:45591", "", "u:p@h", "[::1]:80"]),
       path=st.sampled_from(["", "/", "/a.jpg", "/img/0001.jpg", "/a b;c", "/é.jpg"]),
       pieces=_QUERY_PIECES, fragment=st.sampled_from(["", "", "", "#f", "#sig=1"]))
def test_the_plain_query_shortcut_gives_what_the_parse_gives(scheme: str, host: str, path: str,
                                                             pieces: list[str], fragment: str) -> None:
    """identity_text skips the parse for plain http(s) URLs with a query: identities must not change
    (a ledger's rows would no longer match their manifest rows)."""
    url = f"{scheme}{host}{path}?{''.join(pieces)}{fragment}"
    assert _plain_query_identity(url) in (None, _parsed_identity(url))
    assert identity_text(url) == _parsed_identity(url.strip())


def test_the_plain_query_shortcut_is_taken_for_plain_urls() -> None:
    url = "http://127.0.0.3:45591/img/7.jpg?ctype=image/jpeg&Sig=x&w=&&v"
    assert _plain_query_identity(url) == _parsed_identity(url) == "http://127.0.0.3:45591/img/7.jpg?ctype=image%2Fjpeg&w=&v="


def test_a_redacted_url_keeps_its_identity() -> None:
    """The ledger holds redacted URLs (flowdc.urls): consolidating from them finds the identity the
    manifest's real URL has, for every default secret parameter and for userinfo."""
    for name in DEFAULT_SECRET_PARAMS:
        real = f"https://u:pw@h/a.jpg?w=1&{name}=s3cr3t&h=2"
        assert identity_text(redact_url(real)) == identity_text(real) == "https://h/a.jpg?w=1&h=2", name


def test_identities_do_not_depend_on_position() -> None:
    urls = [f"https://h/{i}.png" for i in range(50)]
    moved = [*urls[7:], "https://h/new.png", *urls[:7]][::-1]
    first, second = dict(zip(urls, idents(urls), strict=True)), dict(zip(moved, idents(moved), strict=True))
    assert all(first[u] == second[u] for u in urls)
    assert len(set(first.values())) == 50


def test_an_id_column_wins_over_the_url() -> None:
    urls = ["https://h/a.png", "https://h/b.png"]
    by_id = idents(urls, ["x1", "x2"])
    assert (by_id == idents(["https://other/a.png", "https://other/b.png"], ["x1", "x2"])).all()
    assert (idents(urls, ["x1", None])[1] == idents(urls)[1])  # a null id falls back to the URL
    assert not (by_id == idents(urls)).any()


def test_repeats_get_identities_of_their_own_in_manifest_order() -> None:
    urls = ["https://h/a", "https://h/b", "https://h/a", "https://h/a"]
    ids = idents(urls)
    assert len(set(ids.tolist())) == 4
    base = base_hashes(urls)
    assert ids[0] == base[0] and ids[1] == base[1]
    assert ids[2] == mix(base[2:3], np.array([1]))[0] and ids[3] == mix(base[3:4], np.array([2]))[0]
    # The same repeats elsewhere in a longer manifest keep their identities.
    assert set(ids.tolist()) <= set(idents(["https://h/z", *urls]).tolist())
    assert number_repeats(np.empty(0, np.int64)).size == 0


def test_repeat_numbering_batch_by_batch_matches_the_whole() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 40, size=500).astype(np.int64)  # many repeats, across batches
    numbering = RepeatNumbering()
    batched = np.concatenate([numbering(base[i:i + 37]) for i in range(0, base.size, 37)])
    assert (batched == number_repeats(base)).all()
    assert len(set(batched.tolist())) == base.size


def test_known_url_hashes_give_the_same_identities() -> None:
    """Hashes the download already made of the raw URLs are reused, never changing an identity."""
    urls = ["https://h/a", " https://h/b ", "https://u:p@h/c", "https://h/d?sig=S&w=1", None, "https://h/a"]
    known = [url_hash(u or "") for u in urls]
    assert (base_hashes(urls, url_hashes=known) == base_hashes(urls)).all()
    ids = ["x", None, None, "y", None, None]
    assert (base_hashes(urls, ids, known) == base_hashes(urls, ids)).all()


def test_a_url_whose_query_is_kept_whole_reuses_its_known_hash() -> None:
    """A plain query with nothing secret in it leaves the URL as it is, so the hash the download took
    of it is the identity's: one hash a row, not two. A query that loses a parameter is hashed anew."""
    whole, trimmed, bare_path = "https://h/a.jpg?size=large&w=2", "https://h/a.jpg?w=1&sig=S", "https://h/b.jpg"
    marked = [11, 22, 33]  # not the URLs' hashes: where they come back, they were reused
    assert base_hashes([whole, trimmed, bare_path], url_hashes=marked).tolist() == \
        [11, url_hash("https://h/a.jpg?w=1"), 33]
    assert identity_text(whole) == whole
