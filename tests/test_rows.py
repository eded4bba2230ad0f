"""Tier 1: labels, metrics, data helpers and the output row builders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from models import data as fdata
from models.handler import FaceAttributes
from models.labels import AGE_GROUPS, EMOTIONS, age_group, age_groups
from models.metrics import classification_report, expected_calibration_error
from transforms.records import ErrorRecord, FaceCrop, SourceFile
from transforms.sinks import FACES_SCHEMA, SOURCES_SCHEMA, RunInfo, face_row, source_row

RUN = RunInfo("run-1", "emotion_v1@abc", "age_gender_v1@def")


def _face(**kw):
    base = dict(source_uri="/x/a.jpg", source_type="image", frame_index=None, timestamp_s=None, face_index=0,
                box=(1.0, 2.0, 30.0, 40.0), image_width=100, image_height=80, detector="mtcnn", confidence=0.99,
                landmarks=tuple(float(i) for i in range(10)), crop=None)
    base.update(kw)
    return FaceCrop(**base)


@pytest.mark.parametrize("age,group", [(0, "0-2"), (2.9, "0-2"), (3, "3-9"), (19.99, "10-19"), (20, "20-29"),
                                       (69.5, "60-69"), (70, "70+"), (104, "70+"), (-1, "0-2")])
def test_age_group(age, group):
    assert age_group(age) == group


def test_age_groups_vectorised():
    assert list(age_groups(np.array([1, 5, 15, 95]))) == [0, 1, 2, len(AGE_GROUPS) - 1]
    # a regression head can predict below 0: that is the youngest group (not index -1, the oldest)
    assert list(age_groups(np.array([-0.5, -30.0]))) == [0, 0]


def test_age_group_accuracy_counts_a_negative_prediction_in_the_youngest_group():
    from models.metrics import age_gender_report

    report = age_gender_report(np.array([1.0, 2.0, 75.0]), np.array([0, 1, 0]), np.array([-0.7, 1.0, 80.0]),
                               np.array([0.1, 0.9, 0.2]))
    assert report["age_group_accuracy"] == 1.0 and report["by_age_group"]["0-2"]["age_group_accuracy"] == 1.0


def test_face_row_has_every_column_and_fits_schema():
    probs = np.array([0.05, 0.05, 0.1, 0.5, 0.1, 0.1, 0.1], np.float32)
    row = face_row(_face(), FaceAttributes(probs, 31.2, 0.2), RUN)
    assert set(row) == set(FACES_SCHEMA.names)
    assert row["emotion"] == "happy" and row["emotion_confidence"] == pytest.approx(0.5)
    assert row["gender"] == "male" and row["gender_confidence"] == pytest.approx(0.8)
    assert row["age_group"] == "30-39" and row["run_id"] == "run-1"
    table = pa.Table.from_pylist([row, face_row(_face(landmarks=None, confidence=None, detector="haar"),
                                                FaceAttributes(probs, 5.0, 0.9), RUN)], schema=FACES_SCHEMA)
    assert table.num_rows == 2 and table.column("landmarks")[1].as_py() is None


def test_schema_fields_are_documented():
    for schema in (FACES_SCHEMA, SOURCES_SCHEMA):
        for f in schema:
            assert f.metadata and f.metadata[b"doc"], f.name
    assert [f"p_{e}" for e in EMOTIONS] == [n for n in FACES_SCHEMA.names if n.startswith("p_")]


def test_source_row_statuses():
    src = SourceFile("/x/a.jpg", "image", 123)
    ok = source_row(src, 1, 3, [], "r")
    assert (ok["status"], ok["faces"], ok["stage"], ok["error"]) == ("ok", 3, None, None)
    assert source_row(src, 1, 0, [], "r")["status"] == "no_face"
    bad = source_row(src, 0, 0, [ErrorRecord(src.uri, "decode", "ImageError: truncated JPEG")], "r")
    assert (bad["status"], bad["stage"], bad["error"]) == ("error", "decode", "ImageError: truncated JPEG")
    # faces are never counted for a source that failed somewhere
    assert source_row(src, 5, 4, [ErrorRecord(src.uri, "detect", "boom")], "r")["faces"] == 0
    pa.Table.from_pylist([ok, bad], schema=SOURCES_SCHEMA)


def test_classification_report_and_ece():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    r = classification_report(y, probs, ("a", "b"))
    assert r["accuracy"] == 0.75 and r["confusion"] == [[1, 1], [0, 2]]
    assert r["per_class"]["a"]["recall"] == 0.5 and r["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    perfect = np.eye(2)[y]
    assert expected_calibration_error(y, perfect) == 0.0
    assert expected_calibration_error(y, probs) > 0
    # macro-F1 over the classes that occur or are predicted: a third class absent from both is not a zero
    three = classification_report(y, np.c_[probs, np.zeros(4)], ("a", "b", "c"))
    assert three["macro_f1"] == pytest.approx(r["macro_f1"]) == pytest.approx((2 / 3 + 0.8) / 2)


def test_validation_split_is_stable_and_about_ten_percent():
    names = np.array([f"{i}_0_0_2017.jpg" for i in range(5000)])
    mask = fdata.validation_mask(names)
    assert 0.08 < mask.mean() < 0.12
    np.testing.assert_array_equal(mask, fdata.validation_mask(names[::-1])[::-1])


def test_ferplus_soft_labels():
    votes = np.zeros((3, 10), np.uint8)
    votes[0, 1] = 10  # happiness
    votes[1, [0, 4]] = 5  # neutral + anger
    votes[2, 9] = 10  # not a face
    soft, usable = fdata.ferplus_soft_labels(votes)
    assert usable.tolist() == [True, True, False]
    assert soft[0, EMOTIONS.index("happy")] == 1.0
    assert soft[1, EMOTIONS.index("neutral")] == 0.5 and soft[1, EMOTIONS.index("angry")] == 0.5
    assert fdata.ferplus_not_a_face(votes).tolist() == [False, False, True]


def test_label_sets_map_every_fer_class():
    for name, (classes, mapping) in fdata.LABEL_SETS.items():
        assert len(mapping) == 7 and max(mapping) == len(classes) - 1, name


def test_summary_table_round_trips():
    from pipelines.summary import format_summary, parse_summary

    summary = {"inputs": 12, "images": 10, "videos": 2, "frames": 40, "ok": 9, "no_face": 1, "error": 1, "skipped": 1,
               "faces": 123, "emotions": {"happy": 100, "sad": 23}, "errors": [("/a.jpg", "decode", "bad")]}
    text = format_summary(summary, "/out")
    assert parse_summary(text) == {k: summary[k] for k in parse_summary(text)}
    assert "emotions: happy 100, sad 23" in text and "error at decode: /a.jpg: bad" in text


def test_default_data_dir(monkeypatch, tmp_path):
    from models import data

    monkeypatch.setenv("FACEBEAM_DATA", str(tmp_path / "mine"))
    assert data.default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv("FACEBEAM_DATA")
    checkout = Path(data.__file__).resolve().parent.parent
    assert data.default_data_dir() == checkout.parent / "shared" / "data"  # beside the repository
    # an installed package (no setup.py above it) looks beside the working directory
    monkeypatch.setattr(data, "__file__", str(tmp_path / "site-packages" / "models" / "data.py"))
    monkeypatch.chdir(tmp_path)
    assert data.default_data_dir() == tmp_path.parent / "shared" / "data"
