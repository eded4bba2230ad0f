"""Distillation (``models.distill``, ``models.train emotion --teacher``) on tiny networks and faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.labels import EMOTIONS
from tests.test_training_techniques import TINY, write_fer


def test_soften_keeps_the_order_and_flattens_above_one():
    from models.distill import soften

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7) * 0.5, size=50).astype(np.float32)
    np.testing.assert_allclose(soften(probs, 1.0), probs, rtol=1e-5, atol=1e-7)
    flat, sharp = soften(probs, 2.0), soften(probs, 0.5)
    for p in (flat, sharp):
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
        assert (p.argmax(1) == probs.argmax(1)).all()

    def entropy(p):
        return -(p * np.log(p + 1e-12)).sum(1)

    assert (entropy(flat) > entropy(probs)).all() and (entropy(sharp) < entropy(probs)).all()
    # temperature T: probabilities proportional to p ** (1 / T)
    np.testing.assert_allclose(flat, np.sqrt(probs) / np.sqrt(probs).sum(1, keepdims=True), rtol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        soften(probs, 0.0)


def test_mix_targets_weights_labels_and_teacher():
    from models.distill import mix_targets

    labels = np.eye(3, dtype=np.float32)[[0, 2]]
    teacher = np.array([[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]], np.float32)
    np.testing.assert_allclose(mix_targets(labels, teacher, 0.25), [[0.8, 0.2, 0.0], [0.125, 0.0625, 0.8125]])
    np.testing.assert_array_equal(mix_targets(labels, teacher, 0.0), labels)
    with pytest.raises(ValueError, match="shape"):
        mix_targets(labels, teacher[:1], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix_targets(labels, teacher, 1.5)


def _teacher(tmp_path: Path, classes=EMOTIONS, name="teacher", seed: int = 3) -> Path:
    """A tiny emotion model saved with its sidecar, as ``models.train`` writes them."""
    import keras

    from models.networks import emotion_net
    from models.registry import sha256_of

    keras.utils.set_random_seed(seed)
    path = tmp_path / f"{name}.keras"
    emotion_net(num_classes=len(classes), widths=(4, 8), dropout=0.0).save(path)
    (tmp_path / f"{name}.json").write_text(json.dumps({
        "task": "emotion", "classes": list(classes), "sha256": sha256_of(path), "input": [48, 48, 1],
        "template": [0.37, 0.38], "command": f"python -m models.train emotion --name {name}", "sittings": []}))
    return path


def test_teacher_targets_are_the_mean_over_views_and_are_kept_for_the_next_sitting(tmp_path, monkeypatch):
    import keras

    from models import distill
    from models.train import emotion_predict

    path = _teacher(tmp_path)
    images = np.random.default_rng(1).integers(0, 256, (24, 48, 48), dtype=np.uint8)
    probs, record = distill.teacher_targets([str(path)], images, EMOTIONS, "multi", tmp_path / "w")
    model = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(probs, emotion_predict(model, images, "multi"), rtol=1e-5, atol=1e-6)
    assert not np.allclose(probs, emotion_predict(model, images, "none"), atol=1e-4)  # the views matter
    assert record["tta"] == "multi"
    assert record["teachers"] == [{"name": "teacher", "sha256": json.loads(path.with_suffix(".json").read_text())[
        "sha256"], "commands": ["python -m models.train emotion --name teacher"]}]
    assert (tmp_path / "w" / distill.CACHE_NAME).exists()

    # the next sitting reads them back; other faces or other views are scored afresh
    def scored(*_):
        raise AssertionError("scored again")

    monkeypatch.setattr(distill, "teacher_probabilities", scored)
    again, _ = distill.teacher_targets([str(path)], images, EMOTIONS, "multi", tmp_path / "w")
    np.testing.assert_array_equal(again, probs)
    for faces, tta in ((images[:-1], "multi"), (images, "flip")):
        with pytest.raises(AssertionError, match="scored again"):
            distill.teacher_targets([str(path)], faces, EMOTIONS, tta, tmp_path / "w")

    six = _teacher(tmp_path, classes=("angry", "fear", "happy", "sad", "surprise", "neutral"), name="six")
    with pytest.raises(ValueError, match="--teacher six predicts"):
        distill.teacher_targets([str(six)], images, EMOTIONS, "none")


def test_the_recipe_trains_on_the_mix_and_records_and_cards_the_teachers(tmp_path, monkeypatch, capsys):
    import keras

    from models import card, train
    from models.distill import soften
    from models.train import emotion_predict

    data = tmp_path / "data"
    (data / "fer2013").mkdir(parents=True)
    write_fer(data / "fer2013" / "fer2013_Training.npz", 56, 0)
    write_fer(data / "fer2013" / "fer2013_PublicTest.npz", 28, 1)
    teachers = [_teacher(tmp_path, name="a"), _teacher(tmp_path, name="b")]
    argv = ["emotion", "--data_dir", str(data), "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
            "--epochs", "1", "--teacher", *map(str, teachers), "--teacher_tta", "flip", "--teacher_temperature", "2",
            "--distill", "0.6", *TINY]

    seen = {}
    fit = train.fit_resumable

    def spy(model, train_ds, *args, **kwargs):
        seen["targets"] = train_ds.y
        return fit(model, train_ds, *args, **kwargs)

    monkeypatch.setattr(train, "fit_resumable", spy)
    assert train.main(argv) == 0

    fer = np.load(data / "fer2013" / "fer2013_Training.npz")
    mean = np.mean([emotion_predict(keras.models.load_model(t, compile=False), fer["images"], "flip")
                    for t in teachers], axis=0)
    expected = 0.4 * np.eye(7)[fer["labels"]] + 0.6 * soften(mean, 2.0)
    np.testing.assert_allclose(seen["targets"], expected, rtol=1e-5, atol=1e-6)

    record = json.loads((tmp_path / "o" / "emotion.json").read_text())
    distilled = record["distill"]
    assert [t["name"] for t in distilled["teachers"]] == ["a", "b"]
    assert (distilled["tta"], distilled["weight"], distilled["temperature"]) == ("flip", 0.6, 2.0)
    assert distilled["train_accuracy"] == pytest.approx(np.mean(mean.argmax(1) == fer["labels"]))
    assert record["recipe"]["teacher"] == list(map(str, teachers))

    sentence = card._distill(distilled)
    assert sentence.startswith("Distilled: the targets were 0.4 x the label + 0.6 x the mean output of a (sha256 `")
    assert "and their mirror images, softened at temperature 2;" in sentence and "teachers agree with" in sentence
    assert card.commands_of(record) == ["python -m models.train emotion --name a",
                                        "python -m models.train emotion --name b", record["command"]]
    # A teacher retrained under the same file is refused in this workdir: its students' epochs were
    # taught by the old one (the record would name the new).
    _teacher(tmp_path, name="b", seed=9)
    assert train.main([*argv[:argv.index("--epochs") + 1], "2", *argv[argv.index("--epochs") + 2:]]) == 2
    assert "input_sha256" in capsys.readouterr().err
