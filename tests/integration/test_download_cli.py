"""`flowdc download` as users run it: options, JSON configs, user errors, progress, the API, the demo.

Exit-code tests run `python -m flowdc` as a real subprocess; image servers are fake hosts on
127.0.0.x started by the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flowdc.cli import main
from flowdc.testing.fakehosts import FakeHostFarm
from tests.integration.conftest import (
    REPO,
    by_url,
    download,
    expected_png,
    latest,
    run_flowdc,
    sha256,
    snapshot_tree,
    subprocess_env,
    write_manifest,
)

DEAD = "http://127.0.0.2:1"  # nothing listens on port 1: connections are refused at once
QUICK = ["--quiet", "--retry_backoff_sec", "0.05", "--max_retry_attempts", "0"]


def urls_on(farm: FakeHostFarm, n: int, prefix: str = "img") -> list[str]:
    return [farm.url(i % len(farm.hosts), f"/{prefix}/{i:04d}.png?size=700") for i in range(n)]


# -- user errors --------------------------------------------------------------------------------
def _manifest(tmp: Path) -> Path:
    return write_manifest(tmp / "m.parquet", [f"{DEAD}/{i}.png" for i in range(3)], labels=["a", "b", "c"])


def _case_missing_input(tmp: Path) -> list[str]:
    return ["--input", str(tmp / "nope.parquet")]


def _case_unknown_extension(tmp: Path) -> list[str]:
    (tmp / "m.dat").write_text("url\nhttp://a/1.png\n")
    return ["--input", str(tmp / "m.dat")]


def _case_missing_url_column(tmp: Path) -> list[str]:
    (tmp / "m.csv").write_text("link,species\nhttp://a/1.png,x\n")
    return ["--input", str(tmp / "m.csv")]


def _case_missing_label_column(tmp: Path) -> list[str]:
    return ["--input", str(_manifest(tmp)), "--label", "species"]


def _case_bad_json(tmp: Path) -> list[str]:
    (tmp / "c.json").write_text('{"input": "m.parquet",')
    return ["--config", str(tmp / "c.json"), "--input", str(_manifest(tmp))]


def _json_case(data: dict[str, object]) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        (tmp / "c.json").write_text(json.dumps({"input": str(_manifest(tmp)), **data}))
        return ["--config", str(tmp / "c.json")]

    return build


def _case_cmin_above_cmax(tmp: Path) -> list[str]:
    return ["--input", str(_manifest(tmp)), "--C_min", "10", "--C_max", "5"]


def _case_bad_choice_cli(tmp: Path) -> list[str]:
    return ["--input", str(_manifest(tmp)), "--output_format", "zip"]


def _case_bad_type_cli(tmp: Path) -> list[str]:
    return ["--input", str(_manifest(tmp)), "--timeout", "abc"]


def _case_corrupt_parquet(tmp: Path) -> list[str]:
    (tmp / "m.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4 + b"PAR1")
    return ["--input", str(tmp / "m.parquet")]


def _case_corrupt_parquet_page(tmp: Path) -> list[str]:
    """A parquet whose footer is fine but whose 4th row group is damaged: found mid-run."""
    path = tmp / "m.parquet"
    pq.write_table(pa.table({"url": [f"{DEAD}/{i}.png" for i in range(600)]}), path, compression="zstd",
                   row_group_size=100)
    col = pq.ParquetFile(path).metadata.row_group(3).column(0)
    data = bytearray(path.read_bytes())
    start = col.data_page_offset + col.total_compressed_size // 3
    data[start:start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return ["--input", str(path), "--batch_rows", "50"]


def _case_telemetry_unwritable(tmp: Path) -> list[str]:
    (tmp / "a_file").write_text("not a folder")
    return ["--input", str(_manifest(tmp)), "--telemetry", str(tmp / "a_file" / "t.jsonl")]


def _case_output_is_a_file(tmp: Path) -> list[str]:
    (tmp / "notes.txt").write_text("the user's own file")
    return ["--input", str(_manifest(tmp)), "--output", str(tmp / "notes.txt")]


def _case_output_under_a_file(tmp: Path) -> list[str]:
    (tmp / "notes.txt").write_text("the user's own file")
    return ["--input", str(_manifest(tmp)), "--output", str(tmp / "notes.txt" / "out")]


def _cli_case(*options: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return ["--input", str(_manifest(tmp)), *options]

    return build


def _case_corrupt_gz(tmp: Path) -> list[str]:
    (tmp / "m.csv.gz").write_bytes(b"url\nnever compressed\n")
    return ["--input", str(tmp / "m.csv.gz")]


def _numbers_as_urls(tmp: Path) -> Path:
    pq.write_table(pa.table({"url": [1, 2, 3], "link": [f"{DEAD}/{i}.png" for i in range(3)]}), tmp / "n.parquet")
    return tmp / "n.parquet"


def _row_column_case(*rows: str, batch_rows: int = 1000) -> Callable[[Path], list[str]]:
    """A manifest of its own with a `row` column: taken for flowdc's row numbers, so checked."""
    def build(tmp: Path) -> list[str]:
        lines = ["url,row", *(f"{DEAD}/{i}.png,{row}" for i, row in enumerate(rows))]
        (tmp / "m.csv").write_text("\n".join(lines) + "\n")
        return ["--input", str(tmp / "m.csv"), "--batch_rows", str(batch_rows)]

    return build


def _xml_case(text: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        (tmp / "m.xml").write_text(text)
        return ["--input", str(tmp / "m.xml")]

    return build


BOMB = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
                  for i in range(1, 10))
        + f"]><rows><row><url>{DEAD}/&lol9;.png</url></row></rows>")
XXE = ('<?xml version="1.0"?><!DOCTYPE rows [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       "<rows><row><url>&xxe;</url></row></rows>")
BROKEN = f"<rows><row><url>{DEAD}/1.png</url></row><row><url>{DEAD}/2.png</url></rows>"

BAD_INPUTS: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("missing_input", _case_missing_input, "input file not found"),
    ("unknown_extension", _case_unknown_extension, "cannot tell the format"),
    ("missing_url_column", _case_missing_url_column, "columns are: link, species"),
    ("missing_label_column", _case_missing_label_column, "label column 'species' not in"),
    ("bad_json", _case_bad_json, "is not valid JSON"),
    ("unknown_key", _json_case({"concurrency": 5}), "unknown option 'concurrency'"),
    ("wrong_type_json", _json_case({"timeout": "abc"}), "timeout: expected a number, got 'abc'"),
    ("storage_options_not_object", _json_case({"storage_options": "x"}),
     "storage_options: expected a JSON object, got 'x'"),
    ("timeout_inf", _cli_case("--timeout", "inf"), "timeout must be a finite number, got inf"),
    ("timeout_nan", _cli_case("--timeout", "nan"), "timeout must be a finite number, got nan"),
    ("nan_in_json", _json_case({"beta": float("nan")}), "beta must be a finite number, got nan"),
    ("inf_paarc_knob", _cli_case("--probe_rtt_period=-inf"), "probe_rtt_period must be a finite number"),
    ("output_is_a_file", _case_output_is_a_file, "notes.txt: is a file, not a folder"),
    ("output_under_a_file", _case_output_under_a_file, "notes.txt is a file, not a folder"),
    ("upload_tool_missing", _cli_case("--cloud_tool", "gocmd", "--cloud_destination", "/zone/x", "--output",
                                      "/tmp/flowdc-never-made"), "gocmd not found on PATH; install it or choose"),
    ("corrupt_gz", _case_corrupt_gz, "m.csv.gz as csv: zlib inflate failed"),
    ("unsupported_compression", lambda tmp: ["--input", str(_manifest(tmp).rename(tmp / "m.csv.xz"))],
     ".xz compression is not supported"),
    ("wrong_type_cli", _case_bad_type_cli, "invalid float value: 'abc'"),
    ("cmin_above_cmax", _case_cmin_above_cmax, "C_min <= C_init <= C_max"),
    ("bad_choice_cli", _case_bad_choice_cli, "invalid choice: 'zip'"),
    ("bad_choice_json", _json_case({"output_format": "zip"}), "output_format must be one of"),
    ("corrupt_parquet", _case_corrupt_parquet, "cannot read"),
    ("corrupt_parquet_page", _case_corrupt_parquet_page, "cannot read"),
    ("xml_entity_bomb", _xml_case(BOMB), "refused"),
    ("xml_external_entity", _xml_case(XXE), "refused"),
    ("xml_malformed", _xml_case(BROKEN), "not well-formed"),
    ("telemetry_unwritable", _case_telemetry_unwritable, "cannot write the telemetry file"),
    ("output_name_too_long", _cli_case("--output", "/tmp/" + "x" * 300), "cannot be made (File name too long)"),
    ("output_under_proc", _cli_case("--output", "/proc/flowdc-out"), "cannot be made (No such file or directory)"),
    ("input_is_a_folder", lambda tmp: ["--input", str(tmp)], "is a folder: give the manifest file"),
    ("input_is_a_device", lambda tmp: ["--input", "/dev/null"], "is not a regular file (a device or a pipe)"),
    ("url_column_of_numbers", lambda tmp: ["--input", str(_numbers_as_urls(tmp))], "holds int64, not text"),
    ("row_column_repeated", _row_column_case("1", "1", "2", "2"), "near row 0 they repeat"),
    ("row_column_repeated_across_batches", _row_column_case("0", "1", "1", "2", batch_rows=2),
     "near row 2 they repeat"),
    ("row_column_empty", _row_column_case("3", ""), "it has an empty value"),
    ("row_column_negative", _row_column_case("-5"), "reserved for row numbers"),
    ("row_column_not_whole", _row_column_case("1.5"), "not whole numbers"),
]


@pytest.mark.parametrize(("case", "build", "expected"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, case: str, build: Callable[[Path], list[str]],
                                      expected: str) -> None:
    """Each user error prints one clear stderr line naming the problem, exits 2, and never a traceback."""
    args = build(tmp_path)
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    proc = run_flowdc("download", *args, *QUICK, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "error" in lines[0] and expected in lines[0], lines[0]


def test_a_closed_stdout_pipe_is_no_traceback(tmp_path: Path) -> None:
    """`flowdc download ... | head` where the reader is gone before the summary is printed: no
    BrokenPipeError traceback, exit 141 (128 + SIGPIPE, as a shell reports it), the run's ledger
    is written."""
    manifest = write_manifest(tmp_path / "m.parquet", [f"{DEAD}/{i}.png" for i in range(3)])
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader already went away
    try:
        proc = subprocess.run([sys.executable, "-m", "flowdc", "download", "--input", str(manifest), "--output",
                               str(tmp_path / "out"), *QUICK], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60, cwd=REPO, env=subprocess_env())
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""
    assert len(latest(tmp_path / "out")) == 3


def test_bad_rerun_loses_nothing(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """After a good run, reruns with bad options exit 2 and leave the output, its ledger, overview
    and archive byte-for-byte as they were (even with --force). (A changed manifest is a refresh:
    test_download_refresh.py.)"""
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 20), labels=["a", "b"] * 10)
    out = tmp_path / "out"
    overview = download(manifest, out, label="label", create_tar=True)
    assert overview["totals"]["ok"] == 20
    before = snapshot_tree(tmp_path)
    assert "out.tar" in before and "out/overview.json" in before

    reruns = [
        ["--input", str(manifest), "--label", "species", "--force"],
        ["--input", str(manifest), "--label", "label", "--C_min", "10", "--C_max", "5", "--force"],
        ["--input", str(manifest), "--label", "label", "--input_format", "xml", "--force"],
        ["--input", str(manifest), "--label", "label", "--output_format", "zip", "--force"],
    ]
    for args in reruns:
        proc = run_flowdc("download", *args, "--output", str(out), "--quiet", timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert snapshot_tree(tmp_path) == before, args


def test_a_rerun_must_keep_the_outputs_format_row_identity_names_and_labels(
        tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """Another --output_format would leave the rows the ledger holds as stored out of the new
    layout, another --key_col or --naming_mode gives every row a new identity or name (each would be
    stored twice), and another --label files new rows in another class tree (and was taken
    silently, the overview then describing labels the files do not have): each is refused (one
    line, exit 2, nothing touched). `--label ""` is no label. --force starts over with the new
    settings; a mark from before layouts, or some of them, were recorded takes the next run's."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("url,id,kind\n" + "".join(f"{u},id{i},k{i % 2}\n" for i, u in enumerate(urls_on(two_hosts, 6))))
    out = tmp_path / "out"
    first = run_flowdc("download", "--input", str(manifest), "--output", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    before = snapshot_tree(tmp_path)
    for change, expected in ((["--output_format", "webdataset"], "--output_format imagefolder"),
                             (["--key_col", "id"], "no --key_col"), (["--label", "kind"], "no --label"),
                             (["--naming_mode", "url_based"], "--naming_mode sequential")):
        proc = run_flowdc("download", "--input", str(manifest), "--output", str(out), "--quiet", *change)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr
        assert snapshot_tree(tmp_path) == before, change
    unlabelled = run_flowdc("download", "--input", str(manifest), "--output", str(out), "--quiet", "--label", "")
    assert unlabelled.returncode == 0 and "6 already done" in unlabelled.stdout, unlabelled.stderr
    forced = run_flowdc("download", "--input", str(manifest), "--output", str(out), "--quiet", "--force",
                        "--key_col", "id", "--output_format", "webdataset")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.glob("*.tar")) == ["000000.tar"] and not list(out.rglob("*.png"))
    mark = out / "_flowdc" / "owner.json"
    record = json.loads(mark.read_text())
    layout = {"output_format": "webdataset", "key_col": "id", "label": None, "naming_mode": "sequential"}
    assert record["layout"] == layout
    for older in ({k: v for k, v in record.items() if k != "layout"},  # an older flowdc's marks
                  {**record, "layout": {"output_format": "webdataset", "key_col": "id"}}):
        mark.write_text(json.dumps(older))
        again = run_flowdc("download", "--input", str(manifest), "--output", str(out), "--quiet",
                           "--output_format", "webdataset", "--key_col", "id")
        assert again.returncode == 0 and "6 already done" in again.stdout, again.stdout + again.stderr
        assert json.loads(mark.read_text())["layout"] == layout


def test_force_never_deletes_the_input_manifest(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """--force on an output that holds the manifest itself is refused (exit 2, one line), so
    starting over can never delete the input it is about to read; the output stays as it was."""
    out = tmp_path / "out"
    assert download(write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 5)), out)["totals"]["ok"] == 5
    manifest = write_manifest(out / "manifest.parquet", urls_on(two_hosts, 5))  # the user moved it in
    before = snapshot_tree(out)
    proc = run_flowdc("download", "--input", str(manifest), "--output", str(out), "--force", "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "manifest" in proc.stderr
    assert manifest.is_file() and snapshot_tree(out) == before


# -- manifest formats end to end ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["parquet", "csv", "xlsx", "xls", "xml", "dat-as-csv", "tabs-in-csv.gz"])
def test_every_manifest_format_downloads(tmp_path: Path, two_hosts: FakeHostFarm, fmt: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """parquet, csv, xlsx, xls, xml, a .dat read with --input_format csv and a tab-separated
    .csv.gz (iNaturalist's photos.csv.gz) all download the same rows with the same keys and labels
    (run in-process through flowdc.cli.main)."""
    import openpyxl
    import xlwt

    urls = urls_on(two_hosts, 8, prefix=f"fmt-{fmt}")
    labels = ["red", "green"] * 4
    extra = ["--input_format", "csv"] if fmt == "dat-as-csv" else []
    if fmt in ("parquet", "csv"):
        path = write_manifest(tmp_path / f"m.{fmt}", urls, labels)
    elif fmt == "dat-as-csv":  # a name that says nothing: --input_format says csv
        path = write_manifest(tmp_path / "m.dat", urls, labels, fmt="csv")
    elif fmt == "tabs-in-csv.gz":
        path = write_manifest(tmp_path / "photos.csv.gz", urls, labels, delimiter="\t")
    elif fmt == "xlsx":
        path = tmp_path / "m.xlsx"
        book = openpyxl.Workbook()
        sheet = book.active
        assert sheet is not None
        sheet.append(["url", "label"])
        for row in zip(urls, labels, strict=True):
            sheet.append(list(row))
        book.save(path)
    elif fmt == "xls":
        path = tmp_path / "m.xls"
        xbook = xlwt.Workbook()
        xsheet = xbook.add_sheet("m")
        for r, row in enumerate([("url", "label"), *zip(urls, labels, strict=True)]):
            for c, value in enumerate(row):
                xsheet.write(r, c, value)
        xbook.save(str(path))
    else:
        path = tmp_path / "m.xml"
        items = "".join(f'<photo label="{lab}"><url>{u.replace("&", "&amp;")}</url></photo>'
                        for u, lab in zip(urls, labels, strict=True))
        path.write_text(f"<photos>{items}</photos>", encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["download", "--input", str(path), "--output", str(out), "--label", "label", *extra, *QUICK,
               "--no_create_tar"])
    assert rc == 0 and "8/8 rows stored" in capsys.readouterr().out
    assert {r["key"]: (r["url"], r["label"]) for r in by_url(out).values()} == {
        f"{i + 1:08d}": (u, lab) for i, (u, lab) in enumerate(zip(urls, labels, strict=True))}


# -- options, JSON config, progress -------------------------------------------------------------
def test_help_lists_every_option() -> None:
    """`flowdc download --help` (the real CLI) documents each seed option."""
    proc = run_flowdc("download", "--help")
    assert proc.returncode == 0
    for option in ("--config", "--input", "--input_format", "--output", "--output_format", "--url", "--label",
                   "--concurrent_downloads", "--timeout", "--max_retry_attempts", "--retry_backoff_sec",
                   "--enable_paarc", "--disable_paarc", "--C_init", "--C_min", "--C_max", "--mu", "--beta",
                   "--theta_50", "--theta_95", "--probe_rtt_period", "--alpha_ema", "--naming_mode", "--create_tar",
                   "--create_overview", "--force", "--quiet", "--samples_per_shard"):
        assert option in proc.stdout, option


def test_json_config_with_cli_overrides(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A seed-style JSON config runs; CLI options override it (format, shard size, PAARC, naming)."""
    manifest = write_manifest(tmp_path / "m.csv", urls_on(two_hosts, 12), labels=["x", "y", "z"] * 4,
                              extra_columns={"photo_id": list(range(12))})
    config = tmp_path / "my_config.json"
    config.write_text(json.dumps({
        "input": str(manifest), "output": str(tmp_path / "images"), "url": "url", "label": "label",
        "concurrent_downloads": 1000, "timeout": 30, "enable_paarc": True, "C_init": 8, "C_min": 2,
        "C_max": 2000, "output_format": "imagefolder", "create_tar": True, "create_overview": True,
        "retry_backoff_sec": 0.05,
    }))
    proc = run_flowdc("download", "--config", str(config), "--output_format", "webdataset", "--samples_per_shard",
                      "5", "--disable_paarc", "--C_init", "3", "--quiet", "--concurrent_downloads", "16")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "images"
    assert sorted(p.name for p in out.glob("*.tar")) == ["000000.tar", "000001.tar", "000002.tar"]
    assert not (tmp_path / "images.tar.gz").exists()  # create_tar applies to imagefolder only
    cfg = json.loads((out / "overview.json").read_text())["config"]
    assert (cfg["output_format"], cfg["samples_per_shard"], cfg["enable_paarc"], cfg["C_init"]) == (
        "webdataset", 5, False, 3)
    assert (cfg["timeout"], cfg["C_max"], cfg["concurrent_downloads"]) == (30.0, 2000, 16)
    assert max(st["max_in_system"] for st in two_hosts.stats().values()) <= 3


def test_uploads_that_fail_are_named_and_end_the_run_with_exit_1(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """A custom upload command given as JSON on the command line (as --help shows it) that fails
    every time: the samples stay in the local output, overview.json names the files not shipped,
    the summary says so and the run exits 1 (it exited 0, as if all were shipped)."""
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 6, "up"))
    out = tmp_path / "staging"
    run = run_flowdc("download", "--input", str(manifest), "--output", str(out), "--quiet", "--output_format",
                     "webdataset", "--cloud_tool", "custom", "--cloud_destination", "nowhere",
                     "--cloud_command", '["sh", "-c", "exit 3", "upload", "{file}"]')
    assert run.returncode == 1, run.stdout + run.stderr
    assert "flowdc: 6/6 rows stored" in run.stdout
    assert "  uploads: " in run.stdout and "not shipped with custom (kept in the output" in run.stdout
    overview = json.loads((out / "overview.json").read_text())
    assert "000000.tar" in overview["uploads"]["failed"] and (out / "000000.tar").is_file()


def test_quiet_prints_only_the_summary(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """--quiet prints no progress bar; both modes print the final summary line on stdout."""
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 30))
    quiet = run_flowdc("download", "--input", str(manifest), "--output", str(tmp_path / "q"), "--quiet",
                       "--no_create_tar")
    assert quiet.returncode == 0
    assert "img/s" not in quiet.stderr and "%|" not in quiet.stderr and quiet.stderr.strip() == ""
    assert "flowdc: 30/30 rows stored (100.0%), 0 failed, 0 skipped" in quiet.stdout
    loud = run_flowdc("download", "--input", str(manifest), "--output", str(tmp_path / "l"), "--no_create_tar")
    assert loud.returncode == 0
    assert "img/s" in loud.stderr and "download" in loud.stderr
    assert "flowdc: 30/30 rows stored" in loud.stdout


def run_as_console(after: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`flowdc ARGS` in a real process, run as its console script runs it, which then prints `after`
    (Python expressions; `gc` and `sys` are imported), also when the command exits."""
    probe = ("import gc, sys, runpy; sys.argv = ['flowdc', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('flowdc', run_name='__main__')\n"
             f"finally:\n    print({after})\n")
    return subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=subprocess_env())


def test_a_download_process_imports_no_pandas(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """pyarrow imports pandas (0.2 s of start-up) the first time it converts Python objects, when
    pandas is installed, as it is here (Prefect brings it). A `flowdc download` process holds it back
    and still writes everything: the files, the archive, the ledger, the overview."""
    pytest.importorskip("pandas")
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 12), labels=["a", "b"] * 6)
    out = tmp_path / "out"
    proc = run_as_console("'pandas imported:', 'pandas' in sys.modules", "download", "--input", str(manifest),
                          "--output", str(out), "--label", "label", "--quiet")
    assert "pandas imported: False" in proc.stdout, proc.stdout + proc.stderr
    assert "flowdc: 12/12 rows stored (100.0%)" in proc.stdout, proc.stderr
    assert len(list(out.glob("*/*.png"))) == 12 and (tmp_path / "out.tar").is_file()
    assert [r["status"] for r in latest(out)] == ["ok"] * 12
    # The library call leaves pandas alone: a notebook may convert with it afterwards.
    assert main(["download", "--input", str(manifest), "--output", str(tmp_path / "again"), "--quiet"]) == 0
    assert not any(type(f).__name__ == "PandasHeldBack" for f in sys.meta_path)


@pytest.mark.parametrize("output_format", ["imagefolder", "webdataset"])
def test_a_download_process_skips_the_last_collection_and_loses_nothing(tmp_path: Path, two_hosts: FakeHostFarm,
                                                                        output_format: str) -> None:
    """The console command freezes what is left once it is done, so the interpreter's last garbage
    collection (50-110 ms after a download) has nothing to walk. Everything the run wrote was
    committed and closed before: every image, the archive, the ledger and the overview are whole."""
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 24), labels=["a", "b"] * 12)
    out = tmp_path / "out"
    proc = run_as_console("'frozen:', gc.get_freeze_count()", "download", "--input", str(manifest), "--output",
                          str(out), "--label", "label", "--output_format", output_format, "--quiet")
    assert proc.returncode == 0, proc.stderr
    frozen = int(proc.stdout.split("frozen:")[1])
    assert frozen > 10_000, proc.stdout
    assert [r["status"] for r in latest(out)] == ["ok"] * 24
    assert json.loads((out / "overview.json").read_text())
    # imagefolder: the files and their archive beside the output; webdataset: the shards.
    tars = [tmp_path / "out.tar"] if output_format == "imagefolder" else sorted(out.glob("*.tar"))
    images = 0
    for path in tars:
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                body = archive.extractfile(member)
                assert body is not None and len(body.read()) == member.size
                images += member.name.endswith(".png")
    assert images == 24
    if output_format == "imagefolder":
        assert len(list(out.glob("*/*.png"))) == 24


def test_telemetry_file_in_a_new_folder(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """--telemetry into a folder that does not exist yet creates it and writes per-host JSON lines."""
    manifest = write_manifest(tmp_path / "m.parquet", [two_hosts.url(0, f"/tel/{i}.png?size=300&slowbody=0.05")
                                                      for i in range(40)])
    telemetry = tmp_path / "logs" / "run1" / "telemetry.jsonl"
    proc = run_flowdc("download", "--input", str(manifest), "--output", str(tmp_path / "out"), "--quiet",
                      "--telemetry", str(telemetry), "--concurrent_downloads", "2", "--disable_paarc", "--C_init", "2")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in telemetry.read_text().splitlines()]
    assert lines[-1]["kind"] == "run" and lines[-1]["done"] is True and lines[-1]["ok"] == 40
    lines = [line for line in lines if line["kind"] == "host"]
    assert lines and {line["host"] for line in lines} == {two_hosts.hosts[0].netloc}
    assert all({"t", "limit", "inflight"} <= set(line) for line in lines)


def imported_modules(importtime_report: str) -> set[str]:
    """Module names from `python -X importtime`'s report (on stderr, the run's own lines among them)."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_report.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("output_format", ["imagefolder", "webdataset"])
def test_a_quiet_local_download_loads_neither_fsspec_nor_tqdm(tmp_path: Path, two_hosts: FakeHostFarm,
                                                             output_format: str) -> None:
    """Each costs a start-up that is all overhead here: fsspec scans every installed package's entry
    points, tqdm reads its own metadata. A first run with an archive, its rerun (the ledger read
    back, the archive checked) and a --force over it need neither for a local folder; a shown bar
    still loads tqdm."""
    manifest = write_manifest(tmp_path / "m.parquet", urls_on(two_hosts, 12), labels=["a", "b", "c"] * 4)
    base = ["-X", "importtime", "-m", "flowdc", "download", "--input", str(manifest), "--label", "label",
            "--output", str(tmp_path / "out"), "--output_format", output_format, "--create_tar"]
    for extra in ([], [], ["--force"]):
        proc = subprocess.run([sys.executable, *base, *extra, "--quiet"], capture_output=True, text=True,
                              timeout=60, cwd=REPO, env=subprocess_env())
        assert proc.returncode == 0, proc.stderr[-2000:]
        loaded = imported_modules(proc.stderr)
        assert "flowdc.download" in loaded  # the control: the report is read right
        assert not {"fsspec", "tqdm"} & loaded, extra
    shown = subprocess.run([sys.executable, *base, "--force"], capture_output=True, text=True, timeout=60,
                           cwd=REPO, env=subprocess_env())
    assert shown.returncode == 0 and "tqdm" in imported_modules(shown.stderr)
    assert len(list((tmp_path / "out").rglob("*.png"))) == (12 if output_format == "imagefolder" else 0)


# -- the Python API and the demo ----------------------------------------------------------------
def test_python_api(tmp_path: Path, two_hosts: FakeHostFarm) -> None:
    """run_download, DownloadConfig, load_input_file and the async download_single work as documented."""
    from flowdc import DownloadConfig, download_single, load_input_file, run_download

    urls = urls_on(two_hosts, 6)
    manifest = write_manifest(tmp_path / "m.parquet", urls, labels=["a", "b"] * 3)
    table = load_input_file(str(manifest))
    assert table.column_names == ["url", "label"] and table.num_rows == 6
    overview = run_download(DownloadConfig(input=str(manifest), output=str(tmp_path / "api"), label="label",
                                           quiet=True, create_tar=False))
    assert overview["totals"] == {"rows": 6, "ok": 6, "failed": 0, "skipped": 0}
    assert {r["status"] for r in by_url(tmp_path / "api").values()} == {"ok"}

    url = two_hosts.url(0, "/single/one.png")
    result = asyncio.run(download_single(url=url, key="row_001", class_name="species_a",
                                         output_folder=str(tmp_path / "single")))
    stored = tmp_path / "single" / "species_a" / "row_001.png"
    assert result["ok"] and result["path"] == str(stored)
    assert stored.read_bytes() == expected_png("/single/one.png") and result["sha256"] == sha256(stored.read_bytes())

    missing = asyncio.run(download_single(url=two_hosts.url(0, "/single/gone.png?fail=404"), key="row_002",
                                          class_name="species_a", output_folder=str(tmp_path / "single")))
    assert not missing["ok"] and missing["reason"] == "http_404" and missing["status"] == 404
    assert sorted(p.name for p in (tmp_path / "single").rglob("*") if p.is_file()) == ["row_001.png"]
    with pytest.raises(ValueError, match="unsafe key"):
        asyncio.run(download_single(url=url, key="../escape", class_name=None, output_folder=str(tmp_path / "s2"),
                                    output_format="webdataset"))
    assert not (tmp_path / "escape.png").exists()
    # The original FLOW-DC's webdataset: flat files, and a .json of key, url and class_name.
    flat = asyncio.run(download_single(url=url, key="row_003", class_name="species_a",
                                       output_folder=str(tmp_path / "wds"), output_format="webdataset"))
    assert flat["ok"] and sorted(p.name for p in (tmp_path / "wds").iterdir()) == ["row_003.json", "row_003.png"]
    assert json.loads((tmp_path / "wds" / "row_003.json").read_text()) == {
        "key": "row_003", "url": url, "class_name": "species_a"}
    with pytest.raises(ValueError, match="output_format must be imagefolder or webdataset"):
        asyncio.run(download_single(url=url, key="row_004", class_name=None, output_folder=str(tmp_path / "s3"),
                                    output_format="bogus"))
    assert not (tmp_path / "s3").exists()


def test_demo_runs(tmp_path: Path) -> None:
    """`flowdc demo --rows 200 --quiet` starts its hosts, downloads and prints a summary."""
    proc = run_flowdc("demo", "--out", str(tmp_path / "demo"), "--rows", "200", "--quiet", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rows stored" in proc.stdout and "/200 rows stored" in proc.stdout
    assert "img/s" not in proc.stderr
    assert (tmp_path / "demo" / "output-webdataset" / "overview.json").is_file()
