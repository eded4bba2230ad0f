"""Run summaries read back from the Parquet output (pyarrow only)."""

from __future__ import annotations

import collections
import fnmatch
import os
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from models.registry import is_uri

__all__ = ["summarize", "format_summary", "parse_summary", "SUMMARY_COLUMNS", "table_files", "local_dataset",
           "read_table", "previous_contents"]


def table_files(output: str, name: str) -> list[str]:
    """Sorted paths of the ``name-*.parquet`` shards of an output: a local directory (matched on file
    names, so a directory named with ``[``, ``*`` or ``?`` is read as named) or any Beam FileSystems
    URI (``gs://...``); [] where there are none."""
    if is_uri(output):
        from apache_beam.io.filesystems import FileSystems

        try:
            match = FileSystems.match([FileSystems.join(output, f"{name}-*.parquet")])[0]
        except Exception as e:  # BeamIOError: the location cannot be listed
            raise FileNotFoundError(f"cannot list {output}: {e}") from e
        return sorted(m.path for m in match.metadata_list)
    if not os.path.isdir(output):
        return []
    pattern = f"{name}-*.parquet"
    return sorted(os.path.join(output, f) for f in os.listdir(output)
                  if fnmatch.fnmatchcase(f, pattern) and os.path.isfile(os.path.join(output, f)))


def local_dataset(files: list[str]) -> ds.Dataset:
    """Local Parquet ``files`` (paths read as named: never as patterns, ``~`` as a folder) as one pyarrow dataset whose
    schema is the union of theirs: a column that only some shards carry reads as null in the others,
    whichever shard comes first."""
    files = [os.path.abspath(f) for f in files]  # pyarrow would read a leading ~ as the home directory
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    return ds.dataset(files, schema=schema, format="parquet")


def read_table(output: str, name: str, columns: list[str] | None = None) -> pa.Table:
    """The ``name`` table (faces, sources or tracks) of an output as a pyarrow Table (only ``columns``
    where given). Shards that lack an optional column read it as null."""
    files = table_files(output, name)
    if not files:
        raise FileNotFoundError(f"no {name}-*.parquet in {output}")
    if not is_uri(output):
        return local_dataset(files).to_table(columns=columns)
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    tables = []
    for path in files:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            # A seekable stream (GCS, S3) is read at the footer and the wanted columns only: read whole,
            # a shard's stored crops were downloaded to count its emotions.
            seekable = getattr(f, "seekable", None)
            source = f if seekable is not None and seekable() else pa.BufferReader(f.read())
            tables.append(pq.read_table(source, columns=columns))
    return pa.concat_tables(tables, promote_options="default")


def summarize(output: str) -> dict:
    """Counts of a run: inputs by status and type, faces, frames, and the errors.

    Every input has one status: ``inputs == ok + no_face + error + skipped``.
    """
    sources = read_table(output, "sources", ["source_uri", "source_type", "status", "stage", "error",
                                             "frames"]).to_pylist()
    faces = read_table(output, "faces", ["emotion"])
    status = collections.Counter(s["status"] for s in sources)
    # counted by Arrow: a run's millions of faces are not made Python strings one by one
    counts = pc.value_counts(faces.column("emotion")).to_pylist()
    emotions = collections.Counter({c["values"]: c["counts"] for c in counts})
    return {
        "inputs": len(sources),
        "ok": status.get("ok", 0),
        "no_face": status.get("no_face", 0),
        "error": status.get("error", 0),
        "skipped": status.get("skipped", 0),
        "images": sum(s["source_type"] == "image" for s in sources),
        "videos": sum(s["source_type"] == "video" for s in sources),
        "frames": sum(s["frames"] for s in sources),
        "faces": faces.num_rows,
        "emotions": dict(emotions.most_common()),
        "errors": [(s["source_uri"], s["stage"], s["error"]) for s in sources if s["status"] == "error"],
    }


def previous_contents(output: str) -> dict[str, str]:
    """sha256 -> run_id of the run holding the results, for the content an earlier run analysed.

    Read from the ``sources`` table of ``output``: sources that came out ``ok`` or ``no_face`` map
    to that run; ``skipped`` ones to the run they were skipped for. Failed sources are left out, so
    a rerun tries them again.
    """
    table = read_table(output, "sources")
    if "content_sha256" not in table.column_names:
        raise ValueError(f"{output} has no content_sha256 column in its sources table (written by an older "
                         "facebeam); --skip_existing needs an output written with content hashes")
    known: dict[str, str] = {}
    run_ids: dict[str, str] = {}  # one string object per run id, however many rows share it
    columns = ["content_sha256", "status", "run_id", "previous_run_id"]
    for row in table.select([c for c in columns if c in table.column_names]).to_pylist():
        digest, status = row["content_sha256"], row["status"]
        if not digest or status not in ("ok", "no_face", "skipped"):
            continue
        run_id = row.get("previous_run_id") if status == "skipped" else row["run_id"]
        if run_id:
            known.setdefault(digest, run_ids.setdefault(run_id, run_id))
    return known


def _one_line(text: str) -> str:
    """``text`` with control characters (a newline in a file name) escaped, so it stays on one line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


SUMMARY_COLUMNS = ("inputs", "images", "videos", "frames", "ok", "no_face", "error", "skipped", "faces")


def format_summary(summary: dict, output: str) -> str:
    """The run's counts as a small table, the emotions found, the first errors and where the output is."""
    values = [str(summary.get(c, 0)) for c in SUMMARY_COLUMNS]
    widths = [max(len(c), len(v)) for c, v in zip(SUMMARY_COLUMNS, values)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(SUMMARY_COLUMNS, widths)).rstrip(),
        "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip(),
    ]
    if summary["emotions"]:
        lines.append("emotions: " + ", ".join(f"{k} {v}" for k, v in summary["emotions"].items()))
    if summary.get("skipped"):
        lines.append(f"skipped: {summary['skipped']} inputs analysed by an earlier run (see previous_run_id)")
    for uri, stage, error in summary["errors"][:20]:
        lines.append(f"  error at {stage}: {_one_line(uri)}: {_one_line(error or '')}")
    if len(summary["errors"]) > 20:
        lines.append(f"  ... and {len(summary['errors']) - 20} more errors (see the sources table)")
    lines.append(f"output: {output}/faces-*.parquet, {output}/sources-*.parquet, {output}/tracks-*.parquet")
    return "\n".join(lines)


def parse_summary(text: str) -> dict[str, int]:
    """The counts of a printed summary table (the inverse of the table part of ``format_summary``)."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.split() == list(SUMMARY_COLUMNS):
            return dict(zip(SUMMARY_COLUMNS, map(int, lines[i + 1].split())))
    raise ValueError("no summary table in the text")
