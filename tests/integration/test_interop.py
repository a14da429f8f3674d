"""Outputs mixing JPEG, PNG and WebP sources load in the loaders users feed them to: Hugging Face
`datasets` (imagefolder and webdataset builders, offline) and `webdataset`, every row with a
decoded image and its label. The images are real, encoded by Pillow and served by the fake hosts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flowdc.testing.fakehosts import FakeHostFarm
from tests.integration.conftest import download, write_manifest

FORMATS = ("jpeg", "png", "webp")
LABELS = ("cat", "dog")
ROWS = 9  # three of each format, over two shards of 4 and one of 1


def _mixed_output(tmp_path: Path, farm: FakeHostFarm, output_format: str) -> tuple[Path, dict[int, Any]]:
    """(output, {width: (label, format)}): each row's width is unique, so a loaded row names its source."""
    urls, labels, expected = [], [], {}
    for i in range(ROWS):
        fmt, label, width = FORMATS[i % 3], LABELS[i % 2], 20 + i
        urls.append(farm.url(i % 2, f"/mix/{i}.{fmt}?fmt={fmt}&w={width}&h=16"))
        labels.append(label)
        expected[width] = (label, fmt)
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=labels)
    out = tmp_path / output_format
    overview = download(manifest, out, label="label", output_format=output_format, samples_per_shard=4)
    assert overview["totals"]["ok"] == ROWS
    return out, expected


@pytest.fixture
def hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`datasets`, offline, with its caches in the test's folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    import datasets

    return datasets


def test_hf_imagefolder_loads_every_row_with_its_label(tmp_path: Path, two_hosts: FakeHostFarm, hf: Any) -> None:
    out, expected = _mixed_output(tmp_path, two_hosts, "imagefolder")
    ds = hf.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf" / "c"))
    assert len(ds) == ROWS
    names = ds.features["label"].names
    seen = {}
    for row in ds:
        img = row["image"]
        img.load()
        seen[img.size[0]] = (names[row["label"]], img.format.lower())
    assert seen == expected


def test_hf_webdataset_loads_every_row_of_mixed_formats(tmp_path: Path, two_hosts: FakeHostFarm, hf: Any) -> None:
    """Every image member has the output's one key, so the builder's columns (from the first
    samples) hold every row's image; the bytes are each source's own format."""
    out, expected = _mixed_output(tmp_path, two_hosts, "webdataset")
    tars = sorted(str(p) for p in out.glob("*.tar"))
    assert len(tars) == 3
    ds = hf.load_dataset("webdataset", data_files={"train": tars}, split="train",
                         cache_dir=str(tmp_path / "hf" / "c"))
    assert len(ds) == ROWS
    image_columns = [c for c in ds.column_names if isinstance(ds.features[c], hf.Image)]
    assert len(image_columns) == 1
    seen = {}
    for row in ds:
        img = row[image_columns[0]]
        img.load()
        meta = row["json"]
        assert meta["image_format"].lower() == img.format.lower()
        seen[img.size[0]] = (meta["label"], img.format.lower())
    assert seen == expected


def test_webdataset_library_decodes_every_sample(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    import webdataset as wds

    out, expected = _mixed_output(tmp_path, two_hosts, "webdataset")
    tars = sorted(str(p) for p in out.glob("*.tar"))
    seen = {}
    for sample in wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode("pil"):
        images = [v for k, v in sample.items() if not k.startswith("__") and k != "json"]
        assert len(images) == 1
        meta = sample["json"] if isinstance(sample["json"], dict) else json.loads(sample["json"])
        seen[images[0].size[0]] = (meta["label"], meta["image_format"].lower())
    assert seen == expected
