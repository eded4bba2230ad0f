"""Training batches from in-memory arrays, for every Keras backend (TensorFlow, JAX, PyTorch).

Images stay uint8 in memory and become float32 one batch at a time, so a data set costs its own
bytes, not four times them. Each epoch has its own order and augmentation, drawn from the seed and
the epoch's number alone, so a run resumed at epoch k (``start_at``) sees what it would have seen
had it never stopped. Training batches are augmented on the host (``models.augment``) by
``workers`` threads.
"""

from __future__ import annotations

import keras
import numpy as np

from models.augment import Augmentation, augment_batch

__all__ = ["Batches"]


class Batches(keras.utils.PyDataset):
    """(x, y) batches of ``x`` (N, ...) cast to float32 and ``y`` (an array or a dict of arrays).

    Args:
      x: inputs, any dtype (uint8 pixels, float features).
      y: targets: an (N, ...) array or a dict of them (one per model output).
      batch_size: rows per batch; the last batch holds the remainder.
      shuffle: draw a new order each epoch (training) or keep the given one (validation).
      seed: seed of the order and of the augmentation.
      augment: random changes to each batch of uint8 faces (None: as they are).
      workers: threads preparing batches ahead of the model.
    """

    def __init__(self, x: np.ndarray, y, batch_size: int, shuffle: bool = False, seed: int = 0,
                 augment: Augmentation | None = None, workers: int = 1):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(10, 2 * workers))
        n = len(x)
        for name, target in (y.items() if isinstance(y, dict) else [("y", y)]):
            if len(target) != n:
                raise ValueError(f"{n} inputs but {len(target)} targets in {name!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.x, self.y, self.batch_size, self.shuffle, self.augment = x, y, batch_size, shuffle, augment
        self.seed = seed
        self.start_at(0)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i: int):
        idx = np.sort(self._order[i * self.batch_size:(i + 1) * self.batch_size])
        x = self.x[idx]
        if self.augment is not None:
            x = augment_batch(x, self.augment, np.random.default_rng([self.seed, self.epoch, i]))
        x = x.astype(np.float32)
        if isinstance(self.y, dict):
            return x, {k: v[idx] for k, v in self.y.items()}
        return x, self.y[idx]

    def start_at(self, epoch: int) -> None:
        """Makes the next batches those drawn for ``epoch``, the count of ``on_epoch_end`` calls: where
        a run resumed after ``epoch`` epochs starts (Keras's fit also ends an epoch before its first,
        alike in every sitting, so the draws of a resumed run are those of one that never stopped)."""
        self.epoch = epoch
        n = len(self.x)
        self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def on_epoch_end(self) -> None:
        self.start_at(self.epoch + 1)
