"""Peak memory of ``facebeam analyze`` against the number of inputs.

    .venv/bin/python -m bench.memory 200 1000 [--workdir DIR] [--keep] [-- extra analyze flags]
    .venv/bin/python -m bench.memory --video_frames 120 [-- extra analyze flags]

For each N, writes N small JPEGs with faces (random crops of examples/photos/obama_family.jpg:
mirrored or not, brightness jittered, so that every file has its own content), runs
``facebeam analyze --detector haar`` over them in a child process, and reports the child's peak
resident memory (``ru_maxrss`` from ``os.wait4``: the largest single process of that run),
its wall time, and the counts read back from the output. A pipeline that holds every input in
memory shows up as a peak that grows with N; a streaming one stays flat.

``--video_frames F`` measures one 3840x2160 mp4 of F frames instead, analysed with every frame
sampled (``--video_fps 0``): held at once, its decoded frames would take F x 24 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "examples" / "photos" / "obama_family.jpg"
SIZE = (480, 320)  # width, height of each generated image
# The photo's faces lie in rows 80-195 (Haar's boxes on the 640x427 original); crops keep that band.
FACE_ROWS = (80, 195)


class Measurement(NamedTuple):
    """One run: inputs, exit status, wall seconds, peak RSS in MiB, and the run's counts."""

    n: int
    status: int
    wall_s: float
    peak_rss_mib: float
    ok: int
    no_face: int
    error: int
    faces: int
    frames: int = 0


def _photo() -> np.ndarray:
    """The BGR example photo every generated input is made from."""
    photo = cv2.imread(str(PHOTO))
    if photo is None:
        raise ValueError(f"cannot read {PHOTO}; run from a checkout with examples/")
    return photo


def make_image(photo: np.ndarray, rng: random.Random) -> np.ndarray:
    """A random crop of ``photo`` holding its face band, resized to SIZE, maybe mirrored, re-lit."""
    h, w = photo.shape[:2]
    cw = int(w * rng.uniform(0.8, 1.0))
    ch = max(int(h * rng.uniform(0.7, 1.0)), FACE_ROWS[1] - FACE_ROWS[0] + 20)
    x = rng.randint(0, w - cw)
    y = rng.randint(max(0, FACE_ROWS[1] + 10 - ch), min(h - ch, max(0, FACE_ROWS[0] - 10)))
    crop = cv2.resize(photo[y:y + ch, x:x + cw], SIZE, interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-12, 12)
    return np.clip(crop.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def write_corpus(directory: Path, n: int, seed: int = 0) -> None:
    """N JPEGs in ``directory``; image i depends on the seed and i alone."""
    photo = _photo()
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = make_image(photo, random.Random(f"{seed}-{i}"))
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise ValueError("JPEG encoding failed")
        (directory / f"img-{i:05d}.jpg").write_bytes(buf.tobytes())


UHD = (3840, 2160)


def write_video(path: Path, frames: int, fps: float = 30.0) -> None:
    """A 4K mp4 of ``frames`` frames: the photo scaled up, drifting a few pixels a frame."""
    big = cv2.resize(_photo(), (UHD[0] + 2 * frames, UHD[1]), interpolation=cv2.INTER_LINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, UHD)
    try:
        for i in range(frames):
            writer.write(np.ascontiguousarray(big[:, 2 * i:2 * i + UHD[0]]))
    finally:
        writer.release()


def measure(n: int, workdir: Path, extra: list[str], video_frames: int = 0) -> Measurement:
    """Generates the corpus of ``n`` images (or the 4K video), runs the analysis in a child process,
    reads the counts."""
    name = f"video-{video_frames}" if video_frames else str(n)
    inputs, output = workdir / f"in-{name}", workdir / f"out-{name}"
    if video_frames:
        if not inputs.is_dir():
            write_video(inputs / "uhd.mp4", video_frames)
        extra = ["--video_fps", "0", *extra]
    elif not inputs.is_dir() or len(list(inputs.glob("*.jpg"))) != n:
        shutil.rmtree(inputs, ignore_errors=True)
        write_corpus(inputs, n)
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "pipelines.cli", "analyze", "--input", str(inputs), "--output", str(output),
               "--detector", "haar", *extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    log = workdir / f"analyze-{name}.log"
    start = time.perf_counter()
    with open(log, "wb") as err:  # a file, not a pipe: a chatty child never blocks on it
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        # wait4 gives this child's own resource usage (ru_maxrss in KiB on Linux), unlike
        # RUSAGE_CHILDREN, which is the maximum over every child waited for so far.
        _, wait_status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(wait_status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        return Measurement(n, child.returncode, wall, usage.ru_maxrss / 1024, 0, 0, 0, 0)
    from pipelines.summary import summarize

    s = summarize(str(output))
    return Measurement(n, 0, wall, usage.ru_maxrss / 1024, s["ok"], s["no_face"], s["error"], s["faces"],
                       s["frames"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="*", help="numbers of images to run with, one run each")
    parser.add_argument("--video_frames", type=int, default=0,
                        help="measure one 4K video of this many frames, every frame analysed")
    parser.add_argument("--workdir", default=None, help="where corpora and outputs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON lines")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="facebeam-bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.n and not args.video_frames:
        parser.error("give numbers of images and/or --video_frames")
    results = []
    try:
        jobs = [(n, 0) for n in args.n] + ([(1, args.video_frames)] if args.video_frames else [])
        for n, video_frames in jobs:
            m = measure(n, workdir, extra, video_frames)
            results.append(m)
            if args.json:
                print(json.dumps(m._asdict()), flush=True)
            else:
                print(f"N={m.n:6d}  status {m.status}  wall {m.wall_s:7.1f} s  ({1000 * m.wall_s / m.n:6.1f} ms/image)  "
                      f"peak RSS {m.peak_rss_mib:7.0f} MiB  ok {m.ok} no_face {m.no_face} error {m.error} "
                      f"faces {m.faces} frames {m.frames}", flush=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(m.status == 0 for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
