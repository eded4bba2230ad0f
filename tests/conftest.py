"""Shared fixtures: generated media, the shared data sets (skipped when absent), the real models."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_image(path: Path, rgb: np.ndarray, params: list[int] | None = None) -> Path:
    """Writes an RGB (or grey) array with OpenCV, format from the extension."""
    arr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    ok, buf = cv2.imencode(path.suffix, arr, params or [])
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path


def write_video(path: Path, frames: int, fps: float = 10.0, size: tuple[int, int] = (96, 64),
                brightness=lambda i: (i * 2) % 256, fourcc: str = "mp4v") -> Path:
    """A video (mp4v in MP4 unless ``fourcc`` says otherwise) of uniform grey frames; frame i has the
    grey value ``brightness(i)`` (default 2 i)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), brightness(i), np.uint8))
    writer.release()
    return path


def gradient_image(h: int = 40, w: int = 60) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 128)], -1).astype(np.uint8)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from models.data import default_data_dir

    path = default_data_dir()
    if not (path / "fer2013").is_dir() or not (path / "utkface").is_dir():
        pytest.skip(f"labelled data not found in {path} (set FACEBEAM_DATA)")
    return path


@pytest.fixture(scope="session")
def shipped_specs():
    from models.registry import default_specs

    return default_specs()


@pytest.fixture(scope="session", autouse=True)
def litert_cache(tmp_path_factory) -> Path:
    """The session's own cache of converted models (``models.litert``), for it and the processes it starts."""
    path = tmp_path_factory.mktemp("facebeam-cache")
    saved = os.environ.get("FACEBEAM_CACHE")
    os.environ["FACEBEAM_CACHE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("FACEBEAM_CACHE", None)
    else:
        os.environ["FACEBEAM_CACHE"] = saved


@pytest.fixture(scope="session")
def loaded_models(shipped_specs):
    """The shipped models, loaded once for the whole test session (LiteRT runs them on a CPU)."""
    from models.handler import FaceModelHandler

    handler = FaceModelHandler(*shipped_specs)
    return handler, handler.load_model()
