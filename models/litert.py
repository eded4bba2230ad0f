"""The shipped Keras models run by LiteRT (XNNPACK) on CPUs: the same arithmetic, a third less time.

On a 2-core CPU, TensorFlow spends about 1.7 ms per face on each model; LiteRT's XNNPACK kernels
take 1.1-1.3 ms for the same float32 network, and the outputs agree to float32 rounding (within 1e-5
for the probabilities, ``tests/test_fast_paths.py``; ``bench/`` has the pipeline figures). The
``.keras`` file stays the model: it is verified by sha256, then converted once to a LiteRT
flatbuffer, cached under ``FACEBEAM_CACHE`` (default ``~/.cache/facebeam``) by the Keras file's
sha256 and the TensorFlow and Keras versions that load and convert it, so later runs skip the few
seconds it takes.

An interpreter is neither thread-safe nor cheap to resize, so :class:`LiteModel` keeps one per thread
and per chunk size (``CHUNKS``) and splits every batch into those chunks: XNNPACK's time per face is
the same from 1 face to 64, and no batch size ever triggers a new allocation.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from pathlib import Path

import numpy as np

from models.registry import cache_root, replaced_whole

__all__ = ["CHUNKS", "LiteModel", "cache_dir", "flatbuffer", "cpu_threads"]

LOG = logging.getLogger(__name__)

# Batch pieces, largest first: 37 faces run as 16 + 16 + 4 + 1.
CHUNKS = (16, 4, 1)


def cache_dir() -> Path:
    """Where converted models are kept: ``$FACEBEAM_CACHE`` or ``~/.cache/facebeam``, then ``litert/``."""
    return cache_root() / "litert"


def cpu_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _convert(model) -> bytes:
    import tensorflow as tf

    # The converter exports the model first and prints the exported signature: keep it off stdout.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    LOG.debug("converter output: %s", printed.getvalue()[:2000])
    return blob


def flatbuffer(load, name: str, sha256: str, cache: Path | None = None) -> bytes:
    """The LiteRT flatbuffer of a (verified) Keras model, from the cache or converted and cached.

    ``load`` returns the Keras model; it is called only when the cache has no conversion, so that a
    cached model runs without Keras loading it (about 0.4 s per model). ``sha256`` is the Keras
    file's: a changed file never meets an old conversion. A cache that cannot be written only costs
    the conversion next time. The file's name holds the TensorFlow and Keras versions as well: either
    one can change what the same file loads and converts to.
    """
    import keras
    import tensorflow as tf

    path = (cache or cache_dir()) / f"{name}-{sha256[:16]}-tf{tf.__version__}-keras{keras.__version__}.tflite"
    try:
        cached = path.read_bytes()
    except OSError:
        cached = None
    if cached is not None:
        problem = _unreadable(cached)
        if problem is None:
            return cached
        LOG.warning("the cached conversion %s cannot be read (%s); converting %s again", path, problem, name)
    blob = _convert(load())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_whole(path) as part:  # a concurrent reader sees the whole file or none
            Path(part).write_bytes(blob)
    except OSError as e:
        LOG.warning("could not cache the converted %s in %s: %s", name, path.parent, e)
    return blob


def _unreadable(blob: bytes) -> str | None:
    """Why LiteRT cannot load a flatbuffer (an empty or cut-short cache file), or None."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None  # the runtime is missing: told where the model is run
    try:
        Interpreter(model_content=blob, num_threads=1)
    except (ValueError, RuntimeError) as e:
        return str(e)
    return None


class LiteModel:
    """A converted model called like the Keras one on numpy arrays: (N, ...) in, (N, ...) or a dict out.

    Args:
      blob: the LiteRT flatbuffer (see :func:`flatbuffer`).
      threads: XNNPACK threads per call (0: one per CPU of this process).
    """

    def __init__(self, blob: bytes, threads: int = 0):
        self._blob = blob
        self._threads = threads or cpu_threads()
        self._local = threading.local()
        runner, self._input, self.outputs = self._runner(1)
        self.input_shape = tuple(int(d) for d in runner.get_input_details()[self._input]["shape"][1:])

    def _runner(self, size: int):
        """This thread's signature runner for chunks of ``size`` faces, its input name and output names."""
        runners = getattr(self._local, "runners", None)
        if runners is None:
            runners = self._local.runners = {}
        if size not in runners:
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_content=self._blob, num_threads=self._threads)
            signature = interpreter.get_signature_list()
            key = next(iter(signature))
            inputs = interpreter.get_input_details()
            interpreter.resize_tensor_input(inputs[0]["index"], (size, *inputs[0]["shape"][1:]))
            interpreter.allocate_tensors()
            runner = interpreter.get_signature_runner(key)
            runners[size] = (runner, signature[key]["inputs"][0], tuple(signature[key]["outputs"]))
        return runners[size]

    def __call__(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"expected faces of shape {self.input_shape}, got {x.shape[1:]}")
        if not len(x):  # shapes of an empty result: those of one face's, cut to none
            out = self(np.zeros((1, *self.input_shape), np.float32))
            return {k: v[:0] for k, v in out.items()} if isinstance(out, dict) else out[:0]
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in self.outputs}
        start = 0
        for size in CHUNKS:
            while len(x) - start >= size:
                out = self._runner(size)[0](**{self._input: x[start:start + size]})
                for name in self.outputs:
                    pieces[name].append(out[name].copy())  # the runner may reuse its output buffers
                start += size
        joined = {name: np.concatenate(parts) for name, parts in pieces.items()}
        return joined[self.outputs[0]] if len(self.outputs) == 1 else joined
