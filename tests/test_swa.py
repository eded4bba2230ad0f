"""Weight averaging over a run's last epochs (``models.swa``, ``models.train --swa_from``)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest


def _data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 48, 48, 1), dtype=np.uint8)
    labels = np.arange(n) % 7
    return x, np.eye(7, dtype=np.float32)[labels], labels


def _net():
    from models.networks import emotion_net

    return emotion_net(widths=(4, 8), dropout=0.0)


def test_kept_epochs_average_exactly_and_batch_norm_is_recomputed_over_every_face(tmp_path):
    import keras

    from models.feed import Batches
    from models.swa import average_weights, recalibrate_batch_norm, snapshot_path, snapshot_paths
    from models.train import fit_resumable

    keras.utils.set_random_seed(0)
    x, y, _ = _data()
    model = _net()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="categorical_crossentropy", metrics=["accuracy"])
    fit_resumable(model, Batches(x, y, 8, shuffle=True), Batches(x, y, 8), 3, tmp_path, "val_accuracy", "max",
                  snapshot_from=2)
    assert not snapshot_path(tmp_path, 1).exists()
    paths = snapshot_paths(tmp_path, 1, 3)
    assert sorted(paths) == [2, 3]

    kept = []
    for path in paths.values():
        model.load_weights(path)
        kept.append(model.get_weights())
    assert any(np.any(a != b) for a, b in zip(*kept))  # the epochs differ
    average = _net()
    average_weights(average, list(paths.values()))
    for got, a, b in zip(average.get_weights(), *kept):
        np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="no weights"):
        average_weights(average, [])

    # Batches of 8, 8 and 4 faces: the first layer's statistics are the face-weighted means of the
    # batch statistics, whatever the averaged moving statistics were.
    batches = Batches(x, y, 8)
    assert recalibrate_batch_norm(average, batches) == 20
    bn = average.get_layer("b0c0_bn")
    assert bn.momentum == 0.99
    conv = keras.Model(average.input, average.get_layer("b0c0_conv").output)
    outs = [np.asarray(conv(batches[i][0]), np.float64) for i in range(len(batches))]
    mean = sum(o.sum(axis=(0, 1, 2)) for o in outs) / (20 * 48 * 48)
    variance = sum(len(o) * o.var(axis=(0, 1, 2)) for o in outs) / 20
    np.testing.assert_allclose(np.asarray(bn.moving_mean), mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), variance, rtol=1e-3, atol=1e-6)
    assert recalibrate_batch_norm(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), [np.ones((2, 3))]) == 0


def test_the_average_replaces_the_best_epoch_only_when_it_scores_higher(tmp_path):
    import keras

    from models import card
    from models.data import EmotionTargets
    from models.feed import Batches
    from models.swa import snapshot_path
    from models.train import _swa_emotion, emotion_predict

    keras.utils.set_random_seed(1)
    x, y, labels = _data(n=28, seed=1)
    test = EmotionTargets(x[..., 0], y, labels, np.array([f"{i}.png" for i in range(28)]))
    for epoch in (2, 3, 4):
        snapshot_path(tmp_path, epoch).parent.mkdir(exist_ok=True)
        _net().save_weights(snapshot_path(tmp_path, epoch))
    best = tmp_path / "best.keras"
    _net().save(best)
    args = argparse.Namespace(workdir=str(tmp_path), swa_from=3)

    path, record = _swa_emotion(args, best, 4, Batches(x, y, 8), test, _net)
    assert record["epochs"] == [3, 4] and record["from_epoch"] == 3 and record["batch_norm_faces"] == 28
    chosen = keras.models.load_model(path, compile=False)
    accuracy = float(np.mean(emotion_predict(chosen, test.images, tta=False).argmax(1) == labels))
    if record["accuracy"] > record["best_epoch_accuracy"]:
        assert record["kept"] == "average" and path == tmp_path / "swa.keras" and accuracy == record["accuracy"]
    else:
        assert record["kept"] == "best epoch" and path == best and accuracy == record["best_epoch_accuracy"]
    sentence = card._swa(record)
    assert sentence.startswith("The weights of epochs 3-4 were averaged")
    assert f"{record['accuracy']:.1%}" in sentence and record["kept"] in sentence

    # fewer than two kept epochs: nothing to average
    assert _swa_emotion(argparse.Namespace(workdir=str(tmp_path), swa_from=4), best, 4, Batches(x, y, 8), test,
                        _net) == (best, None)
