"""Naming rules: stable keys, labels that can never name a path outside the output, extensions."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdc.ledger import Ledger, Record
from flowdc.storage import Destination
from flowdc.writers.base import StoredSample, StoreError
from flowdc.writers.imagefolder import ImageFolderWriter
from flowdc.writers.naming import (
    LABEL_HASH_CHARS,
    MISSING_LABEL_FOLDER,
    LabelFolders,
    extension_for,
    label_folder,
    make_key,
    sample_path,
    sequential_key,
    url_key,
)

NAME_MAX_BYTES = 255  # one path component on Linux file systems


def test_sequential_keys_count_rows_from_one_padded_to_eight() -> None:
    """Row 0 is '00000001' (the seed's layout); keys sort like the manifest rows."""
    assert sequential_key(0) == "00000001"
    assert sequential_key(9) == "00000010"
    assert sequential_key(99_999_998) == "99999999"
    assert make_key("sequential", 41, "http://a/x.png") == "00000042"
    keys = [sequential_key(i) for i in range(0, 2000, 7)]
    assert keys == sorted(keys)


def test_url_keys_are_stable_and_distinguish_same_basenames() -> None:
    """url_based keys hash the whole URL: same URL -> same key, same basename elsewhere -> new key."""
    a, b, c = "http://h1/a/img.jpg", "http://h1/b/img.jpg", "http://h2/a/img.jpg"
    assert url_key(a) == url_key(a) == make_key("url_based", 5, a) == make_key("url_based", 9, a)
    assert len({url_key(a), url_key(b), url_key(c)}) == 3
    assert url_key(a) == hashlib.sha256(a.encode()).hexdigest()[:20]


@pytest.mark.parametrize(
    "label",
    ["../../x", "/etc", "..", ".", "...", "a/../../b", "a\\..\\b", "\x00", "x\x00y", "~", "/", "//", " .. ", "\n"],
)
def test_hostile_labels_become_one_inner_component(label: str, tmp_path: Path) -> None:
    """Traversal-shaped labels map to a single component that stays under the output folder."""
    name = label_folder(label)
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in ("", ".", "..") and not name.startswith(".")
    root = tmp_path / "out"
    target = (root / sample_path("00000001", name, ".png")).resolve()
    assert target.parent.parent == root.resolve()


def test_labels_that_clean_alike_get_distinct_folders() -> None:
    """`a/b`, `a_b`, `a:b`, `a\\b`, `a?b` and `a<NUL>b` once all landed in `a_b/`: now only the label
    that needs no cleaning keeps its name, the others get the cleaned name plus a hash of the label."""
    labels = ["a/b", "a_b", "a:b", "a\\b", "a?b", "a\x00b"]
    folders = [label_folder(x) for x in labels]
    assert len(set(folders)) == len(labels)
    assert folders[1] == "a_b"
    assert folders[0] == f"a_b_{hashlib.sha256(b'a/b').hexdigest()[:LABEL_HASH_CHARS]}"
    assert all(f.startswith("a_b_") for f in folders[:1] + folders[2:])


def test_ordinary_and_missing_labels() -> None:
    """Ordinary labels keep their text; null and empty labels are one class of their own, which no
    real label shares, not even `unlabeled` or `_unlabeled`."""
    assert label_folder("Apis mellifera") == "Apis mellifera"
    assert label_folder("猫") == "猫"
    assert label_folder("Bee (Apis) & co.'s+1,2") == "Bee (Apis) & co.'s+1,2"
    assert label_folder(None) == label_folder("") == MISSING_LABEL_FOLDER == "_unlabeled"
    real = ["unlabeled", "_unlabeled", " ", "_", "__unlabeled", "_flowdc", ".unlabeled"]
    folders = [label_folder(x) for x in real]
    assert MISSING_LABEL_FOLDER not in folders and "_flowdc" not in folders
    assert len(set(folders)) == len(real) and folders[0] == "unlabeled"
    assert all(not f.startswith(("_", ".")) for f in folders)
    assert sample_path("00000003", None, ".jpg") == "00000003.jpg"
    assert sample_path("00000003", "cat", ".jpg") == "cat/00000003.jpg"


def test_a_label_named_like_the_overview_is_hashed() -> None:
    """overview.json sits beside the class folders: a class of that name (in any case) must not
    take it, or every later run failed to write its overview."""
    for label in ("overview.json", "Overview.JSON"):
        folder = label_folder(label)
        assert folder.casefold() != "overview.json" and folder.startswith(label + "_"), folder
    assert label_folder("overview.json.bak") == "overview.json.bak"


def test_a_label_shaped_like_a_hashed_folder_is_hashed_too() -> None:
    """A plain label that already ends in `_` and 12 hex digits could equal another label's hashed
    folder, so it is hashed as well: a plain name never takes a hashed one."""
    other = label_folder("a/b")  # a_b_<hash>
    assert label_folder(other) != other and label_folder(other).startswith(other + "_")
    assert label_folder("photo_2024") == "photo_2024"  # ordinary underscores are left alone


def test_resumed_outputs_keep_their_folders() -> None:
    """Labels an output already holds keep their folders (older flowdc merged `a/b` into `a_b/`
    and put missing labels in `unlabeled/`); a new label whose folder another label holds is
    given the hashed form instead of joining it."""
    folders = LabelFolders()
    folders.keep("a/b", "a_b")
    folders.keep(None, "unlabeled")
    assert folders.folder_for("a/b") == "a_b" and folders.folder_for(None) == "unlabeled"
    assert folders.folder_for("") == "unlabeled"  # empty is missing too
    assert folders.folder_for("a_b") == f"a_b_{hashlib.sha256(b'a_b').hexdigest()[:LABEL_HASH_CHARS]}"
    assert folders.folder_for("unlabeled") not in ("unlabeled", MISSING_LABEL_FOLDER)
    assert folders.folder_for("cat") == "cat"
    assert folders.folders()["a_b"] == "a/b" and folders.folders()["unlabeled"] is None
    assert folders.merged() == {}
    folders.keep("a:b", "a_b")  # an old output that merged two labels: both stay where they are
    assert folders.merged() == {"a_b": ["a/b", "a:b"]}
    for bad in ("../x", "..", "", "a/b", "a\\b", "x\x00", "x" * 300, None):
        folders.keep("evil", bad)  # type: ignore[arg-type]  # a tampered map is read back, never followed
    assert folders.folder_for("evil") == "evil"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.text(alphabet="猫🐱a./\\\x00 _-é", max_size=400))
def test_any_label_is_a_safe_component(label: str) -> None:
    """For any text: one component, not '.'/'..' nor hidden, no NUL, short enough for the file system."""
    name = label_folder(label)
    assert name and name not in (".", "..") and not name.startswith(".")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert os.path.basename(name) == name
    assert len(name.encode("utf-8", "surrogatepass")) <= NAME_MAX_BYTES


def test_long_unicode_label_fits_a_file_name(tmp_path: Path) -> None:
    """A 200-character CJK label still gives a folder the local file system can create."""
    name = label_folder("猫" * 200)
    (tmp_path / name).mkdir()
    assert label_folder("猫" * 200) == name  # stable
    assert label_folder("猫" * 200) != label_folder("猫" * 199 + "犬")  # truncation keeps labels apart


LABELS = st.one_of(
    st.none(),
    st.text(max_size=500),
    st.text(alphabet="./\\_ :?\x00\n\t\x7f猫é-", max_size=24),
    st.sampled_from([".", "..", "", " ", "unlabeled", "_unlabeled", "_flowdc", "a/b", "a_b", "a:b", "a\\b", "a?b",
                     "a\x00b", "label_0123456789ab", "../..", "/", "~"]),
)
KEYS = st.one_of(st.builds(sequential_key, st.integers(0, 10**8)), st.text(max_size=500))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(LABELS, KEYS), min_size=1, max_size=8))
def test_random_labels_and_keys_stay_inside_and_never_merge(samples: list[tuple[str | None, str]]) -> None:
    """Property: through the real imagefolder writer onto a real disk, any labels (unicode,
    separators, control characters, '.', '..', 0-500 characters, null) and any keys write only
    inside the output, two distinct labels never share a folder, and one label never gets two.
    A key that could escape or hide is refused before any write."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "out"
        dest = Destination(str(root))
        writer = ImageFolderWriter(dest, Ledger(dest), labelled=True)
        writer.recover()
        folder_of: dict[str | None, str] = {}
        for row, (label, key) in enumerate(samples):
            rec = Record(row, key, f"http://h/{row}", "ok", label=label)
            try:
                writer.write(StoredSample(rec, b"img", ".png", {}))
            except (ValueError, StoreError):  # an unsafe key, or a name the file system refuses
                continue
            assert rec.path is not None
            folder = rec.path.split("/", 1)[0]
            assert folder_of.setdefault(None if label in (None, "") else label, folder) == folder
        writer.close()
        assert len(set(folder_of.values())) == len(folder_of)
        assert os.listdir(tmp) == ["out"]
        for dirpath, _dirs, files in os.walk(tmp):
            for name in files:
                assert Path(dirpath, name).resolve().is_relative_to(root.resolve())
        assert {p for p in os.listdir(root) if p != "_flowdc"} == set(folder_of.values())


@pytest.mark.parametrize("key", ["../x", "a/b", ".hidden", "a\\b", "a\x00b", "", "\x80" * 112])
def test_unsafe_keys_are_refused(key: str) -> None:
    """A key that would escape or hide, or whose file (or its temporary) no file system could name,
    is rejected rather than written."""
    with pytest.raises(ValueError):
        sample_path(key, "cat", ".png")


def test_extension_from_the_bodys_format_first() -> None:
    """A raster body's first bytes decide, whatever the server called it: a PNG served as
    image/svg+xml or octet-stream is stored as .png, which loaders that go by extension read."""
    png, jpeg = b"\x89PNG\r\n\x1a\n" + bytes(8), b"\xff\xd8\xff\xe0" + bytes(8)
    assert extension_for("image/svg+xml", "http://a/x.svg", png) == ".png"
    assert extension_for("application/octet-stream", "http://a/x", png) == ".png"
    assert extension_for("image/png", "http://a/x.png", jpeg) == ".jpg"
    assert extension_for(None, "http://a/x", b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ".webp"
    assert extension_for(None, "http://a/x", b"GIF89a") == ".gif"
    assert extension_for("image/svg+xml", "http://a/x", b"<svg xmlns='...'>") == ".svg"  # not a raster
    # An icon was stored as .bin, which every loader that goes by extension skipped.
    assert extension_for("image/x-icon", "http://a/favicon", b"\x00\x00\x01\x00\x01\x00") == ".ico"
    assert extension_for("image/vnd.microsoft.icon", "http://a/x") == ".ico"


def test_extension_from_content_type_then_url() -> None:
    """Without a raster body: Content-Type decides the extension; the URL suffix is the fallback;
    unknown is '.bin'."""
    assert extension_for("image/jpeg; charset=binary", "http://a/x") == ".jpg"
    assert extension_for("image/png", "http://a/x.jpg") == ".png"
    assert extension_for(None, "http://a/x.JPEG?q=1") == ".jpg"
    assert extension_for("application/octet-stream", "http://a/x.webp") == ".webp"
    assert extension_for(None, "http://a/x.exe") == ".bin"
    assert extension_for(None, "http://[::1") == ".bin"
