"""``facebeam sql``: DuckDB views over synthetic output directories, output formats and errors."""

from __future__ import annotations

import csv
import io
import json
import re

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import cli, sql
from tests.outputs import face, faces_table, source, write_output
from pipelines.summary import read_table
from transforms.sinks import FACES_SCHEMA

PHOTO, CLIP = "/data/a/photo.jpg", "/data/b/clip.mp4"


def _faces():
    return [face(PHOTO, "happy", 0.9), face(PHOTO, "sad", 0.5, face_index=1),
            face(CLIP, "surprise", 0.7, source_type="video", frame_index=0, timestamp_s=0.0),
            face(CLIP, "surprise", 0.8, source_type="video", frame_index=10, timestamp_s=0.4)]


def _sources():
    return [source(PHOTO, "image", 2), source(CLIP, "video", 2, frames=2),
            source("/data/b/broken.jpg", "image", 0, errors=(("decode", "truncated JPEG"),))]


@pytest.fixture
def output(tmp_path):
    return write_output(tmp_path / "out", _faces(), _sources(), shards=2)


def test_views_read_every_shard(output):
    con = sql.connect(output)
    assert sql.views(con) == ["faces", "sources"]
    assert len(sql.table_files(str(output), "faces")) == 2
    assert con.execute("SELECT count(*) FROM faces").fetchall() == [(4,)]
    assert dict(con.execute("SELECT status, count(*) FROM sources GROUP BY ALL").fetchall()) == {"ok": 2, "error": 1}
    assert sql.columns_of(con, "faces") == FACES_SCHEMA.names


def test_tracks_view_only_when_its_files_exist(output, tmp_path):
    with pytest.raises(duckdb.CatalogException):
        sql.connect(output).execute("SELECT * FROM tracks")
    tracks = pa.table({"source_uri": [CLIP], "track_id": pa.array([1], pa.int64()), "faces": [2]})
    with_tracks = write_output(tmp_path / "tracked", _faces(), _sources(), tracks=tracks)
    con = sql.connect(with_tracks)
    assert sql.views(con) == ["faces", "sources", "tracks"]
    assert con.execute("SELECT source_uri, track_id FROM tracks").fetchall() == [(CLIP, 1)]


@pytest.mark.parametrize("bare_shard", ["faces-00000-of-00002.parquet", "faces-00001-of-00002.parquet"])
def test_optional_columns_in_some_shards_read_as_null_in_others(tmp_path, bare_shard):
    out = tmp_path / "out"
    rows = _faces()
    write_output(out, None, _sources())
    full = "faces-00001-of-00002.parquet" if bare_shard.startswith("faces-00000") else "faces-00000-of-00002.parquet"
    pq.write_table(faces_table(rows[:2], track_id=[7, 8], crop_jpeg=[b"\xff\xd8a", None]), out / full)
    pq.write_table(faces_table(rows[2:]), out / bare_shard)  # the first shard or not: the union either way
    assert {"track_id", "crop_jpeg"} <= set(read_table(str(out), "faces").column_names)
    con = sql.connect(out)
    got = con.execute("SELECT face_index, track_id, crop_jpeg FROM faces ORDER BY source_uri, face_index").fetchall()
    assert got == [(0, 7, b"\xff\xd8a"), (1, 8, None), (0, None, None), (0, None, None)]


def test_a_missing_table_is_an_empty_view_with_its_schema(tmp_path):
    out = write_output(tmp_path / "out", None, [source("/x/empty.jpg", "image", 0)])
    con = sql.connect(out)
    assert sql.columns_of(con, "faces") == FACES_SCHEMA.names
    assert con.execute("SELECT count(*) FROM faces JOIN sources USING (source_uri)").fetchall() == [(0,)]


@pytest.mark.parametrize("name, sibling", [("out[1]", "out1"), ("o*", "oZZ"), ("o?", "oZ"), ("~", None),
                                           ("out [it's]", None)])
def test_directory_names_are_not_globs_or_partitions(tmp_path, monkeypatch, name, sibling):
    """A directory is read as named: not as a pattern over its siblings, not as the home directory, and
    a ``key=value`` folder above it adds no column."""
    parent = tmp_path / "year=2024"
    out = write_output(parent / name, _faces(), _sources())
    if sibling:  # one face, one source: a pattern that matched it too would count them
        write_output(parent / sibling, _faces()[:1], _sources()[:1])
    if name == "~":  # given relative: the folder ./~, not the home directory
        monkeypatch.chdir(parent)
        out = "~"
    con = sql.connect(out)
    assert con.execute("SELECT count(*) FROM faces").fetchall() == [(4,)]
    assert con.execute("SELECT count(*) FROM sources").fetchall() == [(3,)]
    assert "year" not in sql.columns_of(con, "faces")


def test_main_prints_a_table(output, capsys):
    query = "SELECT emotion, count(*) AS n FROM faces GROUP BY ALL ORDER BY n DESC, emotion"
    assert sql.main([str(output), query]) == 0
    out = capsys.readouterr().out
    assert "emotion" in out and "surprise" in out and "│" in out


def test_main_csv_and_json(output, capsys):
    query = "SELECT source_uri, face_index, landmarks, NULL AS nothing FROM faces ORDER BY source_uri, face_index"
    assert sql.main([str(output), query, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["source_uri"], r["face_index"]) for r in rows] == [(PHOTO, "0"), (PHOTO, "1"), (CLIP, "0"), (CLIP, "0")]
    assert json.loads(rows[0]["landmarks"]) == [float(i) for i in range(10)] and rows[0]["nothing"] == ""
    assert sql.main([str(output), query, "--format", "json"]) == 0
    objects = json.loads(capsys.readouterr().out)
    assert len(objects) == 4 and objects[2]["source_uri"] == CLIP and objects[2]["nothing"] is None


def test_values_become_plain_text():
    rows = [(b"\x00\x01", float("nan"), [1, None], {"a": 2}, None)]
    assert sql.to_json(["b", "f", "l", "s", "n"], rows) == (
        '[\n{"b": "AAE=", "f": null, "l": [1, null], "s": {"a": 2}, "n": null}\n]\n')
    assert sql.to_csv(["b", "l"], [(b"\x00\x01", [1.5])]) == 'b,l\nAAE=,[1.5]\n'
    assert sql.to_json(["a"], []) == "[]\n"
    assert sql.sql_string("it's") == "'it''s'"


def test_json_keeps_every_column_and_numbers_stay_numbers(output, capsys):
    assert sql.json_keys(["a", "a", "a_1", "b", "a"]) == ["a", "a_2", "a_1", "b", "a_3"]
    query = ("SELECT 1 AS a, 2 AS a, 3 AS a_1, 2.50::DECIMAL(9, 3) AS d, sum(frames) AS s, "
             "INTERVAL '1 day 2 seconds' AS i FROM sources")
    assert sql.main([str(output), query, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"a": 1, "a_2": 2, "a_1": 3, "d": 2.5, "s": 4,
                                                    "i": "P0M1DT2S"}]
    # SELECT * over a join: both tables' source_type survive.
    assert sql.main([str(output), "SELECT * FROM faces JOIN sources USING (source_uri) LIMIT 1",
                     "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert {"source_type", "source_type_1", "run_id", "run_id_1"} <= set(row)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_exports_stream_every_row_in_order(output, capsys, fmt):
    n = 3 * 4096 + 5  # several Arrow batches
    assert sql.main([str(output), f"SELECT range AS i FROM range({n})", "--format", fmt]) == 0
    text = capsys.readouterr().out
    got = [int(r["i"]) for r in (csv.DictReader(io.StringIO(text)) if fmt == "csv" else json.loads(text))]
    assert got == list(range(n))


class _Refusing(io.StringIO):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def write(self, text):
        raise self.error


def test_an_export_that_cannot_be_written_exits_2_and_a_closed_pipe_is_not_an_error(output, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout", _Refusing(OSError(28, "No space left on device")))
    assert sql.main([str(output), "SELECT * FROM faces", "--format", "json"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdout", _Refusing(BrokenPipeError(32, "Broken pipe")))
    assert sql.main([str(output), "SELECT * FROM faces", "--format", "csv"]) == 0
    assert capsys.readouterr().err == ""


def test_cli_dispatches_to_sql(output, capsys):
    assert cli.main(["sql", str(output), "SELECT count(*) AS n FROM sources", "--format", "csv"]) == 0
    assert capsys.readouterr().out == "n\n3\n"
    cli.main(["--help"])
    usage = capsys.readouterr().out
    assert "sql" in usage and "report" in usage


@pytest.mark.parametrize("query", ["SELEC 1", "SELECT nope FROM faces", "SELECT * FROM tracks",
                                   "SELECT CAST('x' AS INTEGER)", "  "])
def test_a_bad_query_exits_2(output, query, capsys):
    assert sql.main([str(output), query]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("facebeam sql: error: ") and captured.out == ""


def test_a_directory_without_output_exits_2(tmp_path, capsys):
    assert sql.main([str(tmp_path), "SELECT 1"]) == 2
    assert "no faces-*.parquet or sources-*.parquet" in capsys.readouterr().err
    assert sql.main([str(tmp_path / "missing"), "SELECT 1"]) == 2
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        sql.connect(tmp_path)


_COUNT = "SELECT count(*) AS n FROM faces"


@pytest.mark.parametrize("fmt", ["table", "csv"])
@pytest.mark.parametrize("tail", [";\n-- end\n", "; -- end", "; /* end */", ";\n/* a */ -- b\n; ;\n"])
def test_comments_after_the_last_semicolon_are_ignored(output, capsys, monkeypatch, fmt, tail):
    """A table is drawn from the last statement's text: the ';' and comments after it must not reach it."""
    assert sql.main([str(output), _COUNT, "--format", fmt]) == 0
    expected = capsys.readouterr().out
    assert sql.main([str(output), _COUNT + tail, "--format", fmt]) == 0
    assert capsys.readouterr() == (expected, "")
    monkeypatch.setattr("sys.stdin", io.StringIO(_COUNT + tail))  # as `printf ... | facebeam sql OUT -`
    assert sql.main([str(output), "-", "--format", fmt]) == 0
    assert capsys.readouterr() == (expected, "")


@pytest.mark.parametrize("query, shown", [
    ("CREATE TEMP VIEW v AS SELECT * FROM faces; -- a\nSELECT count(*) AS n FROM v; -- end", "4"),
    ("SELECT 1 AS n; /* one */ SELECT 2 AS n; /* two */", "2"),
    ("SELECT '-- é;' AS n; -- ü", "-- é;"),  # a comment inside a string stays; offsets past non-ASCII text
    ('SELECT 5 AS "n;--"; -- x', "5"),
])
def test_several_statements_and_comment_lookalikes_with_a_trailing_comment(output, capsys, query, shown):
    assert sql.main([str(output), query]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and re.search(rf"^│ *{re.escape(shown)} *│$", captured.out, re.MULTILINE)


@pytest.mark.parametrize("query", ["SELECT 1 /* open", "SELECT 1; /* open"])
def test_an_unterminated_trailing_comment_is_still_an_error(output, capsys, query):
    assert sql.main([str(output), query]) == 2
    assert "unterminated" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["gs://bucket/out/run1", "s3://bucket/out", "hdfs://namenode/out"])
def test_a_uri_is_refused_with_what_to_do(uri, capsys):
    assert sql.main([uri, "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facebeam sql: error: ") and "no such directory" not in err
    assert "read a local output directory" in err and f"copy the run's *.parquet files from {uri}" in err
    with pytest.raises(FileNotFoundError, match="local output directory"):
        sql.connect(uri)
