"""Pure naming rules: sample keys, safe label folders and file extensions.

Keys must be stable (the same manifest row always gets the same key) and a label or key taken
from a manifest must never name a path outside the output.
"""

from __future__ import annotations

import hashlib
import re
import threading
from functools import lru_cache
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from flowdc.imagesig import raster_extension
from flowdc.localfiles import TMP_NAME_ROOM

KEY_WIDTH = 8
# Rows whose label is missing (null or empty) form their own class in this folder. Folders of real
# labels never start with "_" (see label_folder), so no label, not even "unlabeled" or "_unlabeled",
# can share it; "_" names are flowdc's own (`_flowdc/` too).
MISSING_LABEL_FOLDER = "_unlabeled"
OVERVIEW_FILE = "overview.json"  # beside the class folders at the output's top (flowdc.overview)
LABEL_HASH_CHARS = 12  # 48 bits of SHA-256, only ever told apart among labels that clean alike
MAX_LABEL_CHARS = 120
MAX_NAME_BYTES = 255  # the longest file name ext4, XFS and most others take, in bytes
MAX_LABEL_BYTES = 200  # room is left under MAX_NAME_BYTES for the hash suffix
_UNSAFE = re.compile(r"[^\w\-. ,()+&']+", re.UNICODE)
_HASHED = re.compile(rf".+_[0-9a-f]{{{LABEL_HASH_CHARS}}}", re.DOTALL)  # the shape label_folder gives a changed label
_EXT_BY_TYPE = {
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/pjpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
    "image/x-icon": ".ico",
    "image/vnd.microsoft.icon": ".ico",
    "image/svg+xml": ".svg",
    "image/avif": ".avif",
    "image/heic": ".heic",
}
_KNOWN_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ico", ".svg", ".avif", ".heic"}


def sequential_key(row: int) -> str:
    """Manifest row number counted from 1, zero-padded: row 0 -> '00000001' (the seed's layout)."""
    return f"{row + 1:0{KEY_WIDTH}d}"


def url_key(url: str) -> str:
    """80 bits of the URL's SHA-256: no collision in practice, same URL -> same key in every run."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def make_key(naming_mode: str, row: int, url: str) -> str:
    return url_key(url) if naming_mode == "url_based" else sequential_key(row)


def is_missing_label(label: str | None) -> bool:
    return label is None or label == ""


def label_folder(label: str | None) -> str:
    """The class folder of a label: one safe path component, and distinct labels never share one.

    A label that cleaning leaves as it is keeps its own name. Any other label gets its cleaned
    name plus "_" and a hash of the whole label: so do labels that already end like that, so a
    plain name can never equal another label's hashed one, and a label named like the overview.
    Cleaning turns characters other than letters, digits and `-._ ,()+&'` into "_", trims leading
    " ._" and trailing " .", and bounds the length; so a plain name never starts with "_" and
    MISSING_LABEL_FOLDER stays free.
    """
    if is_missing_label(label):
        return MISSING_LABEL_FOLDER
    text = str(label)
    clean = _clean(text)
    # The overview's name is taken (in any case: some file systems ignore it), so that label is hashed.
    if clean == text and not _HASHED.fullmatch(text) and text.casefold() != OVERVIEW_FILE:
        return text
    return hashed_label_folder(text, clean)


def hashed_label_folder(text: str, clean: str | None = None, salt: str = "") -> str:
    """The hashed form: used for changed labels, and for a label whose plain folder an older output
    gave to another label (then `salt` only varies in the astronomically rare case of a clash)."""
    digest = hashlib.sha256((text + salt).encode("utf-8", "surrogatepass")).hexdigest()[:LABEL_HASH_CHARS]
    return f"{(_clean(text) if clean is None else clean) or 'label'}_{digest}"


def is_inner_component(name: object, max_bytes: int = MAX_NAME_BYTES) -> bool:
    """One path component that stays inside its folder and that file systems accept (within
    `max_bytes` in UTF-8: less where a longer temporary name must fit too)."""
    return (isinstance(name, str) and name not in ("", ".", "..")
            and "/" not in name and "\\" not in name and "\x00" not in name
            and (len(name) <= max_bytes // 4 or len(name.encode("utf-8", "surrogatepass")) <= max_bytes))


def _clean(text: str) -> str:
    clean = _UNSAFE.sub("_", text).lstrip(" ._").rstrip(" .")
    if len(clean) > MAX_LABEL_CHARS or len(clean.encode()) > MAX_LABEL_BYTES:
        clean = clean[:MAX_LABEL_CHARS]
        while len(clean.encode()) > MAX_LABEL_BYTES:  # multi-byte characters: bound the bytes too
            clean = clean[:-1]
        clean = clean.rstrip(" .")
    return clean


class LabelFolders:
    """label -> folder for one output: label_folder's rule, except that labels an output already
    holds keep the folders they have (an older flowdc named folders differently), and no new label
    joins a folder that holds another label. Thread-safe: imagefolder writes in parallel lanes."""

    def __init__(self) -> None:
        self._folder: dict[str | None, str] = {}  # label (None for missing) -> folder
        self._labels: dict[str, set[str | None]] = {}  # folder -> the labels in it
        self._lock = threading.Lock()

    def keep(self, label: str | None, folder: str) -> None:
        """Record a label the output already holds in `folder` (from its ledger or label map).

        What is read back from an output is checked again: a folder that is not one inner path
        component (a hand-edited map, say) is ignored, so it can never lead a write outside."""
        if not is_inner_component(folder):
            return
        key = None if is_missing_label(label) else label
        with self._lock:
            self._folder.setdefault(key, folder)
            self._labels.setdefault(folder, set()).add(key)

    def folder_for(self, label: str | None) -> str:
        key = None if is_missing_label(label) else label
        with self._lock:
            folder = self._folder.get(key)
            if folder is not None:
                return folder
            folder = label_folder(key)
            tries = 0
            while folder in self._labels:  # an older output put another label here
                tries += 1
                folder = hashed_label_folder("" if key is None else key, salt="" if tries == 1 else f"#{tries}")
            self._folder[key] = folder
            self._labels[folder] = {key}
            return folder

    def __len__(self) -> int:
        with self._lock:
            return len(self._labels)

    def folders(self) -> dict[str, str | None]:
        """folder -> label, sorted by folder (a folder an older flowdc merged: its first label)."""
        with self._lock:
            return {f: min(ls, key=_order) for f, ls in sorted(self._labels.items())}

    def merged(self) -> dict[str, list[str | None]]:
        """Folders that hold more than one label: only outputs written before distinct folders."""
        with self._lock:
            return {f: sorted(ls, key=_order) for f, ls in sorted(self._labels.items()) if len(ls) > 1}


def _order(label: str | None) -> tuple[bool, str]:
    return (label is not None, label or "")


def extension_for(content_type: str | None, url: str, body: bytes = b"") -> str:
    """A sample's file extension: the raster format its body starts with, else its Content-Type's,
    else its URL's (.bin when none tells). The body wins: a PNG served as image/svg+xml (or as
    anything, with --content_types widened) stored as .svg or .bin is skipped by loaders that go by
    extension (torchvision's ImageFolder), without a word."""
    ext = raster_extension(body)
    if ext is not None:
        return ext
    ext = _extension_of_type(content_type)
    if ext is not None:
        return ext
    try:
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    except ValueError:
        suffix = ""
    return ".jpg" if suffix == ".jpeg" else suffix if suffix in _KNOWN_EXTS else ".bin"


@lru_cache(maxsize=256)
def _extension_of_type(content_type: str | None) -> str | None:
    # Cached: a run's replies carry a handful of distinct Content-Types, and this runs for every sample.
    return _EXT_BY_TYPE.get((content_type or "").split(";")[0].strip().lower())


def sample_path(key: str, folder: str | None, ext: str) -> str:
    """Relative path of an imagefolder sample: in its class folder, or at the root when None."""
    name = f"{key}{ext}"
    # Refused before any write: a name that escapes or hides, or that the file system would refuse
    # (or refuse its temporary) after the folder was made.
    if name.startswith(".") or not is_inner_component(name, MAX_NAME_BYTES - TMP_NAME_ROOM):
        raise ValueError(f"unsafe key {key!r}")
    return f"{folder}/{name}" if folder is not None else name
