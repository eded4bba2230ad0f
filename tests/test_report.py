"""``facebeam report``: sections, numbers equal to SQL over the Parquet, grouping, escaping, pictures."""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pytest

from pipelines import cli, report, sql
from pipelines.summary import summarize
from pipelines.thumbnails import FaceRef, face_box, face_thumbnails, thumbnail_jpeg
from tests.conftest import gradient_image, write_image, write_video
from tests.outputs import face, faces_table, source, write_output

EVIL = "<script>alert(\"x\")</script> & 'quoted'"
SECTION_IDS = [sid for sid, _ in report.SECTIONS]


class _Page(HTMLParser):
    """Collects element ids, data-metric values, and src / href attributes of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.ids: list[str] = []
        self.metrics: dict[str, str] = {}
        self.links: list[str] = []
        self._metric: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        self.links += [a[k] for k in ("src", "href") if k in a]
        if "data-metric" in a:
            self._metric = a["data-metric"]
            self.metrics[self._metric] = ""

    def handle_data(self, data):
        if self._metric is not None:
            self.metrics[self._metric] += data

    def handle_endtag(self, tag):
        self._metric = None

    def metric(self, name: str) -> int:
        return int(self.metrics[name])


def _media(root: Path) -> dict[str, str]:
    """A real photo (120 x 100 gradient) and a real video (20 grey frames at 10 fps, frame i = 10 i)."""
    (root / "shoot_a").mkdir(parents=True)
    (root / "shoot_b").mkdir(parents=True)
    photo = write_image(root / "shoot_a" / "portrait.png", gradient_image(100, 120))
    clip = write_video(root / "shoot_b" / "clip.mp4", 20, fps=10.0, size=(96, 64), brightness=lambda i: 10 * i)
    return {"photo": str(photo), "clip": str(clip), "bad": str(root / "shoot_a" / "bad.jpg"),
            "empty": str(root / "shoot_b" / "empty.jpg"), "gone": str(root / "other" / "gone.jpg")}


def _rows(m: dict[str, str]) -> tuple[list[dict], list[dict], list[int | None]]:
    """Faces, sources and a track id per face: 2 faces in the photo, 2 tracks over 3 video frames, 1 face in
    a file that no longer exists; one decode error with markup in its message; one source without faces."""
    faces = [face(m["photo"], "happy", 0.9, box=(10, 10, 50, 60), size=(120, 100), age=25, p_female=0.8),
             face(m["photo"], "sad", 0.6, face_index=1, box=(60, 20, 100, 70), size=(120, 100), age=45)]
    tracks: list[int | None] = [None, None]
    for frame, (e1, e2) in zip((0, 5, 10), (("happy", "sad"), ("surprise", "sad"), ("surprise", "neutral"))):
        video = dict(source_type="video", frame_index=frame, timestamp_s=frame / 10, size=(96, 64))
        faces += [face(m["clip"], e1, 0.5 + frame / 100, box=(5, 5, 40, 45), age=8, **video),
                  face(m["clip"], e2, 0.7, face_index=1, box=(50, 5, 90, 45), age=71, detector="haar",
                       detection_confidence=None, **video)]
        tracks += [1, 2]
    faces.append(face(m["gone"], "angry", 0.95, detection_confidence=0.91))
    tracks.append(None)
    sources = [source(m["photo"], "image", 2), source(m["bad"], "image", 0, frames=0, errors=(("decode", EVIL),)),
               source(m["clip"], "video", 6, frames=3), source(m["empty"], "image", 0),
               source(m["gone"], "image", 1)]
    return faces, sources, tracks


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, str]:
    return _media(tmp_path_factory.mktemp("media") / "in")


@pytest.fixture(scope="module")
def plain(tmp_path_factory, media) -> Path:
    faces, sources, _ = _rows(media)
    return write_output(tmp_path_factory.mktemp("plain") / "out", faces, sources, shards=2)


@pytest.fixture(scope="module")
def rich(tmp_path_factory, media) -> Path:
    """The same output with track ids and, for the face whose file is gone, a stored crop."""
    faces, sources, tracks = _rows(media)
    crops = [None] * (len(faces) - 1) + [thumbnail_jpeg(np.full((20, 16, 3), (200, 30, 30), np.uint8))]
    return write_output(tmp_path_factory.mktemp("rich") / "out", faces_table(faces, track_id=tracks, crop_jpeg=crops),
                        sources)


def _render(output: Path, tmp: Path, *args: str) -> tuple[str, _Page]:
    path = tmp / "report.html"
    assert report.main([str(output), "-o", str(path), *args]) == 0
    text = path.read_text(encoding="utf-8")
    return text, _Page(text)


@pytest.fixture(scope="module")
def by_folder(plain, tmp_path_factory):
    return _render(plain, tmp_path_factory.mktemp("report"))


def _sql(output: Path, query: str):
    """A query over the Parquet files themselves (not through pipelines.sql)."""
    q = query.replace("faces", f"read_parquet('{output}/faces-*.parquet')").replace(
        "sources", f"read_parquet('{output}/sources-*.parquet')")
    return duckdb.sql(q).fetchall()


def test_every_section_is_there_once(by_folder):
    page = by_folder[1]
    assert [i for i in page.ids if i in SECTION_IDS] == SECTION_IDS
    assert len(set(page.ids)) == len(page.ids)


def test_totals_equal_sql_over_the_parquet(plain, by_folder):
    page = by_folder[1]
    (inputs, ok, no_face, error, images, videos, frames), = _sql(plain, """
        SELECT count(*), count(*) FILTER (status = 'ok'), count(*) FILTER (status = 'no_face'),
               count(*) FILTER (status = 'error'), count(*) FILTER (source_type = 'image'),
               count(*) FILTER (source_type = 'video'), sum(frames) FROM sources""")
    expected = dict(inputs=inputs, ok=ok, no_face=no_face, error=error, images=images, videos=videos, frames=frames,
                    faces=_sql(plain, "SELECT count(*) FROM faces")[0][0])
    assert {k: page.metric(k) for k in expected} == expected
    assert expected == dict(inputs=5, ok=3, no_face=1, error=1, images=4, videos=1, frames=6, faces=9)
    summary = summarize(str(plain))
    assert {k: summary[k] for k in expected} == expected
    assert page.metric("errors") == error and page.metric("tracks") == 0 and page.metric("skipped") == 0


def test_distributions_equal_sql(plain, by_folder, media):
    page = by_folder[1]
    for emotion, n in _sql(plain, "SELECT emotion, count(*) FROM faces GROUP BY ALL"):
        assert page.metric(f"emotion:{emotion}") == n
    assert page.metric("emotion:disgust") == 0
    for gender, n in _sql(plain, "SELECT gender, count(*) FROM faces GROUP BY ALL"):
        assert page.metric(f"gender:{gender}") == n
    assert page.metric(f"video:{media['clip']}:faces") == 6
    scored, missing = _sql(
        plain, "SELECT count(detection_confidence), count(*) - count(detection_confidence) FROM faces")[0]
    assert (page.metric("confidence:faces"), page.metric("confidence:missing")) == (scored, missing) == (6, 3)


def test_groups_by_folder(plain, by_folder, media):
    page = by_folder[1]
    for uri in ("photo", "clip", "gone"):
        folder = str(Path(media[uri]).parent)
        faces = _sql(plain, f"SELECT count(*) FROM faces WHERE source_uri LIKE '{folder}/%'")[0][0]
        inputs = _sql(plain, f"SELECT count(*) FROM sources WHERE source_uri LIKE '{folder}/%'")[0][0]
        assert page.metric(f"group:{folder}:faces") == faces
        assert page.metric(f"group:{folder}:inputs") == inputs
    shoot_b = str(Path(media["clip"]).parent)
    assert (page.metric(f"group:{shoot_b}:inputs"), page.metric(f"group:{shoot_b}:faces")) == (2, 6)
    assert page.metric(f"group:{shoot_b}:surprise") == 2 and page.metric(f"group:{shoot_b}:sad") == 2


def test_groups_by_regex(plain, tmp_path):
    page = _render(plain, tmp_path, "--group_regex", r"/(shoot_\w+)/")[1]
    assert {k: int(v) for k, v in page.metrics.items() if k.endswith(":faces") and k.startswith("group:")} == {
        "group:shoot_a:faces": 2, "group:shoot_b:faces": 6, f"group:{report.NO_GROUP}:faces": 1}
    assert page.metric("group:shoot_a:inputs") == 2 and page.metric(f"group:{report.NO_GROUP}:inputs") == 1


@pytest.mark.parametrize("uri,folder", [("/a/b/c.jpg", "/a/b"), ("gs://bucket/x/y.mp4", "gs://bucket/x"),
                                        ("/c.jpg", "/"), ("c.jpg", "."), ("rel/dir/c.jpg", "rel/dir")])
def test_folder_expression(uri, folder):
    expr = report.group_expression("folder")
    assert duckdb.execute(f"SELECT {expr} FROM (SELECT ?::VARCHAR AS source_uri)", [uri]).fetchall() == [(folder,)]


def test_every_listed_group_has_a_row_of_its_own_in_the_chart(monkeypatch):
    # 35 groups (the table lists up to --max_groups 40), two of them alike in their last 40 characters
    from types import SimpleNamespace

    names = [f"/archive/site{c}/2024-06-01/conference-room-camera-north" for c in "AB"]
    names += [f"/archive/folder_{i}" for i in range(33)]
    data = SimpleNamespace(groups=[(g, 1, 0, 2) for g in names], emotions=("happy", "sad"),
                           group_emotions={g: {"happy": 1, "sad": 1} for g in names})
    figures = []
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or "")
    report._groups_chart(data)
    ax = figures[0].axes[0]
    rows = {round(bar.get_y() + bar.get_height() / 2, 6) for bar in ax.patches}
    assert len(rows) == 35 and len(ax.get_yticklabels()) == 35


@pytest.mark.parametrize("args,message", [
    (["--group_regex", "shoot_"], "no capture group"),
    (["--group_regex", r"\pL+"], "no capture group"),  # RE2 syntax Python cannot parse
    (["--group_regex", "(unclosed"], "bad --group_regex"),
    (["--group_by", "regex"], "needs --group_regex"),
    (["--group_by", "folder", "--group_regex", "(a)"], "needs --group_by regex"),
    (["--gallery_size", "0"], "at least 1"),
])
def test_bad_grouping_exits_2(plain, tmp_path, capsys, args, message):
    assert report.main([str(plain), "-o", str(tmp_path / "r.html"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_errors_are_escaped(by_folder, media):
    text = by_folder[0]
    assert "<script" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;quoted&#x27;" in text
    errors = text[text.index('id="errors"'):]
    assert "decode" in errors and media["bad"] in errors


def test_the_page_is_self_contained(by_folder):
    text, page = by_folder
    assert page.links and all(link.startswith(("data:image/", "#")) for link in page.links)
    assert "http://" not in text and "https://" not in text and "<script" not in text


def test_gallery_cuts_faces_from_local_files_and_marks_missing_ones(by_folder):
    gallery = by_folder[0].split('id="gallery"')[1].split("</section>")[0]
    assert gallery.count("data:image/jpeg;base64,") == 8  # every face but the one whose file is gone
    assert gallery.count('class="placeholder"') == 1


def test_tracks_and_stored_crops_are_used(rich, tmp_path, media):
    text, page = _render(rich, tmp_path)
    tracks = _sql(rich, "SELECT count(DISTINCT (source_uri, track_id)) FROM faces WHERE track_id IS NOT NULL")[0][0]
    assert page.metric("tracks") == tracks == 2
    assert "2 tracks" in text.split('id="timelines"')[1]
    stored = _sql(rich, "SELECT crop_jpeg FROM faces WHERE crop_jpeg IS NOT NULL")[0][0]
    assert base64.b64encode(stored).decode() in text and 'class="placeholder"' not in text


def test_each_gallery_face_carries_its_own_stored_crop(media, tmp_path):
    faces, sources, _ = _rows(media)
    crops = [f"crop {i}".encode() for i in range(len(faces))]
    out = write_output(tmp_path / "out", faces_table(faces, crop_jpeg=crops), sources)
    data = report.collect(sql.connect(out), str(out), report.ReportOptions(gallery_size=3))
    assert data.gallery
    for g in data.gallery:
        want = duckdb.execute(f"SELECT crop_jpeg FROM read_parquet('{out}/faces-*.parquet') WHERE source_uri = ? "
                              "AND frame_index IS NOT DISTINCT FROM ? AND x1 = ? AND emotion = ?",
                              [g.ref.source_uri, g.ref.frame_index, g.ref.box[0], g.emotion]).fetchall()
        assert [bytes(w) for w, in want] == [g.ref.crop_jpeg]


def test_timelines_per_track_equal_sql(rich):
    con = sql.connect(rich)
    data = report.collect(con, str(rich), report.ReportOptions())
    timeline, = data.timelines
    assert [label for label, _, _ in timeline.series] == ["track 1", "track 2"]  # equally long: by id
    label, times, means = timeline.series[0]
    assert times == [0.0, 0.5, 1.0]
    expected = _sql(
        rich, "SELECT avg(p_surprise) FROM faces WHERE track_id = 1 GROUP BY timestamp_s ORDER BY timestamp_s")
    assert means["surprise"] == pytest.approx([r[0] for r in expected])
    surprise = [g for g in data.gallery if g.emotion == "surprise"]
    assert [g.confidence for g in surprise] == pytest.approx([0.6, 0.55])


def test_timeline_without_tracks_averages_the_frame(plain):
    data = report.collect(sql.connect(plain), str(plain), report.ReportOptions())
    (label, times, means), = data.timelines[0].series
    assert label == "all faces" and times == [0.0, 0.5, 1.0]
    assert means["sad"][0] == pytest.approx(0.7 / 2 + (1 - 0.5) / 6 / 2)


def test_empty_output_still_reports(tmp_path):
    out = write_output(tmp_path / "out", [], [source("/x/a.jpg", "image", 0), source("/x/b.jpg", "image", 0)])
    text, page = _render(out, tmp_path)
    assert [i for i in page.ids if i in SECTION_IDS] == SECTION_IDS
    assert (page.metric("inputs"), page.metric("no_face"), page.metric("faces")) == (2, 2, 0)


def test_cli_dispatches_to_report(plain, tmp_path, capsys):
    path = tmp_path / "r.html"
    assert cli.main(["report", str(plain), "-o", str(path)]) == 0
    assert str(path) in capsys.readouterr().out and path.stat().st_size > 0
    assert cli.main(["report", str(tmp_path / "nothing"), "-o", str(path)]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert cli.main(["report", str(plain), "-o", str(tmp_path / "no" / "r.html")]) == 2
    assert capsys.readouterr().err.startswith("facebeam report: error: ")


def test_thumbnails_from_image_video_and_stored_crop(media):
    photo = FaceRef(media["photo"], "image", None, (10, 10, 50, 60), 120, 100)
    frame10 = FaceRef(media["clip"], "video", 10, (5, 5, 40, 45), 96, 64)
    resized = photo._replace(image_width=240)  # the file is not the picture the box was found in
    remote = photo._replace(source_uri="gs://bucket/p.jpg")
    stored = remote._replace(crop_jpeg=b"\xff\xd8stored")
    unplaced = photo._replace(box=(None, None, None, None))  # NaN, read as missing
    thumbs = face_thumbnails([photo, frame10, resized, remote, stored, unplaced])
    assert thumbs[2:] == [None, None, b"\xff\xd8stored", None]
    face = cv2.imdecode(np.frombuffer(thumbs[0], np.uint8), cv2.IMREAD_COLOR)
    assert face.shape == (66, 52, 3)  # the box grown by 15% a side
    grey = cv2.imdecode(np.frombuffer(thumbs[1], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert abs(float(grey.mean()) - 100) < 6  # frame 10 of a video whose frame i is grey 10 i


def test_a_variable_rate_videos_frames_are_read_in_one_pass(tmp_path, monkeypatch):
    from pipelines import thumbnails
    from tests.test_video import _frame_number, _variable_rate_mp4
    from transforms import video

    calls = []
    read_frames = video.read_frames
    monkeypatch.setattr(video, "read_frames", lambda *a, **k: calls.append(k) or read_frames(*a, **k))
    vfr = _variable_rate_mp4(tmp_path)  # no seek there: each frame would take a walk from the start
    got = [(k, _frame_number(rgb)) for k, rgb in thumbnails.video_frames(vfr, [100, 5, 70, 5, 119])]
    assert got == [(5, 5), (70, 70), (100, 100), (119, 119)] and len(calls) == 1
    cfr = str(write_video(tmp_path / "cfr.mp4", 30))  # a constant rate: a seek to each
    assert [k for k, _ in thumbnails.video_frames(cfr, [20, 3])] == [3, 20] and len(calls) == 3
    assert list(thumbnails.video_frames(str(tmp_path / "missing.mp4"), [1])) == []


def test_an_images_thumbnail_is_cut_at_the_size_the_run_read(media, monkeypatch):
    # the report does not apply a --max_pixels of its own: the rows say the run decoded the picture
    from transforms import imaging

    limits = []
    decode = imaging.decode_image
    monkeypatch.setattr(imaging, "decode_image", lambda data, max_pixels: limits.append(max_pixels) or
                        decode(data, max_pixels))
    photo = FaceRef(media["photo"], "image", None, (10, 10, 50, 60), 120, 100)
    assert face_thumbnails([photo, photo._replace(box=(0, 0, 30, 30))])[0] is not None
    assert limits == [120 * 100]


def test_face_box_grows_and_clamps():
    assert face_box((10, 10, 50, 60), 120, 100) == (4, 2, 56, 68)
    assert face_box((0, 0, 100, 100), 50, 60) == (0, 0, 50, 60)
    with pytest.raises(ValueError):
        face_box((200, 200, 250, 250), 100, 100)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_page_renders_in_headless_chromium(by_folder, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(by_folder[0], encoding="utf-8")
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,3000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert shot.exists() and shot.stat().st_size > 0


def test_dollar_signs_in_names_and_a_nan_score_do_not_break_the_report(tmp_path):
    """Folder names are chart labels (matplotlib would read $...$ as math); a NaN score is a missing one."""
    faces = [face(f"/data/{folder}/p.jpg", "happy", 0.9) for folder in ("C$", "a$^^$b", "$_$")]
    faces.append(face("/data/x/q.jpg", "sad", 0.5, detection_confidence=float("nan")))
    sources = [source(f["source_uri"], "image", 1) for f in faces]
    text, page = _render(write_output(tmp_path / "out", faces, sources), tmp_path)
    assert page.metric("faces") == 4
    data = report.collect(sql.connect(str(tmp_path / "out")), str(tmp_path / "out"), report.ReportOptions())
    assert sum(n for _, _, n in data.confidence_bins) == 3 and data.confidence_missing == 1


def test_nan_values_count_as_missing_in_every_figure(tmp_path):
    faces = [face("/d/a.jpg", "happy", 0.9, age=20),
             face("/d/b.jpg", "happy", 0.8, age=40, detection_confidence=float("nan")),
             face("/d/c.jpg", "happy", 0.7, age=float("nan"))]
    faces[1]["emotion_confidence"] = float("nan")  # not the most confident face: one without a score
    out = write_output(tmp_path / "out", faces, [source(f["source_uri"], "image", 1) for f in faces])
    data = report.collect(sql.connect(str(out)), str(out), report.ReportOptions())
    assert data.age_summary == (30.0, 30.0, 20.0, 40.0)
    assert [(g.ref.source_uri, g.confidence) for g in data.gallery] == [
        ("/d/a.jpg", pytest.approx(0.9)), ("/d/c.jpg", pytest.approx(0.7)), ("/d/b.jpg", None)]
    assert [(d, n, scored) for d, n, scored, _ in data.detectors] == [("mtcnn", 3, 2)]
    assert data.detectors[0][3] == pytest.approx(0.99)
    text, page = _render(out, tmp_path)
    assert page.metric("confidence:faces") == 2 and page.metric("confidence:missing") == 1
    assert "mean 30.0, median 30.0, range 20.0 to 40.0 years" in text and ">nan<" not in text
    # No age at all: said so, not a crash.
    for f in faces:
        f["age"] = float("nan")
    text, _ = _render(write_output(tmp_path / "ageless", faces, [source("/d/a.jpg", "image", 3)]), tmp_path)
    assert "no estimated age" in text


def test_every_run_and_status_is_in_the_totals(tmp_path):
    """A rerun with --skip_existing whose inputs were all skipped or failed wrote sources rows, no faces."""
    faces = [face("/d/a.jpg", "happy"), face("/d/a.jpg", "sad", face_index=1)]
    rerun = [dict(source(uri, "image", 0), run_id="run-2", status="skipped", previous_run_id="run-test")
             for uri in ("/d/a.jpg", "/d/b.jpg")]
    rerun.append(dict(source("/d/c.jpg", "image", 0, errors=(("decode", "truncated"),)), run_id="run-2"))
    out = write_output(tmp_path / "out", faces, [source("/d/a.jpg", "image", 2)] + rerun)
    data = report.collect(sql.connect(str(out)), str(out), report.ReportOptions())
    assert data.runs == [("run-2", 3, None, None, 0),
                         ("run-test", 1, "emotion_test@000000", "age_gender_test@000000", 2)]
    assert data.by_type == [("image", 4, 1, 0, 1, 2, 4, 2)]
    _, inputs, ok, no_face, error, skipped, *_ = data.by_type[0]
    assert ok + no_face + error + skipped == inputs


def test_live_sessions_logged_into_one_folder_keep_their_tracks_apart(tmp_path):
    """Each live session numbers its tracks from 0 and times from its own start: counted and drawn per run."""
    rows, tracks = [], []
    for run, ids in (("live-a", (0, 1, 2)), ("live-b", (0, 1))):
        for frame in range(3):
            for face_index, track in enumerate(ids):
                row = face("camera:0", "happy", 0.8, source_type="video", frame_index=frame, timestamp_s=frame / 10,
                           face_index=face_index)
                rows.append(dict(row, run_id=run))
                tracks.append(track)
    out = write_output(tmp_path / "live", faces_table(rows, track_id=tracks), None)
    data = report.collect(sql.connect(str(out)), str(out), report.ReportOptions())
    assert data.totals["tracks"] == 5
    assert [(t.run_id, t.faces, t.frames, t.tracks) for t in data.timelines] == [("live-a", 9, 3, 3),
                                                                                 ("live-b", 6, 3, 2)]
    _, page = _render(out, tmp_path)
    assert page.metric("video:camera:0@live-a:faces") == 9 and page.metric("video:camera:0@live-b:faces") == 6


def test_a_uri_is_refused_with_what_to_do(tmp_path, capsys):
    assert report.main(["gs://bucket/out/run1", "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facebeam report: error: ") and "no such directory" not in err
    assert "copy the run's *.parquet files from gs://bucket/out/run1 to a local folder" in err
    assert not (tmp_path / "r.html").exists()
