"""Tier 3: the shipped models: integrity, the handler, and their figures on the labelled data."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from models import data as fdata
from models.labels import EMOTIONS
from models.registry import DEFAULT_MODELS, SHIPPED, WEIGHTS_DIR, ModelIntegrityError, resolve, sha256_of, verify

# The floors the default models must stay above (README, model cards).
EMOTION_MIN_ACCURACY = 0.66
AGE_MAX_MAE = 5.5  # the age/gender bar: MAE <= 5.5 years and gender >= 92% on the validation split
GENDER_MIN_ACCURACY = 0.92


def _task(name: str) -> str:
    return json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["task"]


def test_every_committed_model_is_pinned_and_the_defaults_are_shipped():
    assert sorted(p.stem for p in WEIGHTS_DIR.glob("*.keras")) == sorted(SHIPPED)
    assert set(DEFAULT_MODELS.values()) <= set(SHIPPED)
    assert {task: _task(name) for task, name in DEFAULT_MODELS.items()} == {t: t for t in DEFAULT_MODELS}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_match_pinned_sha256(name):
    spec = resolve(name, _task(name))
    assert SHIPPED[name] == spec.sha256 == sha256_of(WEIGHTS_DIR / f"{name}.keras")
    card = (WEIGHTS_DIR.parent / "cards" / f"{name}.md").read_text()
    assert spec.sha256 in card


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_committed_card_is_what_its_sidecar_renders(name):
    """Cards are written by ``models.card`` from the sidecar; only the emotion card's ablation and
    search tables come from results kept outside the repository."""
    from models import card

    committed = (WEIGHTS_DIR.parent / "cards" / f"{name}.md").read_text()
    without_tables = re.sub(r"## (Ablations|Hyperparameter search)[^\n]*\n.*?(?=\n## )\n", "", committed, flags=re.S)
    assert without_tables == card.render(name)


def test_cards_without_tables_point_to_a_card_with_them():
    """An emotion card rendered with ``--tables_in`` links a committed card that has the tables."""
    from models import card

    section = card.render("emotion_v2", tables_in="emotion_v2").split("## Ablations and hyperparameter search")
    assert len(section) == 2 and "(emotion_v2.md#ablations-fer2013-publictest)" in section[1]
    cards = WEIGHTS_DIR.parent / "cards"
    for path in cards.glob("*.md"):
        for target in re.findall(r"\(([\w.-]+\.md)#ablations-fer2013-publictest\)", path.read_text()):
            assert "\n## Ablations (FER2013 PublicTest)\n" in (cards / target).read_text(), (path.name, target)


def test_tampered_model_is_refused(tmp_path):
    spec = resolve("emotion_v2", "emotion")
    copy = tmp_path / "emotion_v2.keras"
    shutil.copyfile(spec.path, copy)
    (tmp_path / "emotion_v2.json").write_text((WEIGHTS_DIR / "emotion_v2.json").read_text())
    with open(copy, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="does not match"):
        verify(resolve(str(copy), "emotion"))


def test_wrong_task_is_refused():
    with pytest.raises(ValueError, match="not 'age-gender'"):
        resolve("emotion_v2", "age-gender")


def test_handler_batches(loaded_models):
    handler, models = loaded_models
    rng = np.random.default_rng(0)
    batch = [(rng.integers(0, 255, (48, 48), dtype=np.uint8), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
             for _ in range(5)]
    results = list(handler.run_inference(batch, models))
    assert len(results) == 5
    for r in results:
        assert r.inference.emotion.shape == (len(EMOTIONS),)
        assert abs(float(r.inference.emotion.sum()) - 1) < 1e-4
        assert 0 <= r.inference.p_female <= 1 and -5 < r.inference.age < 120
    one = list(handler.run_inference(batch[:1], models))[0]
    np.testing.assert_allclose(one.inference.emotion, results[0].inference.emotion, atol=1e-5)


def test_emotion_accuracy_on_public_test(loaded_models, data_dir):
    _, models = loaded_models
    test = fdata.load_fer(data_dir / "fer2013" / "fer2013_PublicTest.npz")
    probs = models.emotion.predict(test.images[..., None].astype(np.float32), batch_size=256, verbose=0)
    accuracy = float((probs.argmax(1) == test.labels).mean())
    card = json.loads((WEIGHTS_DIR / f"{DEFAULT_MODELS['emotion']}.json").read_text())
    assert accuracy >= EMOTION_MIN_ACCURACY
    assert accuracy == pytest.approx(card["public_test"]["accuracy"], abs=0.002)


def test_age_gender_on_validation_split(loaded_models, data_dir):
    _, models = loaded_models
    val = fdata.load_utkface(data_dir / "utkface" / "utkface_train.npz", size=64, validation=True)
    out = models.age_gender.predict(val.images.astype(np.float32), batch_size=256, verbose=0)
    mae = float(np.abs(out["age"][:, 0] - val.age).mean())
    gender = float(((out["gender"][:, 0] >= 0.5) == val.gender).mean())
    card = json.loads((WEIGHTS_DIR / f"{DEFAULT_MODELS['age-gender']}.json").read_text())
    assert mae <= AGE_MAX_MAE and gender >= GENDER_MIN_ACCURACY
    assert mae == pytest.approx(card["validation"]["age_mae"], abs=0.01)
    assert gender == pytest.approx(card["validation"]["gender_accuracy"], abs=0.002)


def test_evaluate_cli_on_any_file_of_the_layouts(tmp_path, capsys):
    import cv2

    from models import evaluate

    rng = np.random.default_rng(0)
    fer = tmp_path / "fer.npz"
    np.savez(fer, images=rng.integers(0, 255, (12, 48, 48), dtype=np.uint8), labels=np.arange(12) % 7)
    jpegs = [cv2.imencode(".jpg", rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))[1].ravel() for _ in range(6)]
    offsets = np.cumsum([0] + [len(j) for j in jpegs])
    utk = tmp_path / "utk.npz"
    np.savez(utk, jpeg=np.concatenate(jpegs), offsets=offsets, age=np.array([5, 15, 25, 35, 45, 80], np.int16),
             gender=np.array([0, 1, 0, 1, 0, 1], np.int8), race=np.array([0, 1, 2, 3, 4, 0], np.int8),
             filenames=np.array([f"{i}.jpg" for i in range(6)]))
    assert evaluate.main(["emotion", "--data", str(fer), "--json", "--plot", str(tmp_path / "p")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 12 and set(report["per_class"]) == set(EMOTIONS)
    assert np.array(report["confusion"]).sum() == 12 and 0 <= report["ece"] <= 1
    assert (tmp_path / "p" / "confusion.png").stat().st_size > 0 and (tmp_path / "p" / "reliability.png").exists()
    assert evaluate.main(["age-gender", "--data", str(utk), "--json", "--plot", str(tmp_path / "p")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 6 and {"age_mae", "age_group_accuracy", "gender_accuracy"} <= set(report)
    assert set(report["by_race"]) == {"white", "black", "asian", "indian", "others"}
    assert report["by_age_group"]["70+"]["n"] == 1
    assert evaluate.main(["emotion", "--data", str(utk)]) == 2

    # --calibrated applies the temperature fitted for the --tta mode, as the pipeline does
    assert evaluate.main(["emotion", "--data", str(fer), "--json", "--tta", "multi", "--calibrated"]) == 0
    spec = resolve("emotion_v2", "emotion")
    assert json.loads(capsys.readouterr().out)["temperature"] == spec.temperature_for("multi") != spec.temperature


def _fer_file(path, images, labels):
    np.savez(path, images=images, labels=labels)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("empty", "no faces of the model's classes"),
    ("label -1", "labels outside 0..6"),
    ("label 7", "labels outside 0..6"),
    ("colour", "FER2013 images are grey"),
    ("64 pixels", "faces of 64x64 pixels"),
    ("pixels in [0, 1]", "multiply by 255"),
    ("labels (N, 1)", "labels (10, 1)"),
    ("fractional labels", "labels must be whole numbers"),
    ("votes (N, 7)", "ferplus_votes must be (N, 10)"),
    ("cut off", "not a readable .npz"),
    ("damaged member", "a member is damaged or cut off"),
    ("an .npy array", "not an .npz archive but a single .npy array"),
    ("text", "not an .npz archive"),
    ("other class order", "its classes are neutral, angry"),
    ("a directory", "Is a directory"),
    ("no sha256", "lacks sha256"),
    ("tampered", "does not match"),
])
def test_evaluate_refuses_bad_files_with_a_message(tmp_path, capsys, case, message):
    from models import evaluate

    grey = np.zeros((10, 48, 48), np.uint8)
    labels = np.arange(10) % 7
    data = {
        "empty": lambda: _fer_file(tmp_path / "f.npz", grey[:0], labels[:0]),
        "label -1": lambda: _fer_file(tmp_path / "f.npz", grey, np.where(labels == 6, -1, labels)),
        "label 7": lambda: _fer_file(tmp_path / "f.npz", grey, labels + 1),
        "colour": lambda: _fer_file(tmp_path / "f.npz", np.zeros((10, 48, 48, 3), np.uint8), labels),
        "64 pixels": lambda: _fer_file(tmp_path / "f.npz", np.zeros((10, 64, 64), np.uint8), labels),
        "pixels in [0, 1]": lambda: _fer_file(tmp_path / "f.npz", np.full((10, 48, 48), 0.5, np.float32), labels),
        "labels (N, 1)": lambda: _fer_file(tmp_path / "f.npz", grey, labels[:, None]),
        "fractional labels": lambda: _fer_file(tmp_path / "f.npz", grey, labels + 0.5),
        "votes (N, 7)": lambda: np.savez(tmp_path / "f.npz", images=grey, labels=labels,
                                         ferplus_votes=np.ones((10, 7), np.uint8)) or str(tmp_path / "f.npz"),
    }.get(case, lambda: _fer_file(tmp_path / "f.npz", grey, labels))()
    model = []
    if case == "cut off":
        Path(data).write_bytes(Path(data).read_bytes()[:100])
    elif case == "damaged member":  # the archive reads, the deflated pixels do not
        np.savez_compressed(data, images=np.random.default_rng(0).integers(0, 256, (10, 48, 48), np.uint8),
                            labels=labels)
        raw = bytearray(Path(data).read_bytes())
        raw[200:208] = b"\xff" * 8
        Path(data).write_bytes(bytes(raw))
    elif case == "an .npy array":
        data = str(tmp_path / "f.npy")
        np.save(data, grey)
    elif case == "text":
        data = str(tmp_path / "f.npz")
        Path(data).write_text("images,labels\n")
    elif case == "other class order":
        np.savez(data, images=grey, labels=labels, classes=np.array(["neutral", *EMOTIONS[:-1]]))
    elif case == "a directory":
        data = str(tmp_path)
    elif case in ("no sha256", "tampered"):
        spec = resolve("emotion_v2", "emotion")
        copy = tmp_path / "m.keras"
        shutil.copyfile(spec.path, copy)
        meta = json.loads((WEIGHTS_DIR / "emotion_v2.json").read_text())
        if case == "no sha256":
            del meta["sha256"]
        else:
            with open(copy, "ab") as f:
                f.write(b"\0")
        (tmp_path / "m.json").write_text(json.dumps(meta))
        model = ["--model", str(copy)]
    assert evaluate.main(["emotion", "--data", data, *model]) == 2
    assert message in capsys.readouterr().err


def test_whole_number_pixels_of_any_type_read_as_uint8(tmp_path):
    images = np.arange(10 * 48 * 48).reshape(10, 48, 48) % 256
    path = _fer_file(tmp_path / "f.npz", images.astype(np.float64), (np.arange(10) % 7).astype(np.float32))
    d = fdata.load_fer(path)
    assert d.images.dtype == np.uint8 and np.array_equal(d.images, images) and d.labels.dtype == np.int64


@pytest.mark.parametrize("option, message", [
    (["--temperature", "inf"], "--temperature must be a positive number"),
    (["--temperature", "nan"], "--temperature must be a positive number"),
    (["--temperature", "0"], "--temperature must be a positive number"),
    (["--perturb", "-0.01"], "--perturb must be a number 0 or above"),
    (["--perturb", "nan"], "--perturb must be a number 0 or above"),
])
def test_evaluate_refuses_meaningless_settings(tmp_path, capsys, option, message):
    from models import evaluate

    data = _fer_file(tmp_path / "f.npz", np.zeros((10, 48, 48), np.uint8), np.arange(10) % 7)
    assert evaluate.main(["emotion", "--data", data, *option]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("task, option", [
    ("emotion", ["--split", "validation"]), ("age-gender", ["--temperature", "2"]),
    ("age-gender", ["--calibrated"]), ("age-gender", ["--perturb", "0.01"]),
])
def test_evaluate_refuses_an_option_of_the_other_task(tmp_path, capsys, task, option):
    # scored without it, the figures would read as if it had been applied
    from models import evaluate

    with pytest.raises(SystemExit) as stop:
        evaluate.main([task, "--data", str(tmp_path / "any.npz"), *option])
    assert stop.value.code == 2 and f"{option[0]}: not an option of {task}" in capsys.readouterr().err


def _utk_file(path, n=4, **change):
    import cv2

    jpegs = [cv2.imencode(".jpg", np.full((32, 32, 3), 40 * i % 256, np.uint8))[1].ravel() for i in range(n)]
    arrays = {"jpeg": np.concatenate(jpegs), "offsets": np.cumsum([0] + [len(j) for j in jpegs]),
              "age": np.arange(n, dtype=np.int16) * 20 + 1, "gender": np.arange(n, dtype=np.int8) % 2,
              "race": np.arange(n, dtype=np.int8) % 5, "filenames": np.array([f"{i}.jpg" for i in range(n)])}
    arrays.update(change)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


@pytest.mark.parametrize("change, message", [
    ({"gender": np.array([0, 1, 2, 1], np.int8)}, "1 gender labels are neither 0 (male) nor 1 (female), e.g. 2"),
    ({"age": np.array([1, 2, 3], np.int16)}, "age must have one value per image (4,)"),
    ({"age": np.array([1, -2, 3, 4], np.int16)}, "ages must be years, finite and not negative"),
    ({"race": np.array([0, 1, 7, 1], np.int8)}, "race labels outside 0..4"),
    ({"gender": np.array([[0], [1], [0], [1]], np.int8)}, "gender must have one value per image"),
    ({"filenames": np.array(["a.jpg"])}, "filenames must be one per face (4,)"),
    ({"offsets": np.array([0, 5, 3, 9, 12])}, "offsets must rise from 0"),
    ({"offsets": np.array([0, 5, 10, 15, 10 ** 7])}, "offsets must rise from 0"),
])
def test_utkface_files_with_inconsistent_arrays_are_refused(tmp_path, change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fdata.load_utkface(_utk_file(tmp_path / "u.npz", **change))


def test_utkface_file_of_the_layout_loads(tmp_path):
    d = fdata.load_utkface(_utk_file(tmp_path / "u.npz", race=None, filenames=None), size=16)
    assert d.images.shape == (4, 16, 16, 3) and list(d.gender) == [0, 1, 0, 1] and list(d.race) == [-1] * 4
    assert list(d.filenames) == ["0", "1", "2", "3"] and list(d.age) == [1, 21, 41, 61]
    with pytest.raises(ValueError, match="has no filenames, by which the validation split is made"):
        fdata.load_utkface(_utk_file(tmp_path / "u.npz", filenames=None), size=16, validation=True)


def test_file_names_stored_as_bytes_split_as_text(tmp_path):
    # str(b"x.jpg") is "b'x.jpg'": hashed so, the validation split would be another set of faces
    names = [f"{i}_0_0_2017.jpg" for i in range(40)]
    as_text = fdata.load_utkface(_utk_file(tmp_path / "t.npz", n=40, filenames=np.array(names)), 16, validation=True)
    as_bytes = fdata.load_utkface(_utk_file(tmp_path / "b.npz", n=40, filenames=np.array([n.encode() for n in names])),
                                  16, validation=True)
    assert len(as_text.filenames) > 0 and list(as_bytes.filenames) == list(as_text.filenames)


def test_a_shipped_model_is_found_in_the_installation_that_loads_it(shipped_specs):
    """A spec pickled on the submitting machine names that machine's path; a worker elsewhere
    (Dataflow, Flink) loads the shipped model from its own installation."""
    import dataclasses
    import pickle

    elsewhere = dataclasses.replace(shipped_specs[0], path="/home/someone/facebeam/models/weights/emotion_v2.keras")
    spec = pickle.loads(pickle.dumps(elsewhere))
    assert spec.shipped and spec.local_file() == str(WEIGHTS_DIR / "emotion_v2.keras")
    assert spec.sidecar() == json.loads((WEIGHTS_DIR / "emotion_v2.json").read_text())
    verify(spec)
    # a model outside models/weights is loaded from where it was given
    local = dataclasses.replace(elsewhere, shipped=False)
    with pytest.raises(FileNotFoundError):
        verify(local)


def test_a_model_on_a_filesystems_uri_is_fetched_into_the_cache(tmp_path, monkeypatch, capsys):
    from tests.fakes import DiskBackedFileSystem

    monkeypatch.setattr(DiskBackedFileSystem, "ROOT", str(tmp_path / "bucket"))
    monkeypatch.setenv("FACEBEAM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bucket" / "models").mkdir(parents=True)
    for ext in (".keras", ".json"):
        shutil.copyfile(WEIGHTS_DIR / f"emotion_v2{ext}", tmp_path / "bucket" / "models" / f"mine{ext}")
    spec = resolve("fbtest://models/mine.keras", "emotion")
    assert (spec.name, spec.shipped, spec.path) == ("mine", False, "fbtest://models/mine.keras")
    assert spec.temperature_for("multi") == resolve("emotion_v2", "emotion").temperature_for("multi")
    assert spec.sidecar() == json.loads((WEIGHTS_DIR / "emotion_v2.json").read_text())  # read from the bucket
    verify(spec)
    cached = tmp_path / "cache" / "models" / f"{spec.sha256}.keras"
    assert spec.local_file() == str(cached) and cached.read_bytes() == (WEIGHTS_DIR / "emotion_v2.keras").read_bytes()
    # a copy gone bad is refused and fetched again on the next use
    cached.write_bytes(b"damaged")
    with pytest.raises(ModelIntegrityError):
        verify(spec)
    verify(spec)
    # figures are recorded into a local sidecar only, and said so before anything is scored
    from models.calibration import record_sidecar

    assert record_sidecar("fbtest://models/mine.keras", str(tmp_path / "none.npz"), False) == 2
    assert "a model on a remote file system; record into a local copy" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve("fbtest://models/none.keras", "emotion")
    (tmp_path / "bucket" / "models" / "mine.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no sidecar"):
        resolve("fbtest://models/mine.keras", "emotion")


def test_evaluate_record_writes_the_recipes_figures_into_the_sidecar(tmp_path, capsys):
    """``facebeam evaluate --record`` rescores a model as its recipe does (age-gender: the validation
    split with every TTA mode) and its card names the command."""
    import keras

    from models import card, evaluate
    from models.networks import age_gender_net
    from tests.test_distill import _teacher
    from tests.test_training_techniques import write_fer

    keras.utils.set_random_seed(0)
    path = tmp_path / "ag.keras"
    age_gender_net(input_size=32, widths=(4, 8), dropout=0.0).save(path)
    path.with_suffix(".json").write_text(json.dumps({
        "task": "age-gender", "sha256": sha256_of(path), "input": [32, 32, 3], "template": [0.39, 0.29],
        "command": "python -m models.train age-gender", "sittings": []}))
    data = _utk_file(tmp_path / "u.npz", n=60)
    held = fdata.validation_mask(np.array([f"{i}.jpg" for i in range(60)]))
    assert held.any()
    assert evaluate.main(["age-gender", "--model", str(path), "--data", data, "--record"]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["validation"]["n"] == held.sum() and {"validation_tta", "validation_tta_multi"} <= set(meta)
    assert meta["scored_by"] == f"facebeam evaluate age-gender --model {path} --data {data} --record"
    scored = f"Scored with `{meta['scored_by']}` (the recipe's scoring, on the same weights)."
    assert scored in card._age_gender_figures(meta)
    assert evaluate.main(["age-gender", "--model", str(path), "--data", data, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["n"] == 60  # without --record: every face, nothing written

    emotion = _teacher(tmp_path, name="small")
    fer = write_fer(tmp_path / "fer.npz", 30, seed=2)
    assert evaluate.main(["emotion", "--model", str(emotion), "--data", str(fer), "--record", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["calibration_by_tta"]) == {"none", "flip", "multi"}
    meta = json.loads(emotion.with_suffix(".json").read_text())
    assert meta["public_test_tta_multi"]["n"] == 30 and meta["scored_by"].startswith("facebeam evaluate emotion")

    for extra in (["--tta", "flip"], ["--perturb", "0.01"], ["--split", "train"]):
        with pytest.raises(SystemExit):
            evaluate.main(["age-gender", "--model", str(path), "--data", data, "--record", *extra])
        assert "--record scores the model as its recipe does" in capsys.readouterr().err
