"""Naming rules: stable keys, labels that can never name a path outside the output, extensions."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowdc.writers.naming import (
    UNLABELED,
    extension_for,
    make_key,
    safe_label,
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
    name = safe_label(label)
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in ("", ".", "..")
    root = tmp_path / "out"
    target = (root / sample_path("00000001", label, ".png")).resolve()
    assert target.parent.parent == root.resolve()


def test_ordinary_and_missing_labels() -> None:
    """Ordinary labels keep their text; None and blank labels go to 'unlabeled'."""
    assert safe_label("Apis mellifera") == "Apis mellifera"
    assert safe_label("猫") == "猫"
    assert safe_label(None) == UNLABELED
    assert safe_label("   ") == UNLABELED
    assert safe_label(7) == "7"
    assert sample_path("00000003", None, ".jpg", labelled=False) == "00000003.jpg"
    assert sample_path("00000003", "cat", ".jpg") == "cat/00000003.jpg"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.text(alphabet="猫🐱a./\\\x00 _-é", max_size=400))
def test_any_label_is_a_safe_component(label: str) -> None:
    """For any text: one component, not '.'/'..', no NUL, and short enough for the file system."""
    name = safe_label(label)
    assert name and name not in (".", "..")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert os.path.basename(name) == name
    assert len(name.encode("utf-8", "surrogatepass")) <= NAME_MAX_BYTES


def test_long_unicode_label_fits_a_file_name(tmp_path: Path) -> None:
    """A 200-character CJK label still gives a folder the local file system can create."""
    name = safe_label("猫" * 200)
    (tmp_path / name).mkdir()
    assert safe_label("猫" * 200) == name  # stable
    assert safe_label("猫" * 200) != safe_label("猫" * 199 + "犬")  # truncation keeps labels apart


@pytest.mark.parametrize("key", ["../x", "a/b", ".hidden", "a\\b"])
def test_unsafe_keys_are_refused(key: str) -> None:
    """A key that would escape or hide is rejected rather than written."""
    with pytest.raises(ValueError):
        sample_path(key, "cat", ".png")


def test_extension_from_content_type_then_url() -> None:
    """Content-Type decides the extension; the URL suffix is the fallback; unknown is '.bin'."""
    assert extension_for("image/jpeg; charset=binary", "http://a/x") == ".jpg"
    assert extension_for("image/png", "http://a/x.jpg") == ".png"
    assert extension_for(None, "http://a/x.JPEG?q=1") == ".jpg"
    assert extension_for("application/octet-stream", "http://a/x.webp") == ".webp"
    assert extension_for(None, "http://a/x.exe") == ".bin"
    assert extension_for(None, "http://[::1") == ".bin"
