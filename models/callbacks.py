"""Keras callbacks of the training recipes: keep the best epoch across sittings, time each epoch."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras

__all__ = ["KeepBest", "EpochSeconds"]


class KeepBest(keras.callbacks.Callback):
    """Saves ``target`` (default: the model being fitted) to ``path`` when ``monitor`` beats ``best``.

    ``best`` is the value kept by earlier sittings of a resumed run (from its history), so the first
    epoch after a resume replaces the kept model only when it is better. ``target`` lets a training
    wrapper (``models.adversarial``) keep the plain model it trains.
    """

    def __init__(self, path: str | Path, monitor: str, mode: str, best: float | None = None,
                 target: keras.Model | None = None):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.path, self.monitor, self.mode, self.target = str(path), monitor, mode, target
        self.best = best if best is not None else (math.inf if mode == "min" else -math.inf)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"KeepBest monitors {self.monitor!r}, which the epoch's logs lack: {sorted(logs or {})}")
        if (value < self.best) if self.mode == "min" else (value > self.best):
            self.best = float(value)
            (self.target or self.model).save(self.path)


class EpochSeconds(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` to each epoch's logs; put it before the CSVLogger that records them."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.time() - self._start, 2)
