"""The ``facebeam report`` command: one self-contained HTML file describing an output directory.

Every number is computed with DuckDB SQL over the views of ``pipelines.sql.connect``, so the
report agrees with ``facebeam sql`` over the same Parquet files (except that a NaN score, age or
probability counts as missing, as SQL's NULL does: it is left out of means, ranges and rankings).
Plots are PNGs drawn on matplotlib's Agg canvas and embedded as base64, face pictures are embedded
JPEGs (``pipelines.thumbnails``): the file opens offline and needs no JavaScript.

Sections, by their stable ``id``: ``totals`` (inputs by status and type, frames, faces, and each
run's inputs, models and faces), ``emotions`` (overall), ``groups`` (emotions per group: the
parent folder of ``source_uri``, or the first capture group of ``--group_regex``), ``age-gender``,
``timelines`` (mean emotion probabilities over time for each video, per track when faces carry
``track_id``), ``gallery`` (the most confident faces per emotion), ``confidence``
(detection-confidence histogram) and ``errors``.

Key numbers are machine-readable: the element holding each has a ``data-metric`` attribute and
holds the plain integer. Names: the totals ``inputs``, ``ok``, ``no_face``, ``error``, ``skipped``,
``images``, ``videos``, ``frames``, ``faces`` (and ``tracks`` when faces carry ``track_id``: track ids
are counted per video and run); ``emotion:<emotion>`` (faces whose top emotion it is);
``group:<group>:inputs``, ``group:<group>:faces`` and ``group:<group>:<emotion>``; ``gender:<gender>``;
``video:<source_uri>:faces`` (``video:<source_uri>@<run_id>:faces`` for a video with faces from
several runs, e.g. live sessions logged into one folder: one timeline each); ``confidence:faces``
and ``confidence:missing``; ``errors``.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import math
import re
import sys
from dataclasses import dataclass

import duckdb
import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines.sql import columns_of, connect, sql_string, views
from pipelines.thumbnails import FaceRef, face_thumbnails

__all__ = ["SECTIONS", "NO_GROUP", "ReportOptions", "ReportData", "group_expression", "collect", "render_html",
           "build_report", "main"]

# (id, title) of the report's sections, in order.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("totals", "Totals"),
    ("emotions", "Emotions"),
    ("groups", "Emotions per group"),
    ("age-gender", "Age and gender"),
    ("timelines", "Reaction timelines"),
    ("gallery", "Most confident faces per emotion"),
    ("confidence", "Detection confidence"),
    ("errors", "Errors"),
)

# Group of a source whose URI the --group_regex does not match.
NO_GROUP = "(no match)"

# Colours of the FER2013 emotions, the same in every chart; other labels take matplotlib's cycle.
_EMOTION_COLOURS = {
    "angry": "#d62728", "disgust": "#8c564b", "fear": "#9467bd", "happy": "#ffbf00",
    "sad": "#1f77b4", "surprise": "#17becf", "neutral": "#7f7f7f",
}


@dataclass(frozen=True)
class ReportOptions:
    """What to group by and how much to show.

    ``group_by`` is 'folder' or 'regex' (then ``group_regex`` needs a capture group); the limits
    bound the groups listed, the videos with a timeline, the tracks drawn per video, the faces per
    emotion in the gallery and the errors listed.
    """

    group_by: str = "folder"
    group_regex: str | None = None
    max_groups: int = 40
    max_videos: int = 20
    max_tracks: int = 6
    gallery_size: int = 6
    max_errors: int = 500
    histogram_bins: int = 20
    thumbnail_size: int = 96


@dataclass(frozen=True)
class Timeline:
    """Mean emotion probabilities of one video over time, in one run.

    ``series`` holds ``(label, times_s, {emotion: means})``: one entry for the whole video, or one
    per track (the ``max_tracks`` with most faces) when its faces carry ``track_id``. ``run_id`` is
    set when several runs hold faces of the video (live sessions logged into one folder, each with
    its own clock and track ids), None when one does.
    """

    source_uri: str
    run_id: str | None
    faces: int
    frames: int
    tracks: int
    untracked: int
    series: list[tuple[str, list[float], dict[str, list[float]]]]


@dataclass(frozen=True)
class GalleryFace:
    """One face of the gallery: its emotion, rank within it, probability, time (videos) and where it is."""

    emotion: str
    rank: int
    confidence: float | None  # None: the model gave NaN
    timestamp_s: float | None
    ref: FaceRef


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, as computed by ``collect``; lists of tuples are SQL rows in display order.

    - ``totals``: the totals by metric name (see the module docstring).
    - ``by_type``: (source_type, inputs, ok, no_face, error, frames, faces).
    - ``runs``: (run_id, emotion models, age/gender models, faces).
    - ``emotion_counts``: faces per top emotion; ``emotion_means``: mean probability per emotion.
    - ``groups``: (group, inputs, errors, faces), the ``max_groups`` with most faces of ``groups_total``;
      ``group_emotions``: faces per top emotion of each listed group.
    - ``age_gender``: (age_group, gender, faces), age groups by age; ``genders``: (gender, faces,
      mean gender_confidence, mean age); ``age_summary``: (mean, median, min, max) of age.
    - ``timelines``: the ``max_videos`` videos with most faces, of ``videos_total`` (a video's
      faces from each run are a timeline of their own, and count apart).
    - ``confidence_bins``: (low, high, faces) of equal-width bins over the observed detection
      confidences; ``confidence_missing``: faces without one; ``detectors``: (detector, faces,
      faces with a confidence, mean confidence).
    - ``errors``: (source_uri, stage, error), the first ``max_errors`` by source, of ``errors_total``.
    """

    output_dir: str
    group_label: str
    emotions: tuple[str, ...]
    has_tracks: bool
    totals: dict[str, int]
    by_type: list[tuple]
    runs: list[tuple]
    emotion_counts: dict[str, int]
    emotion_means: dict[str, float]
    groups: list[tuple]
    group_emotions: dict[str, dict[str, int]]
    groups_total: int
    age_gender: list[tuple]
    genders: list[tuple]
    age_summary: tuple
    timelines: list[Timeline]
    videos_total: int
    gallery: list[GalleryFace]
    confidence_bins: list[tuple[float, float, int]]
    confidence_missing: int
    detectors: list[tuple]
    errors: list[tuple]
    errors_total: int


def _ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def group_expression(group_by: str, group_regex: str | None = None) -> str:
    """SQL expression over ``source_uri`` naming a source's group.

    'folder': the parent folder (the URI up to its last '/'; '.' for a bare file name).
    'regex': the first capture group of ``group_regex`` (RE2 syntax), ``NO_GROUP`` when it does
    not match or captures nothing. Raises ValueError for anything else.
    """
    if group_by == "folder":
        if group_regex:
            raise ValueError("--group_regex needs --group_by regex")
        parent = r"regexp_replace(source_uri, '[^/]*$', '')"
        return (f"CASE WHEN {parent} = '' THEN '.' WHEN {parent} = '/' THEN '/' "
                f"ELSE rtrim({parent}, '/') END")
    if group_by == "regex":
        if not group_regex:
            raise ValueError("--group_by regex needs --group_regex PATTERN with a capture group, "
                             "e.g. '/photos/([^/]+)/'")
        try:
            groups = re.compile(group_regex).groups
        except re.error:
            groups = None  # RE2 syntax Python does not know: DuckDB judges it when the report runs
        if groups == 0:
            raise ValueError(f"--group_regex {group_regex!r} has no capture group; put the group name in (...)")
        return (f"coalesce(nullif(regexp_extract(source_uri, {sql_string(group_regex)}, 1), ''), "
                f"{sql_string(NO_GROUP)})")
    raise ValueError(f"--group_by must be 'folder' or 'regex', not {group_by!r}")


def _scalar(con: duckdb.DuckDBPyConnection, query: str, params=None):
    """The first value of the first row of a query."""
    return con.execute(query, params or []).fetchall()[0][0]


def _totals(con, has_tracks: bool) -> dict[str, int]:
    row = con.execute("""
        SELECT count(*), count(*) FILTER (status = 'ok'), count(*) FILTER (status = 'no_face'),
               count(*) FILTER (status = 'error'), count(*) FILTER (status = 'skipped'),
               count(*) FILTER (source_type = 'image'), count(*) FILTER (source_type = 'video'),
               coalesce(sum(frames), 0)
        FROM sources""").fetchall()[0]
    totals = dict(zip(("inputs", "ok", "no_face", "error", "skipped", "images", "videos", "frames"), map(int, row)))
    totals["faces"] = int(_scalar(con, "SELECT count(*) FROM faces"))
    if has_tracks:
        totals["tracks"] = int(_scalar(  # track ids are numbered per video and run
            con, "SELECT count(DISTINCT (run_id, source_uri, track_id)) FROM faces WHERE track_id IS NOT NULL"))
    return totals


def _timeline(con, uri: str, run_id: str, shown_run: bool, emotions: tuple[str, ...], has_tracks: bool,
              max_tracks: int) -> Timeline:
    means = ", ".join(f"avg({_ident('p_' + e)})" for e in emotions)
    where = "source_uri = $uri AND run_id = $run AND timestamp_s IS NOT NULL"
    key = {"uri": uri, "run": run_id}
    faces, frames = con.execute(f"SELECT count(*), count(DISTINCT timestamp_s) FROM faces WHERE {where}",
                                key).fetchall()[0]
    tracks = untracked = 0
    rows = []
    if has_tracks:
        tracks, untracked = con.execute(
            f"SELECT count(DISTINCT track_id), count(*) FILTER (track_id IS NULL) FROM faces WHERE {where}",
            key).fetchall()[0]
    if tracks:
        rows = con.execute(f"""
            WITH top AS (
                SELECT track_id, count(*) AS n FROM faces
                WHERE {where} AND track_id IS NOT NULL
                GROUP BY track_id ORDER BY n DESC, track_id LIMIT $k)
            SELECT 'track ' || f.track_id, f.timestamp_s, {means}
            FROM (SELECT * FROM faces WHERE {where}) f JOIN top USING (track_id)
            GROUP BY f.track_id, top.n, f.timestamp_s ORDER BY top.n DESC, f.track_id, f.timestamp_s""",
                           {**key, "k": max_tracks}).fetchall()
    else:
        rows = con.execute(f"""
            SELECT 'all faces', timestamp_s, {means} FROM faces
            WHERE {where} GROUP BY timestamp_s ORDER BY timestamp_s""", key).fetchall()
    series: list[tuple[str, list[float], dict[str, list[float]]]] = []
    for label, t, *probs in rows:
        if not series or series[-1][0] != label:
            series.append((label, [], {e: [] for e in emotions}))
        series[-1][1].append(float(t))
        for e, p in zip(emotions, probs):
            series[-1][2][e].append(math.nan if p is None else float(p))  # a gap in the line
    return Timeline(uri, run_id if shown_run else None, int(faces), int(frames), int(tracks), int(untracked),
                    series)


def _gallery(con, k: int, has_crops: bool) -> list[GalleryFace]:
    # Ranked without the crops, whose bytes are fetched for the chosen faces only: carried through
    # the ranking, every stored crop of the output was held in memory.
    ranked = """
        SELECT emotion, rank, emotion_confidence, timestamp_s, source_uri, source_type, frame_index, face_index,
               x1, y1, x2, y2, image_width, image_height, run_id
        FROM (SELECT emotion, emotion_confidence, timestamp_s, source_uri, source_type, frame_index, face_index,
                     x1, y1, x2, y2, image_width, image_height, run_id, row_number() OVER (
                  PARTITION BY emotion
                  ORDER BY emotion_confidence DESC NULLS LAST, source_uri, frame_index NULLS FIRST, face_index)
                  AS rank
              FROM faces)
        WHERE rank <= ?"""
    crop = "(SELECT any_value(f.crop_jpeg) FROM faces f WHERE f.source_uri = g.source_uri AND f.run_id IS NOT " \
           "DISTINCT FROM g.run_id AND f.frame_index IS NOT DISTINCT FROM g.frame_index AND f.face_index IS NOT " \
           "DISTINCT FROM g.face_index AND f.emotion IS NOT DISTINCT FROM g.emotion)" if has_crops else "NULL::BLOB"
    rows = con.execute(f"""
        SELECT emotion, rank, emotion_confidence, timestamp_s, source_uri, source_type, frame_index,
               x1, y1, x2, y2, image_width, image_height, {crop}
        FROM ({ranked}) g ORDER BY emotion, rank""", [k]).fetchall()
    return [GalleryFace(e, int(rank), None if conf is None else float(conf), ts,
                        FaceRef(uri, stype, frame, (x1, y1, x2, y2), int(w), int(h),
                                bytes(jpeg) if jpeg is not None else None))
            for e, rank, conf, ts, uri, stype, frame, x1, y1, x2, y2, w, h, jpeg in rows]


def _confidence(con, bins: int) -> tuple[list[tuple[float, float, int]], int]:
    lo, hi, missing = con.execute(
        "SELECT min(c), max(c), count(*) FILTER (c IS NULL) FROM (SELECT CASE WHEN isfinite("
        "detection_confidence::DOUBLE) THEN detection_confidence::DOUBLE END AS c FROM faces)").fetchall()[0]
    if lo is None:
        return [], int(missing)
    # Equal-width bins over the observed range (one bin if all scores are equal): MTCNN's scores
    # crowd just below 1, so fixed bins over [0, 1] would put nearly every face in the last one.
    n = bins if hi > lo else 1
    width = (hi - lo) / n if hi > lo else 1.0
    counts = dict(con.execute("""
        SELECT least(floor((detection_confidence::DOUBLE - $lo) / $w)::BIGINT, $n - 1) AS bin, count(*)
        FROM faces WHERE isfinite(detection_confidence::DOUBLE) GROUP BY bin""",
                              {"lo": lo, "w": width, "n": n}).fetchall())
    edges = [(lo + i * width, hi if i == n - 1 else lo + (i + 1) * width) for i in range(n)]
    return [(a, b, int(counts.get(i, 0))) for i, (a, b) in enumerate(edges)], int(missing)


def _nan_as_null(con: duckdb.DuckDBPyConnection) -> None:
    """Makes the ``faces`` view read NaN in its number columns as NULL, so that every figure of the
    report counts a NaN score, age or probability as missing (the table as written stays readable as
    ``faces_as_written``)."""
    if "faces_as_written" in views(con):
        return
    floats = [row[0] for row in con.execute("DESCRIBE faces").fetchall() if row[1] in ("FLOAT", "DOUBLE")]
    if not floats:
        return
    con.execute("ALTER VIEW faces RENAME TO faces_as_written")
    replaced = ", ".join(f"CASE WHEN isnan({_ident(c)}) THEN NULL ELSE {_ident(c)} END AS {_ident(c)}"
                         for c in floats)
    con.execute(f"CREATE VIEW faces AS SELECT * REPLACE ({replaced}) FROM faces_as_written")


def collect(con: duckdb.DuckDBPyConnection, output_dir: str, options: ReportOptions) -> ReportData:
    """Runs the report's queries over the views of ``pipelines.sql.connect`` (NaN read as missing).

    Raises ValueError for bad grouping options (including a regex DuckDB rejects).
    """
    _nan_as_null(con)
    group = group_expression(options.group_by, options.group_regex)
    try:
        con.execute(f"SELECT {group} FROM (SELECT ''::VARCHAR AS source_uri)").fetchall()
        if options.group_by == "regex":  # RE2 syntax Python does not parse: DuckDB counts the groups
            con.execute("SELECT regexp_extract('', ?, ['group'])", [options.group_regex]).fetchall()
    except duckdb.Error as e:
        if "Not enough capturing groups" in str(e):
            raise ValueError(f"--group_regex {options.group_regex!r} has no capture group; put the group name in "
                             "(...)") from None
        raise ValueError(f"bad --group_regex {options.group_regex!r}: {e}") from None
    face_columns = columns_of(con, "faces")
    emotions = tuple(c[2:] for c in face_columns if c.startswith("p_"))
    has_tracks = "track_id" in face_columns
    totals = _totals(con, has_tracks)

    by_type = con.execute("""
        SELECT source_type, count(*), count(*) FILTER (status = 'ok'), count(*) FILTER (status = 'no_face'),
               count(*) FILTER (status = 'error'), count(*) FILTER (status = 'skipped'), sum(frames), sum(faces)
        FROM sources GROUP BY source_type ORDER BY source_type""").fetchall()
    # Every run that wrote a row: one whose inputs all failed, had no face or were skipped has no faces.
    runs = con.execute("""
        WITH s AS (SELECT run_id, count(*) AS inputs FROM sources GROUP BY run_id),
             f AS (SELECT run_id, string_agg(DISTINCT emotion_model, ', ' ORDER BY emotion_model) AS emotion_model,
                          string_agg(DISTINCT age_gender_model, ', ' ORDER BY age_gender_model) AS age_gender_model,
                          count(*) AS faces
                   FROM faces GROUP BY run_id)
        SELECT run_id, coalesce(inputs, 0), emotion_model, age_gender_model, coalesce(faces, 0)
        FROM s FULL JOIN f USING (run_id) ORDER BY run_id""").fetchall()

    emotion_counts = dict(con.execute(
        "SELECT emotion, count(*) FROM faces GROUP BY emotion ORDER BY emotion").fetchall())
    # Labels outside the probability columns (none in FACES_SCHEMA) still get a bar.
    emotions = emotions + tuple(sorted(set(emotion_counts) - set(emotions)))
    mean_cols = [e for e in emotions if f"p_{e}" in face_columns]
    means_row = con.execute("SELECT " + ", ".join(f"avg({_ident('p_' + e)})" for e in mean_cols)
                            + " FROM faces").fetchall()[0] if mean_cols else ()
    emotion_means = {e: float(m) for e, m in zip(mean_cols, means_row) if m is not None}

    groups_query = f"""
        WITH s AS (SELECT {group} AS grp, count(*) AS inputs, count(*) FILTER (status = 'error') AS errors
                   FROM sources GROUP BY grp),
             f AS (SELECT {group} AS grp, count(*) AS faces FROM faces GROUP BY grp)
        SELECT coalesce(s.grp, f.grp) AS grp, coalesce(inputs, 0), coalesce(errors, 0), coalesce(faces, 0) AS faces
        FROM s FULL JOIN f ON s.grp = f.grp"""
    groups_total = int(_scalar(con, f"SELECT count(*) FROM ({groups_query})"))
    groups = con.execute(f"{groups_query} ORDER BY faces DESC, grp LIMIT ?", [options.max_groups]).fetchall()
    group_emotions: dict[str, dict[str, int]] = {}
    if groups:
        for g, e, n in con.execute(
                f"SELECT * FROM (SELECT {group} AS grp, emotion, count(*) FROM faces GROUP BY ALL) "
                f"WHERE list_contains(?, grp)", [[g[0] for g in groups]]).fetchall():
            group_emotions.setdefault(g, {})[e] = int(n)

    age_gender = con.execute("""
        SELECT age_group, gender, count(*) FROM faces GROUP BY age_group, gender
        ORDER BY min(min(age)) OVER (PARTITION BY age_group), age_group, gender""").fetchall()
    genders = con.execute("""
        SELECT gender, count(*), avg(gender_confidence), avg(age) FROM faces GROUP BY gender ORDER BY gender
        """).fetchall()
    age_summary = con.execute(
        "SELECT avg(age), median(age), min(age), max(age) FROM faces").fetchall()[0]

    videos = con.execute("""
        SELECT source_uri, run_id, count(*) OVER (PARTITION BY source_uri) FROM faces
        WHERE source_type = 'video' AND timestamp_s IS NOT NULL
        GROUP BY source_uri, run_id ORDER BY count(*) DESC, source_uri, run_id""").fetchall()
    timelines = [_timeline(con, uri, run, runs > 1, tuple(mean_cols), has_tracks, options.max_tracks)
                 for uri, run, runs in videos[:options.max_videos]]

    gallery = _gallery(con, options.gallery_size, "crop_jpeg" in face_columns)
    confidence_bins, confidence_missing = _confidence(con, options.histogram_bins)
    detectors = con.execute("""
        SELECT detector, count(*), count(detection_confidence), avg(detection_confidence) FROM faces
        GROUP BY detector ORDER BY detector""").fetchall()
    errors = con.execute(
        "SELECT source_uri, stage, error FROM sources WHERE status = 'error' ORDER BY source_uri LIMIT ?",
        [options.max_errors]).fetchall()

    if options.group_by == "folder":
        group_label = "parent folder of source_uri"
    else:
        group_label = f"first capture group of {options.group_regex} in source_uri"
    return ReportData(
        output_dir=output_dir, group_label=group_label, emotions=emotions, has_tracks=has_tracks,
        totals=totals, by_type=by_type, runs=runs, emotion_counts=emotion_counts, emotion_means=emotion_means,
        groups=groups, group_emotions=group_emotions, groups_total=groups_total, age_gender=age_gender,
        genders=genders, age_summary=age_summary, timelines=timelines, videos_total=len(videos),
        gallery=gallery, confidence_bins=confidence_bins, confidence_missing=confidence_missing,
        detectors=detectors, errors=errors, errors_total=totals["error"])


# ---- charts: matplotlib figures on the Agg canvas, returned as base64 PNG ----

def _colour(emotion: str, i: int) -> str:
    return _EMOTION_COLOURS.get(emotion, f"C{i % 10}")


def _figure(width: float, height: float) -> Figure:
    # A Figure on its own Agg canvas: no pyplot, so no global backend or figure registry.
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _short(label: str, n: int = 40) -> str:
    """``label`` cut to its last ``n`` characters (paths differ at the end)."""
    return label if len(label) <= n else "…" + label[-(n - 1):]


def _emotion_chart(data: ReportData) -> str:
    fig = _figure(7, 3)
    ax = fig.subplots()
    counts = [data.emotion_counts.get(e, 0) for e in data.emotions]
    ax.bar(data.emotions, counts, color=[_colour(e, i) for i, e in enumerate(data.emotions)])
    ax.set_ylabel("faces (top emotion)")
    return _png(fig)


def _groups_chart(data: ReportData) -> str:
    shown = data.groups  # every group the table lists (--max_groups)
    fig = _figure(8, 1.2 + 0.3 * len(shown))
    ax = fig.subplots()
    # Rows by position, labelled after: groups whose shortened names are alike keep rows of their own.
    rows = list(range(len(shown)))
    left = [0.0] * len(shown)
    for i, e in enumerate(data.emotions):
        shares = [data.group_emotions.get(g[0], {}).get(e, 0) / g[3] if g[3] else 0.0 for g in shown]
        ax.barh(rows, shares, left=left, color=_colour(e, i), label=e)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_yticks(rows, [_short(str(g[0])) for g in shown])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the group's faces")
    fig.legend(loc="outside right upper", fontsize="small")
    return _png(fig)


def _age_gender_chart(data: ReportData) -> str:
    age_groups = list(dict.fromkeys(r[0] for r in data.age_gender))
    genders = list(dict.fromkeys(r[1] for r in data.age_gender))
    counts = {(a, g): n for a, g, n in data.age_gender}
    fig = _figure(7, 3)
    ax = fig.subplots()
    width = 0.8 / max(len(genders), 1)
    for j, g in enumerate(genders):
        xs = [i + (j - (len(genders) - 1) / 2) * width for i in range(len(age_groups))]
        ax.bar(xs, [counts.get((a, g), 0) for a in age_groups], width=width, label=g, color=f"C{j}")
    ax.set_xticks(range(len(age_groups)), age_groups)
    ax.set_xlim(-0.6, max(len(age_groups), 4) - 0.4)  # a lone group keeps a normal bar width
    ax.set_xlabel("age group")
    ax.set_ylabel("faces")
    ax.legend()
    return _png(fig)


def _timeline_chart(timeline: Timeline, emotions: tuple[str, ...]) -> str:
    n = len(timeline.series)
    fig = _figure(8, 2.4 * n + 0.4)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, times, means) in zip(axes, timeline.series):
        for i, e in enumerate(emotions):
            ax.plot(times, means[e], marker="o", markersize=3, color=_colour(e, i), label=e)
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean probability")
        ax.set_title(label, fontsize="medium", loc="left")
    axes[-1].set_xlabel("time (s)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return _png(fig)


def _confidence_chart(data: ReportData) -> str:
    fig = _figure(7, 2.8)
    ax = fig.subplots()
    lefts = [a for a, _, _ in data.confidence_bins]
    widths = [max(b - a, 1e-6) for a, b, _ in data.confidence_bins]
    ax.bar(lefts, [n for _, _, n in data.confidence_bins], width=widths, align="edge", color="C0",
           edgecolor="white")
    ax.set_xlabel("detection confidence")
    ax.set_ylabel("faces")
    return _png(fig)


# ---- HTML ----

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { border: 1px solid #ddd; padding: .2em .6em; }
th { background: #f4f4f4; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img.chart { max-width: 100%; } .note { color: #666; font-size: .9em; }
.gallery { display: flex; flex-wrap: wrap; gap: .6em; margin-bottom: 1em; }
figure { margin: 0; width: 110px; font-size: .75em; word-break: break-all; }
figure img, .placeholder { width: 96px; height: 96px; object-fit: contain; background: #eee; display: block; }
.placeholder { display: flex; align-items: center; justify-content: center; color: #888; }
td.error { font-family: monospace; white-space: pre-wrap; }
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value, metric: str | None = None, digits: int | None = None) -> str:
    """A right-aligned number cell; ``metric`` adds the data-metric attribute."""
    if value is None:
        text = ""
    elif digits is not None:
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    attr = f' data-metric="{_e(metric)}"' if metric else ""
    return f'<td class="n"{attr}>{_e(text)}</td>'


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _img(png: str, alt: str) -> str:
    return f'<img class="chart" alt="{_e(alt)}" src="data:image/png;base64,{png}">'


def _percent(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else ""


def _totals_html(d: ReportData) -> str:
    t = d.totals
    labels = [("inputs", "inputs"), ("ok", "ok (faces found)"), ("no_face", "no face"), ("error", "error"),
              ("skipped", "skipped (analysed by an earlier run)"), ("images", "images"), ("videos", "videos"),
              ("frames", "frames decoded"), ("faces", "faces")]
    if "tracks" in t:
        labels.append(("tracks", "tracks (faces linked across frames)"))
    rows = [f"<tr><th>{_e(label)}</th>{_num(t[key], key)}</tr>" for key, label in labels]
    type_rows = [f"<tr><td>{_e(r[0])}</td>{''.join(_num(v) for v in r[1:])}</tr>" for r in d.by_type]
    run_rows = [f"<tr><td>{_e(run)}</td>{_num(inputs)}<td>{_e(emotion or '')}</td><td>{_e(age_gender or '')}</td>"
                f"{_num(faces)}</tr>" for run, inputs, emotion, age_gender, faces in d.runs]
    return (_table(["", "count"], rows)
            + "<h3>Sources by type</h3>"
            + _table(["source type", "inputs", "ok", "no_face", "error", "skipped", "frames", "faces"], type_rows)
            + ("<h3>Runs</h3>" + _table(["run", "inputs", "emotion model", "age/gender model", "faces"], run_rows)
               if run_rows else ""))


def _emotions_html(d: ReportData, charts: dict[str, str]) -> str:
    total = d.totals["faces"]
    if not total:
        return "<p>No faces.</p>"
    rows = [f"<tr><td>{_e(e)}</td>{_num(d.emotion_counts.get(e, 0), f'emotion:{e}')}"
            f"<td class=\"n\">{_percent(d.emotion_counts.get(e, 0), total)}</td>"
            f"{_num(d.emotion_means.get(e), digits=3)}</tr>" for e in d.emotions]
    return (_img(charts["emotions"], "faces per top emotion")
            + _table(["emotion", "faces (top emotion)", "share", "mean probability"], rows))


def _groups_html(d: ReportData, charts: dict[str, str]) -> str:
    note = f'<p class="note">Group: {_e(d.group_label)}.'
    if d.groups_total > len(d.groups):
        note += f" The {len(d.groups)} groups with most faces of {d.groups_total} are shown."
    note += "</p>"
    if not d.groups:
        return note + "<p>No sources.</p>"
    rows = []
    for g, inputs, errors, faces in d.groups:
        counts = d.group_emotions.get(g, {})
        cells = "".join(_num(counts.get(e, 0), f"group:{g}:{e}") for e in d.emotions)
        top = max(counts, key=lambda e: (counts[e], e)) if counts else ""
        rows.append(f"<tr><td>{_e(g)}</td>{_num(inputs, f'group:{g}:inputs')}{_num(errors)}"
                    f"{_num(faces, f'group:{g}:faces')}{cells}<td>{_e(top)} {_percent(counts.get(top, 0), faces)}"
                    f"</td></tr>")
    chart = _img(charts["groups"], "emotion shares per group") if "groups" in charts else ""
    return note + chart + _table(["group", "inputs", "errors", "faces", *d.emotions, "most common"], rows)


def _age_gender_html(d: ReportData, charts: dict[str, str]) -> str:
    if not d.totals["faces"]:
        return "<p>No faces.</p>"
    mean, median, lo, hi = d.age_summary
    genders = list(dict.fromkeys(r[1] for r in d.age_gender))
    counts = {(a, g): n for a, g, n in d.age_gender}
    ages = list(dict.fromkeys(r[0] for r in d.age_gender))
    age_rows = [f"<tr><td>{_e(a)}</td>{''.join(_num(counts.get((a, g), 0)) for g in genders)}"
                f"{_num(sum(counts.get((a, g), 0) for g in genders))}</tr>" for a in ages]
    gender_rows = [f"<tr><td>{_e(g)}</td>{_num(n, f'gender:{g}')}<td class=\"n\">{_percent(n, d.totals['faces'])}</td>"
                   f"{_num(conf, digits=3)}{_num(age, digits=1)}</tr>" for g, n, conf, age in d.genders]
    ages_text = ("no estimated age" if mean is None else
                 f"Estimated age: mean {mean:.1f}, median {median:.1f}, range {lo:.1f} to {hi:.1f} years")
    return (f"<p>{ages_text}.</p>"
            + _img(charts["age-gender"], "faces per age group and gender")
            + _table(["age group", *genders, "all"], age_rows)
            + _table(["gender", "faces", "share", "mean gender confidence", "mean age"], gender_rows))


def _timelines_html(d: ReportData, charts: dict[str, str]) -> str:
    if not d.timelines:
        return "<p>No faces in videos.</p>"
    parts = []
    if d.videos_total > len(d.timelines):
        parts.append(f'<p class="note">The {len(d.timelines)} timelines with most faces of {d.videos_total} '
                     "are shown (one per video and run).</p>")
    for i, t in enumerate(d.timelines):
        detail = f"{t.frames} frames with faces"
        if d.has_tracks:
            detail += f", {t.tracks} tracks"
            if t.tracks > len(t.series) and t.tracks:
                detail += f" (the {len(t.series)} longest drawn)"
            if t.untracked:
                detail += f", {t.untracked} faces without a track"
        name = t.source_uri if t.run_id is None else f"{t.source_uri}@{t.run_id}"
        heading = _e(t.source_uri) + ("" if t.run_id is None else f" <small>run {_e(t.run_id)}</small>")
        parts.append(f'<h3>{heading}</h3><p><span data-metric="{_e(f"video:{name}:faces")}">{t.faces}</span> faces, '
                     f"{_e(detail)}.</p>" + _img(charts[f"timeline:{i}"], f"timeline of {name}"))
    return "".join(parts)


def _gallery_html(d: ReportData, thumbs: list[bytes | None]) -> str:
    if not d.gallery:
        return "<p>No faces.</p>"
    parts = []
    for e in d.emotions:
        items = [(g, t) for g, t in zip(d.gallery, thumbs) if g.emotion == e]
        if not items:
            continue
        figures = []
        for g, jpeg in items:
            where = os.path.basename(g.ref.source_uri) or g.ref.source_uri
            if g.timestamp_s is not None:
                where += f" @ {g.timestamp_s:.2f} s"
            caption = f"{'–' if g.confidence is None else format(g.confidence, '.3f')} · {where}"
            if jpeg is None:
                pic = '<div class="placeholder">no picture</div>'
            else:
                pic = f'<img alt="{_e(e)} face" src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode("ascii")}">'
            figures.append(f'<figure title="{_e(g.ref.source_uri)}">{pic}'
                           f"<figcaption>{_e(caption)}</figcaption></figure>")
        parts.append(f"<h3>{_e(e)}</h3><div class=\"gallery\">{''.join(figures)}</div>")
    return "".join(parts)


def _confidence_html(d: ReportData, charts: dict[str, str]) -> str:
    scored = sum(n for _, _, n in d.confidence_bins)
    det_rows = [f"<tr><td>{_e(r[0])}</td>{_num(r[1])}{_num(r[2])}{_num(r[3], digits=4)}</tr>" for r in d.detectors]
    text = (f"<p><span data-metric=\"confidence:faces\">{scored}</span> faces with a detection confidence, "
            f"<span data-metric=\"confidence:missing\">{d.confidence_missing}</span> without (Haar gives none).</p>")
    body = _img(charts["confidence"], "histogram of detection confidence") if "confidence" in charts else ""
    bins = [f"<tr><td>{a:.4f} – {b:.4f}</td>{_num(n)}</tr>" for a, b, n in d.confidence_bins]
    details = (f"<details><summary>bins</summary>{_table(['confidence', 'faces'], bins)}</details>" if bins else "")
    return text + body + details + (_table(["detector", "faces", "with confidence", "mean confidence"], det_rows)
                                    if det_rows else "")


def _errors_html(d: ReportData) -> str:
    head = f"<p><span data-metric=\"errors\">{d.errors_total}</span> sources failed.</p>"
    if not d.errors:
        return head
    if d.errors_total > len(d.errors):
        head += f'<p class="note">The first {len(d.errors)} are listed (by source).</p>'
    rows = [f"<tr><td>{_e(uri)}</td><td>{_e(stage)}</td><td class=\"error\">{_e(error)}</td></tr>"
            for uri, stage, error in d.errors]
    return head + _table(["source", "stage", "error"], rows)


def render_html(data: ReportData, charts: dict[str, str], thumbs: list[bytes | None]) -> str:
    """The report page from collected data, base64 PNG charts by name, and one JPEG (or None) per gallery face."""
    bodies = {
        "totals": _totals_html(data),
        "emotions": _emotions_html(data, charts),
        "groups": _groups_html(data, charts),
        "age-gender": _age_gender_html(data, charts),
        "timelines": _timelines_html(data, charts),
        "gallery": _gallery_html(data, thumbs),
        "confidence": _confidence_html(data, charts),
        "errors": _errors_html(data),
    }
    nav = " · ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title in SECTIONS)
    sections = "\n".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS)
    title = f"facebeam report: {data.output_dir}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1><nav>{nav}</nav>\n{sections}\n</body></html>\n")


def draw_charts(data: ReportData) -> dict[str, str]:
    """The report's charts as base64 PNG, by name; charts without data are left out.

    Text is drawn as written: ``$`` in a folder or file name does not start matplotlib's math mode.
    """
    with matplotlib.rc_context({"text.parse_math": False}):
        return _draw_charts(data)


def _draw_charts(data: ReportData) -> dict[str, str]:
    charts = {}
    if data.totals["faces"]:
        charts["emotions"] = _emotion_chart(data)
        charts["age-gender"] = _age_gender_chart(data)
    if any(g[3] for g in data.groups):
        charts["groups"] = _groups_chart(data)
    for i, t in enumerate(data.timelines):
        charts[f"timeline:{i}"] = _timeline_chart(t, tuple(e for e in data.emotions if e in data.emotion_means))
    if data.confidence_bins:
        charts["confidence"] = _confidence_chart(data)
    return charts


def build_report(output_dir: str, options: ReportOptions | None = None) -> str:
    """The HTML report of an output directory.

    Raises FileNotFoundError for a directory without output and ValueError for bad options.
    """
    options = options or ReportOptions()
    con = connect(output_dir)
    try:
        data = collect(con, output_dir, options)
    finally:
        con.close()
    thumbs = face_thumbnails([g.ref for g in data.gallery], options.thumbnail_size)
    return render_html(data, draw_charts(data), thumbs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facebeam report",
        description="Write one self-contained HTML report (totals, emotions per group, age and gender, "
                    "video timelines, a face gallery, detection confidence, errors) of an output directory.")
    parser.add_argument("output", help="output directory of 'facebeam analyze' (holds faces-*.parquet, ...)")
    parser.add_argument("--group_by", choices=("folder", "regex"), default=None,
                        help="group sources by their parent folder (default) or by --group_regex")
    parser.add_argument("--group_regex", default=None,
                        help="RE2 pattern applied to source_uri; its first capture group names the group "
                             "(implies --group_by regex), e.g. '/shoots/([^/]+)/'")
    parser.add_argument("-o", "--report", default="report.html", help="HTML file to write (default: report.html)")
    parser.add_argument("--gallery_size", type=int, default=ReportOptions.gallery_size,
                        help="faces shown per emotion in the gallery")
    parser.add_argument("--max_groups", type=int, default=ReportOptions.max_groups,
                        help="groups listed (those with most faces)")
    parser.add_argument("--max_videos", type=int, default=ReportOptions.max_videos,
                        help="videos with a timeline (those with most faces)")
    parser.add_argument("--max_tracks", type=int, default=ReportOptions.max_tracks,
                        help="tracks drawn per video when faces carry track_id (the longest)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Writes the report; 0 on success, 2 for a directory without output or bad options."""
    args = _parser().parse_args(argv)
    group_by = args.group_by or ("regex" if args.group_regex else "folder")
    try:
        for name in ("gallery_size", "max_groups", "max_videos", "max_tracks"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        options = ReportOptions(group_by=group_by, group_regex=args.group_regex, gallery_size=args.gallery_size,
                                max_groups=args.max_groups, max_videos=args.max_videos, max_tracks=args.max_tracks)
        page = build_report(args.output, options)
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(page)
    except (OSError, ValueError, duckdb.Error) as e:
        print(f"facebeam report: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
