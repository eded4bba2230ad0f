"""Keras callbacks of the training recipes: keep the best epoch across sittings, time each epoch, log
each sitting as it goes, keep each epoch's weights for averaging, back up the training state.

Every file is written beside its place and renamed over it, so a run killed while writing leaves
the previous version whole and the next sitting can resume."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from models.registry import replaced_whole
from models.swa import snapshot_path

__all__ = ["KeepBest", "EpochSeconds", "SittingLog", "EpochWeights", "AtomicBackup", "backed_up_epochs"]


def backed_up_epochs(backup_dir: str | Path) -> int | None:
    """Epochs finished by the training state ``AtomicBackup`` keeps in ``backup_dir``; None without one."""
    path = Path(backup_dir) / "training_metadata.json"
    if not path.is_file():
        return None
    return int(json.loads(path.read_text())["epoch"])


class AtomicBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore (weights, optimizer and epoch, restored at the start of ``fit``),
    with each file replaced whole, and the model's random-number state too: Dropout's seed
    generators are variables but not weights, so without it every sitting would draw the masks of
    the first epochs again. The weights go first and the epoch last: a run killed between the
    files repeats one epoch's data from the newer weights, rather than skipping one."""

    def _random_state(self) -> list:
        """The model's variables that are not weights: its layers' seed generators (Dropout)."""
        weights = {id(w) for w in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def _random_state_path(self) -> Path:
        return Path(self.backup_dir) / "random_state.json"

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        path = self._random_state_path()
        if not path.is_file() or backed_up_epochs(self.backup_dir) is None:
            return
        # In the model's order: their names carry a counter of the process's models.
        saved, state = json.loads(path.read_text()), self._random_state()
        if len(saved) != len(state):
            raise ValueError(f"{path}: the random state of {len(saved)} generators, the model has {len(state)}")
        for v, value in zip(state, saved):
            v.assign(np.asarray(value, dtype=v.dtype))

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        with replaced_whole(self._weights_path) as part:
            self.model.save_weights(filepath=part, overwrite=True)
        with replaced_whole(self._random_state_path()) as part:
            Path(part).write_text(json.dumps([np.asarray(v).tolist() for v in self._random_state()]))
        with replaced_whole(self._training_metadata_path) as part:
            Path(part).write_text(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))


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
        if not all(math.isfinite((logs or {}).get(k, 0.0)) for k in ("loss", "val_loss", self.monitor)):
            return  # a diverged epoch (NaN weights can still score a finite accuracy) is never kept
        if (value < self.best) if self.mode == "min" else (value > self.best):
            self.best = float(value)
            with replaced_whole(self.path) as part:
                (self.target or self.model).save(part)


class EpochSeconds(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` to each epoch's logs; put it before the CSVLogger that records them."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.time() - self._start, 2)


class SittingLog(keras.callbacks.Callback):
    """Keeps this sitting's line of the JSON-lines file ``path`` up to date after every epoch.

    ``line`` is the sitting's record with ``epochs`` = [first, first]; each finished epoch moves
    its end and its wall-clock ``seconds`` and rewrites the line (appended at the first epoch), so a
    sitting that is killed still says which epochs it trained, and how long they took.
    """

    def __init__(self, path: str | Path, line: dict):
        super().__init__()
        self.path, self.line, self.seconds = Path(path), dict(line), 0.0

    def on_train_begin(self, logs=None):
        self._start = time.time()
        # the earlier sittings' lines, written back above this sitting's each time
        self._kept = self.path.read_text().splitlines() if self.path.exists() else []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.time() - self._start
        self.line["epochs"] = [self.line["epochs"][0], self.line["epochs"][1] + 1]
        self.line["seconds"] = round(self.seconds, 1)
        with replaced_whole(self.path) as part:
            Path(part).write_text("\n".join([*self._kept, json.dumps(self.line)]) + "\n")

    def on_train_end(self, logs=None):
        self.seconds = time.time() - self._start


class EpochWeights(keras.callbacks.Callback):
    """Keeps the weights of ``target`` (default: the model being fitted) at the end of every epoch
    from (1-based) epoch ``first`` on, at ``models.swa.snapshot_path(workdir, epoch)``."""

    def __init__(self, workdir: str | Path, first: int, target: keras.Model | None = None):
        super().__init__()
        self.workdir, self.first, self.target = Path(workdir), first, target

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.first:
            path = snapshot_path(self.workdir, epoch + 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            with replaced_whole(path) as part:
                (self.target or self.model).save_weights(part)
