"""URL facts the whole tool agrees on: which host a URL belongs to, which schemes we fetch, and how a
URL is redacted before it is written or logged."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from urllib.parse import unquote_plus, urlsplit

FETCHABLE_SCHEMES = frozenset({"http", "https"})
# Stands for bytes that were not UTF-8 (manifest.as_text): such a URL's bytes are lost, so it
# is refused as invalid_url rather than fetched as some other address.
NOT_UTF8 = "\ufffd"


def host_key(url: str) -> str:
    """The politeness unit: lower-cased host[:port] without user info. '' when there is none.

    partition.py computes the same thing vectorised; keep the two in step.
    """
    url = url.strip()
    netloc = _plain_netloc(url)
    if netloc is None:
        try:
            netloc = urlsplit(url).netloc
        except ValueError:
            return ""
    return netloc.rpartition("@")[2].lower()


def _plain_netloc(url: str) -> str | None:
    """The netloc urlsplit would give a stripped http(s) URL of printable ASCII without brackets;
    None when only a full parse can tell. (Per manifest row: a full parse costs a few microseconds.)"""
    head = url[:8].lower()
    if head.startswith("http://"):
        start = 7
    elif head.startswith("https://"):
        start = 8
    else:
        return None
    # urlsplit drops tabs and newlines anywhere and checks brackets (IPv6) and non-ASCII names.
    if not (url.isascii() and url.isprintable()) or "[" in url or "]" in url:
        return None
    end = len(url)
    for mark in "/?#":
        found = url.find(mark, start, end)
        if found >= 0:
            end = found
    return url[start:end]


def _usable_netloc(netloc: str) -> bool:
    """A plain netloc a request can be made to: not empty, and any port within 0-65535 (aiohttp
    refuses others only when the request is made, with a ValueError)."""
    _host, colon, port = netloc.rpartition("@")[2].partition(":")
    return bool(netloc) and (not colon or not port or (port.isdigit() and int(port) <= 65535))


def host_and_problem(url: str) -> tuple[str, str | None]:
    """host_key(url) and scheme_error(url), with one look at the netloc of a plain http(s) URL (a
    manifest row's; the two would each take it)."""
    if url[:8].lower().startswith(("http://", "https://")):
        netloc = _plain_netloc(url.strip())
        if netloc is not None:
            return netloc.rpartition("@")[2].lower(), None if _usable_netloc(netloc) else "invalid_url"
    return host_key(url), scheme_error(url)


def scheme_error(url: str) -> str | None:
    """Why a URL will not be fetched, or None when it may be."""
    head = url[:8].lower()
    if not head.startswith(("http://", "https://")):
        # Cheap path for whole manifests of other schemes: no full parse needed to refuse them.
        scheme, sep, _ = url.partition(":")
        if not sep or not scheme.isascii() or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
            return "unsupported_scheme:none"
        scheme = scheme.lower()
        return "invalid_url" if scheme in FETCHABLE_SCHEMES else f"unsupported_scheme:{scheme}"
    url = url.strip()
    netloc = _plain_netloc(url)
    if netloc is not None:
        return None if _usable_netloc(netloc) else "invalid_url"
    if NOT_UTF8 in url:  # not ASCII, so never on the plain path above
        return "invalid_url"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        return "invalid_url"
    if parts.scheme.lower() not in FETCHABLE_SCHEMES:
        return f"unsupported_scheme:{parts.scheme or 'none'}"
    if not parts.netloc:
        return "invalid_url"
    return None


# -- redaction --------------------------------------------------------------------------------
# Every URL flowdc writes or logs goes through here; requests always use the real URL.
MASK = "***"
# Query parameters (whole names, any case) that carry credentials in signed or authenticated URLs:
# AWS SigV2/V4, GCS V2/V4, Azure SAS (`sig`), CloudFront, OAuth and the usual API keys.
DEFAULT_SECRET_PARAMS: tuple[str, ...] = (
    "token", "access_token", "refresh_token", "id_token", "auth", "authorization", "jwt",
    "key", "api_key", "apikey", "api-key", "client_secret", "secret", "password", "passwd", "pwd",
    "sig", "signature", "awsaccesskeyid", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "googleaccessid", "x-goog-signature", "x-goog-credential", "key-pair-id",
)
_PARAM = re.compile(r"(^|[&;])([^=&;]*)=([^&;]*)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def secret_param_names(names: Iterable[str] = DEFAULT_SECRET_PARAMS) -> frozenset[str]:
    return frozenset(n.strip().lower() for n in names if n.strip())


_DEFAULT_NAMES = secret_param_names()


def redact_url(url: str, secret_params: frozenset[str] = _DEFAULT_NAMES) -> str:
    """`url` with its userinfo and the values of secret query (and fragment) parameters masked.

    Names match whole and case-insensitively after percent-decoding: `monkey=` is not `key=`.
    """
    if "@" not in url and "=" not in url:
        return url  # the common case costs two scans
    start = url.find("://")
    if start >= 0:
        start += 3
        end = url.find("/", start)
        # The last '@' before the path ends the userinfo, even in a malformed URL with '?' or '#'
        # in its password: over-masking an odd URL beats leaking a password.
        at = url.rfind("@", start, end if end >= 0 else len(url))
        if at >= 0:
            url = url[:start] + MASK + url[at:]
    if "=" not in url:
        return url
    head, hash_mark, fragment = url.partition("#")
    head, query_mark, query = head.partition("?")
    if query_mark:
        query = _redact_params(query, secret_params)
    if hash_mark:  # OAuth implicit grants put tokens in the fragment
        fragment = _redact_params(fragment, secret_params)
    return head + query_mark + query + hash_mark + fragment


@lru_cache(maxsize=1024)  # the URLs of one site often share their query; this runs for every record
def _redact_params(query: str, secret_params: frozenset[str]) -> str:
    plain = query.isascii() and "%" not in query and "+" not in query
    if plain and not secret_name_pattern(secret_params).search(query):
        return query  # no name is encoded, and none is secret: the common case, one search in C
    return _mask_params(query, secret_params)


@lru_cache(maxsize=8)
def secret_name_pattern(secret_params: frozenset[str]) -> re.Pattern[str]:
    """Finds a parameter whose name, stripped and lower-cased, is one of `secret_params` (in a query
    with no percent-encoding or '+': there the name is as written)."""
    names = "|".join(re.escape(name) for name in sorted(secret_params, key=len, reverse=True))
    return re.compile(rf"(?:^|[&;])\s*(?:{names})\s*=", re.IGNORECASE)


def _mask_params(query: str, secret_params: frozenset[str]) -> str:
    def mask(m: re.Match[str]) -> str:
        name = unquote_plus(m[2]).strip().lower()
        return f"{m[1]}{m[2]}={MASK}" if name in secret_params and m[3] else m[0]

    return _PARAM.sub(mask, query)


def redact_urls_in(text: str, secret_params: frozenset[str] = _DEFAULT_NAMES) -> str:
    """Free text (a log line, a tool's stderr) with every URL in it redacted."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m[0], secret_params), text)


def url_redactor(enabled: bool, names: Iterable[str] = DEFAULT_SECRET_PARAMS) -> Callable[[str], str]:
    """The redaction a run applies to the URLs it writes: identity when turned off."""
    if not enabled:
        return _identity
    params = secret_param_names(names)
    return lambda url: redact_url(url, params)


def _identity(url: str) -> str:
    return url
