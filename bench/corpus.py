"""The benchmark corpus: the example photos and clips, repeated with small variations up to N files.

Item ``i`` depends on the seed and ``i`` alone, so the corpus of N files is the first N files of any
bigger one. Every item is a random crop (85-100 % of each side), maybe mirrored, with a brightness
and contrast change, re-encoded: photos as JPEG (quality 80-95), clips as MPEG-4 (``mp4v``).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["Source", "find_sources", "build_corpus", "link_corpus"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE_DIRS = (ROOT / "examples", ROOT.parent / "shared" / "media")
PHOTO_EXTENSIONS = {".jpg", ".jpeg", ".png"}
CLIP_EXTENSIONS = {".gif", ".mp4"}
# One item in four is a clip: the corpus is mostly photos, as a photo collection with some videos.
CLIP_EVERY = 4


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "photo" or "clip"


def find_sources(dirs=DEFAULT_SOURCE_DIRS) -> list[Source]:
    """The photos and clips under ``dirs/photos`` and ``dirs/clips``, identical files counted once."""
    seen, sources = set(), []
    for base in dirs:
        for kind, sub, exts in (("photo", "photos", PHOTO_EXTENSIONS), ("clip", "clips", CLIP_EXTENSIONS)):
            folder = Path(base) / sub
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() not in exts:
                    continue
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    sources.append(Source(path, kind))
    if not any(s.kind == "photo" for s in sources):
        raise FileNotFoundError(f"no photos found under {[str(d) for d in dirs]}")
    return sources


class _Variation:
    """One random crop + flip + brightness/contrast + encoding quality, applied alike to every frame."""

    def __init__(self, rng: random.Random):
        self.keep_w, self.keep_h = rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0)
        self.off_x, self.off_y = rng.random(), rng.random()
        self.flip = rng.random() < 0.5
        self.gain, self.bias = rng.uniform(0.85, 1.15), rng.uniform(-12, 12)
        self.quality = rng.randint(80, 95)

    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        cw, ch = max(int(w * self.keep_w), 16), max(int(h * self.keep_h), 16)
        x0, y0 = int((w - cw) * self.off_x), int((h - ch) * self.off_y)
        out = bgr[y0:y0 + ch, x0:x0 + cw]
        if self.flip:
            out = out[:, ::-1]
        return cv2.convertScaleAbs(np.ascontiguousarray(out), alpha=self.gain, beta=self.bias)


def _read_clip(path: Path) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    if not frames:
        raise ValueError(f"{path}: no frames")
    return frames, float(fps)


def _write_item(src: Source, pixels, variation: _Variation, dest: Path) -> None:
    if src.kind == "photo":
        ok, buf = cv2.imencode(".jpg", variation(pixels), [cv2.IMWRITE_JPEG_QUALITY, variation.quality])
        if not ok:
            raise ValueError(f"cannot encode {dest}")
        dest.write_bytes(buf.tobytes())
        return
    frames, fps = pixels
    first = variation(frames[0])
    size = (first.shape[1] // 2 * 2, first.shape[0] // 2 * 2)  # MPEG-4 wants even sides
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for frame in frames:
        writer.write(variation(frame)[:size[1], :size[0]])
    writer.release()


def build_corpus(n: int, out_dir: Path, seed: int = 0, sources: list[Source] | None = None) -> list[Path]:
    """Writes items 0..n-1 into ``out_dir`` (kept when already there) and returns their paths."""
    sources = sources or find_sources()
    photos = [s for s in sources if s.kind == "photo"]
    clips = [s for s in sources if s.kind == "clip"]
    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[Path, object] = {}
    paths, used = [], {"photo": 0, "clip": 0}
    for i in range(n):
        # round-robin over the photos, with every CLIP_EVERY-th item a clip (when there are clips)
        kind = "clip" if clips and i % CLIP_EVERY == CLIP_EVERY - 1 else "photo"
        pool = clips if kind == "clip" else photos
        src = pool[used[kind] % len(pool)]
        used[kind] += 1
        suffix = ".jpg" if src.kind == "photo" else ".mp4"
        dest = out_dir / f"{i:05d}-{src.path.stem}{suffix}"
        paths.append(dest)
        if dest.exists():
            continue
        if src.path not in cache:
            cache[src.path] = cv2.imread(str(src.path)) if src.kind == "photo" else _read_clip(src.path)
        _write_item(src, cache[src.path], _Variation(random.Random(f"{seed}:{i}")), dest)
    return paths


def link_corpus(paths: list[Path], out_dir: Path) -> Path:
    """A directory holding exactly ``paths`` (hard links, copies where links are refused)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        dest = out_dir / path.name
        if not dest.exists():
            try:
                os.link(path, dest)
            except OSError:
                dest.write_bytes(path.read_bytes())
    return out_dir
