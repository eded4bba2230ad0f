"""Progress of a local run: files done out of the total, faces so far, rate (tqdm, on stderr).

The bar lives in the launching process. Workers of the in-process runner report to it; workers in
other processes (multi-processing, remote runners) have no bar, and their reports are no-ops. It is
shown only on a terminal (tqdm's own check) and never with ``--quiet``.
"""

from __future__ import annotations

import threading

__all__ = ["start", "file_done", "faces_found", "state", "close"]

_LOCK = threading.Lock()
_BAR = None
_FACES = 0


def start(total_files: int, file=None) -> None:
    """Opens the bar for ``total_files`` inputs (on stderr when it is a terminal, or on ``file``)."""
    global _BAR, _FACES
    from tqdm import tqdm

    with _LOCK:
        _FACES = 0
        _BAR = tqdm(total=total_files, unit="file", desc="facebeam", mininterval=1.0, dynamic_ncols=True,
                    disable=None if file is None else False, file=file)


def state() -> tuple[int, int] | None:
    """(files done, faces so far) of the open bar, or None."""
    with _LOCK:
        return None if _BAR is None else (int(_BAR.n), _FACES)


def file_done(n: int = 1) -> None:
    with _LOCK:
        if _BAR is not None:
            _BAR.update(n)


def faces_found(n: int) -> None:
    global _FACES
    with _LOCK:
        if _BAR is not None and n:
            _FACES += n
            _BAR.set_postfix(faces=_FACES, refresh=False)


def close() -> None:
    global _BAR
    with _LOCK:
        if _BAR is not None:
            _BAR.close()
            _BAR = None
