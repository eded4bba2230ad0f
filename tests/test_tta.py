"""Test-time augmentation views (``models.tta``)."""

from __future__ import annotations

import numpy as np
import pytest

from models.tta import TTA_MODES, tta_mode, views


def _faces(shape, dtype=np.uint8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)


@pytest.mark.parametrize("shape", [(3, 48, 48), (3, 48, 48, 1), (2, 64, 64, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_views_of_each_mode(shape, dtype):
    faces = _faces(shape, dtype)
    (plain,) = views(faces, "none")
    assert plain is faces or np.array_equal(plain, faces)
    face, mirrored = views(faces, "flip")
    np.testing.assert_array_equal(face, faces)
    np.testing.assert_array_equal(mirrored, faces[:, :, ::-1])
    multi = views(faces, "multi")
    assert len(multi) == 6 and all(v.shape == faces.shape and v.dtype == faces.dtype for v in multi)
    np.testing.assert_array_equal(multi[0], faces)
    np.testing.assert_array_equal(multi[1], faces[:, :, ::-1])
    for zoomed, mirror in zip(multi[2::2], multi[3::2]):
        assert not np.array_equal(zoomed, faces)
        np.testing.assert_array_equal(mirror, zoomed[:, :, ::-1])
    assert not np.array_equal(multi[2], multi[4])  # zoomed in, zoomed out
    assert [len(v) for v in views(faces[:0], "multi")] == [0] * 6


def test_zoom_scales_about_the_centre():
    # a bright square in the middle of a dark face: 8% larger zoomed in, 8% smaller zoomed out
    faces = np.zeros((1, 48, 48), np.uint8)
    faces[0, 12:36, 12:36] = 255
    _, _, zoom_out, _, zoom_in, _ = views(faces, "multi")
    side = lambda v: (v[0] > 127).any(axis=0).sum()  # noqa: E731
    assert side(zoom_out) == round(24 * 0.92) and side(zoom_in) == round(24 * 1.08)
    assert (zoom_in[0] > 127)[24, 24] and (zoom_out[0] > 127)[24, 24]


def test_modes_and_their_errors():
    assert TTA_MODES == ("none", "flip", "multi")
    assert tta_mode(True) == "flip" and tta_mode(False) == "none" and tta_mode("multi") == "multi"
    with pytest.raises(ValueError, match="must be one of"):
        tta_mode("mirror")
    with pytest.raises(ValueError, match="need faces"):
        views(np.zeros((48, 48)), "flip")


def test_the_pipeline_option_reaches_the_model_handler(monkeypatch, tmp_path):
    from pipelines import analyze

    class Built(Exception):
        pass

    def build(p, patterns, output, handler, *args, **kwargs):
        raise Built(handler._tta)

    monkeypatch.setattr(analyze, "build", build)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"not read")
    for i, (argv, want) in enumerate(((["--tta", "multi"], "multi"), (["--flip_tta"], "flip"), ([], "none"))):
        with pytest.raises(Built) as built:
            analyze.run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / f"out{i}"), *argv])
        assert built.value.args == (want,)
    with pytest.raises(SystemExit):
        analyze.run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "bad"), "--tta", "mirror"])


def test_the_emotion_card_shows_the_multi_view_column_where_the_record_has_it():
    from models import card

    def scored(accuracy):
        return {"n": 3, "accuracy": accuracy, "macro_f1": accuracy - 0.03, "ece": 0.05,
                "per_class": {"happy": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 3}},
                "confusion": [[3]]}

    rec = {"public_test": scored(0.676), "public_test_tta": scored(0.679),
           "public_test_fgsm": {"eps": 0.01, "accuracy": 0.08}}
    lines = card._emotion_figures(rec)
    assert "| measure | value | with flip TTA |" in lines and "| accuracy | 67.6% | 67.9% |" in lines
    assert "| accuracy under FGSM, eps 0.01 | 8.0% | |" in lines
    lines = card._emotion_figures({**rec, "public_test_tta_multi": scored(0.692)})
    assert "| measure | value | with flip TTA | with multi TTA (6 views) |" in lines
    assert "|---|---|---|---|" in lines and "| accuracy | 67.6% | 67.9% | 69.2% |" in lines
    assert "| accuracy under FGSM, eps 0.01 | 8.0% | | |" in lines
    assert "## Figures (FER2013 PublicTest, 3 faces)" in lines
    # a temperature per mode, each with its cross-fitted ECE
    by_mode = {m: {"temperature": t, "ece_after_cross_fitted": e} for m, t, e in
               (("none", 1.35, 0.020), ("flip", 1.27, 0.024), ("multi", 1.12, 0.021))}
    lines = card._emotion_figures({**rec, "public_test_tta_multi": scored(0.692), "calibration_by_tta": by_mode})
    assert ("| ECE with the temperature fitted for the views (cross-fitted halves) | 0.020 (T 1.35) | "
            "0.024 (T 1.27) | 0.021 (T 1.12) |") in lines


def test_the_age_gender_card_shows_the_multi_view_column_where_the_record_has_it():
    from models import card

    def scored(mae):
        return {"n": 10, "age_mae": mae, "age_group_accuracy": 0.5, "gender_accuracy": 0.92,
                "by_gender": {"female": {"n": 5, "age_mae": mae, "gender_accuracy": 0.9}}}

    rec = {"validation": scored(5.43), "validation_tta": scored(5.28)}
    lines = card._age_gender_figures(rec)
    assert "| measure | value | with flip TTA |" in lines and "| age MAE (years) | 5.43 | 5.28 |" in lines
    lines = card._age_gender_figures({**rec, "validation_tta_multi": scored(5.19)})
    assert "| measure | value | with flip TTA | with multi TTA (6 views) |" in lines
    assert "| age MAE (years) | 5.43 | 5.28 | 5.19 |" in lines and "| gender accuracy | 92.0% | 92.0% | 92.0% |" in lines
    assert "| gender female | 5 | 5.43 | 90.0% |" in lines  # the bias table: the plain figures


def test_every_mode_from_one_pass_per_multi_view_matches_scoring_each_mode():
    from models.networks import emotion_net
    from models.train import emotion_predict
    from models.tta import means_by_mode

    model = emotion_net(widths=(4, 8), dropout=0.0)
    faces = _faces((5, 48, 48))
    by_mode = means_by_mode([emotion_predict(model, v, tta="none") for v in views(faces, "multi")])
    assert list(by_mode) == list(TTA_MODES)
    for mode in TTA_MODES:
        np.testing.assert_allclose(by_mode[mode], emotion_predict(model, faces, tta=mode), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="the 6 multi views"):
        means_by_mode([by_mode["none"]] * 2)


def _linear(shape, outputs):
    """A Keras model linear in its pixels: any change to a view's pixels shows in its outputs."""
    import keras

    inputs = keras.Input(shape)
    flat = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, {k: keras.layers.Dense(1, name=k)(flat) for k in outputs} if isinstance(outputs, tuple)
                       else keras.layers.Dense(outputs)(flat))


def test_the_recipe_and_evaluate_score_the_views_the_pipeline_scores():
    """``emotion_predict`` / ``age_gender_predict`` (training records, ``facebeam evaluate``) make the
    zoomed views of float32 pixels, as the model handler does: uint8 views would round each
    interpolated pixel, and the figures would not be the pipeline's."""
    import keras

    from models.handler import FaceModels
    from models.train import age_gender_predict, emotion_predict

    keras.utils.set_random_seed(0)
    emotion, age_gender = _linear((48, 48, 1), 7), _linear((64, 64, 3), ("age", "gender"))
    grey, rgb = _faces((6, 48, 48), seed=1), _faces((6, 64, 64, 3), seed=2)
    pair = FaceModels(emotion, age_gender)
    for mode in TTA_MODES:
        e, a, g = pair.predict(grey[..., None].astype(np.float32), rgb.astype(np.float32), mode)
        np.testing.assert_allclose(emotion_predict(emotion, grey, mode), e, rtol=1e-5, atol=1e-4)
        age, p_female = age_gender_predict(age_gender, rgb, mode)
        np.testing.assert_allclose(age, a, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(p_female, g, rtol=1e-5, atol=1e-4)
