"""Row identity across runs: what makes a manifest row "the same row" after the manifest changed.

A row is identified by its id column when the manifest has one (`key_col`), otherwise by its URL
with secret parameters stripped (a signed URL whose signature was renewed is the same image), and
never by its position: rows added or removed before it must not change it. A value that repeats
(the same URL on two rows) gets its occurrence number mixed in, so every row of a manifest keeps an
identity of its own and ok + failed + skipped still adds up to the rows.

Identities are 64-bit hashes, kept in numpy arrays: 8 bytes a row, so a 40M-row manifest's
identities fit in a few hundred MB.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from flowdc.ledger import url_hash as text_hash
from flowdc.seen import SeenKeys
from flowdc.urls import DEFAULT_SECRET_PARAMS, MASK, secret_name_pattern, secret_param_names

# Query parameters that carry credentials or expire (signatures, tokens): not part of what the URL names.
# Every name URL redaction masks is one: a ledger's redacted URL must name the same row as the real one.
SECRET_PARAMS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-amz-date", "x-amz-expires",
    "x-goog-signature", "x-goog-credential", "x-goog-date", "x-goog-expires",
    "signature", "sig", "se", "st", "sp", "sv", "skoid", "sktid", "skt", "ske", "sks", "skv",
    "token", "access_token", "apikey", "api_key", "expires", "policy", "key-pair-id",
}) | secret_param_names(DEFAULT_SECRET_PARAMS)


# urlencode's quote_plus, for text that has no '%' or '+' (so unquoting leaves it as it is): every
# ASCII character but letters, digits and _.-~ as %XX, a space as '+'.
_QUOTE_PLUS = {c: f"%{c:02X}" for c in range(128) if not (chr(c).isalnum() or chr(c) in "_.-~")} | {32: "+"}


def identity_text(url: str) -> str:
    """The URL as an identity: user info and secret query parameters removed, the rest as given."""
    url = url.strip()
    if "?" not in url and "@" not in url:
        return url  # the common case, without a parse
    plain = _plain_query_identity(url)
    return plain if plain is not None else _parsed_identity(url)


# The same, but '&' and '=' kept: a query of name=value pairs translated whole, as pair by pair.
_QUOTE_PLUS_PAIRS = {c: q for c, q in _QUOTE_PLUS.items() if chr(c) not in "&="}
_NOT_PLAIN = re.compile(r"[%+@#\[\]]")
_PAIRS = re.compile(r"[^&=]+=[^&=]*(?:&[^&=]+=[^&=]*)*")  # each pair has a name and one '=', none empty
_SECRET_NAME = secret_name_pattern(SECRET_PARAMS)  # redaction's: in a query of pairs, a secret name before its '='


def _plain_query_identity(url: str) -> str | None:
    """What _parsed_identity gives an http(s) URL of printable ASCII with a query and no '%', '+',
    userinfo, fragment or brackets, without the parse (a few microseconds a row); None otherwise."""
    if not url.startswith(("http://", "https://")) or not (url.isascii() and url.isprintable()):
        return None
    if _NOT_PLAIN.search(url):
        return None
    base, _, query = url.partition("?")
    kept = _kept_query(query)
    if kept and kept == query:
        return url  # the URL itself: its hash, taken as the manifest was read, is reused (base_hashes)
    return f"{base}?{kept}" if kept else base


@lru_cache(maxsize=1024)
def _kept_query(query: str) -> str:
    """A plain query's part of the identity. Cached: the URLs of one site often share their query
    (a size or format parameter), and this runs for every manifest row."""
    if _PAIRS.fullmatch(query) and not _SECRET_NAME.search(query) and MASK not in query:
        return query.translate(_QUOTE_PLUS_PAIRS)  # every pair kept, as the loop below would
    kept = []
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if name.lower() not in SECRET_PARAMS and value != MASK:
            kept.append(f"{name.translate(_QUOTE_PLUS)}={value.translate(_QUOTE_PLUS)}")
    return "&".join(kept)


def _parsed_identity(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
                if k.lower() not in SECRET_PARAMS and v != MASK]  # MASK: a value redaction took out
        query = urlencode(kept)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def base_hashes(urls: Iterable[str | None], ids: Iterable[object | None] | None = None,
                url_hashes: Iterable[int] | None = None) -> np.ndarray:
    """One hash per row, in order: of the id when given (and not null), else of the URL's identity.

    `url_hashes`: the rows' text_hash(url or "") when the caller has them; reused wherever the
    identity is the URL itself (most URLs), instead of hashing it again."""
    urls = list(urls)
    known: Iterable[int | None] = [None] * len(urls) if url_hashes is None else url_hashes
    if ids is None:
        return np.fromiter((_url_identity_hash(u or "", h) for u, h in zip(urls, known, strict=True)),
                           dtype=np.int64, count=len(urls))
    return np.fromiter(
        (text_hash("id:" + str(i)) if i is not None else _url_identity_hash(u or "", h)
         for u, i, h in zip(urls, ids, known, strict=True)),
        dtype=np.int64, count=len(urls),
    )


def _url_identity_hash(url: str, hashed: int | None) -> int:
    identity = identity_text(url)
    if hashed is not None and identity is url:  # `is`: unchanged; an equal copy is simply hashed again
        return int(hashed)
    return text_hash(identity)


def number_repeats(base: np.ndarray) -> np.ndarray:
    """Identities from base hashes in manifest order: the k-th repeat of a value (k >= 1) gets
    `mix(base, k)`, the first keeps its base hash."""
    if base.size == 0:
        return base.astype(np.int64)
    occurrence = _occurrences(base)
    out = base.astype(np.int64).copy()
    repeat = occurrence > 0
    if repeat.any():
        out[repeat] = mix(base[repeat], occurrence[repeat])
    return out


def _occurrences(values: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same value (0 for the first)."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    starts = np.ones(sorted_vals.size, dtype=bool)
    starts[1:] = sorted_vals[1:] != sorted_vals[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(sorted_vals.size), 0))
    occ = np.empty(values.size, dtype=np.int64)
    occ[order] = np.arange(sorted_vals.size) - group_start
    return occ


def mix(base: np.ndarray, k: np.ndarray) -> np.ndarray:
    """splitmix64 of base + k * golden ratio: a repeat's identity, well spread, as int64."""
    with np.errstate(over="ignore"):
        z = base.astype(np.uint64) + k.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z.view(np.int64)


class RepeatNumbering:
    """`number_repeats` over a manifest read batch by batch: the same identities as on the whole,
    in bounded memory (8 bytes per distinct value, plus a count per value that repeats)."""

    def __init__(self) -> None:
        self._seen = SeenKeys()
        self._repeats: dict[int, int] = {}  # value -> occurrences so far, only for values seen twice or more

    def __call__(self, base: np.ndarray) -> np.ndarray:
        if base.size == 0:
            return base.astype(np.int64)
        values, inverse, counts = np.unique(base, return_inverse=True, return_counts=True)
        seen_before = ~self._seen.add_all(values)
        before = np.zeros(values.size, dtype=np.int64)
        for k in np.flatnonzero(seen_before | (counts > 1)).tolist():  # repeats only: few, in most manifests
            value = int(values[k])
            if seen_before[k]:
                before[k] = self._repeats.get(value, 1)
            self._repeats[value] = int(before[k] + counts[k])
        occurrence = _occurrences(base) + before[inverse]
        out = base.astype(np.int64).copy()
        repeat = occurrence > 0
        if repeat.any():
            out[repeat] = mix(base[repeat], occurrence[repeat])
        return out


def idents(urls: Iterable[str | None], ids: Iterable[object | None] | None = None) -> np.ndarray:
    """Identities of a whole manifest's rows, in manifest order."""
    return number_repeats(base_hashes(urls, ids))
