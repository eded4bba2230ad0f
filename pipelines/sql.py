"""SQL over an output directory: DuckDB views of its Parquet tables, and the ``facebeam sql`` command.

``connect(OUTPUT)`` returns an in-memory DuckDB connection with one view per table:

- ``faces`` and ``sources``: ``OUTPUT/faces-*.parquet`` and ``OUTPUT/sources-*.parquet``. A directory
  needs at least one of the two; if only one is there, the other is an empty view with its
  documented schema (``transforms.sinks``), so that queries over both still bind.
- ``tracks``: ``OUTPUT/tracks-*.parquet``, only when such files exist; otherwise there is no
  ``tracks`` view (its columns are not fixed here), and a query naming it fails with DuckDB's
  "Table with name tracks does not exist".

The views scan the shards as one pyarrow dataset (``pipelines.summary.local_dataset``): file names
are read as named (a directory called ``out[1]`` is not a pattern), and optional columns
(``track_id``, ``crop_jpeg``) that only some shards carry read as NULL in the others. The views only
read: the Parquet files are never changed. Only local directories are supported: a URI (``gs://...``)
is refused with a message saying to copy its Parquet files to a local folder.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import decimal
import io
import itertools
import json
import math
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

import duckdb
import pyarrow as pa

from models.registry import is_uri
from pipelines.summary import local_dataset, table_files

__all__ = ["TABLES", "OPTIONAL_TABLES", "table_files", "sql_string", "connect", "views", "columns_of",
           "json_keys", "write_csv", "write_json", "to_csv", "to_json", "main"]

# Tables every output directory has (an absent one becomes an empty view), then optional ones.
TABLES: tuple[str, ...] = ("faces", "sources")
OPTIONAL_TABLES: tuple[str, ...] = ("tracks",)


def sql_string(value: str) -> str:
    """``value`` as a DuckDB string literal (single quotes doubled; backslashes are literal)."""
    return "'" + value.replace("'", "''") + "'"


def _empty_view(con: duckdb.DuckDBPyConnection, name: str) -> None:
    # The schemas live with the writer, whose module loads Beam: import it only when needed.
    import pyarrow as pa

    from transforms.sinks import FACES_SCHEMA, SOURCES_SCHEMA

    schema = {"faces": FACES_SCHEMA, "sources": SOURCES_SCHEMA}[name]
    con.from_arrow(pa.Table.from_pylist([], schema=schema)).create_view(name)


def connect(output_dir: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views ``faces``, ``sources`` (and ``tracks`` if present).

    Raises FileNotFoundError for a missing directory, a URI, or a directory with neither faces nor sources
    files.
    """
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        if is_uri(output_dir):  # 'analyze' writes to gs://..., but DuckDB here reads local files only
            raise FileNotFoundError(
                f"{output_dir}: not a local directory; 'facebeam sql' and 'facebeam report' read a local "
                f"output directory only: copy the run's *.parquet files from {output_dir} to a local folder first")
        what = "not a directory" if os.path.exists(output_dir) else "no such directory"
        raise FileNotFoundError(f"{output_dir}: {what}")
    found = {name: table_files(output_dir, name) for name in TABLES + OPTIONAL_TABLES}
    if not any(found[name] for name in TABLES):
        raise FileNotFoundError(
            f"{output_dir}: no faces-*.parquet or sources-*.parquet; "
            "give the --output directory of a finished 'facebeam analyze' run")
    con = duckdb.connect(":memory:")
    for name, files in found.items():
        if files:
            con.from_arrow(local_dataset(files)).create_view(name)
        elif name in TABLES:
            _empty_view(con, name)
    return con


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the views of a connection from ``connect``."""
    return [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                      "ORDER BY view_name").fetchall()]


def columns_of(con: duckdb.DuckDBPyConnection, view: str) -> list[str]:
    """Column names of a view, in order."""
    return [r[0] for r in con.execute(f'DESCRIBE "{view}"').fetchall()]


def _plain(value):
    """A value as JSON can hold it: bytes as base64, non-finite floats as None, decimals as numbers,
    dates, times and UUIDs as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, decimal.Decimal):  # DECIMAL, and HUGEINT (sums) as Arrow gives them
        if value.is_finite() and value.as_tuple().exponent >= 0:
            return int(value)
        value = float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, pa.MonthDayNano):  # an INTERVAL, as an ISO 8601 duration
        return f"P{value.months}M{value.days}DT{value.nanoseconds / 1e9:g}S"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def json_keys(columns: list[str]) -> list[str]:
    """Object keys for result ``columns``: a repeated name (``SELECT *`` over a join) gets the first
    free suffix ``_1``, ``_2``, ... so that no column is lost."""
    keys: list[str] = []
    taken = set(columns)
    seen: set[str] = set()
    for name in columns:
        key, n = name, 0
        while key in seen or (key != name and key in taken):
            n += 1
            key = f"{name}_{n}"
        seen.add(key)
        keys.append(key)
    return keys


def write_csv(columns: list[str], rows: Iterable[tuple], out: TextIO) -> None:
    """CSV with a header; NULL is empty, lists and structs are JSON, bytes base64."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for value in map(_plain, row):
            if value is None:
                cells.append("")
            elif isinstance(value, (list, dict)):
                cells.append(json.dumps(value))
            else:
                cells.append(value)
        writer.writerow(cells)


def write_json(columns: list[str], rows: Iterable[tuple], out: TextIO) -> None:
    """A JSON array with one object per row (one row per line, keys from ``json_keys``); bytes base64,
    NaN as null."""
    keys = json_keys(columns)
    out.write("[")
    sep = "\n"
    for row in rows:
        out.write(sep + json.dumps(dict(zip(keys, map(_plain, row))), ensure_ascii=False))
        sep = ",\n"
    out.write("\n]\n" if sep != "\n" else "]\n")


def to_csv(columns: list[str], rows: Iterable[tuple]) -> str:
    """``write_csv`` as a string."""
    out = io.StringIO()
    write_csv(columns, rows, out)
    return out.getvalue()


def to_json(columns: list[str], rows: Iterable[tuple]) -> str:
    """``write_json`` as a string."""
    out = io.StringIO()
    write_json(columns, rows, out)
    return out.getvalue()


def _stream(rel: duckdb.DuckDBPyRelation, chunk: int = 4096) -> Iterator[tuple]:
    """The rows of ``rel`` an Arrow batch at a time: an export of millions of rows holds one batch in
    memory."""
    for batch in rel.to_arrow_reader(chunk):
        yield from zip(*(column.to_pylist() for column in batch.columns))


def _without_tail(query: str) -> str:
    """``query`` without the comments and semicolons after its last statement (``SELECT ...; -- end``).

    DuckDB's relation re-wraps the last statement's text as a subquery to draw a table, and there a ``;``
    followed by a comment is a syntax error. The tail is found with DuckDB's own tokenizer, so a ``--``
    inside a string or a quoted name stays; a query without such a tail is returned unchanged, and so is
    one whose tail holds an unterminated ``/*`` (DuckDB reports that).
    """
    data = query.encode("utf-8")  # token positions are byte offsets into the UTF-8 text
    tokens = duckdb.tokenize(query)
    ends = [pos for pos, _ in tokens[1:]] + [len(data)]
    cut = None
    for (pos, kind), end in zip(reversed(tokens), reversed(ends)):
        text = data[pos:end].strip()
        if kind == duckdb.token_type.comment:
            if text.startswith(b"/*") and (len(text) < 4 or not text.endswith(b"*/")):
                return query
        elif not (kind == duckdb.token_type.operator and text == b";"):
            break
        cut = pos
    else:  # comments only, or nothing: no statement to keep
        return query
    return query if cut is None else data[:cut].decode("utf-8")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facebeam sql",
        description="Run SQL (DuckDB) over an output directory. Views: faces, sources, and tracks "
                    "when the directory has tracks-*.parquet.",
        epilog="Example: facebeam sql out \"SELECT emotion, count(*) FROM faces GROUP BY ALL ORDER BY 2 DESC\"")
    parser.add_argument("output", help="output directory of 'facebeam analyze' (holds faces-*.parquet, ...)")
    parser.add_argument("query", help="SQL to run; several statements separated by ';' print the last "
                                      "one's result; '-' reads the SQL from standard input")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="table (DuckDB's rendering, for reading), csv or json (every row, for programs; "
                             "json suffixes a repeated column name with _1, _2, ...)")
    parser.add_argument("--max_rows", type=int, default=100,
                        help="rows shown by --format table (the first and last halves); csv and json print all")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Prints the result of the query; 0 on success, 2 for a bad directory or a failing query."""
    args = _parser().parse_args(argv)
    query = sys.stdin.read() if args.query == "-" else args.query
    try:
        if not query.strip():
            raise ValueError("empty query")
        con = connect(args.output)
        rel = con.sql(_without_tail(query))
        if rel is None:  # a statement without a result (SET, CREATE TEMP VIEW, ...)
            return 0
        if args.format == "table":
            width = shutil.get_terminal_size((160, 24)).columns
            rel.show(max_rows=max(args.max_rows, 1), max_width=width)
            return 0
        columns, rows = rel.columns, _stream(rel)
        first = next(rows, None)  # the query's errors come before any output
        rows = itertools.chain([] if first is None else [first], rows)
        (write_csv if args.format == "csv" else write_json)(columns, rows, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (| head): not an error
        with contextlib.suppress(OSError, ValueError):  # nor is the flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, ValueError, duckdb.Error) as e:
        print(f"facebeam sql: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
