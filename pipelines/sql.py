"""SQL over an output directory: DuckDB views of its Parquet tables, and the ``facebeam sql`` command.

``connect(OUTPUT)`` returns an in-memory DuckDB connection with one view per table:

- ``faces`` and ``sources``: ``OUTPUT/faces-*.parquet`` and ``OUTPUT/sources-*.parquet``. A directory
  needs at least one of the two; if only one is there, the other is an empty view with its
  documented schema (``transforms.sinks``), so that queries over both still bind.
- ``tracks``: ``OUTPUT/tracks-*.parquet``, only when such files exist; otherwise there is no
  ``tracks`` view (its columns are not fixed here), and a query naming it fails with DuckDB's
  "Table with name tracks does not exist".

Shards are read with ``union_by_name``, so optional columns (``track_id``, ``crop_jpeg``) that only
some shards carry read as NULL in the others. The views only read: the Parquet files are never
changed. Only local directories are supported.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import decimal
import io
import json
import math
import os
import shutil
import sys
import uuid

import duckdb

from pipelines.summary import table_files

__all__ = ["TABLES", "OPTIONAL_TABLES", "table_files", "sql_string", "view_sql", "connect", "views", "columns_of",
           "to_csv", "to_json", "main"]

# Tables every output directory has (an absent one becomes an empty view), then optional ones.
TABLES: tuple[str, ...] = ("faces", "sources")
OPTIONAL_TABLES: tuple[str, ...] = ("tracks",)


def sql_string(value: str) -> str:
    """``value`` as a DuckDB string literal (single quotes doubled; backslashes are literal)."""
    return "'" + value.replace("'", "''") + "'"


def view_sql(name: str, files: list[str]) -> str:
    """``CREATE VIEW name`` over the Parquet ``files``.

    Hive partitioning is off so that a ``key=value`` folder in the path adds no column.
    """
    if not files:
        raise ValueError(f"no files for the {name} view")
    listed = ", ".join(sql_string(f) for f in files)
    return (f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{listed}], '
            f"union_by_name = true, hive_partitioning = false)")


def _empty_view(con: duckdb.DuckDBPyConnection, name: str) -> None:
    # The schemas live with the writer, whose module loads Beam: import it only when needed.
    import pyarrow as pa

    from transforms.sinks import FACES_SCHEMA, SOURCES_SCHEMA

    schema = {"faces": FACES_SCHEMA, "sources": SOURCES_SCHEMA}[name]
    con.from_arrow(pa.Table.from_pylist([], schema=schema)).create_view(name)


def connect(output_dir: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views ``faces``, ``sources`` (and ``tracks`` if present).

    Raises FileNotFoundError for a missing directory or one with neither faces nor sources files.
    """
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
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
            con.execute(view_sql(name, files))
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
    """A value as JSON can hold it: bytes as base64, non-finite floats as None, others as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta, decimal.Decimal, uuid.UUID)):
        return str(value)
    return str(value)


def to_csv(columns: list[str], rows: list[tuple]) -> str:
    """CSV text with a header; NULL is empty, lists and structs are JSON, bytes base64."""
    out = io.StringIO()
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
    return out.getvalue()


def to_json(columns: list[str], rows: list[tuple]) -> str:
    """A JSON array with one object per row (one row per line); bytes base64, NaN as null."""
    lines = [json.dumps(dict(zip(columns, map(_plain, row))), ensure_ascii=False) for row in rows]
    return "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"


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
                        help="table (DuckDB's rendering, for reading), csv or json (every row, for programs)")
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
        rel = con.sql(query)
        if rel is None:  # a statement without a result (SET, CREATE TEMP VIEW, ...)
            return 0
        if args.format == "table":
            width = shutil.get_terminal_size((160, 24)).columns
            rel.show(max_rows=max(args.max_rows, 1), max_width=width)
            return 0
        columns, rows = rel.columns, rel.fetchall()
    except (OSError, ValueError, duckdb.Error) as e:
        print(f"facebeam sql: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(to_csv(columns, rows) if args.format == "csv" else to_json(columns, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
