"""Stochastic weight averaging (Izmailov et al., 2018, "Averaging weights leads to wider optima and
better generalization"): the element-wise mean of the weights a run reached at the end of its last
epochs. The mean of the epochs' batch-norm moving statistics is not the statistics of the mean
network, so they are recomputed with one pass over the training batches.

``models.train … --swa_from K`` keeps each epoch's weights from epoch K on (``EpochWeights`` in
``models.callbacks``) and, after the last epoch, scores their average against the best single
epoch on the selection data; the better of the two is the run's model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["snapshot_path", "snapshot_paths", "average_weights", "recalibrate_batch_norm"]


def snapshot_path(workdir: Path, epoch: int) -> Path:
    """Where ``EpochWeights`` keeps the weights at the end of (1-based) ``epoch``."""
    return Path(workdir) / "epochs" / f"epoch_{epoch:03d}.weights.h5"


def snapshot_paths(workdir: Path, first: int, last: int) -> dict[int, Path]:
    """{epoch: its kept weights} for epochs ``first``..``last`` (1-based, inclusive) whose weights
    were kept."""
    paths = {e: snapshot_path(workdir, e) for e in range(first, last + 1)}
    return {e: p for e, p in paths.items() if p.exists()}


def average_weights(model, paths: list[Path]) -> None:
    """Sets ``model``'s weights to the element-wise mean of the weights files ``paths`` (saved from
    the same network)."""
    if not paths:
        raise ValueError("no weights to average")
    total = None
    for path in paths:
        model.load_weights(path)
        weights = model.get_weights()
        total = [w.astype(np.float64) for w in weights] if total is None else [t + w for t, w in zip(total, weights)]
    model.set_weights([(t / len(paths)).astype(w.dtype) for t, w in zip(total, model.get_weights())])


def recalibrate_batch_norm(model, batches) -> int:
    """Recomputes every BatchNormalization layer's moving mean and variance as the average, over
    ``batches`` ((x, y) pairs or plain x), of the batch statistics the layer sees in training mode;
    returns the number of samples seen. Only the moving statistics change."""
    import keras

    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    seen = 0
    try:
        for layer in layers:
            layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, "float32"))
            layer.moving_variance.assign(np.ones(layer.moving_variance.shape, "float32"))
        for i in range(len(batches)):
            batch = batches[i]
            x = batch[0] if isinstance(batch, tuple) else batch
            n = len(x)
            # new = old * seen / (seen + n) + batch * n / (seen + n): the running mean over samples
            for layer in layers:
                layer.momentum = seen / (seen + n)
            model(x, training=True)
            seen += n
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return seen
