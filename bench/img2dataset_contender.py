"""img2dataset 1.47 as a benchmark contender, run from its own venv.

img2dataset pins its own webdataset and pulls wandb, opencv and albumentations, which must not
meet FLOW-DC's environment, so it gets a venv of its own in a cache folder outside the repo
(`$FLOWDC_BENCH_CACHE` or ~/.cache/flowdc-bench, then img2dataset-1.47.0/), made once with the
interpreter the bench runs on and the ordinary pip client (`PINS`). A machine where that cannot be
made skips the contender with the one-line reason of `Img2datasetUnavailable`.

API for a scenario or bench script in bench/ (they import it as `img2dataset_contender`):

    from img2dataset_contender import Img2datasetSettings, Img2datasetUnavailable, run_img2dataset

    settings = Img2datasetSettings(output_format="webdataset", processes_count=2, thread_count=64,
                                   image_size=256, resize_mode="keep_ratio", encode_format="jpg",
                                   retries=3, timeout=3, number_sample_per_shard=500)
    try:
        run = run_img2dataset(manifest, out_dir, settings, timeout_s=300)
    except Img2datasetUnavailable as e:
        print(f"img2dataset skipped: {e}")
    run.ok, run.failed, run.wall_s, run.images_per_s, run.tool_elapsed_s, run.peak_rss_mb
    run.by_status    # img2dataset's status column counted: {"success": .., "failed_to_download": ..}
    run.errors       # error_message counted (first 80 characters)
    run.check        # OutputCheck: every row accounted for, images present, decodable, right size
    run.problems     # check's count of bad outputs (0 = good); run.note says what went wrong

    for s in iter_samples(out_dir, "webdataset"):   # after a run: key, ext, body, meta (.json)
        ...

The manifest is parquet or csv (by suffix) with a `url` column and, unless caption_col is None,
a `label` column (img2dataset stores it as the caption). `out_dir` must not exist or be empty.
img2dataset's parallelism is one shard per process: give at least two shards per process
(number_sample_per_shard) or some processes idle. thread_count is per process, so the requests in
flight are processes_count x thread_count. Settings not named in Img2datasetSettings go in
`extra` as (name, value) pairs, in img2dataset's own vocabulary (e.g. ("extract_exif", False)).

Lower level: `ensure_venv()` (the venv's bin/img2dataset, made on first call), `command()` and
`contender_env()` to run it yourself, `check_outputs()` to verify an output folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from measure import measure, tail

VERSION = "1.47.0"
# img2dataset's own requirements leave these open (>=): pinned to the set this bench was checked with.
PINS = (
    f"img2dataset=={VERSION}",
    "webdataset==0.2.111",
    "albumentations==1.4.24",
    "opencv-python-headless==4.14.0.94",
    "numpy==2.4.6",
    "pyarrow==26.0.1",
    "pandas==2.3.3",
    "wandb==0.31.0",
)
INSTALL_TIMEOUT_S = 1200.0
_READY = ".flowdc-ready"  # written last: a venv without it was cut short and is made again


class Img2datasetUnavailable(RuntimeError):
    """The venv cannot be made or does not work here; str() is the one-line reason."""


def cache_dir() -> Path:
    return Path(os.environ.get("FLOWDC_BENCH_CACHE") or Path.home() / ".cache" / "flowdc-bench")


def venv_dir() -> Path:
    return cache_dir() / f"img2dataset-{VERSION}"


def contender_env() -> dict[str, str]:
    """Our environment without our venv and path, and with img2dataset's dependencies kept quiet and offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        NO_ALBUMENTATIONS_UPDATE="1",  # albumentations asks its registry for a newer version on import
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
        no_proxy="*",  # the fake hosts are on loopback
    )
    return env


def _base_python() -> str:
    # The interpreter our venv was made from: a venv made from a venv's python works, but would
    # tie the cache to this checkout's venv.
    return getattr(sys, "_base_executable", None) or sys.executable


_failed: str | None = None  # one failed attempt per process: a bench's rounds do not retry pip each time


def ensure_venv() -> Path:
    """The venv's img2dataset executable; the venv is made on the first call (a minute or more)."""
    global _failed
    if _failed is not None:
        raise Img2datasetUnavailable(_failed)
    root = venv_dir()
    exe = root / "bin" / "img2dataset"
    if _ready(root):
        return exe
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other engineers' benches may make it at the same time
        try:
            _make_venv(root)
        except Img2datasetUnavailable as e:
            _failed = str(e)
            raise
    return exe


def _ready(root: Path) -> bool:
    marker = root / _READY
    return marker.is_file() and marker.read_text() == "\n".join(PINS)


def _make_venv(root: Path) -> None:
    if _ready(root):
        return  # made by another process while we waited for the lock
    shutil.rmtree(root, ignore_errors=True)
    print(f"[bench] making img2dataset's venv in {root} (once) ...", flush=True)
    steps = (
        [_base_python(), "-m", "venv", str(root)],
        [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS],
        [str(root / "bin" / "python"), "-c", "import img2dataset.main"],
    )
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                                  env=contender_env(), stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Img2datasetUnavailable(f"cannot make img2dataset's venv ({cmd[1:3]}): {e}") from e
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "ERROR" in line or "Error" in line]
            reason = (errors[-1] if errors else tail(done.stderr, 1)) or f"exit {done.returncode}"
            raise Img2datasetUnavailable(f"cannot make img2dataset's venv: {reason.strip()[:200]}")
    (root / _READY).write_text("\n".join(PINS))


# -- settings and the command -----------------------------------------------------------------


@dataclass(frozen=True)
class Img2datasetSettings:
    """img2dataset options, named as img2dataset names them."""

    output_format: str = "webdataset"  # files | webdataset | parquet | tfrecord
    processes_count: int = 1
    thread_count: int = 64  # per process
    image_size: int = 256
    resize_mode: str = "no"  # no | keep_ratio | keep_ratio_largest | center_crop | border
    resize_only_if_bigger: bool = False
    encode_format: str = "jpg"  # jpg | png | webp
    encode_quality: int = 95
    disable_all_reencoding: bool = False  # True: bytes kept as served (no decode at all)
    retries: int = 0
    timeout: float = 10.0
    number_sample_per_shard: int = 10000
    caption_col: str | None = "label"
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def resizes(self) -> bool:
        return self.resize_mode != "no" and not self.disable_all_reencoding


def _fire_value(value: Any) -> str:
    # img2dataset parses its command line with fire: Python literals
    return repr(value) if isinstance(value, (bool, list, tuple)) or value is None else str(value)


def command(exe: Path, manifest: Path, out: Path, s: Img2datasetSettings) -> list[str]:
    fmt = "csv" if manifest.suffix.lower() == ".csv" else "parquet"
    options: dict[str, Any] = {
        "url_list": str(manifest), "input_format": fmt, "url_col": "url", "output_folder": str(out),
        **{k: v for k, v in asdict(s).items() if k != "extra"},
        **dict(s.extra),
    }  # fmt: skip
    if options["caption_col"] is None:
        del options["caption_col"]
    return [str(exe), *(f"--{k}={_fire_value(v)}" for k, v in options.items())]


# -- reading and checking what it wrote -------------------------------------------------------


@dataclass
class Sample:
    key: str
    ext: str
    body: bytes
    meta: dict[str, Any]


def _group(files: Iterator[tuple[str, bytes]]) -> Iterator[Sample]:
    members: dict[str, dict[str, bytes]] = {}
    for name, data in files:
        key, _, ext = name.rpartition(".")
        members.setdefault(key, {})[ext] = data
    for key, parts in sorted(members.items()):
        meta = json.loads(parts.pop("json", b"{}") or b"{}")
        parts.pop("txt", None)
        for ext, body in parts.items():  # one image per sample
            yield Sample(key.rpartition("/")[2], ext, body, meta)


def _tar_files(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        for info in tar:
            data = tar.extractfile(info)
            if data is not None:
                yield info.name, data.read()


def iter_samples(out: Path, output_format: str) -> Iterator[Sample]:
    """Every stored sample (image and its .json) of a files or webdataset output."""
    if output_format == "webdataset":
        for shard in sorted(out.glob("*.tar")):
            yield from _group(_tar_files(shard))
    elif output_format == "files":
        for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name.isdigit()):
            yield from _group((f.name, f.read_bytes()) for f in sorted(folder.iterdir()) if f.is_file())
    else:
        raise ValueError(f"iter_samples reads files and webdataset outputs, not {output_format}")


def expected_size(s: Img2datasetSettings, width: int, height: int) -> tuple[int, int]:
    """The size img2dataset's resize_mode gives an image of width x height (sides may differ by 1 by rounding)."""
    side, mode = s.image_size, s.resize_mode
    if mode == "no" or not s.resizes:
        return width, height
    ref = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    if s.resize_only_if_bigger and ref <= side:
        return (width, height)
    w, h = round(width * side / ref), round(height * side / ref)
    return (side, side) if mode in ("center_crop", "border") else (w, h)


@dataclass
class OutputCheck:
    rows: int = 0  # rows in the shards' parquet files: ok + failed
    ok: int = 0
    failed: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    images: int = 0  # image files found
    missing: int = 0  # success rows without an image, and manifest rows in no parquet
    undecodable: int = 0
    wrong_size: int = 0
    tool_elapsed_s: float | None = None  # first shard's start to last shard's end, from *_stats.json

    @property
    def problems(self) -> int:
        return self.missing + self.undecodable + self.wrong_size


def check_outputs(out: Path, s: Img2datasetSettings, rows: int | None = None, decode: bool = True) -> OutputCheck:
    """Count img2dataset's rows by status and check each stored image: present, decodable, the right size.

    rows: the manifest's row count, when every row must be accounted for.
    """
    import pyarrow.parquet as pq

    check = OutputCheck()
    success: dict[str, dict[str, Any]] = {}
    status: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for path in sorted(out.glob("*.parquet")):
        for rec in pq.read_table(path, columns=["key", "status", "error_message", "original_width",
                                                "original_height"]).to_pylist():
            status[rec["status"]] += 1
            if rec["status"] == "success":
                success[rec["key"]] = rec
            elif rec["error_message"]:
                errors[str(rec["error_message"])[:80]] += 1
    check.rows, check.ok = sum(status.values()), status["success"]
    check.failed = check.rows - check.ok
    check.by_status, check.errors = dict(status), dict(errors)
    if rows is not None:
        check.missing += max(0, rows - check.rows)
    spans = [json.loads(p.read_text()) for p in out.glob("*_stats.json")]
    if spans:
        check.tool_elapsed_s = round(max(x["end_time"] for x in spans) - min(x["start_time"] for x in spans), 3)
    if s.output_format not in ("files", "webdataset"):
        return check
    seen: set[str] = set()
    for sample in iter_samples(out, s.output_format):
        check.images += 1
        seen.add(sample.key)
        if decode:
            _check_image(check, sample, s, success.get(sample.key))
    check.missing += len(set(success) - seen)
    return check


def _check_image(check: OutputCheck, sample: Sample, s: Img2datasetSettings, row: dict[str, Any] | None) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(sample.body)) as img:
            img.load()
            size = img.size
    except Exception:  # any decoder error is the finding
        check.undecodable += 1
        return
    if not s.resizes or row is None or not row.get("original_width"):
        return
    want = expected_size(s, int(row["original_width"]), int(row["original_height"]))
    if any(abs(a - b) > 1 for a, b in zip(size, want, strict=True)):
        check.wrong_size += 1


# -- one run -----------------------------------------------------------------------------------


@dataclass
class Img2datasetRun:
    returncode: int | None  # None: killed at the timeout
    wall_s: float
    peak_rss_mb: float
    check: OutputCheck
    note: str = ""

    @property
    def ok(self) -> int:
        return self.check.ok

    @property
    def failed(self) -> int:
        return self.check.failed

    @property
    def by_status(self) -> dict[str, int]:
        return self.check.by_status

    @property
    def errors(self) -> dict[str, int]:
        return self.check.errors

    @property
    def tool_elapsed_s(self) -> float | None:
        return self.check.tool_elapsed_s

    @property
    def problems(self) -> int:
        return self.check.problems

    @property
    def images_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0


def run_img2dataset(manifest: Path, out: Path, s: Img2datasetSettings, *, timeout_s: float,
                    log_dir: Path | None = None, rows: int | None = None, decode: bool = True) -> Img2datasetRun:
    """Run img2dataset on `manifest` into `out` (killed after timeout_s), then check what it wrote.

    Raises Img2datasetUnavailable when its venv cannot be made. Logs go to log_dir (default:
    out's sibling `img2dataset.logs`).
    """
    exe = ensure_venv()
    out, manifest = Path(out).resolve(), Path(manifest).resolve()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: img2dataset would resume into it")
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or out.parent / "img2dataset.logs"
    m = measure(command(exe, manifest, out, s), timeout_s, log_dir, source=out.parent, env=contender_env())
    run = Img2datasetRun(m.returncode, round(m.wall_s, 3), round(m.peak_rss_mb, 1), OutputCheck())
    if m.returncode is None:
        run.note = f"killed after the {timeout_s:.0f} s timeout"
    elif m.returncode != 0:
        run.note = f"exit {m.returncode}: {tail(m.stderr)}"
    with contextlib.suppress(FileNotFoundError):
        run.check = check_outputs(out, s, rows=rows, decode=decode)
    c = run.check
    if c.problems:
        bad = {"missing": c.missing, "undecodable": c.undecodable, "wrong size": c.wrong_size}
        run.note = "; ".join(filter(None, [run.note, ", ".join(f"{v} {k}" for k, v in bad.items() if v)]))
    return run
