"""Open a manifest (parquet, csv, excel, xml) as a stream of Arrow record batches.

Parquet and csv are read batch by batch, so memory depends on the batch size, never on the number
of rows. Delimited text (.csv, .tsv, .txt) may be compressed (.gz, .bz2, .zst): it is decompressed
as it streams, and its delimiter is read off its header line (csv_delimiter). Excel and xml have no
streaming columnar reader; they are read row by row and grouped into batches, which keeps memory
bounded too. Every batch gets a `row` column: the 0-based row number in the manifest, the stable
identity that keys and the ledger rely on.

A manifest may be a local path or any URL fsspec reads (s3://, gs://, https://, hf://, ...): it is
opened as a file object and streamed the same way (parquet reads only the byte ranges it needs).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from flowdc.errors import ConfigError

log = logging.getLogger(__name__)

ROW_COLUMN = "row"
ROW_RULE = (f"column {ROW_COLUMN!r} is reserved for row numbers: whole numbers from 0 up, each larger than the one "
            "before (as `flowdc partition` writes them); rename the column")
FORMATS_BY_SUFFIX = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",  # e.g. a GBIF Darwin Core archive's multimedia.txt (tab-separated)
    ".xlsx": "excel",
    ".xlsm": "excel",
    ".xls": "excel",
    ".xml": "xml",
}


# Text only (delimited or xml): parquet and excel are compressed inside already, and their readers need to seek.
READ_COMPRESSED = ("csv", "xml")
COMPRESSION_BY_SUFFIX = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
UNSUPPORTED_COMPRESSION = (".xz", ".lzma", ".lz4", ".zip", ".7z", ".br", ".z")
FORMATS_HELP = (".parquet/.pq, .csv/.tsv/.txt (also compressed: .csv.gz, .tsv.bz2, .txt.zst, ...), "
                ".xlsx/.xlsm/.xls, .xml (also .xml.gz, ...)")
DELIMITERS = (",", "\t", ";", "|")  # what a header line is split at to find its delimiter, comma first
SAVE_AS_UTF8 = "delimited text is read as UTF-8: save it as such (Excel: 'CSV UTF-8'), or convert it: iconv -t UTF-8"
HEAD_BYTES = 1 << 16  # enough for any header line the delimiter is read from


def _split_compression_suffix(path: str) -> tuple[str, str]:
    """(path without a known compression suffix, that suffix lower-cased or "")."""
    suffix = Path(path).suffix.lower()
    if suffix in COMPRESSION_BY_SUFFIX:
        return path[: -len(suffix)], suffix
    return path, ""


def compression_of(path: str) -> str | None:
    """pyarrow's codec name for a manifest's compression suffix, or None when it has none."""
    suffix = Path(path).suffix.lower()
    if suffix in UNSUPPORTED_COMPRESSION:
        raise ConfigError(f"{path}: {suffix} compression is not supported; recompress it as .gz, .bz2 or .zst "
                          "(or decompress it)")
    codec = COMPRESSION_BY_SUFFIX.get(suffix)
    if codec is not None and not pa.Codec.is_available(codec):
        raise ConfigError(f"{path}: this pyarrow cannot decompress {codec}; recompress it as .gz or decompress it")
    return codec


def detect_format(path: str, input_format: str = "auto") -> str:
    """The reader for `path`: input_format, or else its suffix, looked up past a compression suffix
    (photos.csv.gz is csv)."""
    compressed = compression_of(path) is not None
    inner, _ = _split_compression_suffix(path)
    fmt = input_format if input_format != "auto" else FORMATS_BY_SUFFIX.get(Path(inner).suffix.lower())
    if fmt is None:
        raise ConfigError(f"cannot tell the format of {path!r} from its extension ({FORMATS_HELP}); "
                          "pass --input_format parquet|csv|excel|xml")
    if compressed and fmt not in READ_COMPRESSED:
        raise ConfigError(f"{path}: only text (csv, tsv, txt, xml) is read compressed; decompress this {fmt} "
                          "manifest")
    return fmt


MAGIC = {"gzip": b"\x1f\x8b", "bz2": b"BZh", "zstd": b"\x28\xb5\x2f\xfd"}
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a legacy .xls workbook (an OLE2 compound file)


class _Prefixed(io.RawIOBase):
    """A binary stream whose first bytes were read off already: they are handed out again first."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def is_manifest_name(name: str) -> bool:
    """Whether a file found in a folder of manifests is one, by the suffixes detect_format reads.
    A plain .txt is more often a folder's notes (README.txt) than a manifest: a folder scan takes
    .txt only compressed (.txt.gz); one given by name is read whatever its suffix."""
    inner, compressed = _split_compression_suffix(name)
    suffix = Path(inner).suffix.lower()
    fmt = FORMATS_BY_SUFFIX.get(suffix)
    return fmt is not None and (not compressed or fmt in READ_COMPRESSED) and (bool(compressed) or suffix != ".txt")


def csv_delimiter(path: str, head: bytes) -> str:
    """The field delimiter of delimited text named `path` whose first bytes are `head`.

    A .tsv (before any compression suffix) is tab-separated. Anything else (.csv, .txt, or any file
    read with --input_format csv) is decided by its header line: the one of comma, tab, semicolon and
    pipe that splits it into the most fields (quotes respected), comma when none splits it more. So
    iNaturalist's tab-separated photos.csv.gz and GBIF's multimedia.txt read as tab-separated, a
    spreadsheet's European export (`url;label`) as semicolons, and `url,label` or a lone `url` as commas.
    """
    inner, _ = _split_compression_suffix(_path_part(path))
    if Path(inner).suffix.lower() == ".tsv":
        return "\t"
    line = _header_line(head).decode("utf-8", errors="replace")
    fields = {d: len(next(csv.reader([line], delimiter=d), [])) for d in DELIMITERS}
    return max(DELIMITERS, key=lambda d: fields[d])  # the first of the most: comma on a tie


class Manifest:
    """A manifest file checked up front (exists, readable, has the URL column)."""

    def __init__(self, path: str, url_column: str, input_format: str = "auto", batch_rows: int = 8192,
                 storage_options: dict[str, Any] | None = None):
        self.path = path
        self.url_column = url_column
        self.storage_options = storage_options or {}
        self.batch_rows = batch_rows
        _check_exists(path, self.storage_options)  # first: a missing file or a folder is the clearer news
        self._inspect(input_format)
        if url_column not in self.columns:
            raise ConfigError(
                f"URL column {url_column!r} not in {path}; columns are: {', '.join(self.columns) or '(none)'}"
            )
        self._require_text_urls()

    def _inspect(self, input_format: str) -> None:
        """Format, compression, delimiter and columns: what reading the rows needs to know."""
        self.format = detect_format(_path_part(self.path), input_format)
        self.compression = compression_of(_path_part(self.path))
        self.delimiter = ","  # delimited text only: decided from its header in _read_columns
        self.quoted = True  # ... and whether it is read with quoting (uses_quotes)
        self.malformed = MalformedLines()  # delimited text's lines skipped by the last pass over the rows
        self.not_utf8 = 0  # and its values whose stray bytes it read as U+FFFD
        self._types: list[pa.DataType] = []  # parquet declares its columns' types; the others are text
        names = self._read_columns()
        self.columns = unique_names(names)
        self.declared = dict(zip(self.columns, self._types, strict=True)) if self._types else {}
        self.renamed = self.columns != names  # a name repeated in the header: batches are renamed
        if self.renamed:
            repeated = sorted({name for name in names if names.count(name) > 1})
            log.warning("%s repeats column names (%s): the later ones are read as %s", self.path, ", ".join(repeated),
                        ", ".join(new for new, old in zip(self.columns, names, strict=True) if new != old))

    def problems(self) -> list[str]:
        """What the last pass over the rows skipped, in words (empty when nothing was)."""
        problems = [] if not self.not_utf8 else [
            f"{self.path}: {self.not_utf8} value(s) held bytes that are not UTF-8, read as U+FFFD (a URL so "
            f"mended fails as invalid_url); if many, the file is in another encoding: {SAVE_AS_UTF8}"]
        skipped = self.malformed
        if not skipped.count:
            return problems
        more = " ..." if skipped.rows > len(skipped.examples) else ""
        where = ""
        if not is_remote(self.path):  # one more pass, local files only: Arrow does not say where
            with self.open_text() as src:
                found = ragged_csv_row(src, self.delimiter, self.quoted)
            where = f", the first at line {found[1]}" if found else ""
        return [f"{self.path}: {skipped.count} line(s) skipped{where}, not split into the header's fields (a "
                f"stray delimiter or quote?): {'; '.join(skipped.examples)}{more}", *problems]

    def require_column(self, name: str, what: str) -> None:
        if name not in self.columns:
            raise ConfigError(f"{what} column {name!r} not in {self.path}; columns are: {', '.join(self.columns)}")

    def _require_text_urls(self) -> None:
        """A URL column of numbers, dates or booleans is the wrong column: refused as a whole, not
        row by row (every row would fail as unsupported_scheme:none; partition would put every row
        on host ""). Text and bytes (URLs as UTF-8) pass."""
        kind = self.declared.get(self.url_column)
        if kind is not None and pa.types.is_dictionary(kind):
            kind = kind.value_type
        if kind is not None and (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                                 or pa.types.is_decimal(kind) or pa.types.is_temporal(kind)):
            raise ConfigError(f"URL column {self.url_column!r} holds {kind}, not text (URLs): is it the right "
                              "column?")

    def column_type(self, name: str) -> pa.DataType:
        """The type a column's values have in batches(): parquet's declared one, else text."""
        return self.declared.get(name, pa.string())

    def num_rows_hint(self) -> int | None:
        """Row count when it is cheap to know (parquet metadata), else None."""
        if self.format == "parquet":
            with self.open() as src:
                return pq.ParquetFile(src).metadata.num_rows
        return None

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        """The manifest for a reader: its path when local, else an fsspec file object (closed after)."""
        if not is_remote(self.path):
            yield self.path.removeprefix("file://")
            return
        import fsspec

        try:
            with fsspec.open(self.path, "rb", **self.storage_options) as fh:
                yield fh
        except (FileNotFoundError, PermissionError) as exc:
            raise ConfigError(f"cannot read {self.path}: {_first_line(exc)}") from None

    @contextlib.contextmanager
    def open_text(self) -> Iterator[Any]:
        """Text (delimited or xml) from its start, decompressed: a path or a binary stream (closed after).
        A compressed stream cannot seek, so each pass over the file opens it again."""
        with self.open() as src:
            if self.compression is None:
                yield src
                return
            if not isinstance(src, str):
                # A web server that sends a .gz with `Content-Encoding: gzip` has it decompressed on
                # the way (aiohttp, under fsspec): the text arrives plain. (A local .gz that is not
                # gzip is an error to report, not text to guess at.)
                head, src = _peek(src, len(MAGIC[self.compression]))
                if not head.startswith(MAGIC[self.compression]):
                    yield src
                    return
            with pa.input_stream(src, compression=self.compression) as stream:
                yield stream

    def batches(self) -> Iterator[pa.RecordBatch]:
        readers = {"parquet": self._parquet, "csv": self._csv, "excel": self._excel, "xml": self._xml}
        numbering = RowNumbering()
        try:
            for batch in readers[self.format]():
                if batch.num_rows == 0:
                    continue
                yield numbering(batch.rename_columns(self.columns) if self.renamed else batch)
        except ConfigError:
            raise
        except (pa.ArrowInvalid, OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.path} as {self.format} near row {numbering.start}: "
                              f"{_first_line(exc)}") from None

    # -- per-format readers -------------------------------------------------------------------
    def _read_columns(self) -> list[str]:
        try:
            if self.format == "parquet":
                with self.open() as src:
                    schema = pq.ParquetFile(src).schema_arrow
                self._types = list(schema.types)
                return list(schema.names)
            if self.format == "csv":
                with self.open_text() as src:  # once: a remote or compressed file's head is read again from memory
                    head, src = _peek(src, HEAD_BYTES)
                    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
                        raise ConfigError(f"{self.path} is UTF-16 text (a spreadsheet's 'Unicode text' export); "
                                          f"{SAVE_AS_UTF8}")
                    self.delimiter = csv_delimiter(self.path, head)
                    self.quoted = uses_quotes(head, self.delimiter)
                    return _csv_names(src, self.delimiter, self._csv_block_size(), self.quoted)
            first = next(iter(self._rows()), None)
            return list(first.keys()) if first else []
        except StopIteration:
            return []
        except ConfigError:
            raise
        except Exception as exc:  # any parser error on an unreadable file is a user error here
            raise ConfigError(f"cannot read {self.path} as {self.format}: {_first_line(exc)}") from None

    def _parquet(self) -> Iterator[pa.RecordBatch]:
        # pre_buffer would keep every row group read so far alive until the end of the file.
        with self.open() as src:
            yield from pq.ParquetFile(src, pre_buffer=False).iter_batches(batch_size=self.batch_rows)

    def _csv_block_size(self) -> int:
        # Arrow needs the header line within one block: a wide header (GBIF's occurrence.txt has
        # hundreds of columns) would not fit a small one.
        return max(1 << 20, self.batch_rows * 256)

    def _csv(self) -> Iterator[pa.RecordBatch]:
        self.malformed = MalformedLines()  # of this pass
        self.not_utf8 = 0
        last = None  # held back: its last row may be a quote's that never closes (_cut_an_unclosed_quote)
        with (self.open_text() as src,
              _open_csv(src, self.columns, self.delimiter, self._csv_block_size(), self.malformed,
                        self.quoted) as reader):
            for batch in _rebatch(reader, self.batch_rows):
                if last is not None:
                    yield last
                last = self._mend_utf8(batch)
        if last is not None:
            yield self._cut_an_unclosed_quote(last) if self.quoted else last

    def _cut_an_unclosed_quote(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The file's last batch, without its last row when a quote opened there never closes.
        Arrow reads such a quote in the last column as one value that runs on to the end of the
        file, taking every line after it, and says nothing (elsewhere the swallowed lines make a
        row of the wrong width, which MalformedLines counts). Skipped and counted the same way."""
        (last,) = batch.slice(batch.num_rows - 1).to_pylist()
        if not any(isinstance(value, str) and "\n" in value for value in last.values()):
            return batch  # the common case, decided without reading the file again
        with self.open_text() as src:
            opened = unclosed_quote_at_end(src, self.delimiter)
        if opened is None:
            return batch  # a quoted value that holds line breaks, closed: a row like any other
        line, lines = opened
        first_line = self.delimiter.join("" if v is None else str(v) for v in last.values()).split("\n", 1)[0]
        self.malformed.add(lines, f"line {line}, {first_line!r}: a quote opened there never closes, and took the "
                                  f"file's {lines - 1} line(s) after it")
        return batch.slice(0, batch.num_rows - 1)

    def _mend_utf8(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch with every value valid UTF-8: a value's stray bytes (a Latin-1 character in a
        free-text field) read as U+FFFD, and counted; as parquet's binary text reads (as_text)."""
        for i, column in enumerate(batch.columns):
            try:
                column.validate(full=True)  # checks the UTF-8, at memory speed
            except pa.ArrowInvalid:
                text, mended = _decoded(column.view(pa.binary()).to_pylist())
                self.not_utf8 += mended
                batch = batch.set_column(i, batch.schema.field(i), text)
        return batch

    def _excel(self) -> Iterator[pa.RecordBatch]:
        yield from _rows_to_batches(self._rows(), self.batch_rows)

    def _xml(self) -> Iterator[pa.RecordBatch]:
        yield from _rows_to_batches(self._rows(), self.batch_rows)

    def _rows(self) -> Iterator[dict[str, Any]]:
        if self.format == "excel":
            with self.open() as src:
                yield from _excel_rows(src, self.path, self.url_column)
        else:
            with self.open_text() as src:
                yield from _xml_rows(src, self.path)


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique as pandas reads them: a repeated `url` is `url.1`, then `url.2`, ...
    (the first keeps its name, and no new name takes one the header has)."""
    taken, unique = set(names), []
    next_suffix: dict[str, int] = {}
    for name in names:
        if name not in next_suffix:
            next_suffix[name] = 1
            unique.append(name)
            continue
        n = next_suffix[name]
        while f"{name}.{n}" in taken:
            n += 1
        next_suffix[name] = n + 1
        taken.add(f"{name}.{n}")
        unique.append(f"{name}.{n}")
    return unique


def _decoded(values: list[Any]) -> tuple[pa.Array, int]:
    """`values` as text, bytes decoded as UTF-8 with U+FFFD for stray bytes; and how many had some."""
    text, mended = [], 0
    for value in values:
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                value, mended = value.decode("utf-8", "replace"), mended + 1
        text.append(value)
    return pa.array(text, pa.string()), mended


def as_text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A column as text (URLs, labels): numbers as their digits, bytes as UTF-8. Some parquet
    writers store text as plain binary; bytes of a row that are not UTF-8 are that row's problem,
    not the run's: read with U+FFFD in their place (urls.NOT_UTF8)."""
    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:
        return _decoded(column.to_pylist())[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _path_part(path: str) -> str:
    """The path of a URL without its query (a signed https:// URL still ends in .parquet)."""
    return path.split("?", 1)[0] if is_remote(path) else path


def _check_exists(path: str, storage_options: dict[str, Any]) -> None:
    if not is_remote(path):
        local = Path(path.removeprefix("file://"))
        if local.is_dir():
            raise ConfigError(f"--input {path} is a folder: give the manifest file (for partitions, flowdc distribute)")
        if local.exists() and not local.is_file():
            raise ConfigError(f"--input {path} is not a regular file (a device or a pipe): the manifest is read "
                              "more than once, so save it to a file first")
        if not local.is_file():
            raise ConfigError(f"input file not found: {path}")
        return
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(path, **storage_options)
        found = fs.isfile(inner)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {_first_line(exc)}") from None
    except Exception as exc:  # the store cannot be reached or refuses us: a bad input as the user sees it
        raise ConfigError(f"cannot reach the input {path}: {type(exc).__name__}: {_first_line(exc)}") from None
    if not found:
        raise ConfigError(f"input file not found: {path}")


def ragged_csv_row(src: Any, delimiter: str, quoted: bool = True) -> tuple[int, int] | None:
    """(0-based data row, 1-based file line) of the first row whose field count differs from the
    header's, or None. `src` is a path or a binary file object (decompressed already)."""
    try:
        with _as_text(src) as text:
            reader = csv.reader(text, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
            width = len(next(reader, []))
            row = 0
            start = reader.line_num + 1  # a quoted field's line breaks make a row of many lines: its first
            for fields in reader:
                if fields and len(fields) != width:  # blank lines hold no row, for the Arrow reader too
                    return row, start
                row += bool(fields)
                start = reader.line_num + 1
    except (OSError, ValueError, csv.Error):
        return None
    return None


def unclosed_quote_at_end(src: Any, delimiter: str) -> tuple[int, int] | None:
    """(1-based file line where it opened, lines it takes) of a quoted field still open at the end
    of the text, or None. `src` is a path or a binary file object (decompressed already)."""
    with _as_text(src) as text:
        reader = csv.reader(text, delimiter=delimiter, strict=True)  # strict: an open quote at the end raises
        while True:
            start = reader.line_num + 1
            try:
                next(reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):
                    return start, reader.line_num - start + 1
                if reader.line_num < start:
                    return None  # an error that reads nothing would repeat
                # other quirks ('"a"b') are read by Arrow as they are: the reader goes on with the next line


@contextlib.contextmanager
def _as_text(src: Any) -> Iterator[io.TextIOWrapper]:
    """`src` (a path or a binary file object) as text for the csv module, which is given no field
    size limit: one huge field is not what its callers look for."""
    csv.field_size_limit(sys.maxsize)
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(src, "rb")) if isinstance(src, str) else src
        yield stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=""))


def _peek(src: Any, n: int) -> tuple[bytes, Any]:
    """The first `n` bytes of `src` (a path or a binary stream), and `src` to read from its start
    again: a path as it is, a stream with those bytes handed out first (it need not seek back)."""
    if isinstance(src, str):
        with open(src, "rb") as fh:
            return fh.read(n), src
    head = bytes(src.read(n))
    return head, io.BufferedReader(_Prefixed(head, src))


class MalformedLines:
    """Lines of delimited text whose field count is not the header's (a stray delimiter or quote in
    a free-text field of a big export). Each is one row's problem, not the run's: it is skipped and
    counted, and the first few are kept to be shown. Its URL cannot be trusted, so it is not fetched."""

    SHOWN = 3

    def __init__(self) -> None:
        self.count = 0  # lines
        self.rows = 0  # as the reader cut them: a stray quote's row spans many lines
        self.examples: list[str] = []

    def __call__(self, row: Any) -> str:  # pyarrow's invalid_row_handler
        text = row.text if len(row.text) <= 80 else row.text[:77] + "..."
        # A stray quote makes one "row" of many lines.
        self.add(row.text.count("\n") + 1, f"{text!r} ({row.actual_columns} of {row.expected_columns} fields)")
        return "skip"

    def add(self, lines: int, example: str) -> None:
        self.count += lines
        self.rows += 1
        if len(self.examples) < self.SHOWN:
            self.examples.append(example)


def uses_quotes(head: bytes, delimiter: str) -> bool:
    """Whether delimited text whose first bytes are `head` is read with quoting (a field in "..."
    may hold the delimiter, a newline, ""). Tab-separated exports (GBIF's, iNaturalist's) quote
    nothing, and a free-text field there that starts with a quote (`"Big" bird`) is common: read as
    an opening quote, it swallowed every line after it up to the next quote. So tab-separated text
    is read unquoted, unless the names in its header are all quoted (as pyarrow writes it)."""
    if delimiter != "\t":
        return True
    names = _header_line(head).split(b"\t")
    return all(len(n) >= 2 and n.startswith(b'"') and n.endswith(b'"') for n in names)


def _header_line(head: bytes) -> bytes:
    """The first line of delimited text whose first bytes are `head`: no byte-order mark, no line end."""
    return head.removeprefix(b"\xef\xbb\xbf").split(b"\n", 1)[0].rstrip(b"\r")


def _csv_options(delimiter: str, block_size: int, malformed: MalformedLines | None = None,
                 quoted: bool = True) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
    return (pacsv.ReadOptions(block_size=block_size),
            pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False, newlines_in_values=quoted,
                               invalid_row_handler=malformed))


def _csv_names(src: Any, delimiter: str, block_size: int, quoted: bool) -> list[str]:
    """The header's column names, as Arrow reads them; parses the first block only."""
    # Lines skipped here are counted when the rows are read.
    read_opts, parse_opts = _csv_options(delimiter, block_size, MalformedLines(), quoted)
    with pacsv.open_csv(src, read_options=read_opts, parse_options=parse_opts) as probe:
        return list(probe.schema.names)


def _open_csv(src: Any, names: list[str], delimiter: str, block_size: int, malformed: MalformedLines,
              quoted: bool) -> pacsv.CSVStreamingReader:
    """A streaming csv reader over `src` (a path or a binary stream) whose header holds `names`."""
    read_opts, parse_opts = _csv_options(delimiter, block_size, malformed, quoted)
    # Every column as text: type inference on the first block can be wrong for later blocks.
    # Bytes that are not UTF-8 are let through here and mended per value (_mend_utf8): one row's problem.
    # Only an empty field is missing: "NA", "null" or "nan" can be a label (Arrow's default takes them for null).
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                   null_values=[""], check_utf8=False)
    return pacsv.open_csv(src, read_options=read_opts, parse_options=parse_opts, convert_options=convert)


def _rebatch(reader: Any, size: int) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        for offset in range(0, batch.num_rows, size):
            yield batch.slice(offset, size)


def with_row_numbers(batch: pa.RecordBatch, start: int, last_row: int = -1) -> pa.RecordBatch:
    """The batch with its row numbers: counted from `start`, or the manifest's own `row` column,
    checked to follow `last_row` (the previous batch's last)."""
    if ROW_COLUMN not in batch.schema.names:
        return batch.append_column(ROW_COLUMN, pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64)))
    # A partition written by `flowdc partition` keeps the original manifest's row numbers, in
    # increasing order. Any other column of that name would be taken for them: two rows of one
    # number would share one sample, so such a column is refused rather than trusted.
    idx = batch.schema.get_field_index(ROW_COLUMN)
    try:
        rows = batch.column(idx).cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ConfigError(ROW_RULE + " (it holds values that are not whole numbers)") from None
    if rows.null_count:
        raise ConfigError(ROW_RULE + f" (it has an empty value near row {start})") from None
    values = rows.to_numpy()
    if values[0] <= last_row or (np.diff(values) <= 0).any():
        raise ConfigError(ROW_RULE + f" (near row {start} they repeat, go down or are negative)")
    return batch.set_column(idx, ROW_COLUMN, rows)


class RowNumbering:
    """Gives a manifest's batches, in order, their row numbers (with_row_numbers), keeping where
    the count and the manifest's own numbers got to."""

    def __init__(self) -> None:
        self.start = 0  # rows numbered so far
        self.last_row = -1

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        batch = with_row_numbers(batch, self.start, self.last_row)
        self.start += batch.num_rows
        if batch.num_rows:
            self.last_row = batch.column(ROW_COLUMN)[-1].as_py()
        return batch


def _rows_to_batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[pa.RecordBatch]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield _batch_of(chunk)
            chunk = []
    if chunk:
        yield _batch_of(chunk)


def _batch_of(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    return pa.RecordBatch.from_pydict(
        {n: pa.array([_text(r.get(n)) for r in rows], type=pa.string()) for n in names}
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _excel_rows(src: Any, path: str, url_column: str = "") -> Iterator[dict[str, Any]]:
    """The rows of the workbook's first sheet whose header names `url_column` (a workbook often
    opens on a sheet of notes), else of its first sheet. Legacy .xls is told by its name or, for a
    local file, by its first bytes, so `--input_format excel` reads a workbook under any name."""
    if _path_part(path).lower().endswith(".xls") or (isinstance(src, str)
                                                      and _peek(src, len(OLE2_MAGIC))[0] == OLE2_MAGIC):
        import xlrd

        book = (xlrd.open_workbook(src, on_demand=True) if isinstance(src, str)
                else xlrd.open_workbook(file_contents=src.read(), on_demand=True))
        sheets = [book.sheet_by_index(i) for i in range(book.nsheets)]
        if not sheets:
            return
        headers = [[str(v) for v in sheet.row_values(0)] if sheet.nrows else [] for sheet in sheets]
        at = _sheet_with(headers, url_column, [sheet.name for sheet in sheets], path)
        header = unique_names(headers[at])
        for i in range(1, sheets[at].nrows):
            yield dict(zip(header, sheets[at].row_values(i), strict=False))
        return
    import openpyxl

    with contextlib.ExitStack() as stack:
        # A file object: openpyxl refuses a path whose suffix is not one of its own.
        fh = stack.enter_context(open(src, "rb")) if isinstance(src, str) else src
        book = openpyxl.load_workbook(fh, read_only=True, data_only=True)
        stack.callback(book.close)
        headers = [[str(v) if v is not None else f"column_{i}" for i, v in enumerate(next(sheet.iter_rows(
            max_row=1, values_only=True), ()))] for sheet in book.worksheets]
        at = _sheet_with(headers, url_column, [sheet.title for sheet in book.worksheets], path)
        rows = book.worksheets[at].iter_rows(min_row=2, values_only=True)
        header = unique_names(headers[at])
        for values in rows:
            if any(v is not None for v in values):
                yield dict(zip(header, values, strict=False))


def _sheet_with(headers: list[list[str]], url_column: str, names: list[str], path: str) -> int:
    """Which sheet is the manifest: the first whose header names the URL column, else the first."""
    for i, header in enumerate(headers):
        if url_column and url_column in header:
            if i:
                log.info("%s: reading sheet %r, the first whose header names %r", path, names[i], url_column)
            return i
    return 0


def _xml_rows(src: Any, path: str) -> Iterator[dict[str, Any]]:
    """Each child of the root is a row; its attributes and child elements are the columns.

    defusedxml refuses DTD entity declarations and external references, so neither an entity
    bomb nor an external entity can be used against the reader.
    """
    from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
    from defusedxml.ElementTree import iterparse

    depth = 0
    root = None
    try:
        for event, elem in iterparse(src, events=("start", "end"), forbid_dtd=True):
            if event == "start":
                depth += 1
                if root is None:
                    root = elem
                continue
            depth -= 1
            if depth == 1:  # a row element just closed
                row: dict[str, Any] = dict(elem.attrib)
                for child in elem:
                    row[_local_name(child.tag)] = (child.text or "").strip() or None
                yield row
                # The root keeps every row it parsed, emptied or not (about 150 MB per million):
                # rows already read go. Those parsed ahead are still held by their own events.
                root.clear()
    except (DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden):
        raise ConfigError(f"{path}: XML with a DTD or entities is refused (unsafe input)") from None
    except (OSError, pa.ArrowException) as exc:  # compressed, and corrupt or cut short
        raise ConfigError(f"cannot read {path} as xml: {_first_line(exc)}") from None
    except Exception as exc:  # ParseError and friends
        raise ConfigError(f"{path}: not well-formed XML: {_first_line(exc)}") from None


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def load_input_file(path: str, input_format: str = "auto") -> pa.Table:
    """The seed's helper: a whole (small) manifest as one Arrow table. Use Manifest to stream big ones."""
    m = Manifest.__new__(Manifest)  # no URL column to check
    m.path, m.url_column, m.batch_rows, m.storage_options = path, "", 65536, {}
    _check_exists(path, m.storage_options)
    m._inspect(input_format)
    batches = list(m.batches())
    table = pa.Table.from_batches(batches) if batches else pa.table({})
    if ROW_COLUMN not in m.columns and ROW_COLUMN in table.column_names:
        table = table.drop_columns([ROW_COLUMN])
    return table
