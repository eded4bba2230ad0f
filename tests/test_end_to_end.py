"""Tier 3: the real pipeline (MTCNN, shipped models) on the bundled examples, read back from Parquet."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pytest

from pipelines import cli
from pipelines.summary import parse_summary, read_table
from tests.conftest import EXAMPLES

SOLVAY, OBAMA = "solvay_conference.jpg", "obama_family.jpg"
CLIP = "head-pose-face-detection-female-and-male.gif"


@pytest.fixture(scope="session")
def e2e(tmp_path_factory):
    """One run over the examples plus two broken files; returns (output dir, printed summary)."""
    root = tmp_path_factory.mktemp("e2e")
    inputs = root / "in"
    shutil.copytree(EXAMPLES, inputs)
    good = (inputs / "photos" / OBAMA).read_bytes()
    (inputs / "photos" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (inputs / "photos" / "text.jpg").write_text("<html>not a photo</html>\n")
    out = root / "out"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(["analyze", "--input", str(inputs), "--output", str(out), "--max_frames_per_video", "4",
                           "--annotate", "--store_crops"])
    assert status == 0
    return out, printed.getvalue()


def _by_name(out: Path, table: str) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for r in read_table(str(out), table).to_pylist():
        rows.setdefault(Path(r["source_uri"]).name, []).append(r)
    return rows


def test_group_photos(e2e):
    faces = _by_name(e2e[0], "faces")
    assert len(faces[SOLVAY]) >= 25  # 29 people in the 1927 photograph
    assert len(faces[OBAMA]) == 4
    for row in faces[OBAMA]:
        assert 0 <= row["x1"] < row["x2"] <= row["image_width"] and 0 <= row["y1"] < row["y2"] <= row["image_height"]
        assert row["detection_confidence"] >= 0.9 and len(row["landmarks"]) == 10
        probs = [row[f"p_{e}"] for e in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")]
        assert abs(sum(probs) - 1) < 1e-3 and row["emotion_confidence"] == pytest.approx(max(probs))
        assert row["gender"] in ("male", "female") and 0.5 <= row["gender_confidence"] <= 1
        assert 0 <= row["age"] < 100


def test_clip_rows_have_increasing_timestamps(e2e):
    sources = _by_name(e2e[0], "sources")
    assert sources[CLIP][0]["status"] == "ok" and sources[CLIP][0]["frames"] == 4
    faces = sorted(_by_name(e2e[0], "faces")[CLIP], key=lambda r: (r["frame_index"], r["face_index"]))
    times = sorted({r["timestamp_s"] for r in faces})
    assert len(times) >= 2 and times == sorted(times) and times[0] == 0.0
    assert all(r["source_type"] == "video" and r["frame_index"] is not None for r in faces)


def test_clip_with_two_people_gives_two_tracks(e2e):
    out = e2e[0]
    tracks = [r for r in read_table(str(out), "tracks").to_pylist() if r["source_uri"].endswith(CLIP)]
    assert sorted(r["track_id"] for r in tracks) == [0, 1]
    faces = _by_name(out, "faces")[CLIP]
    for t in tracks:
        mine = [f for f in faces if f["track_id"] == t["track_id"]]
        assert t["frames"] == len(mine) >= 2
        assert t["first_timestamp_s"] == min(f["timestamp_s"] for f in mine)
        assert t["dominant_emotion"] in {f["emotion"] for f in mine} | {t["dominant_emotion"]}
    # the two people sit on either side of the picture and keep their side
    sides = {t["track_id"]: {f["x1"] < 240 for f in faces if f["track_id"] == t["track_id"]} for t in tracks}
    assert sorted(len(s) for s in sides.values()) == [1, 1] and sides[0] != sides[1]
    assert all(f["track_id"] is None for f in _by_name(out, "faces")[OBAMA])


def test_broken_files_are_errors_and_others_succeed(e2e):
    sources = _by_name(e2e[0], "sources")
    assert len(sources) == 5 and all(len(v) == 1 for v in sources.values())
    assert sources["truncated.jpg"][0]["status"] == "error" and sources["truncated.jpg"][0]["stage"] == "decode"
    assert sources["text.jpg"][0]["status"] == "error" and "not an image" in sources["text.jpg"][0]["error"]
    assert {sources[n][0]["status"] for n in (SOLVAY, OBAMA, CLIP)} == {"ok"}
    counts = parse_summary(e2e[1])
    assert (counts["inputs"], counts["ok"], counts["error"], counts["skipped"]) == (5, 3, 2, 0)
    assert counts["faces"] == len(read_table(str(e2e[0]), "faces"))


def test_output_reads_in_pyarrow_pandas_duckdb(e2e):
    out = e2e[0]
    frame = read_table(str(out), "faces").to_pandas()
    counted = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/faces-*.parquet')").fetchall()[0][0]
    assert counted == len(frame) > 0
    by_status = dict(duckdb.sql(
        f"SELECT status, count(*) FROM read_parquet('{out}/sources-*.parquet') GROUP BY status").fetchall())
    assert by_status == {"ok": 3, "error": 2}
    assert not list(out.glob("beam-temp-*")), "temporary files left behind"


def test_annotated_copies_and_stored_crops(e2e):
    out = e2e[0]
    annotated = sorted(p.name for p in (out / "annotated").iterdir())
    assert [n.rsplit("-", 1)[0] for n in annotated] == [CLIP[:-4], OBAMA[:-4], SOLVAY[:-4]]
    photo = cv2.imread(str(next((out / "annotated").glob("obama_family-*.jpg"))))
    original = cv2.imread(str(EXAMPLES / "photos" / OBAMA))
    assert photo.shape == original.shape
    row = _by_name(out, "faces")[OBAMA][0]
    x1, y1, x2, y2 = (int(round(row[k])) for k in ("x1", "y1", "x2", "y2"))
    # the box outline is drawn in green over the face's left edge
    edge = photo[y1 + 5:y2 - 5, x1].astype(int)
    assert (edge[:, 1] - edge[:, [0, 2]].max(1)).mean() > 100
    clip = cv2.VideoCapture(str(next((out / "annotated").glob("*.mp4"))))
    assert int(clip.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    crop = cv2.imdecode(np.frombuffer(row["crop_jpeg"], np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (128, 128, 3)


def test_report_on_the_examples_matches_sql(e2e, tmp_path):
    from pipelines import report
    from tests.test_report import SECTION_IDS, _Page

    out = e2e[0]
    html = tmp_path / "report.html"
    assert cli.main(["report", str(out), "-o", str(html)]) == 0
    page = _Page(html.read_text(encoding="utf-8"))
    assert [i for i in page.ids if i in SECTION_IDS] == SECTION_IDS == [sid for sid, _ in report.SECTIONS]
    con = duckdb.connect()
    faces = f"read_parquet('{out}/faces-*.parquet')"
    sources = f"read_parquet('{out}/sources-*.parquet')"
    (inputs, ok, error, frames), = con.execute(
        f"SELECT count(*), count(*) FILTER (status='ok'), count(*) FILTER (status='error'), sum(frames) FROM {sources}"
    ).fetchall()
    (n_faces, n_tracks), = con.execute(
        f"SELECT count(*), count(DISTINCT (source_uri, track_id)) FILTER (track_id IS NOT NULL) FROM {faces}").fetchall()
    assert {k: page.metric(k) for k in ("inputs", "ok", "error", "frames", "faces", "tracks")} == dict(
        inputs=inputs, ok=ok, error=error, frames=frames, faces=n_faces, tracks=n_tracks)
    for emotion, n in con.execute(f"SELECT emotion, count(*) FROM {faces} GROUP BY 1").fetchall():
        assert page.metric(f"emotion:{emotion}") == n
    assert page.metric("errors") == 2 and "truncated.jpg" in html.read_text(encoding="utf-8")


def test_rerun_into_same_output_is_refused(e2e, capsys):
    status = cli.main(["analyze", "--input", str(EXAMPLES / "photos" / OBAMA), "--output", str(e2e[0])])
    assert status == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The run of ``make demo`` (the examples, default flags): (output dir, printed summary)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["analyze", "--input", str(EXAMPLES), "--output", str(out)]) == 0
    return out, printed.getvalue()


def test_readme_quick_start_shows_what_the_demo_prints(demo):
    """The summary quoted under "Quick start" is what ``make demo`` prints with the shipped models."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    quoted = readme.split("## Quick start", 1)[1].split("```\n", 2)[2].split("```", 1)[0]
    printed = demo[1]
    assert parse_summary(printed) == parse_summary(quoted)
    emotions = [line for text in (printed, quoted) for line in text.splitlines() if line.startswith("emotions:")]
    assert len(emotions) == 2 and emotions[0] == emotions[1]


def _table_cells(printed: str) -> list[list[str]]:
    """The data rows of a DuckDB box table, as stripped cell strings."""
    rows = [line.strip("│").split("│") for line in printed.splitlines() if line.startswith("│")]
    return [[c.strip() for c in row] for row in rows[2:]]  # after the names and the types


def test_querying_doc_shows_what_its_queries_return(demo, capsys):
    """Each query of docs/querying.md, run over the demo output, prints the rows the page shows."""
    import re

    from pipelines import sql

    doc = (EXAMPLES.parent / "docs" / "querying.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\nfacebeam sql /tmp/rep_out \"(.*?)\"\n```\n```\n(.*?)\n```", doc, flags=re.S)
    assert len(blocks) == 5
    for query, shown in blocks:
        assert sql.main([str(demo[0]), query]) == 0
        printed = capsys.readouterr().out.replace(str(EXAMPLES), "/work/main/examples")
        assert _table_cells(printed) == _table_cells(shown), query
