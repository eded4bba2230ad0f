"""Host-side augmentation, training batches, and runs finished on another machine or backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.augment import AUGMENTATION, Augmentation, augment_batch


def _faces(n=8, size=24, channels=None, seed=0):
    shape = (n, size, size) if channels is None else (n, size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_augmentation_with_no_range_is_the_identity_and_keeps_shape_and_dtype():
    for channels in (None, 1, 3):
        x = _faces(channels=channels)
        y = augment_batch(x, Augmentation(0.0, 0.0, 0.0, 0.0, flip=False), np.random.default_rng(0))
        assert y.dtype == np.uint8 and y.shape == x.shape
        np.testing.assert_array_equal(y, x)


def test_flip_alone_mirrors_about_half_the_faces_exactly():
    x = _faces(n=64)
    y = augment_batch(x, Augmentation(0.0, 0.0, 0.0, 0.0, flip=True), np.random.default_rng(1))
    mirrored = [np.array_equal(y[i], x[i, :, ::-1]) for i in range(64)]
    same = [np.array_equal(y[i], x[i]) for i in range(64)]
    assert all(m or s for m, s in zip(mirrored, same))
    assert 16 < sum(mirrored) < 48


def test_contrast_is_the_per_channel_formula():
    x = _faces(n=4, channels=3)
    spec = Augmentation(0.0, 0.0, 0.0, contrast=0.5, flip=False)
    y = augment_batch(x, spec, np.random.default_rng(2))
    factors = np.random.default_rng(2)
    # The draws in augment_batch's order: angle, scale, shift (2 per face), then flips are off, then contrast.
    factors.uniform(size=4), factors.uniform(size=4), factors.uniform(size=(4, 2))
    f = factors.uniform(0.5, 1.5, 4)
    xf = x.astype(np.float32)
    mean = xf.reshape(4, -1, 3).mean(axis=1)[:, None, None, :]
    expected = np.clip((xf - mean) * f[:, None, None, None] + mean, 0, 255).round().astype(np.uint8)
    np.testing.assert_array_equal(y, expected)


def test_augmentation_is_seeded_and_changes_faces():
    x = _faces(n=16, size=48)
    a = augment_batch(x, AUGMENTATION["emotion"], np.random.default_rng(5))
    b = augment_batch(x, AUGMENTATION["emotion"], np.random.default_rng(5))
    c = augment_batch(x, AUGMENTATION["emotion"], np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, x)


def test_augmentation_refuses_float_or_flat_input():
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(np.zeros((2, 8, 8), np.float32), AUGMENTATION["emotion"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(np.zeros((8, 8), np.uint8), AUGMENTATION["emotion"], np.random.default_rng(0))


def test_batches_cover_every_row_once_per_epoch_in_a_new_order():
    from models.feed import Batches

    x = np.arange(10, dtype=np.uint8)[:, None]
    y = {"a": np.arange(10) * 2, "b": np.arange(10) * 3}
    batches = Batches(x, y, batch_size=4, shuffle=True, seed=3)
    assert len(batches) == 3
    orders = []
    for _ in range(2):
        seen = []
        for i in range(len(batches)):
            xb, yb = batches[i]
            assert xb.dtype == np.float32
            np.testing.assert_array_equal(yb["a"], xb[:, 0] * 2)
            np.testing.assert_array_equal(yb["b"], xb[:, 0] * 3)
            seen += xb[:, 0].astype(int).tolist()
        assert sorted(seen) == list(range(10))
        orders.append(seen)
        batches.on_epoch_end()
    assert orders[0] != orders[1]
    plain = Batches(x, y["a"], batch_size=4)
    assert plain[0][0][:, 0].tolist() == [0, 1, 2, 3]


def test_batches_started_at_an_epoch_are_that_epochs_as_a_run_that_never_stopped(tmp_path):
    from models.feed import Batches
    from models.networks import emotion_net
    from models.train import fit_resumable

    x = _faces(n=10, size=48, channels=1)
    y = np.eye(7, dtype=np.float32)[np.arange(10) % 7]

    def epoch(batches):
        return [batches[i][0] for i in range(len(batches))]

    through = Batches(x, y, batch_size=4, shuffle=True, seed=3, augment=AUGMENTATION["emotion"])
    first = epoch(through)
    through.on_epoch_end()
    through.on_epoch_end()
    resumed = Batches(x, y, batch_size=4, shuffle=True, seed=3, augment=AUGMENTATION["emotion"])
    resumed.start_at(2)
    for a, b in zip(epoch(through), epoch(resumed)):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, epoch(resumed)))

    # A run in two sittings ends its batches where one that never stopped does (the count is Keras's
    # on_epoch_end calls, one more than the epochs: fit ends an epoch before its first).
    def sittings(workdir, stops):
        model = emotion_net(widths=(4, 8), dropout=0.0)
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        for stop in stops:
            data = Batches(x, y, batch_size=5, shuffle=True, seed=1)
            fit_resumable(model, data, Batches(x, y, batch_size=5), 3, workdir, "val_loss", "min", stop_after=stop)
        return data.epoch

    assert sittings(tmp_path / "two", [2, 0]) == sittings(tmp_path / "one", [0]) > 3


def test_batches_augment_only_when_asked_and_refuse_mismatched_targets():
    from models.feed import Batches

    x = _faces(n=6, size=48, channels=1)
    y = np.zeros((6, 7), np.float32)
    plain = Batches(x, y, batch_size=6)[0][0]
    np.testing.assert_array_equal(plain, x.astype(np.float32))
    augmented = Batches(x, y, batch_size=6, augment=AUGMENTATION["emotion"], seed=1)
    first = augmented[0][0]
    assert not np.array_equal(first, plain)
    np.testing.assert_array_equal(first, augmented[0][0])  # a batch's draw depends on seed, epoch and index
    augmented.on_epoch_end()
    assert not np.array_equal(first, augmented[0][0])
    with pytest.raises(ValueError, match="6 inputs but 5 targets"):
        Batches(x, y[:5], batch_size=2)


def test_a_run_with_all_epochs_trained_is_not_fitted_again(tmp_path):
    import keras

    from models.feed import Batches
    from models.networks import emotion_net
    from models.train import fit_resumable, read_history, read_sittings

    keras.utils.set_random_seed(0)
    x = _faces(n=16, size=48, channels=1)
    y = np.eye(7, dtype=np.float32)[np.arange(16) % 7]
    model = emotion_net(widths=(4, 8), dropout=0.0)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    data = Batches(x, y, batch_size=8, shuffle=True)
    best, seconds = fit_resumable(model, data, Batches(x, y, batch_size=8), 1, tmp_path, "val_accuracy", "max")
    assert best.exists() and seconds > 0 and len(read_history(tmp_path)) == 1
    (sitting,) = read_sittings(tmp_path)
    assert sitting["epochs"] == [0, 1] and sitting["schedule"] == 1 and sitting["backend"] == keras.backend.backend()
    assert sitting["device"] == "cpu"

    # A copy of only the kept model, history and sittings (as from another machine) is finished as is.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("best.keras", "history.csv", "sittings.jsonl"):
        (elsewhere / name).write_bytes((tmp_path / name).read_bytes())
    fresh = emotion_net(widths=(4, 8), dropout=0.0)
    fresh.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    again, seconds = fit_resumable(fresh, data, Batches(x, y, batch_size=8), 1, elsewhere, "val_accuracy", "max")
    assert again == elsewhere / "best.keras" and seconds == 0.0
    assert len(read_history(elsewhere)) == 1 and len(read_sittings(elsewhere)) == 1
    assert not (elsewhere / "backup").exists()
    # Without the training state it cannot go on: a longer schedule started over, writing over the history.
    from models.train import RecipeMismatch

    with pytest.raises(RecipeMismatch, match="1 trained epochs but not their training state"):
        fit_resumable(fresh, data, Batches(x, y, batch_size=8), 2, elsewhere, "val_accuracy", "max")
    assert len(read_history(elsewhere)) == 1 and len(read_sittings(elsewhere)) == 1


def test_weight_averaging_needs_two_epochs_of_the_schedule(capsys):
    from models import train

    with pytest.raises(SystemExit) as e:
        train.parse_args(["emotion", "--epochs", "30", "--swa_from", "30"])  # it warned after 30 epochs
    assert e.value.code == 2 and "--swa_from 30 leaves fewer than two epochs of the 30" in capsys.readouterr().err
    assert train.parse_args(["emotion", "--epochs", "30", "--swa_from", "29"]).swa_from == 29


def test_a_trained_workdir_without_its_recipe_is_refused(tmp_path):
    from models.train import RecipeMismatch, check_recipe

    (tmp_path / "history.csv").write_text("epoch,loss,val_loss\n0,1.0,1.0\n")
    with pytest.raises(RecipeMismatch, match="not the recipe.json they were trained with"):
        check_recipe(tmp_path, {"lr": 0.05})
    assert not (tmp_path / "recipe.json").exists()


def test_a_sitting_of_stop_after_n_trains_n_more_epochs(tmp_path):
    x = _faces(n=24, size=48, channels=1)
    y = np.eye(7, dtype=np.float32)[np.arange(24) % 7]
    # the second sitting of --stop_after 1 trained nothing ("rerun to go on" made no progress)
    assert len(_fit_in_sittings(tmp_path / "w", [1, 1], x, y)) == 2


def test_a_killed_sitting_still_logs_the_epochs_it_finished(tmp_path):
    import json

    import keras

    from models.callbacks import SittingLog

    class Killed(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    path = tmp_path / "sittings.jsonl"
    path.write_text(json.dumps({"epochs": [0, 4], "schedule": 4}) + "\n")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 3), np.float32)
    log = SittingLog(path, {"epochs": [4, 4], "schedule": 9, "seconds": 0.0})
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, x[:, :1], epochs=5, callbacks=[log, Killed()], verbose=0)
    earlier, this = [json.loads(line) for line in path.read_text().splitlines()]
    assert earlier == {"epochs": [0, 4], "schedule": 4}
    assert this["epochs"] == [4, 6] and this["schedule"] == 9 and this["seconds"] == round(log.seconds, 1) > 0


def test_card_names_each_sitting_and_renders_the_search_table(tmp_path):
    from models import card

    rec = json.loads((card.WEIGHTS_DIR / "emotion_v2.json").read_text())
    text = card._sittings(rec)
    assert text.startswith("Trained in epochs 1-") and "Keras backend" in text
    assert "not recorded" in card._sittings({"train_seconds_this_sitting": 60.0})
    assert card.commands_of(rec) == [rec["command"]] and card._epochs_trained(rec).startswith(
        f"Epochs trained: {len(rec['history'])} of the {rec['recipe']['epochs']}-epoch schedule")

    # A run whose schedule was extended names both commands, both schedules and the restart.
    short, long = "python -m models.train age-gender --epochs 2", "python -m models.train age-gender --epochs 3"
    extended = {"command": long, "recipe": {"epochs": 3}, "history": [{}] * 3, "sittings": [
        {"epochs": [0, 2], "schedule": 2, "command": short, "seconds": 60.0, "device": "cpu", "backend": "tensorflow"},
        {"epochs": [2, 3], "schedule": 3, "command": long, "seconds": 30.0, "device": "cpu", "backend": "tensorflow"}]}
    assert card.commands_of(extended) == [short, long]
    assert card._epochs_trained(extended).startswith("Epochs trained: 3, in schedules of 2, then 3 epochs")
    assert "epochs 3-3 of a 3-epoch schedule in 0.5 min" in card._sittings(extended)
    eight = {"sittings": [{**extended["sittings"][1], "epochs": [0, 8], "schedule": 8}]}
    assert card._sittings(eight).startswith("Trained in epochs 1-8 of an 8-epoch schedule")
    # Resumed in a copy of the first run's workdir: the copy is part of the recipe.
    copied = {**extended, "command": long + " --workdir 'runs/b c'", "sittings": [
        {**extended["sittings"][0], "command": short + " --workdir runs/a"},
        {**extended["sittings"][1], "command": long + " --workdir 'runs/b c'"}]}
    assert card.commands_of(copied) == [short + " --workdir runs/a", "cp -r runs/a 'runs/b c'",
                                      long + " --workdir 'runs/b c'"]
    table = {"task": "emotion", "epochs": 2, "grid": {"lr": [0.001], "widths": [[4, 8]], "dropout": [0.3]},
             "train_args": [], "rows": [{"name": "x", "lr": 0.001, "widths": [4, 8], "dropout": 0.3, "accuracy": 0.5,
                                         "macro_f1": 0.4, "disgust_recall": None, "fear_recall": 0.2, "ece": 0.1,
                                         "train_seconds": 120.0}]}
    lines = card._search(table)
    assert lines[0] == "## Hyperparameter search"
    assert "| 0.001 | 4-8 | 0.3 | 50.0% | 0.400 | - | 0.200 | 0.100 | 2.0 |" in lines


def test_warm_start_copies_a_models_weights_and_the_card_lists_its_commands_first(tmp_path):
    from models import card
    from models.networks import emotion_net
    from models.registry import sha256_of
    from models.train import warm_start

    first = emotion_net(num_classes=7, widths=(4, 8), dropout=0.3)
    path = tmp_path / "first.keras"
    first.save(path)
    trained_by = "python -m models.train emotion --epochs 2 --widths 4 8 --workdir runs/a --out x --name first"
    (tmp_path / "first.json").write_text(json.dumps({
        "task": "emotion", "sha256": sha256_of(path), "input": [48, 48, 1], "template": [0.37, 0.38],
        "command": trained_by, "sittings": []}))
    assert warm_start(None, None, "emotion") is None

    fresh = emotion_net(num_classes=7, widths=(4, 8), dropout=0.3)
    assert any(np.any(a != b) for a, b in zip(fresh.get_weights(), first.get_weights()))
    start = warm_start(fresh, str(path), "emotion")
    assert start == {"name": "first", "sha256": sha256_of(path), "commands": [trained_by]}
    for a, b in zip(fresh.get_weights(), first.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="--init .*not the one this recipe builds"):
        warm_start(emotion_net(num_classes=7, widths=(4, 16), dropout=0.3), str(path), "emotion")

    # the fine-tuned model's card: the start's commands, then its own
    tuned = {"command": f"python -m models.train emotion --init {path} --epochs 3 --widths 4 8", "history": [{}] * 3,
             "recipe": {"epochs": 3}, "init": start, "sittings": []}
    assert card.commands_of(tuned) == [trained_by, tuned["command"]]
    assert card._epochs_trained(tuned).startswith("Started from the weights of first (sha256 ")
    assert card._epochs_trained(tuned).endswith("Epochs trained: 3 of the 3-epoch schedule, the best on the "
                                                "validation data kept.")


def _fit_in_sittings(workdir, stops, x, y, dropout=0.0, epochs=3):
    """A tiny network fitted for 3 epochs in sittings ending after ``stops`` epochs (0: the rest);
    returns its history's losses."""
    import keras

    from models.feed import Batches
    from models.networks import emotion_net
    from models.train import fit_resumable, read_history

    for stop in stops:
        keras.utils.set_random_seed(1)  # as every sitting of a recipe does
        model = emotion_net(widths=(4, 8), dropout=dropout)
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        fit_resumable(model, Batches(x, y, batch_size=4, shuffle=True, seed=1), Batches(x, y, batch_size=4), epochs,
                      workdir, "val_loss", "min", stop_after=stop)
    return [round(h["loss"], 6) for h in read_history(workdir)]


def test_a_run_in_sittings_trains_on_the_batches_of_one_that_never_stopped(tmp_path):
    """Keras' own shuffling of the batch order restarted with every sitting, so the first epoch after a
    resume repeated epoch 0's order; the batches are shuffled by the data alone."""
    x = _faces(n=24, size=48, channels=1)
    y = np.eye(7, dtype=np.float32)[np.arange(24) % 7]
    assert _fit_in_sittings(tmp_path / "two", [1, 0], x, y) == _fit_in_sittings(tmp_path / "one", [0], x, y)


def test_a_run_in_sittings_draws_the_dropout_masks_of_one_that_never_stopped(tmp_path):
    """Dropout's seed generator is a variable, not a weight: the backup keeps it, or the first epoch
    after a resume would draw epoch 0's masks again."""
    x = _faces(n=24, size=48, channels=1)
    y = np.eye(7, dtype=np.float32)[np.arange(24) % 7]
    one = _fit_in_sittings(tmp_path / "one", [0], x, y, dropout=0.4)
    assert _fit_in_sittings(tmp_path / "two", [1, 0], x, y, dropout=0.4) == one
    assert _fit_in_sittings(tmp_path / "three", [1, 1, 0], x, y, dropout=0.4) == one


def test_a_kill_before_the_backup_trains_that_epoch_again(tmp_path):
    """The training state is backed up last at the end of an epoch: a run killed after its history row but
    before the backup goes on from the backup, and the epoch's row is replaced, not duplicated or skipped."""
    import json as json_

    from models.callbacks import backed_up_epochs
    from models.train import read_history, read_sittings

    x = _faces(n=24, size=48, channels=1)
    y = np.eye(7, dtype=np.float32)[np.arange(24) % 7]
    workdir = tmp_path / "w"
    _fit_in_sittings(workdir, [2], x, y)
    assert backed_up_epochs(workdir / "backup") == 2
    # as if killed after epoch 2's history row, before its backup: the backup still says 1
    meta = workdir / "backup" / "training_metadata.json"
    meta.write_text(json_.dumps({"epoch": 1, "batch": 0}))
    losses = _fit_in_sittings(workdir, [0], x, y)
    assert [h["epoch"] for h in read_history(workdir)] == [0, 1, 2] and len(losses) == 3
    assert read_sittings(workdir)[-1]["epochs"] == [1, 3]
    assert not list(workdir.rglob("*.part*"))  # whole files only


def test_a_workdir_refuses_other_settings(tmp_path, capsys):
    from models import train

    argv = ["emotion", "--workdir", str(tmp_path / "w"), "--limit", "10", "--epochs", "1"]
    train.check_recipe(tmp_path / "w", train.parse_args(argv).recipe)
    # a start that failed before its first epoch (a mistyped --init, say) holds no run: corrected, it goes on
    train.check_recipe(tmp_path / "w", train.parse_args([*argv, "--label_set", "5"]).recipe)
    train.check_recipe(tmp_path / "w", train.parse_args(argv).recipe)
    (tmp_path / "w" / "history.csv").write_text("epoch,loss,val_loss\n0,1.9,1.8\n")  # an epoch trained
    train.check_recipe(tmp_path / "w", train.parse_args([*argv[:-1], "5", "--name", "longer"]).recipe)  # may grow
    with pytest.raises(ValueError, match="label_set: '7' there, '5' now"):
        train.check_recipe(tmp_path / "w", train.parse_args([*argv, "--label_set", "5"]).recipe)
    assert train.main([*argv, "--lr", "0.5"]) == 2
    assert "lr: 0.002 there, 0.5 now" in capsys.readouterr().err


def test_training_caches_are_whole_or_computed_again(tmp_path):
    from models.data import load_cache, save_cache

    path = tmp_path / "c" / "features.npz"
    save_cache(path, features=np.arange(6.0), key=np.array("k"))
    assert load_cache(path)["features"].tolist() == [0, 1, 2, 3, 4, 5] and str(load_cache(path)["key"]) == "k"
    path.write_bytes(path.read_bytes()[:40])  # cut short by a kill
    assert load_cache(path) is None and load_cache(tmp_path / "none.npz") is None
    assert [p.name for p in path.parent.iterdir()] == ["features.npz"]


@pytest.mark.parametrize("option, value", [
    ("--epochs", "0"), ("--epochs", "-2"), ("--stop_after", "-1"), ("--batch_size", "0"), ("--lr", "nan"),
    ("--lr", "0"), ("--dropout", "1.5"), ("--dropout", "1"), ("--widths", "0"), ("--limit", "-5"),
    ("--label_smoothing", "3"), ("--oversample", "-1"), ("--distill", "1.5"), ("--teacher_temperature", "0"),
    ("--weight_decay", "inf"), ("--workers", "0"), ("--epochs", "two"), ("--seed", "-1"), ("--seed", "4294967296"),
])
def test_training_settings_out_of_range_are_refused_before_anything_runs(option, value, capsys):
    from models import train

    with pytest.raises(SystemExit) as e:
        train.parse_args(["emotion", option, value])
    assert e.value.code == 2 and f"argument {option}: '{value}' is not a" in capsys.readouterr().err


def test_embedding_views_and_age_gender_size_are_checked(capsys):
    from models import train

    for argv in (["emotion-embedding", "--views", "0"], ["age-gender", "--size", "8"]):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert "is not a whole number, at least" in capsys.readouterr().err


def test_embedding_features_are_reused_only_for_the_same_faces(tmp_path):
    from models import embedding

    faces = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    key = embedding.features_key("ab" * 32, 2, 0, faces)
    # the same pixels read from another copy of the data: the same key
    assert embedding.features_key("ab" * 32, 2, 0, faces.copy()) == key
    other = faces.copy()
    other[0, 0, 0] ^= 1
    assert len({key, embedding.features_key("ab" * 32, 2, 0, other), embedding.features_key("cd" * 32, 2, 0, faces),
                embedding.features_key("ab" * 32, 3, 0, faces), embedding.features_key("ab" * 32, 2, 1, faces)}) == 5

    calls = []

    def compute(value):
        calls.append(value)
        return np.full((4, 2), value, np.float32)

    path = tmp_path / "train_features.npz"
    first, _ = embedding._cached_features(path, key, lambda: compute(1.0))
    again, _ = embedding._cached_features(path, key, lambda: compute(2.0))
    assert calls == [1.0] and np.array_equal(first, again)
    changed, _ = embedding._cached_features(path, embedding.features_key("ab" * 32, 2, 0, other), lambda: compute(3.0))
    assert calls == [1.0, 3.0] and changed[0, 0] == 3.0


def test_missing_data_and_an_unwritable_out_are_errors_before_training(tmp_path, capsys):
    from models import train

    argv = ["emotion", "--workdir", str(tmp_path / "w"), "--epochs", "1", "--limit", "10"]
    assert train.main([*argv, "--data_dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "--data_dir" in capsys.readouterr().err and not (tmp_path / "w").exists()
    assert not (tmp_path / "o").exists()  # a refused run leaves nothing behind
    (tmp_path / "file").write_text("")
    assert train.main([*argv, "--data_dir", str(tmp_path), "--out", str(tmp_path / "file" / "o")]) == 2
    assert "models.train: error:" in capsys.readouterr().err


def test_a_shipped_model_file_is_never_the_output(tmp_path, capsys, monkeypatch):
    from models import ensemble, train
    from models.registry import DEFAULT_MODELS, WEIGHTS_DIR, sha256_of

    name = DEFAULT_MODELS["emotion"]
    before = sha256_of(WEIGHTS_DIR / f"{name}.keras")
    argv = ["emotion", "--workdir", str(tmp_path / "w"), "--epochs", "1", "--limit", "10", "--data_dir", str(tmp_path)]
    assert train.main([*argv, "--name", name, "--out", str(WEIGHTS_DIR)]) == 2
    assert f"would replace the shipped model {name}" in capsys.readouterr().err and not (tmp_path / "w").exists()
    monkeypatch.chdir(WEIGHTS_DIR.parent.parent)  # the same file by a relative path
    assert train.main([*argv, "--name", name, "--out", "models/weights"]) == 2
    assert ensemble.main([name, "--name", name, "--out", "models/weights"]) == 2
    assert capsys.readouterr().err.count("would replace the shipped model") == 2
    assert sha256_of(WEIGHTS_DIR / f"{name}.keras") == before
    # left to its default, a retrained model goes to runs/out
    assert train.parse_args(["emotion", "--name", name]).out == "runs/out"
    assert ensemble.build_parser().parse_args([name]).out == "runs/out"


def test_a_schedule_can_grow_but_not_shrink(tmp_path):
    from models.train import RecipeMismatch

    x = _faces(n=24, size=48, channels=1)
    y = np.eye(7, dtype=np.float32)[np.arange(24) % 7]
    _fit_in_sittings(tmp_path / "w", [0], x, y)  # 3 epochs
    with pytest.raises(RecipeMismatch, match="holds 3 trained epochs; a schedule can only grow"):
        _fit_in_sittings(tmp_path / "w", [0], x, y, epochs=2)


def test_a_diverged_run_is_an_error_and_keeps_no_model(tmp_path):
    import keras

    from models.feed import Batches
    from models.networks import emotion_net
    from models.train import TrainingDiverged, fit_resumable, read_history

    x = _faces(n=24, size=48, channels=1)
    y = np.eye(7, dtype=np.float32)[np.arange(24) % 7]
    keras.utils.set_random_seed(1)
    model = emotion_net(widths=(4, 8), dropout=0.0)
    model.compile(optimizer=keras.optimizers.SGD(1e30), loss="categorical_crossentropy")
    with pytest.raises(TrainingDiverged, match="diverged .* lower --lr"):
        fit_resumable(model, Batches(x, y, batch_size=4), Batches(x, y, batch_size=4), 3, tmp_path / "w",
                      "val_loss", "min")
    assert len(read_history(tmp_path / "w")) == 1 and not (tmp_path / "w" / "best.keras").exists()


def test_writing_the_same_model_again_keeps_its_file(tmp_path):
    """Keras stamps each save with its date: a finished command run again must not change a pinned sha256."""
    import keras

    from models.networks import emotion_net
    from models.registry import sha256_of
    from models.train import write_outputs

    keras.utils.set_random_seed(0)
    model = emotion_net(widths=(4, 8), dropout=0.0)
    target = write_outputs(None, tmp_path, "m", {"task": "emotion"}, model=model)
    sha = sha256_of(target)
    import time

    time.sleep(1.1)
    assert sha256_of(write_outputs(None, tmp_path, "m", {"task": "emotion"}, model=model)) == sha
    model.layers[-1].set_weights([w + 1 for w in model.layers[-1].get_weights()])
    target = write_outputs(None, tmp_path, "m", {"task": "emotion"}, model=model)
    assert sha256_of(target) != sha
    assert json.loads(target.with_suffix(".json").read_text())["sha256"] == sha256_of(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.keras"]  # whole files only


def test_a_rows_own_flag_is_refused_abbreviated_too(tmp_path):
    from models.runs import run_recipe

    for flag in ("--stop_after", "--stop", "--out=x", "--wo"):
        with pytest.raises(ValueError, match="are set per row"):
            run_recipe(["emotion", flag, "1"], tmp_path)


def test_a_rows_schedule_may_grow(tmp_path, monkeypatch):
    from models import runs, train

    args = train.parse_args(["emotion", "--epochs", "3", "--workdir", "w", "--out", "o", "--name", "model"])
    done = {"recipe": args.recipe, "command": args.command, "history": [{"epoch": i} for i in range(3)]}
    (tmp_path / "model.json").write_text(json.dumps(done))
    monkeypatch.setattr(train, "run", lambda a: {"trained to": a.epochs})
    assert runs.run_recipe(["emotion", "--epochs", "3"], tmp_path) == done
    assert runs.run_recipe(["emotion", "--epochs", "5"], tmp_path) == {"trained to": 5}  # it was refused
    with pytest.raises(ValueError, match="was trained with other settings"):
        runs.run_recipe(["emotion", "--epochs", "5", "--lr", "0.1"], tmp_path)


def test_a_model_the_run_reads_is_never_its_output(tmp_path, capsys):
    from models import train

    out = tmp_path / "o"
    argv = ["emotion", "--workdir", str(tmp_path / "w"), "--data_dir", str(tmp_path), "--out", str(out), "--name", "m"]
    assert train.main([*argv, "--init", str(out / "m.keras")]) == 2
    assert train.main([*argv, "--teacher", "emotion_v2", str(tmp_path / "o" / "." / "m.keras")]) == 2
    assert capsys.readouterr().err.count("which --") == 2 and not (tmp_path / "w").exists()
