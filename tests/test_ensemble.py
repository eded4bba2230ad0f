"""Emotion ensembles (``models.ensemble``) of tiny networks on generated faces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.labels import EMOTIONS
from tests.test_distill import _teacher
from tests.test_training_techniques import write_fer


def _faces(n: int = 12, seed: int = 1) -> np.ndarray:
    """Smooth grey faces (as photographs are), uint8 (n, 48, 48)."""
    import cv2

    rng = np.random.default_rng(seed)
    return np.stack([cv2.GaussianBlur(rng.integers(0, 256, (48, 48)).astype(np.uint8), (7, 7), 2.0)
                     for _ in range(n)])


@pytest.mark.parametrize("mode", ["none", "flip", "multi"])
def test_view_matrices_are_the_views_of_test_time_augmentation(mode):
    from models.ensemble import view_matrices
    from models.tta import views

    faces = _faces().astype(np.float32)  # the pixels the handler and evaluate make views of
    faces[:, 20:28] = 255 * (np.arange(48) % 2)  # sharp edges: a position off by 1/32 shows
    expected = views(faces, mode)
    matrices = view_matrices(48, mode)
    assert len(matrices) == len(expected)
    for (rows, columns), view in zip(matrices, expected):
        # OpenCV's positions, in its fixed point: the same views (exact weights were up to 6 grey levels off)
        np.testing.assert_allclose(np.einsum("ij,bjk,lk->bil", rows, faces, columns), view, atol=1e-3)
    assert np.array_equal(matrices[0][0], np.eye(48)) and np.array_equal(matrices[0][1], np.eye(48))
    with pytest.raises(ValueError, match="views must be one of"):
        view_matrices(48, "rotate")


def test_zoom_matrix_rows_are_interpolation_weights():
    from models.ensemble import zoom_matrix

    for scale in (0.92, 1.08, 1.0):
        for rows in (True, False):
            r = zoom_matrix(48, scale, rows)
            np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-6)  # a constant face stays constant
            assert (r >= 0).all() and ((r > 0).sum(axis=1) <= 2).all()
    np.testing.assert_allclose(zoom_matrix(48, 1.0), np.eye(48), atol=1e-7)
    # zooming in (scale above 1) takes the middle of the face: the first row reads inside it
    assert zoom_matrix(48, 1.08)[0].argmax() > 0 and zoom_matrix(48, 0.92)[0, 0] == 1.0


def test_the_ensemble_is_the_mean_of_its_members_over_the_views(tmp_path):
    import keras

    from models.ensemble import build_ensemble, view_matrices
    from models.train import emotion_predict

    members = [keras.models.load_model(_teacher(tmp_path, name=f"m{i}", seed=i), compile=False) for i in range(2)]
    faces = _faces(16)
    for mode in ("none", "flip", "multi"):
        model = build_ensemble(members, mode)
        got = model.predict(faces[..., None].astype(np.float32), verbose=0)
        views = [np.einsum("ij,bjk,lk->bil", r, faces.astype(np.float32), c) for r, c in view_matrices(48, mode)]
        expected = np.mean([m.predict(v[..., None], verbose=0) for v in views for m in members], axis=0)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
        if mode != "multi":  # no zoom: exactly the members' test-time augmentation
            np.testing.assert_allclose(got, np.mean([emotion_predict(m, faces, mode) for m in members], axis=0),
                                       rtol=1e-4, atol=1e-6)
    # the members are shared by the views, not copied; only they have weights to train
    assert [layer.name for layer in model.layers if isinstance(layer, keras.Model)] == ["member_0", "member_1"]
    assert not any(layer.trainable_weights for layer in model.layers if not isinstance(layer, keras.Model))
    with pytest.raises(ValueError, match="at least one member"):
        build_ensemble([], "flip")


def test_the_recipe_writes_a_model_the_pipeline_loads_with_its_record_and_card(tmp_path):
    import keras

    from models import card
    from models.ensemble import main
    from models.handler import FaceModelHandler
    from models.registry import load_checked, resolve, sha256_of

    data = tmp_path / "data"
    (data / "fer2013").mkdir(parents=True)
    write_fer(data / "fer2013" / "fer2013_PublicTest.npz", 28, 1)
    paths = [_teacher(tmp_path, name=f"m{i}", seed=i) for i in range(2)]
    argv = [*map(str, paths), "--views", "flip", "--name", "ens", "--out", str(tmp_path / "o"), "--data_dir", str(data)]
    assert main(argv) == 0

    record = json.loads((tmp_path / "o" / "ens.json").read_text())
    assert record["sha256"] == sha256_of(tmp_path / "o" / "ens.keras")
    assert not list((tmp_path / "o").glob(".*"))  # nothing staged is left behind
    assert (record["task"], record["classes"], record["input"]) == ("emotion", list(EMOTIONS), [48, 48, 1])
    assert record["recipe"] == {"members": ["m0", "m1"], "views": "flip", "limit": 0}
    assert [m["name"] for m in record["ensemble"]["members"]] == ["m0", "m1"]
    assert record["ensemble"]["members"][0]["commands"] == ["python -m models.train emotion --name m0"]
    assert record["command"] == "python -m models.ensemble " + " ".join(argv)

    # the figures are the ensemble's: the members' flip TTA, averaged
    fer = np.load(data / "fer2013" / "fer2013_PublicTest.npz")
    from models.train import emotion_predict

    members = [keras.models.load_model(p, compile=False) for p in paths]
    probs = np.mean([emotion_predict(m, fer["images"], "flip") for m in members], axis=0)
    assert record["public_test"]["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == fer["labels"]))
    assert record["temperature"] > 0 and "accuracy" in record["public_test_fgsm"]
    # the views are the model's own: no test-time augmentation on top of them
    assert "public_test_tta" not in record and "public_test_tta_multi" not in record
    figures = card._emotion_figures(record)
    assert figures[2:4] == ["| measure | value |", "|---|---|"]
    assert figures[4] == f"| accuracy | {100 * record['public_test']['accuracy']:.1f}% |"

    # an emotion model like any other: resolved, checked, run by the pipeline's handler (LiteRT)
    spec = resolve(str(tmp_path / "o" / "ens.keras"), "emotion")
    model = load_checked(spec)
    np.testing.assert_allclose(model.predict(fer["images"][..., None].astype(np.float32), verbose=0), probs,
                               rtol=1e-4, atol=1e-6)
    age_gender = resolve("age_gender_v4", "age-gender")
    handler = FaceModelHandler(spec, age_gender, runtime="litert", calibrate=False)
    loaded = handler.load_model()
    batch = [(fer["images"][i].astype(np.float32), np.zeros((64, 64, 3), np.float32)) for i in range(5)]
    got = np.stack([r.inference.emotion for r in handler.run_inference(batch, loaded)])
    np.testing.assert_allclose(got, probs[:5], atol=1e-5)

    lines = card._ensemble(record["ensemble"])
    assert lines[0].startswith("An ensemble: the mean softmax of 2 networks, each scored on the face and its "
                               "mirror image, in one model (2 x 2 passes per face).")
    assert lines[-2].startswith("| m0 | `") and lines[-1].endswith("| - | - | - |")
    assert card.commands_of(record) == ["python -m models.train emotion --name m0",
                                        "python -m models.train emotion --name m1", record["command"]]

    # as a teacher, it is scored in its own views, not in --teacher_tta's on top of them; a single
    # network beside it still is
    from models import distill

    faces = fer["images"][:8]
    teach, taught = distill.teacher_targets([str(tmp_path / "o" / "ens.keras"), str(paths[0])], faces, EMOTIONS,
                                            "multi", tmp_path / "w")
    expected = np.mean([model.predict(faces[..., None].astype(np.float32), verbose=0),
                        emotion_predict(members[0], faces, "multi")], axis=0)
    np.testing.assert_allclose(teach, expected, rtol=1e-4, atol=1e-6)
    assert [t.get("own_views") for t in taught["teachers"]] == ["flip", None]
    sentence = card._distill({**taught, "weight": 0.5, "temperature": 1.0, "train_accuracy": 0.5})
    assert "ens (sha256 `" in sentence and "; an ensemble, in its own `flip` views)" in sentence


def test_members_must_agree_and_differ(tmp_path, capsys):
    from models.ensemble import main

    a = _teacher(tmp_path, name="a", seed=1)
    six = _teacher(tmp_path, classes=("angry", "fear", "happy", "sad", "surprise", "neutral"), name="six")
    assert main([str(a), str(six), "--out", str(tmp_path / "o")]) == 2
    assert "six differs from a" in capsys.readouterr().err
    assert main([str(a), str(a), "--out", str(tmp_path / "o")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.keras"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
