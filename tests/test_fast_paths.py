"""Tier 3: the traced detector and models give the results of the libraries' own eager calls."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.conftest import EXAMPLES
from transforms import imaging, video
from transforms.faces import make_detector

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def _example_images() -> list[np.ndarray]:
    images = [imaging.decode_image(p.read_bytes()) for p in sorted((EXAMPLES / "photos").glob("*.jpg"))]
    clip = next((EXAMPLES / "clips").glob("*.gif"))
    info = video.probe_video(str(clip))
    images += [frame for _, _, frame in video.read_frames(str(clip), info.fps, 1.0, 2)]
    # no proposal at all, and an image smaller than MTCNN's 12-pixel window
    images += [np.full((120, 160, 3), 128, np.uint8), np.full((8, 9, 3), 200, np.uint8)]
    return images


def test_mtcnn_detector_matches_detect_faces():
    from mtcnn import MTCNN

    ours, reference = make_detector("mtcnn"), MTCNN(stages="face_and_landmarks_detection", device="CPU:0")
    found_any = False
    for rgb in _example_images():
        expected = reference.detect_faces(rgb, box_format="xyxy")
        got = ours(rgb)
        assert len(got) == len(expected)
        found_any |= bool(got)
        for d, e in zip(got, expected):
            np.testing.assert_array_equal(d.box, np.asarray(e["box"], np.float64))
            np.testing.assert_array_equal(d.landmarks, np.array([e["keypoints"][k] for k in LANDMARKS], np.float64))
            assert d.score == pytest.approx(float(e["confidence"]), abs=1e-6)
    assert found_any


def _eager_emotion(models, x, tta):
    """The mean of the emotion model's eager softmax over ``tta``'s views, with the models' temperature
    for that mode applied to the mean, in numpy."""
    from models.calibration import apply_temperature
    from models.tta import views

    mean = np.mean([np.asarray(models.emotion(v, training=False)) for v in views(x, tta)], axis=0)
    return apply_temperature(mean, models.temperature_for(tta))


def test_emotion_probabilities_are_calibrated_with_the_shipped_temperature(loaded_models, shipped_specs):
    from models.handler import FaceModels

    handler, models = loaded_models
    emotion_spec = shipped_specs[0]
    assert emotion_spec.temperature > 1.0 and models.temperature_for("none") == emotion_spec.temperature
    raw = FaceModels(models.emotion, models.age_gender)
    assert raw.temperature_for("none") == 1.0
    rng = np.random.default_rng(2)
    x_emotion = rng.integers(0, 255, (16, 48, 48, 1)).astype(np.float32)
    x_age = rng.integers(0, 255, (16, 64, 64, 3)).astype(np.float32)
    calibrated, raw_probs = models.predict(x_emotion, x_age)[0], raw.predict(x_emotion, x_age)[0]
    np.testing.assert_allclose(raw_probs, np.asarray(models.emotion(x_emotion, training=False)), atol=1e-5)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-5)
    # T > 1 softens: the same top class, with less confidence.
    np.testing.assert_array_equal(calibrated.argmax(1), raw_probs.argmax(1))
    assert np.all(calibrated.max(1) <= raw_probs.max(1) + 1e-6) and np.any(calibrated.max(1) < raw_probs.max(1) - 1e-3)


def test_each_tta_mode_gets_the_temperature_fitted_for_its_views(shipped_specs):
    """Averaging views softens the probabilities already: each mode has its own temperature, applied
    to the mean (one fitted on single views made the six-view mean worse calibrated, ECE 0.021 -> 0.055)."""
    from models.handler import FaceModelHandler

    spec = shipped_specs[0]
    fitted = dict(spec.temperatures)
    assert set(fitted) == {"none", "flip", "multi"} and fitted["none"] == spec.temperature
    assert fitted["none"] > fitted["flip"] > fitted["multi"] > 1.0
    for tta in ("none", "flip", "multi"):
        models = FaceModelHandler(spec, shipped_specs[1], tta=tta, runtime="tensorflow").load_model()
        assert models.temperature_for(tta) == fitted[tta]
        uncalibrated = FaceModelHandler(spec, shipped_specs[1], tta=tta, calibrate=False, runtime="tensorflow")
        assert uncalibrated.load_model().temperature_for(tta) == 1.0
    # a model recorded with the plain temperature only is left uncalibrated with views
    old = dataclasses.replace(spec, temperatures=())
    assert (old.temperature_for("none"), old.temperature_for("flip"), old.temperature_for("multi")) == (
        spec.temperature, 1.0, 1.0)


def test_an_emotion_model_without_the_seven_classes_is_refused(shipped_specs):
    from models.handler import FaceModelHandler

    five = dataclasses.replace(shipped_specs[0], classes=("angry", "happy", "sad", "surprise", "neutral"))
    with pytest.raises(ValueError, match="predicts 5 classes"):
        FaceModelHandler(five, shipped_specs[1])


def _runtime_models(loaded_models, shipped_specs, runtime):
    """The session's models run by ``runtime`` (the loaded ones: LiteRT, or the same Keras models
    traced), with the temperatures of every TTA mode."""
    from models.handler import FaceModels

    _, models = loaded_models
    temperatures = shipped_specs[0].temperatures
    if runtime == "tensorflow":
        return FaceModels(models.emotion, models.age_gender, temperatures)
    assert models.runtime == "litert"  # "auto" on a machine without a GPU
    return dataclasses.replace(models, emotion_temperatures=temperatures)


@pytest.mark.parametrize("runtime", ["tensorflow", "litert"])
@pytest.mark.parametrize("tta", ["none", "flip", "multi"])
def test_fast_models_match_eager_calls(loaded_models, shipped_specs, runtime, tta):
    from models.tta import views

    models = _runtime_models(loaded_models, shipped_specs, runtime)
    rng = np.random.default_rng(1)
    # 21 faces run in LiteRT as chunks of 16, 4 and 1
    for n in (1, 5, 21):
        x_emotion = rng.integers(0, 255, (n, 48, 48, 1)).astype(np.float32)
        x_age = rng.integers(0, 255, (n, 64, 64, 3)).astype(np.float32)
        emotion, age, p_female = models.predict(x_emotion, x_age, tta)
        # the mean over the views of the eager Keras calls
        want_emotion = _eager_emotion(models, x_emotion, tta)
        outs = [models.age_gender(v, training=False) for v in views(x_age, tta)]
        want_age = np.mean([np.asarray(o["age"])[:, 0] for o in outs], axis=0)
        want_female = np.mean([np.asarray(o["gender"])[:, 0] for o in outs], axis=0)
        assert len(views(x_age, tta)) == {"none": 1, "flip": 2, "multi": 6}[tta]
        assert emotion.dtype == age.dtype == p_female.dtype == np.float32
        assert emotion.shape == (n, 7) and age.shape == p_female.shape == (n,)
        np.testing.assert_allclose(emotion, want_emotion, atol=1e-5)
        np.testing.assert_allclose(age, want_age, atol=1e-3)  # years
        np.testing.assert_allclose(p_female, want_female, atol=1e-5)
    empty = models.predict(np.zeros((0, 48, 48, 1), np.float32), np.zeros((0, 64, 64, 3), np.float32), tta)
    assert [a.shape for a in empty] == [(0, 7), (0,), (0,)]


def test_litert_models_give_each_thread_its_own_interpreters(loaded_models, shipped_specs):
    from concurrent.futures import ThreadPoolExecutor

    models = _runtime_models(loaded_models, shipped_specs, "litert")
    rng = np.random.default_rng(3)
    inputs = [(rng.integers(0, 255, (n, 48, 48, 1)).astype(np.float32),
               rng.integers(0, 255, (n, 64, 64, 3)).astype(np.float32)) for n in (3, 17, 40, 9, 64, 1)]
    alone = [models.predict(*x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda x: models.predict(*x), inputs * 3))
    for got, want in zip(together, alone * 3):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_litert_conversion_is_cached_by_the_keras_files_hash(loaded_models, shipped_specs, tmp_path, monkeypatch):
    from models import litert

    _, models = loaded_models
    spec = shipped_specs[1]
    blob = litert.flatbuffer(lambda: models.age_gender, spec.name, spec.sha256, tmp_path)
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and spec.sha256[:16] in cached[0].name and cached[0].read_bytes() == blob
    # a new TensorFlow or Keras may load or convert the same file differently: both name the conversion
    import keras
    import tensorflow as tf
    assert f"-tf{tf.__version__}-keras{keras.__version__}." in cached[0].name

    def no_conversion(model):
        raise AssertionError("converted again")

    monkeypatch.setattr(litert, "_convert", no_conversion)
    assert litert.flatbuffer(lambda: models.age_gender, spec.name, spec.sha256, tmp_path) == blob
    # another file (another hash) is converted, not served the old one
    with pytest.raises(AssertionError, match="converted again"):
        litert.flatbuffer(lambda: models.age_gender, spec.name, "0" * 64, tmp_path)
    # a cached file cut short (a crash) is converted again and replaced, not used (or failed on) for good
    monkeypatch.undo()
    for damaged in (b"", blob[:len(blob) // 2]):
        cached[0].write_bytes(damaged)
        assert litert.flatbuffer(lambda: models.age_gender, spec.name, spec.sha256, tmp_path) == blob
        assert cached[0].read_bytes() == blob


def test_litert_cache_that_cannot_be_written_only_costs_the_conversion(loaded_models, shipped_specs, tmp_path,
                                                                       caplog):
    from models import litert

    _, models = loaded_models
    spec = shipped_specs[1]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with caplog.at_level("WARNING", logger="models.litert"):
        blob = litert.flatbuffer(lambda: models.age_gender, spec.name, spec.sha256, not_a_dir)
    assert blob[4:8] == b"TFL3" and "could not cache" in caplog.text
    got = litert.LiteModel(blob)(np.zeros((2, 64, 64, 3), np.float32))
    assert set(got) == {"age", "gender"} and got["age"].shape == (2, 1)


def test_runtime_choice(shipped_specs, monkeypatch, caplog):
    from models import litert
    from models.handler import FaceModelHandler

    with pytest.raises(ValueError, match="runtime"):
        FaceModelHandler(*shipped_specs, runtime="onnx")
    assert FaceModelHandler(*shipped_specs, runtime="tensorflow").load_model().runtime == "tensorflow"

    def broken(*args, **kwargs):
        raise RuntimeError("converter missing")

    monkeypatch.setattr(litert, "flatbuffer", broken)
    with caplog.at_level("WARNING", logger="models.handler"):
        assert FaceModelHandler(*shipped_specs, runtime="auto").load_model().runtime == "tensorflow"
    assert "converter missing" in caplog.text
    with pytest.raises(RuntimeError, match="converter missing"):
        FaceModelHandler(*shipped_specs, runtime="litert").load_model()


def test_cached_conversion_runs_without_loading_keras(loaded_models, shipped_specs, monkeypatch):
    from models import handler as handler_module
    from models.handler import FaceModelHandler

    assert loaded_models[1].runtime == "litert"  # the session's load left both conversions in the cache
    loads = []
    load_checked = handler_module.load_checked
    monkeypatch.setattr(handler_module, "load_checked", lambda spec: loads.append(spec.name) or load_checked(spec))
    models = FaceModelHandler(*shipped_specs, runtime="litert").load_model()
    emotion, age, _ = models.predict(np.zeros((3, 48, 48, 1), np.float32), np.zeros((3, 64, 64, 3), np.float32))
    assert emotion.shape == (3, 7) and age.shape == (3,) and loads == []
    # the Keras model is still there for whoever asks, loaded once
    assert models.age_gender.input_shape[1:] == (64, 64, 3) and models.age_gender is models.age_gender
    assert loads == [shipped_specs[1].name]


def test_changed_model_file_is_refused_though_its_conversion_is_cached(loaded_models, shipped_specs, tmp_path):
    import dataclasses
    import shutil

    from models.handler import FaceModelHandler
    from models.registry import ModelIntegrityError

    assert loaded_models[1].runtime == "litert"
    emotion = shipped_specs[0]
    changed = tmp_path / "changed.keras"
    shutil.copyfile(emotion.path, changed)
    with open(changed, "ab") as f:
        f.write(b"\0")
    # same name and recorded sha256 as the shipped file: the cache holds a conversion under that hash
    spec = dataclasses.replace(emotion, path=str(changed), shipped=False)
    with pytest.raises(ModelIntegrityError, match="does not match"):
        FaceModelHandler(spec, shipped_specs[1], runtime="litert").load_model()
