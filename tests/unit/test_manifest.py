"""Manifests: every input format, compressed text, format and delimiter detection, column checks,
streaming and bounded memory."""

from __future__ import annotations

import gzip
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from flowdc import load_input_file
from flowdc import manifest as manifest_module
from flowdc.config import ConfigError
from flowdc.manifest import Manifest, csv_delimiter, detect_format, is_manifest_name
from flowdc.testing.fakehosts import write_manifest

ROWS: list[dict[str, Any]] = [
    {"url": f"http://127.0.0.2:1/img/{i}.png", "label": ["cat", "dog", "猫"][i % 3], "license": "CC0", "n": i}
    for i in range(7)
]


def read_all(path: Path, **kwargs: Any) -> list[dict[str, Any]]:
    m = Manifest(str(path), "url", **kwargs)
    return [row for batch in m.batches() for row in batch.to_pylist()]


def as_text(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as formats without types give them back: every value as a string, plus row numbers."""
    return [{**{k: str(v) for k, v in r.items()}, "row": i} for i, r in enumerate(rows)]


# The first half of a gzip file: the header reads, the stream ends mid-way.
_WHOLE_GZ = gzip.compress(("url\n" + "".join(f"http://a/{i}.png\n" for i in range(20_000))).encode())
TRUNCATED_GZ = _WHOLE_GZ[: len(_WHOLE_GZ) // 2]


def write_xlsx(path: Path, rows: list[dict[str, Any]]) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(rows[0]))
    for r in rows:
        sheet.append(list(r.values()))
    sheet.append([None] * len(rows[0]))  # a blank row at the end is not a manifest row
    book.save(path)


def write_xls(path: Path, rows: list[dict[str, Any]]) -> None:
    import xlwt  # a dev dependency: only these tests write .xls files

    book = xlwt.Workbook()
    sheet = book.add_sheet("manifest")
    for c, name in enumerate(rows[0]):
        sheet.write(0, c, name)
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row.values()):
            sheet.write(r, c, value)
    book.save(str(path))


def write_xml(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as children of the root; `n` as an attribute, the rest as child elements."""
    items = []
    for r in rows:
        fields = "".join(f"<{k}>{v}</{k}>" for k, v in r.items() if k != "n")
        items.append(f'  <image n="{r["n"]}">{fields}</image>')
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<images>\n' + "\n".join(items) + "\n</images>\n",
                    encoding="utf-8")


def test_parquet_keeps_types_and_numbers_rows(tmp_path: Path) -> None:
    """Parquet rows come back with their own types and a 0-based `row` column."""
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert read_all(path) == [{**r, "row": i} for i, r in enumerate(ROWS)]


def test_declared_types_and_text_of_binary_columns(tmp_path: Path) -> None:
    """Parquet's column types are known up front (a shard parquet keeps them); text formats' are
    text. A binary column read as text: UTF-8 as is, other bytes one row's U+FFFD, not an error."""
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": pa.array([b"http://h/a", b"http://h/\xff", None], pa.binary()),
                             "n": pa.array([1, 2, 3], pa.int16())}), path)
    manifest = Manifest(str(path), "url")
    assert (manifest.column_type("url"), manifest.column_type("n")) == (pa.binary(), pa.int16())
    batch = next(manifest.batches())
    assert manifest_module.as_text(batch.column("url")).to_pylist() == ["http://h/a", "http://h/\ufffd", None]
    assert manifest_module.as_text(batch.column("n")).to_pylist() == ["1", "2", "3"]
    text = tmp_path / "m.csv"
    text.write_text("url,n\nhttp://h/a,1\n")
    assert Manifest(str(text), "url").column_type("n") == pa.string()


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".xlsx", ".xls", ".xml"])
def test_text_formats_read_the_same_rows(tmp_path: Path, suffix: str) -> None:
    """csv, tsv, xlsx, xls and xml (attributes + child elements) give the same rows, as text."""
    path = tmp_path / f"m{suffix}"
    table = pa.Table.from_pylist(ROWS)
    if suffix == ".csv":
        pacsv.write_csv(table, path)
    elif suffix == ".tsv":
        pacsv.write_csv(table, path, pacsv.WriteOptions(delimiter="\t"))
    elif suffix == ".xlsx":
        write_xlsx(path, ROWS)
    elif suffix == ".xls":
        write_xls(path, ROWS)
    else:
        write_xml(path, ROWS)
    got = read_all(path)
    expected = as_text(ROWS)
    if suffix == ".xml":  # attributes come first, then child elements
        expected = [{"n": e["n"], **{k: v for k, v in e.items() if k != "n"}} for e in expected]
    assert got == expected


@pytest.mark.parametrize("suffix", [".xlsx", ".xls"])
def test_a_workbook_is_read_from_the_sheet_naming_the_url_column(tmp_path: Path, suffix: str) -> None:
    """A workbook that opens on a sheet of notes is read from the first sheet whose header names
    the URL column; with no such sheet, the first sheet is read (and its columns named)."""
    path = tmp_path / f"book{suffix}"
    notes = [["About", "this file"], ["made by", "someone"]]
    data = [["id", "url", "label"], [1, "http://a/1.png", "cat"], [2, "http://a/2.png", "dog"]]
    other = [["url", "label"], ["http://a/9.png", "not this one"]]
    if suffix == ".xlsx":
        book = openpyxl.Workbook()
        first = book.active
        assert first is not None
        first.title = "notes"
        for title, rows in (("notes", notes), ("photos", data), ("later", other)):
            sheet = first if title == "notes" else book.create_sheet(title)
            for row in rows:
                sheet.append(row)
        book.save(path)
    else:
        import xlwt

        xbook = xlwt.Workbook()
        for title, rows in (("notes", notes), ("photos", data), ("later", other)):
            xsheet = xbook.add_sheet(title)
            for r, row in enumerate(rows):
                for c, value in enumerate(row):
                    xsheet.write(r, c, value)
        xbook.save(str(path))
    got = read_all(path)
    assert [(r["url"], r["label"]) for r in got] == [("http://a/1.png", "cat"), ("http://a/2.png", "dog")]
    assert [r["id"] for r in got] == ["1", "2"]
    with pytest.raises(ConfigError, match=r"URL column 'photo' not in .*columns are: About, this file"):
        Manifest(str(path), "photo")
    # Under any name, with the format given: openpyxl refused a suffix not its own, and xlrd was
    # chosen by the name alone.
    renamed = path.rename(tmp_path / "sheet.dat")
    got = read_all(renamed, input_format="excel")
    assert [(r["url"], r["label"]) for r in got] == [("http://a/1.png", "cat"), ("http://a/2.png", "dog")]


def test_xml_namespaces_attributes_only_and_missing_fields(tmp_path: Path) -> None:
    """Namespaced tags use their local names; attribute-only rows work; a missing field is null."""
    path = tmp_path / "ns.xml"
    path.write_text(
        '<r:rows xmlns:r="urn:x"><r:row url="http://a/1.png" label="x"/>'
        "<r:row><r:url>http://a/2.png</r:url></r:row></r:rows>",
        encoding="utf-8",
    )
    assert read_all(path) == [{"url": "http://a/1.png", "label": "x", "row": 0},
                              {"url": "http://a/2.png", "label": None, "row": 1}]


def test_format_detection_and_override(tmp_path: Path) -> None:
    """The extension picks the reader, looking past a compression suffix; --input_format reads any
    name; unknown extensions are refused with the list of known ones."""
    assert detect_format("a/B.PARQUET") == "parquet"
    assert detect_format("x.xlsm") == "excel"
    assert detect_format("x.anything", "xml") == "xml"
    assert [detect_format(n) for n in ("photos.csv.gz", "m.TSV.BZ2", "multimedia.txt", "m.txt.zst")] == ["csv"] * 4
    path = tmp_path / "manifest.dat"
    pacsv.write_csv(pa.Table.from_pylist(ROWS), path)
    assert read_all(path, input_format="csv") == as_text(ROWS)
    with pytest.raises(ConfigError, match=r"\.csv\.gz.*--input_format"):
        Manifest(str(path), "url")
    gz = tmp_path / "photos.gz"  # compressed, and only --input_format says what is inside
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_all(gz, input_format="csv") == as_text(ROWS)
    assert detect_format("images.xml.zst") == "xml"
    found = ("a.csv.gz", "b.parquet", "c.txt.gz", "g.xml.bz2", "README.txt", "d.parquet.gz", "e.csv.xz", "f.json")
    assert [is_manifest_name(n) for n in found] == [True, True, True, True, False, False, False, False]


@pytest.mark.parametrize(
    ("name", "header", "delimiter"),
    [
        ("m.csv", b"url,label\n", ","),
        ("photos.csv.gz", b"photo_id\tphoto_uuid\textension\r\n1\t2,3\tjpg\r\n", "\t"),  # iNaturalist's
        ("multimedia.txt", b"gbifID\ttype\tformat\tidentifier\n", "\t"),
        ("m.csv", b'url,"a\tb",c\n', ","),  # a tab inside a quoted name splits nothing
        ("m.csv", b"url\n", ","),  # one column: nothing to tell, so the default
        ("m.csv", b"", ","),
        ("m.tsv.bz2", b"url,label\n", "\t"),  # the suffix wins
        ("export.csv", b"url;label;licence, year\n", ";"),  # a European spreadsheet's export
        ("m.txt", b"url|label\n", "|"),
        ("m.csv", b'"a;b",url,label\n', ","),  # a semicolon inside a quoted name splits nothing
    ],
)
def test_the_delimiter_comes_from_the_header_line(name: str, header: bytes, delimiter: str) -> None:
    """The delimiter of comma, tab, semicolon and pipe that splits the header into the most fields,
    comma on a tie; .tsv is tab."""
    assert csv_delimiter(name, header) == delimiter


def _compressed_copy(plain: Path, name: str) -> Path:
    """`plain`, compressed as `name`'s suffix says (pyarrow's codecs)."""
    codec = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}[Path(name).suffix]
    if not pa.Codec.is_available(codec):
        pytest.skip(f"this pyarrow has no {codec}")
    path = plain.with_name(name)
    with pa.output_stream(path, compression=codec) as out:
        out.write(plain.read_bytes())
    return path


@pytest.mark.parametrize("name", ["m.csv", "m.csv.gz", "m.tsv.bz2", "m.txt.zst"])
def test_compressed_and_tab_separated_text_reads_the_same_rows(tmp_path: Path, name: str) -> None:
    """A tab-separated manifest named .csv (sniffed), gzip, bz2 or zstd compressed, gives the rows
    and row numbers of the plain .tsv, across batches."""
    plain = tmp_path / "plain.tsv"
    pacsv.write_csv(pa.Table.from_pylist(ROWS * 3), plain, pacsv.WriteOptions(delimiter="\t"))
    path = plain.with_name(name) if name == "m.csv" else _compressed_copy(plain, name)
    if name == "m.csv":
        path.write_bytes(plain.read_bytes())
    got = read_all(path, batch_rows=4)
    assert got == read_all(plain) == as_text(ROWS * 3)
    assert Manifest(str(path), "url").delimiter == "\t"


@pytest.mark.parametrize("name", ["m.xml.gz", "m.xml.bz2", "m.xml.zst"])
def test_compressed_xml_reads_the_same_rows(tmp_path: Path, name: str) -> None:
    """An xml export, compressed, streams as the plain file does, across batches."""
    plain = tmp_path / "plain.xml"
    write_xml(plain, ROWS * 3)
    path = _compressed_copy(plain, name)
    assert Manifest(str(path), "url").format == "xml"
    assert read_all(path, batch_rows=4) == read_all(plain)
    assert len(read_all(plain)) == len(ROWS) * 3


def test_xml_rows_are_let_go_once_read(tmp_path: Path) -> None:
    """Memory stays flat over a long xml manifest: the parser's root does not keep the rows read.
    (Kept, even emptied, they cost about 150 MB per million rows.)"""
    def write(path: Path, rows: int) -> Manifest:
        path.write_text("<rows>" + "".join(f"<row><url>http://a/{i}.png</url><label>c</label></row>"
                                           for i in range(rows)) + "</rows>", encoding="utf-8")
        return Manifest(str(path), "url", batch_rows=512)

    rows = 60_000
    m = write(tmp_path / "long.xml", rows)
    for _ in write(tmp_path / "short.xml", 1000).batches():
        pass  # what the first pass imports is not the rows' memory
    tracemalloc.start()
    try:
        seen = sum(batch.num_rows for batch in m.batches())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == rows
    assert peak < 2 << 20, f"peak {peak / 1e6:.1f} MB over {rows} rows"


def test_a_gbif_multimedia_txt_reads(tmp_path: Path) -> None:
    """A GBIF Darwin Core archive's multimedia.txt: tab-separated, URLs in `identifier`, empty
    fields, and (as occurrence.txt) a header wider than Arrow's smallest block."""
    columns = ["gbifID", "type", "format", "identifier", "references", "title", "license", "rightsHolder"]
    columns += [f"dwc_term_number_{i}" for i in range(100)]  # ~2 kB of header
    rows = [[str(1000 + i), "StillImage", "image/jpeg", f"https://inaturalist-open-data.s3.amazonaws.com/photos/{i}/"
             "original.jpg", "", f"photo {i}", "http://creativecommons.org/licenses/by-nc/4.0/", "someone",
             *[""] * 100] for i in range(5)]
    path = tmp_path / "multimedia.txt"
    path.write_text("\n".join("\t".join(r) for r in [columns, *rows]) + "\n", encoding="utf-8")
    m = Manifest(str(path), "identifier")
    assert m.columns == columns
    got = [r for b in m.batches() for r in b.to_pylist()]
    assert [(r["row"], r["gbifID"], r["identifier"]) for r in got] == [(i, r[0], r[3]) for i, r in enumerate(rows)]
    assert got[0]["references"] is None  # an empty field is null, as in any csv


@pytest.mark.parametrize("name", ["m.csv", "m.csv.gz"])
def test_lines_of_another_field_count_are_skipped_and_located(tmp_path: Path, name: str) -> None:
    """A line with a field too many or too few (a stray delimiter in a free-text field) is one row's
    problem: skipped, and named with the first one's line, where a plain or compressed file is
    local. The rows around it keep reading, numbered without it."""
    lines = ["url\tlabel", *(f"http://a/{i}.png\ta" for i in range(250)), "http://a/x.png\ta\textra",
             "http://a/y.png", "http://a/z.png\tb"]
    text = ("\n".join(lines) + "\n").encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    manifest = Manifest(str(path), "url", batch_rows=100)
    assert manifest.problems() == []
    rows = [r for b in manifest.batches() for r in b.to_pylist()]
    assert [r["url"] for r in rows[-2:]] == ["http://a/249.png", "http://a/z.png"] and rows[-1]["row"] == 250
    (problem,) = manifest.problems()
    assert problem.startswith(f"{path}: 2 line(s) skipped, the first at line 252, not split into the header's fields")
    assert "'http://a/x.png\\ta\\textra' (3 of 2 fields); 'http://a/y.png' (1 of 2 fields)" in problem


def test_quotes_in_a_tab_separated_export_are_text(tmp_path: Path) -> None:
    """GBIF's and iNaturalist's tab-separated exports quote nothing: a title that starts with a
    quote, balanced or not, is text, and the lines after it are rows. (Read as an opening quote, it
    swallowed every line up to the next quote: 100 rows of 200 lost, counted as 2 lines.)"""
    titles = ['"unbalanced title' if i == 100 else '"Big" bird' if i == 150 else f"photo {i}" for i in range(200)]
    lines = ["gbifID\tidentifier\ttitle", *(f"{i}\thttp://a/{i}.jpg\t{t}" for i, t in enumerate(titles))]
    path = tmp_path / "multimedia.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = Manifest(str(path), "identifier")
    rows = [r for b in manifest.batches() for r in b.to_pylist()]
    assert [r["title"] for r in rows] == titles and manifest.problems() == []


def test_a_stray_quote_in_comma_separated_text_counts_the_lines_it_swallowed(tmp_path: Path) -> None:
    """Comma-separated text keeps quoting (a quoted field may hold commas and newlines). A stray
    quote opens a field that runs on to the next quote, taking the lines between into one bad row:
    every one of them is counted as skipped, not one."""
    lines = ["url,title", "http://a/0.png,fine", 'http://a/1.png,"oops', "http://a/2.png,t", "http://a/3.png,t",
             'http://a/4.png,"a, b"', "http://a/5.png,t"]
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = Manifest(str(path), "url")
    assert [r["url"] for b in manifest.batches() for r in b.to_pylist()] == ["http://a/0.png", "http://a/5.png"]
    (problem,) = manifest.problems()
    assert problem.startswith(f"{path}: 4 line(s) skipped"), problem


@pytest.mark.parametrize("name", ["m.csv", "m.csv.gz"])
def test_a_quote_that_never_closes_in_the_last_column_is_counted_with_every_line_it_took(
        tmp_path: Path, name: str) -> None:
    """In the last column, a stray quote that never closes was read by Arrow as one value running to
    the end of the file: the rows after it were lost and nothing was counted. Its row is skipped
    and its lines counted, as a stray quote elsewhere is; a quoted value that holds a line break
    and closes, in the file's last row, is read as it is."""
    lines = ["url,title", *(f"http://a/{i}.png,t" for i in range(250)), 'http://a/x.png,"oops',
             *(f"http://a/after{i}.png,t" for i in range(5))]
    text = ("\n".join(lines) + "\n").encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    manifest = Manifest(str(path), "url", batch_rows=100)
    rows = [r for b in manifest.batches() for r in b.to_pylist()]
    assert len(rows) == 250 and rows[-1]["url"] == "http://a/249.png"
    (problem,) = manifest.problems()
    assert problem.startswith(f"{path}: 6 line(s) skipped"), problem
    assert "line 252, 'http://a/x.png,oops': a quote opened there never closes, and took the file's 5" in problem

    closed = tmp_path / "closed.csv"
    closed.write_text('url,title\nhttp://a/0.png,t\nhttp://a/1.png,"two\nlines"\n', encoding="utf-8")
    manifest = Manifest(str(closed), "url")
    assert [r["title"] for b in manifest.batches() for r in b.to_pylist()] == ["t", "two\nlines"]
    assert manifest.problems() == []


@pytest.mark.parametrize("name", ["m.csv", "m.tsv"])
def test_na_and_null_are_labels_in_text_manifests(tmp_path: Path, name: str) -> None:
    """Only an empty field is missing: NA, null, nan and N/A are values (as parquet keeps them)."""
    words = ["NA", "null", "nan", "N/A", "NULL", ""]
    sep = "\t" if name.endswith(".tsv") else ","
    path = tmp_path / name
    path.write_text("url" + sep + "label\n" + "".join(f"http://a/{i}.png{sep}{w}\n" for i, w in enumerate(words)),
                    encoding="utf-8")
    assert [r["label"] for r in read_all(path)] == [*words[:-1], None]


def test_bytes_that_are_not_utf8_are_one_values_problem(tmp_path: Path) -> None:
    """A Latin-1 character in one free-text field of a UTF-8 export: that value reads with U+FFFD
    and is counted (a URL so mended fails as invalid_url downstream); the file reads on, where it
    once stopped the run. A UTF-16 export is refused in one line that says how to convert it."""
    path = tmp_path / "m.csv"
    path.write_bytes("url,label\nhttp://a/1.png,caf\u00e9\n".encode() + b"http://a/2.png,caf\xe9\nhttp://a/3.png,\n")
    manifest = Manifest(str(path), "url")
    assert [r["label"] for r in read_all(path)] == ["caf\u00e9", "caf\ufffd", None]
    list(manifest.batches())
    (problem,) = manifest.problems()
    assert problem.startswith(f"{path}: 1 value(s) held bytes that are not UTF-8, read as U+FFFD")
    utf16 = tmp_path / "unicode.txt"
    utf16.write_bytes("url\tlabel\nhttp://a/1.png\tcat\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"is UTF-16 text .* save it as such \(Excel: 'CSV UTF-8'\)"):
        Manifest(str(utf16), "url")


def test_repeated_column_names_are_read_apart(tmp_path: Path) -> None:
    """A header that names a column twice (two `url`s) is read as pandas reads it: the first keeps
    the name, the later ones are `url.1`, ... (never a name the header has). The run once stopped
    on a traceback there."""
    text = tmp_path / "m.csv"
    text.write_text("url,url,url.1,label\nhttp://a/1.png,http://b/1.png,x,cat\n")
    manifest = Manifest(str(text), "url")
    assert manifest.columns == ["url", "url.2", "url.1", "label"] and manifest.renamed
    assert read_all(text) == [{"url": "http://a/1.png", "url.2": "http://b/1.png", "url.1": "x", "label": "cat",
                               "row": 0}]
    table = pa.Table.from_arrays([pa.array(["http://a/1.png"]), pa.array([1]), pa.array(["x"])], ["url", "n", "n"])
    pq.write_table(table, tmp_path / "m.parquet")
    parquet = Manifest(str(tmp_path / "m.parquet"), "url")
    assert parquet.declared == {"url": pa.string(), "n": pa.int64(), "n.1": pa.string()}
    assert read_all(tmp_path / "m.parquet") == [{"url": "http://a/1.png", "n": 1, "n.1": "x", "row": 0}]
    book = openpyxl.Workbook()
    book.active.append(["url", "tag", "tag"])
    book.active.append(["http://a/1.png", "a", "b"])
    book.save(tmp_path / "m.xlsx")
    assert read_all(tmp_path / "m.xlsx") == [{"url": "http://a/1.png", "tag": "a", "tag.1": "b", "row": 0}]


def test_write_manifest_writes_what_the_reader_reads(tmp_path: Path) -> None:
    """The fake hosts' helper compresses and delimits delimited text as its name says."""
    urls = [f"http://a/{i}.png" for i in range(3)]
    for name in ("m.csv.gz", "m.tsv"):
        assert [r["url"] for r in read_all(write_manifest(tmp_path / name, urls))] == urls
    tabs = write_manifest(tmp_path / "t.csv.bz2", urls, labels=["x"] * 3, delimiter="\t")
    assert Manifest(str(tabs), "url").delimiter == "\t"


def test_column_checks_name_the_columns(tmp_path: Path) -> None:
    """A missing URL or label column is a ConfigError listing the columns that exist."""
    path = tmp_path / "m.csv"
    path.write_text("link,species\nhttp://a/1.png,x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="columns are: link, species"):
        Manifest(str(path), "url")
    m = Manifest(str(path), "link")
    with pytest.raises(ConfigError, match=r"label column 'label'.*link, species"):
        m.require_column("label", "label")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("gone.parquet", None, "not found"),
        ("bad.parquet", b"PAR1 this is not parquet at all PAR1", "cannot read"),
        ("empty.parquet", b"", "cannot read"),
        ("bomb.xml", b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;'
                     b'&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><r><i><url>&c;</url></i></r>',
         "refused"),
        ("xxe.xml", b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                    b"<r><i><url>&x;</url></i></r>", "refused"),
        ("broken.xml", b"<r><i><url>http://a/1.png</url></i><i><url>oops</r>", "not well-formed"),
        ("garbage.xlsx", b"not a zip file", "cannot read"),
        ("corrupt.csv.gz", b"this was never gzip", r"corrupt\.csv\.gz as csv: zlib inflate failed"),
        ("truncated.csv.gz", TRUNCATED_GZ, r"truncated\.csv\.gz as csv.*: Truncated compressed stream"),
        ("empty.csv.gz", b"", "Empty CSV file"),
        ("empty.txt", b"", "Empty CSV file"),
        ("m.csv.xz", b"\xfd7zXZ\x00", r"\.xz compression is not supported"),
        ("m.parquet.gz", gzip.compress(b"PAR1"), r"only text \(csv, tsv, txt, xml\) is read compressed"),
        ("corrupt.xml.gz", b"this was never gzip", r"cannot read .*corrupt\.xml\.gz as xml: zlib inflate failed"),
        ("truncated.xml.gz", gzip.compress(b"<r>" + b"<i><url>http://a/1.png</url></i>" * 2000 + b"</r>")[:200],
         r"truncated\.xml\.gz.*(ompressed|well-formed)"),
    ],
)
def test_unreadable_inputs_are_user_errors(tmp_path: Path, name: str, content: bytes | None, match: str) -> None:
    """Missing, corrupt, unsafe (DTD/entities), malformed or wrongly compressed manifests raise a
    one-line ConfigError, never crash."""
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as caught:
        read_all(path)
    assert "\n" not in str(caught.value)


def test_csv_streams_in_batches_with_continuous_row_numbers(tmp_path: Path) -> None:
    """The csv reader yields batches of at most batch_rows, with rows numbered across batches."""
    path = tmp_path / "m.csv"
    n = 2500
    pacsv.write_csv(pa.table({"url": [f"http://a/{i}.png" for i in range(n)], "id": list(range(n))}), path)
    batches = list(Manifest(str(path), "url", batch_rows=300).batches())
    assert all(b.num_rows <= 300 for b in batches) and len(batches) >= n // 300
    rows = np.concatenate([b.column("row").to_numpy() for b in batches])
    assert rows.tolist() == list(range(n))
    assert batches[0].schema.field("id").type == pa.string()  # no type guessing from the first block


def test_an_existing_row_column_is_kept(tmp_path: Path) -> None:
    """A partition's own `row` numbers survive, so its keys match the original manifest's (a
    partition keeps the manifest's order: they increase)."""
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"url": ["http://a/4.png", "http://a/9.png"], "row": [4, 9]}), path)
    assert [r["row"] for r in read_all(path)] == [4, 9]


def test_load_input_file_api(tmp_path: Path) -> None:
    """load_input_file returns the whole small manifest as an Arrow table, without a row column."""
    path = tmp_path / "m.xlsx"
    write_xlsx(path, ROWS)
    table = load_input_file(str(path))
    assert table.column_names == ["url", "label", "license", "n"]
    assert table.num_rows == len(ROWS) and table.column("n").to_pylist()[:2] == ["0", "1"]


def test_parquet_streaming_memory_stays_bounded(tmp_path: Path) -> None:
    """A 1M-row parquet read in small batches never holds more than a few batches in memory.

    Python allocations are watched with tracemalloc and Arrow's buffers with its allocator
    counter; both peaks stay far below the size of the whole table (~47 MB).
    """
    n = 1_000_000
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(n)), pa.string()), 7, "0")
    urls = pc.binary_join_element_wise("http://127.0.0.2:1/images/", digits, ".png", "")
    labels = pc.binary_join_element_wise("class", pc.cast(pa.array(np.arange(n) % 10), pa.string()), "")
    table = pa.table({"url": urls, "label": labels})
    whole = table.nbytes
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=50_000)
    del table, urls, labels, digits

    started = time.monotonic()
    arrow_base = pa.total_allocated_bytes()
    arrow_peak = 0
    rows = batches = 0
    tracemalloc.start()
    try:
        for batch in Manifest(str(path), "url", batch_rows=2000).batches():
            assert batch.num_rows <= 2000
            rows += batch.num_rows
            batches += 1
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_base)
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == n and batches == n // 2000
    assert whole > 40e6
    assert arrow_peak < 20e6, f"Arrow held {arrow_peak / 1e6:.1f} MB while streaming"
    assert py_peak < 8e6, f"Python peak {py_peak / 1e6:.1f} MB while streaming"
    assert time.monotonic() - started < 10
