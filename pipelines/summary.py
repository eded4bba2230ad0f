"""Run summaries read back from the Parquet output (pyarrow only)."""

from __future__ import annotations

import collections

import pyarrow.dataset as ds

__all__ = ["summarize", "format_summary", "read_table"]


def read_table(output: str, name: str):
    """The ``name`` table (faces or sources) of an output directory as a pyarrow Table."""
    import glob
    import os

    files = sorted(glob.glob(os.path.join(output, f"{name}-*.parquet")))
    if not files:
        raise FileNotFoundError(f"no {name}-*.parquet in {output}")
    return ds.dataset(files, format="parquet").to_table()


def summarize(output: str) -> dict:
    """Counts of a run: inputs by status and type, faces, frames, and the errors."""
    sources = read_table(output, "sources").to_pylist()
    faces = read_table(output, "faces")
    status = collections.Counter(s["status"] for s in sources)
    emotions = collections.Counter(faces.column("emotion").to_pylist())
    return {
        "inputs": len(sources),
        "ok": status.get("ok", 0),
        "no_face": status.get("no_face", 0),
        "error": status.get("error", 0),
        "images": sum(s["source_type"] == "image" for s in sources),
        "videos": sum(s["source_type"] == "video" for s in sources),
        "frames": sum(s["frames"] for s in sources),
        "faces": faces.num_rows,
        "emotions": dict(emotions.most_common()),
        "errors": [(s["source_uri"], s["stage"], s["error"]) for s in sources if s["status"] == "error"],
    }


def format_summary(summary: dict, output: str) -> str:
    lines = [
        f"inputs {summary['inputs']} ({summary['images']} images, {summary['videos']} videos, "
        f"{summary['frames']} frames): ok {summary['ok']}, no_face {summary['no_face']}, error {summary['error']}",
        f"faces {summary['faces']}" + (": " + ", ".join(f"{k} {v}" for k, v in summary["emotions"].items())
                                       if summary["emotions"] else ""),
    ]
    for uri, stage, error in summary["errors"][:20]:
        lines.append(f"  error at {stage}: {uri}: {error}")
    if len(summary["errors"]) > 20:
        lines.append(f"  ... and {len(summary['errors']) - 20} more errors (see the sources table)")
    lines.append(f"output: {output}/faces-*.parquet, {output}/sources-*.parquet")
    return "\n".join(lines)
