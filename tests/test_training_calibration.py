"""Tier 1: temperature scaling on synthetic probabilities (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import apply_temperature, cross_fitted, fit_temperature, negative_log_likelihood
from models.metrics import expected_calibration_error


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _miscalibrated(sharpness: float, n: int = 6000, classes: int = 7, seed: int = 0):
    """Labels drawn from softmax(z), and the probabilities softmax(sharpness * z) a model reports.

    sharpness > 1 is an over-confident model, < 1 an under-confident one; T = sharpness undoes it.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.5, (n, classes))
    labels = np.array([rng.choice(classes, p=p) for p in _softmax(z)])
    return _softmax(sharpness * z), labels


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_recovers_a_known_temperature_and_lowers_ece(true_t):
    probs, labels = _miscalibrated(true_t)
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(true_t, rel=0.08)
    calibrated = apply_temperature(probs, t)
    before, after = expected_calibration_error(labels, probs), expected_calibration_error(labels, calibrated)
    assert after < before / 2 and after < 0.03
    assert negative_log_likelihood(probs, labels, t) < negative_log_likelihood(probs, labels)
    np.testing.assert_array_equal(calibrated.argmax(1), probs.argmax(1))


def test_a_calibrated_model_keeps_temperature_one():
    probs, labels = _miscalibrated(1.0)
    assert fit_temperature(probs, labels) == pytest.approx(1.0, abs=0.08)


def test_apply_temperature_is_softmax_of_log_probabilities_over_t():
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    out = apply_temperature(probs, 2.0)
    np.testing.assert_allclose(out.sum(1), 1.0)
    expected = np.sqrt(probs[0]) / np.sqrt(probs[0]).sum()
    np.testing.assert_allclose(out[0], expected, rtol=1e-9)
    assert out[1, 0] < 1e-5  # a class rounded to 0 stays negligible instead of becoming nan
    np.testing.assert_allclose(apply_temperature(probs[:1], 1.0), probs[:1])
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(probs, 0.0)


def test_cross_fitted_calibrates_each_half_with_the_other_halfs_temperature():
    probs, labels = _miscalibrated(2.0, n=4000)
    fold = np.arange(len(labels)) % 2 == 0
    out, temps = cross_fitted(probs, labels, fold)
    assert len(temps) == 2 and all(t == pytest.approx(2.0, rel=0.1) for t in temps)
    np.testing.assert_allclose(out[fold], apply_temperature(probs[fold], temps[0]))
    assert expected_calibration_error(labels, out) < expected_calibration_error(labels, probs) / 2
    with pytest.raises(ValueError, match="two non-empty halves"):
        cross_fitted(probs, labels, np.ones(len(labels), bool))


def test_record_writes_a_temperature_per_tta_mode_into_the_sidecar(tmp_path, capsys):
    """``--record`` scores a recorded model as the recipe does: figures and a temperature per TTA mode,
    each fitted on the mean over its views, which the handler then applies to that mean."""
    import json

    from models.calibration import main
    from models.registry import resolve
    from tests.test_distill import _teacher
    from tests.test_training_techniques import write_fer

    model = _teacher(tmp_path, name="small")
    data = write_fer(tmp_path / "test.npz", 70, seed=4)
    assert main(["--model", str(model), "--record", str(data)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = json.loads(model.with_suffix(".json").read_text())
    assert set(meta["temperatures"]) == set(meta["calibration_by_tta"]) == {"none", "flip", "multi"}
    assert meta["temperatures"]["none"] == meta["temperature"] and meta["public_test_tta_multi"]["n"] == 70
    assert meta["scored_by"].endswith(f"--record {data}")
    spec = resolve(str(model), "emotion")
    assert spec.temperature_for("multi") == meta["temperatures"]["multi"]
    assert main(["--model", str(model), "--record", str(tmp_path / "missing.npz")]) == 2


def test_calibrate_refuses_faces_of_another_size_and_a_tampered_model(tmp_path, capsys):
    import json

    from models.calibration import main
    from tests.test_distill import _teacher
    from tests.test_training_techniques import write_fer

    model = _teacher(tmp_path, name="small")
    good = write_fer(tmp_path / "good.npz", 40, seed=1)
    wide = tmp_path / "wide.npz"
    np.savez(wide, images=np.zeros((40, 64, 64), np.uint8), labels=np.arange(40) % 7)
    for args in (["--data", str(wide), "--eval", str(good)], ["--data", str(good), "--eval", str(wide)],
                 ["--record", str(wide)]):
        assert main(["--model", str(model), *args]) == 2
        assert f"{wide}: faces of 64x64 pixels; small takes 48x48" in capsys.readouterr().err
    meta = json.loads(model.with_suffix(".json").read_text())
    meta["sha256"] = "0" * 64
    model.with_suffix(".json").write_text(json.dumps(meta))
    for args in (["--data", str(good), "--eval", str(good)], ["--record", str(good)]):
        assert main(["--model", str(model), *args]) == 2
        assert "does not match" in capsys.readouterr().err
