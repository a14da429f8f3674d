"""The img2dataset bench contender without img2dataset: its command line, its output check, its skip.

Nothing here installs anything: the output check reads a folder laid out as img2dataset 1.47 lays
out a webdataset (NNNNN.tar with key.jpg/.json/.txt, NNNNN.parquet, NNNNN_stats.json), made here
with Pillow.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import img2dataset_contender as i2d  # noqa: E402


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_command_speaks_fire() -> None:
    s = i2d.Img2datasetSettings(processes_count=2, resize_mode="keep_ratio", caption_col=None,
                                extra=(("extract_exif", False),))
    cmd = i2d.command(Path("/v/bin/img2dataset"), Path("/w/m.csv"), Path("/w/out"), s)
    assert cmd[0] == "/v/bin/img2dataset"
    args = dict(a[2:].split("=", 1) for a in cmd[1:])
    assert args["input_format"] == "csv" and args["url_list"] == "/w/m.csv" and args["output_folder"] == "/w/out"
    assert args["processes_count"] == "2" and args["resize_mode"] == "keep_ratio"
    assert args["resize_only_if_bigger"] == "False" and args["extract_exif"] == "False"  # Python literals
    assert "caption_col" not in args and "extra" not in args


@pytest.mark.parametrize(("mode", "only_if_bigger", "size", "want"), [
    ("keep_ratio", False, (512, 384), (341, 256)),
    ("keep_ratio", False, (100, 200), (256, 512)),
    ("keep_ratio", True, (100, 200), (100, 200)),
    ("keep_ratio_largest", False, (512, 384), (256, 192)),
    ("center_crop", False, (512, 384), (256, 256)),
    ("no", False, (512, 384), (512, 384)),
])
def test_expected_size(mode: str, only_if_bigger: bool, size: tuple[int, int], want: tuple[int, int]) -> None:
    s = i2d.Img2datasetSettings(resize_mode=mode, resize_only_if_bigger=only_if_bigger)
    assert i2d.expected_size(s, *size) == want


def _fake_output(out: Path) -> None:
    """Five rows: two good, one wrongly sized, one undecodable, one success without an image; one failed."""
    images = {"000000000": _jpeg(341, 256), "000000001": _jpeg(256, 300), "000000002": _jpeg(200, 200),
              "000000003": b"\xff\xd8\xffnot a jpeg"}
    originals = {"000000000": (512, 384), "000000001": (256, 300), "000000002": (400, 400),
                 "000000003": (50, 50), "000000004": (300, 300)}
    out.mkdir()
    with tarfile.open(out / "00000.tar", "w") as tar:
        for key, body in images.items():
            for ext, data in (("jpg", body), ("json", json.dumps({"key": key}).encode()), ("txt", b"cat")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    keys = [*originals, "000000005"]
    pq.write_table(pa.table({
        "key": keys,
        "status": ["success"] * 5 + ["failed_to_download"],
        "error_message": [None] * 5 + ["HTTP Error 404: Not Found"],
        "original_width": [w for w, _ in originals.values()] + [None],
        "original_height": [h for _, h in originals.values()] + [None],
    }), out / "00000.parquet")
    (out / "00000_stats.json").write_text(json.dumps({"start_time": 100.0, "end_time": 102.5}))


def test_check_outputs_finds_each_problem(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fake_output(out)
    s = i2d.Img2datasetSettings(resize_mode="keep_ratio", image_size=256)
    check = i2d.check_outputs(out, s, rows=7)
    assert (check.rows, check.ok, check.failed) == (6, 5, 1)
    assert check.by_status == {"success": 5, "failed_to_download": 1}
    assert check.errors == {"HTTP Error 404: Not Found": 1}
    assert check.images == 4
    assert check.wrong_size == 1  # 200x200 from 400x400 should be 256x256
    assert check.undecodable == 1
    assert check.missing == 2  # 000000004 has no image; one manifest row is in no parquet
    assert check.problems == 4
    assert check.tool_elapsed_s == 2.5
    samples = list(i2d.iter_samples(out, "webdataset"))
    assert [(x.key, x.ext) for x in samples] == [(f"00000000{i}", "jpg") for i in range(4)]
    assert samples[0].meta == {"key": "000000000"}


def test_unavailable_venv_is_one_line_and_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWDC_BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(i2d, "_base_python", lambda: str(tmp_path / "no-such-python"))
    monkeypatch.setattr(i2d, "_failed", None)
    with pytest.raises(i2d.Img2datasetUnavailable) as first:
        i2d.ensure_venv()
    assert "cannot make img2dataset's venv" in str(first.value) and "\n" not in str(first.value)
    monkeypatch.setattr(i2d, "_base_python", lambda: pytest.fail("a failed venv is tried once per process"))
    with pytest.raises(i2d.Img2datasetUnavailable):
        i2d.ensure_venv()
    assert not (tmp_path / f"img2dataset-{i2d.VERSION}" / i2d._READY).exists()
