"""Tier 1-2: the training techniques on tiny synthetic FER2013 / UTKFace files (1 epoch, tiny networks).

Each test checks that its technique changes what it should: the adversarial loss, the fitted
temperature, the classifier on the embedding, the search table, the ablation rows and their card.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.labels import EMOTIONS
from models.registry import DEFAULT_MODELS

# A network small enough to train an epoch on ~100 faces in about a second.
TINY = ["--widths", "4", "8", "--batch_size", "32"]
# Where each emotion's FER+ votes go (column of ferplus_vote_columns), and the "not a face" column.
_FERPLUS_COLUMN = {0: 4, 1: 5, 2: 6, 3: 1, 4: 3, 5: 2, 6: 0}
_NOT_A_FACE = 9


def write_fer(path: Path, n: int, seed: int) -> Path:
    """A FER2013-layout npz: class c has a bright band at rows 6c..6c+5, FER+ votes mostly agree."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(EMOTIONS)
    images = rng.integers(0, 60, (n, 48, 48)).astype(np.uint8)
    votes = np.zeros((n, 10), np.uint8)
    for i, c in enumerate(labels):
        images[i, 6 * c:6 * c + 6, 10:38] = 220
        votes[i, _FERPLUS_COLUMN[c]] = 7
        votes[i, 0] += 3
    votes[::11, _NOT_A_FACE] = 20
    np.savez(path, images=images, labels=labels, ferplus_votes=votes,
             filenames=np.array([f"{path.stem}_{i}.png" for i in range(n)]))
    return path


@pytest.fixture(scope="module")
def fer_dir(tmp_path_factory) -> Path:
    """A data folder with fer2013/fer2013_Training.npz (112 faces) and fer2013_PublicTest.npz (56)."""
    root = tmp_path_factory.mktemp("data")
    (root / "fer2013").mkdir()
    write_fer(root / "fer2013" / "fer2013_Training.npz", 112, 0)
    write_fer(root / "fer2013" / "fer2013_PublicTest.npz", 56, 1)
    return root


def _tiny_emotion_net(seed: int = 0):
    import keras

    from models.networks import emotion_net

    keras.utils.set_random_seed(seed)
    return emotion_net(widths=(4, 8), dropout=0.0)


def _compile(model):
    import keras

    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return model


def test_adversarial_step_adds_the_loss_of_perturbed_faces():
    import keras

    from models.adversarial import AdversarialRegularization

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 48, 48, 1)).astype(np.float32)
    y = np.eye(7, dtype=np.float32)[np.arange(16) % 7]
    plain = _compile(_tiny_emotion_net())
    weights = plain.get_weights()
    plain_logs = plain.train_on_batch(x, y, return_dict=True)
    results = {}
    for multiplier in (0.0, 0.3):
        base = _tiny_emotion_net()
        base.set_weights(weights)
        wrapper = _compile(AdversarialRegularization(base, multiplier, step=0.01))
        results[multiplier] = (wrapper.train_on_batch(x, y, return_dict=True), base.get_weights())
    off, (on, on_weights) = results[0.0][0], results[0.3]
    # Same clean forward pass as the plain model: multiplier 0 is the plain loss.
    assert off["loss"] == pytest.approx(plain_logs["loss"], rel=1e-5)
    # The perturbation raises the loss, and the total is clean + 0.3 x perturbed.
    assert on["adversarial_loss"] > plain_logs["loss"]
    assert on["loss"] == pytest.approx(plain_logs["loss"] + 0.3 * on["adversarial_loss"], rel=1e-4)
    assert any(not np.allclose(a, b) for a, b in zip(on_weights, plain.get_weights()))
    with pytest.raises(ValueError, match="step > 0"):
        AdversarialRegularization(keras.Sequential([keras.Input((2,))]), 0.3, step=0.0)


def test_fgsm_moves_each_pixel_by_eps_against_the_true_class(loaded_models):
    import keras

    from models.adversarial import fgsm

    model = loaded_models[1].emotion
    rng = np.random.default_rng(0)
    x = rng.uniform(40, 200, (24, 48, 48, 1)).astype(np.float32)
    labels = model.predict(x, verbose=0).argmax(1)
    x_adv = fgsm(model, x, labels, eps=0.02, batch_size=10)
    np.testing.assert_allclose(np.abs(x_adv - x).max(), 0.02 * 255, rtol=1e-4)
    assert (np.abs(x_adv - x) > 0).mean() > 0.9
    ce = keras.losses.SparseCategoricalCrossentropy()
    assert float(ce(labels, model.predict(x_adv, verbose=0))) > float(ce(labels, model.predict(x, verbose=0)))


def test_adversarial_recipe_resumes_and_writes_a_plain_model(fer_dir, tmp_path):
    import keras

    from models import train

    argv = ["emotion", "--data_dir", str(fer_dir), "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
            "--epochs", "2", "--adv_multiplier", "0.3", "--adv_step", "0.01", *TINY]
    assert train.main([*argv, "--stop_after", "1"]) == 0
    first = json.loads((tmp_path / "o" / "emotion.json").read_text())
    assert len(first["history"]) == 1 and first["history"][0]["adversarial_loss"] > 0
    assert train.main(argv) == 0
    record = json.loads((tmp_path / "o" / "emotion.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [0, 1]
    assert record["recipe"]["adv_multiplier"] == 0.3 and record["train_seconds"] > 0
    assert "val_adversarial_loss" not in record["history"][0]
    model = keras.models.load_model(tmp_path / "o" / "emotion.keras")  # no custom objects needed
    assert type(model).__name__ == "Functional" and model.name == "emotion"
    assert 0 <= record["public_test_fgsm"]["accuracy"] <= 1 and record["public_test_fgsm"]["eps"] == 0.01
    assert record["public_test_tta_multi"]["n"] == record["public_test"]["n"] > 0
    calibration = record["calibration"]
    assert record["temperature"] == calibration["temperature"] > 0
    assert {"ece_before", "ece_after", "ece_after_cross_fitted"} <= set(calibration)


def test_an_oversampled_recipe_records_its_faces_and_its_samples(fer_dir, tmp_path):
    from models import train

    assert train.main(["emotion", "--data_dir", str(fer_dir), "--workdir", str(tmp_path / "w"), "--out",
                       str(tmp_path / "o"), "--epochs", "1", "--limit", "50", "--oversample", "1", *TINY]) == 0
    record = json.loads((tmp_path / "o" / "emotion.json").read_text())
    assert record["train_faces"] == 50 < record["train_samples"]  # the copies were counted as faces


def test_adversarial_age_gender_recipe(tmp_path):
    from models import train

    rng = np.random.default_rng(0)
    n = 60  # 3 of these file names fall in the validation split
    jpegs = [cv2.imencode(".jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))[1].ravel() for _ in range(n)]
    (tmp_path / "utkface").mkdir()
    np.savez(tmp_path / "utkface" / "utkface_train.npz", jpeg=np.concatenate(jpegs),
             offsets=np.cumsum([0] + [len(j) for j in jpegs]), age=rng.integers(1, 90, n).astype(np.int16),
             gender=(np.arange(n) % 2).astype(np.int8), filenames=np.array([f"{i}.jpg" for i in range(n)]))
    assert train.main(["age-gender", "--data_dir", str(tmp_path), "--workdir", str(tmp_path / "w"),
                       "--out", str(tmp_path / "o"), "--epochs", "1", "--size", "32", "--adv_multiplier", "0.3",
                       *TINY]) == 0
    record = json.loads((tmp_path / "o" / "age_gender.json").read_text())
    assert record["history"][0]["adversarial_loss"] > 0 and record["validation"]["n"] > 0
    assert record["validation_tta_multi"]["n"] == record["validation_tta"]["n"] == record["validation"]["n"]


def test_evaluate_reports_temperature_and_perturbed_accuracy(tmp_path, capsys):
    from models import evaluate

    fer = write_fer(tmp_path / "fer.npz", 21, 2)
    assert evaluate.main(["emotion", "--data", str(fer), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert evaluate.main(["emotion", "--data", str(fer), "--json", "--temperature", "3", "--perturb", "0.02"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["temperature"] == 3.0 and report["perturb_eps"] == 0.02
    assert 0 <= report["accuracy_perturbed"] <= 1
    assert report["accuracy"] == plain["accuracy"] and report["ece"] != plain["ece"]
    assert evaluate.main(["emotion", "--data", str(fer), "--temperature", "0"]) == 2


def test_calibration_cli_fits_on_the_training_files_validation_split(fer_dir, capsys):
    from models import calibration

    fer = fer_dir / "fer2013"
    assert calibration.main(["--data", str(fer / "fer2013_Training.npz"),
                             "--eval", str(fer / "fer2013_PublicTest.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["temperature"] > 0 and out["fit_n"] < 112 and out["eval_n"] == 56
    assert out["ece_after"] != out["ece_before"] and out["model"].startswith("emotion_v2@")


def test_search_trains_each_combination_once_and_writes_a_table(fer_dir, tmp_path, monkeypatch):
    from models import search, train

    argv = ["emotion", "--lr", "0.001", "0.003", "--dropout", "0.2", "--widths", "4,8", "--epochs", "1",
            "--workdir", str(tmp_path), "--data_dir", str(fer_dir), "--batch_size", "32"]
    assert search.main(argv) == 0
    table = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["lr0.001_w4-8_d0.2", "lr0.003_w4-8_d0.2"]
    for r in table["rows"]:
        assert {"accuracy", "macro_f1", "disgust_recall", "fear_recall", "train_seconds"} <= set(r)
        assert r["train_seconds"] > 0 and r["epochs"] == 1
    assert json.loads((tmp_path / "lr0.003_w4-8_d0.2" / "model.json").read_text())["recipe"]["lr"] == 0.003
    md = (tmp_path / "results.md").read_text()
    assert md.count("| 4-8 | 0.2 |") == 2 and "disgust recall" in md

    def no_training(args):
        raise AssertionError("a finished combination was trained again")

    monkeypatch.setattr(train, "run", no_training)
    assert search.main(argv) == 0
    assert search.main([*argv[:-2], "--batch_size", "16"]) == 2  # other settings in the same folders


def test_ablation_rows_and_their_card(fer_dir, tmp_path, monkeypatch):
    import keras

    from models import ablate, card, train

    out = tmp_path / "results.json"
    argv = ["emotion", "--epochs", "1", "--workdir", str(tmp_path / "ab"), "--out", str(out),
            "--data_dir", str(fer_dir), "--only", "tta", "temperature", "embedding_mlp", *TINY]
    assert ablate.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["epochs"] == 1
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["baseline", "tta", "embedding_mlp", "temperature"]  # baseline made as their base
    for r in rows.values():
        assert {"accuracy", "macro_f1", "disgust_recall", "fear_recall", "train_seconds"} <= set(r)
    assert rows["tta"]["train_seconds"] == 0 and rows["embedding_mlp"]["train_seconds"] > 0
    assert rows["temperature"]["temperature"] > 0 and "ece_after" in rows["temperature"]
    baseline = rows["baseline"]
    assert baseline["accuracy_perturbed"] is not None and baseline["perturb_eps"] == 0.01
    # The embedding classifier is a new head on the baseline's frozen features, saved as one plain model.
    emb = keras.models.load_model(tmp_path / "ab" / "embedding_mlp" / "model.keras")
    base = keras.models.load_model(tmp_path / "ab" / "baseline" / "model.keras")
    x = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 1)).astype(np.float32)
    assert emb.get_layer("head") and not np.allclose(emb.predict(x, verbose=0), base.predict(x, verbose=0))
    sidecar = json.loads((tmp_path / "ab" / "embedding_mlp" / "model.json").read_text())
    assert sidecar["base"]["model"].startswith("model@") and sidecar["public_test"]["n"] == 56

    def no_training(args):
        raise AssertionError("a cached row was trained again")

    monkeypatch.setattr(train, "run", no_training)
    assert ablate.main(argv) == 0
    assert json.loads(out.read_text())["rows"] == results["rows"]

    text = card.render("emotion_v2", results)
    section = text[text.index("## Ablations"):]
    assert "--epochs 1" in section and "same budget" in section and "own classes" in section
    for name in rows:
        assert f"| {name} |" in section
    assert card.render(DEFAULT_MODELS["age-gender"], results).count("## Ablations") == 0


def test_every_ablation_row_is_a_valid_recipe(tmp_path):
    from models import ablate, train

    settings = ablate._Settings(epochs=3, workdir=tmp_path, data_dir=None, limit=0, seed=1, train_args=("--lr", "1e-3"))
    assert list(ablate.ROWS)[0] == "baseline" and len(ablate.ROWS) == 14
    recipes = {}
    for name in ablate.ROWS:
        args = train.parse_args([*ablate._row_argv(name, settings), "--workdir", "w", "--out", "o"])
        assert args.epochs == 3 and args.seed == 1
        recipes[name] = args.recipe
    base = recipes["baseline"]
    assert base["lr"] == 1e-3 and base["label_set"] == "7" and base["adv_multiplier"] == 0
    differs = {name: {k for k in base if r.get(k) != base[k]}
               for name, r in recipes.items() if r["task"] == "emotion"}
    assert differs["baseline"] == differs["tta"] == differs["temperature"] == set()
    assert differs["adversarial"] == {"adv_multiplier"} and differs["label_set_5"] == {"label_set"}
    assert all(len(d) == 1 for n, d in differs.items() if n not in ("baseline", "tta", "temperature"))
    assert recipes["embedding_mlp"]["task"] == "emotion-embedding"


def test_a_diverged_combination_is_a_row_of_the_search_not_its_end(fer_dir, tmp_path):
    from models import search

    argv = ["emotion", "--lr", "1e6", "0.001", "--dropout", "0.2", "--widths", "4,8", "--epochs", "1",
            "--workdir", str(tmp_path), "--data_dir", str(fer_dir), "--batch_size", "32"]
    assert search.main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["lr"], r.get("diverged", False)) for r in rows] == [(1e6, True), (0.001, False)]
    assert rows[0]["accuracy"] is None and 0 <= rows[1]["accuracy"] <= 1
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[-1] == "| 1e+06 | 4-8 | 0.2 | diverged (loss NaN) | - | - | - | - | - |"  # last, below the trained


def test_ablation_results_leave_out_rows_made_with_other_settings(fer_dir, tmp_path):
    from models import ablate

    out = tmp_path / "results.json"
    common = ["emotion", "--workdir", str(tmp_path / "ab"), "--out", str(out), "--data_dir", str(fer_dir), *TINY]
    assert ablate.main([*common, "--epochs", "1", "--only", "baseline"]) == 0
    assert ablate.main([*common, "--epochs", "1", "--seed", "5", "--only", "no_augment"]) == 0
    results = json.loads(out.read_text())
    assert results["seed"] == 5 and [r["name"] for r in results["rows"]] == ["no_augment"]
