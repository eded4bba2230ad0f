"""Tier 3: the traced detector and models give the results of the libraries' own eager calls."""

from __future__ import annotations

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


def _calibrated(models, x):
    """The emotion model's eager softmax with the models' temperature applied, in numpy."""
    from models.calibration import apply_temperature

    return apply_temperature(np.asarray(models.emotion(x, training=False)), models.emotion_temperature)


def test_emotion_probabilities_are_calibrated_with_the_shipped_temperature(loaded_models, shipped_specs):
    from models.handler import FaceModels

    _, models = loaded_models
    emotion_spec = shipped_specs[0]
    assert emotion_spec.temperature > 1.0 and models.emotion_temperature == emotion_spec.temperature
    raw = FaceModels(models.emotion, models.age_gender)
    assert raw.emotion_temperature == 1.0
    rng = np.random.default_rng(2)
    x_emotion = rng.integers(0, 255, (16, 48, 48, 1)).astype(np.float32)
    x_age = rng.integers(0, 255, (16, 64, 64, 3)).astype(np.float32)
    calibrated, raw_probs = models.predict(x_emotion, x_age)[0], raw.predict(x_emotion, x_age)[0]
    np.testing.assert_allclose(raw_probs, np.asarray(models.emotion(x_emotion, training=False)), atol=1e-5)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-5)
    # T > 1 softens: the same top class, with less confidence.
    np.testing.assert_array_equal(calibrated.argmax(1), raw_probs.argmax(1))
    assert np.all(calibrated.max(1) <= raw_probs.max(1) + 1e-6) and np.any(calibrated.max(1) < raw_probs.max(1) - 1e-3)


@pytest.mark.parametrize("flip_tta", [False, True])
def test_traced_models_match_eager_calls(loaded_models, flip_tta):
    _, models = loaded_models
    rng = np.random.default_rng(1)
    for n in (1, 5):
        x_emotion = rng.integers(0, 255, (n, 48, 48, 1)).astype(np.float32)
        x_age = rng.integers(0, 255, (n, 64, 64, 3)).astype(np.float32)
        emotion, age, p_female = models.predict(x_emotion, x_age, flip_tta)
        want_emotion = _calibrated(models, x_emotion)
        out = models.age_gender(x_age, training=False)
        want_age, want_female = np.asarray(out["age"])[:, 0], np.asarray(out["gender"])[:, 0]
        if flip_tta:
            want_emotion = (want_emotion + _calibrated(models, x_emotion[:, :, ::-1])) / 2
            flipped = models.age_gender(x_age[:, :, ::-1], training=False)
            want_age = (want_age + np.asarray(flipped["age"])[:, 0]) / 2
            want_female = (want_female + np.asarray(flipped["gender"])[:, 0]) / 2
        assert isinstance(emotion, np.ndarray) and emotion.shape == (n, 7) and age.shape == p_female.shape == (n,)
        np.testing.assert_allclose(emotion, want_emotion, atol=1e-5)
        np.testing.assert_allclose(age, want_age, atol=1e-5)
        np.testing.assert_allclose(p_female, want_female, atol=1e-5)
