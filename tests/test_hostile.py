"""Hostile inputs: a generated corpus of broken, odd and malicious files run through the whole pipeline.

Every file is generated here. The corpus runs once with the fake detector and fake models (tier 2,
no TensorFlow); a small subset then runs once through the real ``facebeam analyze`` command.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from PIL import Image

from models.registry import sha256_of
from pipelines.analyze import build
from pipelines.summary import parse_summary, previous_contents, read_table, summarize
from tests.conftest import EXAMPLES, ROOT, gradient_image, write_image, write_video
from tests.fakes import SPECS, DiskBackedFileSystem, FakeHandler, fake_detector_factory
from transforms import imaging, video
from transforms.faces import DetectOptions
from transforms.records import ErrorRecord, SourceFile
from transforms.sinks import SOURCES_SCHEMA, RunInfo, source_row
from transforms.sources import (Listed, ReadOptions, SourceContent, expand_inputs, list_input,
                                walk_local)

RUN = RunInfo("hostile-run", SPECS[0].tag, SPECS[1].tag)
BAD_UTF8 = b"bad-\xff-name.png"


# ---------------------------------------------------------------------------------------------
# Generators: small files, valid or broken on purpose.


def _picture(faces: int, h: int = 60, w: int = 200) -> np.ndarray:
    """A picture on which the fake detector finds ``faces`` faces (its top-left red value // 50)."""
    rgb = gradient_image(h, w)
    rgb[:2, :2] = (faces * 50 + 5, 0, 0)
    return rgb


def _encoded(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def png_header(width: int, height: int) -> bytes:
    """A complete, tiny PNG whose header declares ``width`` x ``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def jpeg_header(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to declare ``width`` x ``height``."""
    data = bytearray(_encoded(np.zeros((16, 16, 3), np.uint8), ".jpg"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_header(width: int, height: int) -> bytes:
    """A 54-byte BMP header declaring ``width`` x ``height`` 24-bit pixels and no pixel data."""
    return (b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0))


def bad_crc_png() -> bytes:
    """A valid PNG with one bit of its IDAT checksum flipped."""
    data = bytearray(_encoded(_picture(1), ".png"))
    idat = data.find(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length] ^= 0x01
    return bytes(data)


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    # uniformly dark, so that every rotation still shows the fake detector no face
    return _pil(Image.fromarray(np.full((60, 200, 3), 8, np.uint8)), "JPEG", exif=exif, quality=95)


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_video(path: Path, frames: int) -> Path:
    """An mp4 of grey-60 frames (one face each for the fake detector); 0 frames gives an empty container."""
    return write_video(path, frames=frames, fps=10.0, size=(128, 64), brightness=lambda i: 60)


def cut(path: Path, fraction: float = 0.5) -> bytes:
    data = path.read_bytes()
    return data[: int(len(data) * fraction)]


# ---------------------------------------------------------------------------------------------
# The corpus and what must become of each file: relative path -> (status, stage, message fragment).
# A status of "converted" means any non-error status.

EXPECTED: dict[str, tuple[str, str | None, str | None]] = {
    "in/empty.jpg": ("error", "decode", "empty file (0 bytes)"),
    "in/truncated.jpg": ("error", "decode", "truncated JPEG"),
    "in/truncated.png": ("error", "decode", "truncated PNG"),
    "in/page.jpg": ("error", "decode", "not an image: the file holds HTML"),
    "in/notes.png": ("error", "decode", "not an image: the file holds text"),
    "in/bad-crc.png": ("error", "decode", "corrupt PNG: chunk 'IDAT' has a bad CRC"),
    "in/bomb.png": ("error", "decode", "image of 50000x50000 pixels exceeds --max_pixels"),
    "in/bomb.jpg": ("error", "decode", "image of 50000x50000 pixels exceeds --max_pixels"),
    "in/bomb.bmp": ("error", "decode", "image of 50000x50000 pixels exceeds --max_pixels"),
    "in/sixteen-bit.png": ("ok", None, None),
    "in/grey-alpha.png": ("ok", None, None),
    "in/palette.png": ("converted", None, None),
    "in/cmyk.jpg": ("converted", None, None),
    "in/one-pixel.png": ("no_face", None, None),
    **{f"in/exif-{o}.jpg": ("no_face", None, None) for o in range(1, 9)},
    "in/zero-frames.mp4": ("error", "decode", "no media data (0 frames)"),
    "in/truncated.mp4": ("error", "decode", "truncated MP4/QuickTime file"),
    "in/truncated.avi": ("error", "decode", "truncated video: the stream ends after"),
    "in/trailer.jpg": ("ok", None, None),
    "in/fake.mp4": ("error", "decode", "not a video: the file holds text"),
    "in/clip.mp4": ("ok", None, None),
    "in/with space.png": ("ok", None, None),
    "in/ünïcødé-名前.png": ("ok", None, None),
    "in/new\nline.png": ("ok", None, None),
    "in/brackets [1] *star?.png": ("ok", None, None),
    "in/bad-\\xff-name.png": ("error", "read", "file name is not valid UTF-8"),
    "in/broken.jpg": ("error", "read", "broken symbolic link: its target 'missing.jpg' does not exist"),
    "in/self-loop.jpg": ("error", "read", "symbolic link loop"),
    "in/sub/deep.png": ("ok", None, None),
    "in/album-link/far.png": ("ok", None, None),
    "in/link-to-file.png": ("ok", None, None),
    "in/pipe.jpg": ("error", "read", "not a regular file: it is a named pipe"),
    "in/unreadable.png": ("error", "read", "Permission denied"),
    "in/locked/": ("error", "read", "directory cannot be listed: Permission denied"),
    "dangling.png": ("error", "read", "broken symbolic link"),
    "odd [name].png": ("ok", None, None),
    "glob/a.png": ("ok", None, None),
    "glob/gone.png": ("error", "read", "broken symbolic link"),
}

# Present in the corpus but not inputs: not media (in a directory), not matched, or reached twice.
NOT_INPUTS = ["in/readme.txt", "in/broken.txt", "in/second-album-link/far.png", "in/loop/with space.png",
              "in/sub/up/with space.png", "glob/skip.jpg", "outside-album/far.png", "in/locked/hidden.png"]


def build_corpus(root: Path) -> list[str]:
    """Writes the hostile corpus under ``root``; returns the ``--input`` values that cover it."""
    d = root / "in"
    (d / "sub").mkdir(parents=True)
    # Broken, truncated, or not images at all.
    write_bytes(d / "empty.jpg", b"")
    write_bytes(d / "truncated.jpg", _encoded(_picture(1), ".jpg")[:300])
    good_png = _encoded(_picture(1), ".png")
    write_bytes(d / "truncated.png", good_png[: len(good_png) // 2])
    write_bytes(d / "page.jpg", b"<!DOCTYPE html>\n<html><body><img src='photo.jpg'></body></html>\n")
    write_bytes(d / "notes.png", b"a text file with an image extension\n" * 5)
    write_bytes(d / "bad-crc.png", bad_crc_png())
    # Decompression bombs: tiny files declaring 2.5 gigapixels.
    write_bytes(d / "bomb.png", png_header(50_000, 50_000))
    write_bytes(d / "bomb.jpg", jpeg_header(50_000, 50_000))
    write_bytes(d / "bomb.bmp", bmp_header(50_000, 50_000))
    # Valid, in formats that need converting.
    sixteen = (_picture(2).astype(np.uint16) * 257)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sixteen, cv2.COLOR_RGB2BGR))
    write_bytes(d / "sixteen-bit.png", buf.tobytes())
    grey = cv2.cvtColor(gradient_image(60, 200), cv2.COLOR_RGB2GRAY)
    grey[:2, :2] = 105  # two faces for the fake detector
    write_bytes(d / "grey-alpha.png", _pil(Image.fromarray(np.dstack([grey, np.full_like(grey, 200)]), "LA"), "PNG"))
    write_bytes(d / "palette.png", _pil(Image.fromarray(_picture(1)).convert("P"), "PNG"))
    write_bytes(d / "cmyk.jpg", _pil(Image.fromarray(_picture(1)).convert("CMYK"), "JPEG", quality=95))
    write_bytes(d / "one-pixel.png", _encoded(np.zeros((1, 1, 3), np.uint8), ".png"))
    for o in range(1, 9):
        write_bytes(d / f"exif-{o}.jpg", exif_jpeg(o))
    # Videos: empty container, cut short, not a video, and a good one.
    make_video(d / "zero-frames.mp4", 0)
    write_bytes(d / "truncated.mp4", cut(make_video(d / "clip.mp4", 10)))
    write_bytes(d / "truncated.avi", cut(write_video(d / "truncated.avi", frames=100, fps=10.0, size=(128, 64),
                                                     brightness=lambda i: 60, fourcc="MJPG"), 0.3))
    write_bytes(d / "trailer.jpg", _encoded(_picture(1), ".jpg") + b"\0" * 500)  # data after the image
    write_bytes(d / "fake.mp4", b"this is not a video\n" * 10)
    # File names.
    write_image(d / "with space.png", _picture(1))
    write_image(d / "ünïcødé-名前.png", _picture(1))
    write_image(d / "new\nline.png", _picture(1))
    write_image(d / "brackets [1] *star?.png", _picture(1))
    with open(os.path.join(os.fsencode(d), BAD_UTF8), "wb") as f:
        f.write(_encoded(_picture(1), ".png"))
    # Links: broken, looping, into the tree itself, out of it (twice), to a file.
    os.symlink("missing.jpg", d / "broken.jpg")
    os.symlink("missing.txt", d / "broken.txt")
    os.symlink("self-loop.jpg", d / "self-loop.jpg")
    os.symlink(".", d / "loop")
    os.symlink("..", d / "sub" / "up")
    write_image(d / "sub" / "deep.png", _picture(1))
    (root / "outside-album").mkdir()
    write_image(root / "outside-album" / "far.png", _picture(1))
    os.symlink(root / "outside-album", d / "album-link")
    os.symlink(root / "outside-album", d / "second-album-link")
    os.symlink("with space.png", d / "link-to-file.png")
    # Special and unreadable files.
    os.mkfifo(d / "pipe.jpg")
    write_image(d / "unreadable.png", _picture(1))
    (d / "locked").mkdir()
    write_image(d / "locked" / "hidden.png", _picture(1))
    (d / "readme.txt").write_text("not an input: a directory is read for its media only\n")
    # Explicit inputs beside the directory: a dangling link, a literal name with glob characters, a pattern.
    os.symlink(root / "nowhere.png", root / "dangling.png")
    write_image(root / "odd [name].png", _picture(1))
    (root / "glob").mkdir()
    write_image(root / "glob" / "a.png", _picture(1))
    os.symlink("gone.png.target", root / "glob" / "gone.png")
    write_image(root / "glob" / "skip.jpg", _picture(1))
    return [str(d), str(root / "dangling.png"), str(root / "odd [name].png"), str(root / "glob" / "*.png"),
            str(d / "with space.png")]  # the last one again: still one input


@contextlib.contextmanager
def unreadable(*paths: Path):
    """Makes ``paths`` unreadable with chmod 000. Where that does not stop reading (running as root,
    whose CAP_DAC_OVERRIDE ignores permissions) the failure is simulated: opening such a file or
    listing such a directory raises PermissionError, as it would for anyone else."""
    modes = {p: p.stat().st_mode & 0o7777 for p in paths}
    for p in paths:
        p.chmod(0)
    names = {str(p) for p in paths}
    try:
        if not any(os.access(p, os.R_OK) for p in paths):
            yield "real"
            return
        with pytest.MonkeyPatch.context() as mp:
            real_open, real_scandir = FileSystems.open, os.scandir

            def open_(path, *args, **kwargs):
                if str(path) in names:
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return real_open(path, *args, **kwargs)

            def scandir(path="."):
                if not isinstance(path, int) and os.fsdecode(path).rstrip(os.sep) in names:
                    raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
                return real_scandir(path)

            mp.setattr(FileSystems, "open", open_)
            mp.setattr(os, "scandir", scandir)
            yield "simulated"
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def _pipeline():
    return TestPipeline(options=PipelineOptions(["--runner=FnApiRunner"]))


def _snapshot(*dirs: Path) -> dict[str, tuple]:
    """Every entry under ``dirs`` (links not followed) with its type, size and modification time."""
    seen = {}
    for top in dirs:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                seen[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The corpus run once through ``build`` with the fakes: (corpus root, output dir, how unreadable was made)."""
    base = tmp_path_factory.mktemp("hostile")
    root, out = base / "corpus", base / "out"
    root.mkdir()
    inputs = build_corpus(root)
    before = _snapshot(root), sorted(os.listdir(base)), _outputs_in(os.getcwd()), _tmp_leftovers()
    with unreadable(root / "in" / "unreadable.png", root / "in" / "locked") as how:
        patterns = expand_inputs(inputs)
        with _pipeline() as p:
            build(p, patterns, str(out), FakeHandler(), RUN, ReadOptions(),
                  DetectOptions(min_face_size=10), detector_factory=fake_detector_factory)
    after = _snapshot(root), sorted(os.listdir(base)), _outputs_in(os.getcwd()), _tmp_leftovers()
    return root, out, how, before, after


def _outputs_in(directory: str) -> list[str]:
    """What a pipeline writing in the wrong place would leave in ``directory``."""
    return sorted(n for n in os.listdir(directory) if re.match(r"(faces|sources|tracks)-|beam-temp", n))


def _tmp_leftovers() -> list[str]:
    import tempfile

    return sorted(n for n in os.listdir(tempfile.gettempdir()) if n.startswith("facebeam-"))


def _rows(root: Path, out: Path) -> list[dict]:
    rows = read_table(str(out), "sources").to_pylist()
    for r in rows:
        r["rel"] = os.path.relpath(r["source_uri"], root) + ("/" if r["source_uri"].endswith("/") else "")
    return rows


def _by_rel(root: Path, out: Path) -> dict[str, dict]:
    return {r["rel"]: r for r in _rows(root, out)}


# ---------------------------------------------------------------------------------------------
# The guarantees.


def test_every_input_appears_exactly_once(hostile):
    root, out, *_ = hostile
    rels = [r["rel"] for r in _rows(root, out)]
    assert len(rels) == len(set(rels)), sorted(r for r in rels if rels.count(r) > 1)
    assert set(rels) == set(EXPECTED)
    assert not set(rels) & set(NOT_INPUTS)
    for rel in NOT_INPUTS:  # they are there, but are not inputs
        assert os.path.lexists(root / rel) or (root / rel).parent.is_symlink(), rel


@pytest.mark.parametrize("rel", sorted(EXPECTED), ids=lambda rel: re.sub(r"[^\w.\-/]", "_", rel))
def test_each_case_has_its_status_stage_and_message(hostile, rel):
    root, out, *_ = hostile
    row = _by_rel(root, out)[rel]
    status, stage, message = EXPECTED[rel]
    if status == "converted":
        assert row["status"] in ("ok", "no_face"), row
    else:
        assert row["status"] == status, row
    assert row["stage"] == stage, row
    if message:
        assert message in row["error"], row
    else:
        assert row["error"] is None and row["frames"] >= 1, row
    assert row["run_id"] == RUN.run_id


def test_unreadable_files_are_read_errors(hostile):
    """chmod 000 stops reading only when not running as root; as root the denial is simulated."""
    root, out, how, *_ = hostile
    if how == "simulated":
        assert os.geteuid() == 0  # the only reason chmod 000 would not stop reading
    rows = _by_rel(root, out)
    assert rows["in/unreadable.png"]["content_sha256"] is None
    assert rows["in/locked/"]["source_type"] == "unknown"


def test_faces_only_for_ok_sources(hostile):
    root, out, *_ = hostile
    rows = _by_rel(root, out)
    faces = read_table(str(out), "faces").to_pylist()
    ok = {r["source_uri"] for r in rows.values() if r["status"] == "ok"}
    assert {f["source_uri"] for f in faces} == ok
    per_source = {uri: sum(f["source_uri"] == uri for f in faces) for uri in ok}
    assert all(per_source[r["source_uri"]] == r["faces"] for r in rows.values() if r["status"] == "ok")
    assert all(r["faces"] == 0 for r in rows.values() if r["status"] != "ok")
    assert rows["in/sixteen-bit.png"]["faces"] == rows["in/grey-alpha.png"]["faces"] == 2


def test_summary_counts_add_up(hostile):
    root, out, *_ = hostile
    s = summarize(str(out))
    assert s["inputs"] == len(EXPECTED) == s["ok"] + s["no_face"] + s["error"] + s["skipped"]
    assert s["skipped"] == 0
    assert s["error"] == sum(v[0] == "error" for v in EXPECTED.values()) == len(s["errors"])
    assert s["faces"] == sum(r["faces"] for r in _rows(root, out))


def test_content_hashes(hostile):
    root, out, *_ = hostile
    rows = _by_rel(root, out)
    for rel in ("in/with space.png", "in/clip.mp4", "in/truncated.jpg", "in/bomb.png", "in/empty.jpg"):
        assert rows[rel]["content_sha256"] == hashlib.sha256((root / rel).read_bytes()).hexdigest(), rel
    # a video hashed before its probe failed keeps its hash
    assert rows["in/fake.mp4"]["content_sha256"] == hashlib.sha256((root / "in/fake.mp4").read_bytes()).hexdigest()
    # a link to a file is its own input, with the same content
    assert rows["in/link-to-file.png"]["content_sha256"] == rows["in/with space.png"]["content_sha256"]
    for rel in ("in/broken.jpg", "in/pipe.jpg", "in/bad-\\xff-name.png", "in/locked/", "dangling.png"):
        assert rows[rel]["content_sha256"] is None, rel
    assert all(r["previous_run_id"] is None for r in rows.values())


def test_writes_only_under_the_output(hostile):
    root, out, _, before, after = hostile
    corpus_before, base_before, cwd_before, tmp_before = before
    corpus_after, base_after, cwd_after, tmp_after = after
    assert corpus_after == corpus_before  # nothing created, changed or removed in the inputs
    assert set(base_after) - set(base_before) == {"out"}
    assert cwd_after == cwd_before and tmp_after == tmp_before
    assert {p.name.split("-")[0] for p in out.iterdir()} <= {"faces", "sources", "tracks", "beam"}


def test_no_pickle_on_anything_derived_from_inputs():
    """Nothing in the code unpickles: no pickle/dill/marshal loads, every np.load has allow_pickle=False."""
    for folder in ("transforms", "pipelines", "models"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            assert not re.search(r"\b(pickle|dill|cloudpickle|marshal|joblib)\.loads?\(", text), path
            assert "allow_pickle=True" not in text, path
            for call in re.findall(r"np\.load\([^)]*\)", text):
                assert "allow_pickle=False" in call, (path, call)


# ---------------------------------------------------------------------------------------------
# Reruns.


def _small_corpus(d: Path) -> None:
    d.mkdir(parents=True)
    write_image(d / "face.png", _picture(1))
    write_image(d / "empty-scene.png", _picture(0))
    write_bytes(d / "broken.jpg", b"\xff\xd8\xff\xe0 cut")
    make_video(d / "clip.mp4", 10)


def _run(inputs: list[str], out: Path | str, run: RunInfo, options: ReadOptions = ReadOptions()) -> None:
    with _pipeline() as p:
        build(p, expand_inputs(inputs), str(out), FakeHandler(), run, options,
              DetectOptions(min_face_size=10), detector_factory=fake_detector_factory)


def test_skip_existing_reports_skipped_sources_with_the_earlier_run(tmp_path):
    d = tmp_path / "in"
    _small_corpus(d)
    first = tmp_path / "first"
    _run([str(d)], first, RUN)
    write_image(d / "new.png", _picture(2))
    shutil.copy(d / "face.png", d / "copy-of-face.png")  # same content under a new name: skipped too
    second = tmp_path / "second"
    known = previous_contents(str(first))
    assert len(known) == 3  # face, empty-scene, clip: the failed file is tried again
    _run([str(d)], second, RunInfo("second-run", *RUN[1:]), ReadOptions(known_content=known))
    rows = {Path(r["source_uri"]).name: r for r in read_table(str(second), "sources").to_pylist()}
    assert {k: (v["status"], v["previous_run_id"]) for k, v in rows.items()} == {
        "face.png": ("skipped", "hostile-run"), "copy-of-face.png": ("skipped", "hostile-run"),
        "empty-scene.png": ("skipped", "hostile-run"), "clip.mp4": ("skipped", "hostile-run"),
        "broken.jpg": ("error", None), "new.png": ("ok", None)}
    assert all(r["content_sha256"] for r in rows.values())
    assert rows["face.png"]["faces"] == rows["face.png"]["frames"] == 0
    assert {Path(f["source_uri"]).name for f in read_table(str(second), "faces").to_pylist()} == {"new.png"}
    s = summarize(str(second))
    assert (s["inputs"], s["ok"], s["no_face"], s["error"], s["skipped"]) == (6, 1, 0, 1, 4)
    # A third run against the second still finds where the skipped content was analysed.
    assert previous_contents(str(second))[rows["face.png"]["content_sha256"]] == "hostile-run"
    assert previous_contents(str(second))[rows["new.png"]["content_sha256"]] == "second-run"


def test_skip_existing_must_not_be_the_output(tmp_path, capsys):
    from pipelines.analyze import main

    d = tmp_path / "in"
    _small_corpus(d)
    assert main(["--input", str(d), "--output", str(tmp_path / "out"), "--skip_existing", str(tmp_path / "out/"),
                 "--overwrite"]) == 2
    assert "--skip_existing must name an earlier output" in capsys.readouterr().err


def test_skip_existing_needs_content_hashes(tmp_path):
    old_schema = pa.schema([f for f in SOURCES_SCHEMA if f.name not in ("content_sha256", "previous_run_id")])
    pq.write_table(pa.Table.from_pylist([], schema=old_schema), tmp_path / "sources-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="content_sha256"):
        previous_contents(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        previous_contents(str(tmp_path / "nothing"))


def test_rerun_into_an_existing_output_is_refused(tmp_path, capsys):
    from pipelines.analyze import main

    d = tmp_path / "in"
    _small_corpus(d)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sources-00000-of-00001.parquet").write_bytes(b"an earlier run")
    assert main(["--input", str(d), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "sources-00000-of-00001.parquet").read_bytes() == b"an earlier run"


def test_overwrite_replaces_the_tables_and_annotated_copies_of_the_earlier_run(tmp_path):
    from pipelines.analyze import _prepare_output

    out = tmp_path / "out"
    (out / "annotated").mkdir(parents=True)
    for name in ("faces-00000-of-00001.parquet", "sources-00000-of-00001.parquet", "annotated/photo-1a2b3c4d.jpg",
                 "annotated/clip-5e6f7a8b.mp4", "annotated/notes.txt", "mine.csv"):
        (out / name).write_text("earlier")
    assert _prepare_output(str(out), overwrite=True) == str(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["annotated/notes.txt", "mine.csv"]


def test_output_on_a_remote_filesystem_is_written_summarised_and_skipped_from(tmp_path, monkeypatch):
    """An output given as a URI (gs://...) is read back through Beam's FileSystems, not as a local path."""
    monkeypatch.setattr(DiskBackedFileSystem, "ROOT", str(tmp_path / "bucket"))
    (tmp_path / "bucket").mkdir()
    d = tmp_path / "in"
    _small_corpus(d)
    _run([str(d)], "fbtest://runs/first", RUN)
    written = tmp_path / "bucket/runs/first"
    assert sorted(p.name.split("-")[0] for p in written.iterdir()) == ["faces", "sources", "tracks"]
    s = summarize("fbtest://runs/first")
    assert (s["inputs"], s["ok"], s["no_face"], s["error"]) == (4, 2, 1, 1) and s["faces"] > 0
    assert len(previous_contents("fbtest://runs/first")) == 3
    with pytest.raises(FileNotFoundError, match="no sources"):
        summarize("fbtest://runs/none")
    # A local output named with glob characters is read as named.
    shutil.copytree(written, tmp_path / "run[1]")
    assert summarize(str(tmp_path / "run[1]")) == s


def test_a_remote_shard_is_read_only_where_the_wanted_columns_are(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.summary import read_table

    monkeypatch.setattr(DiskBackedFileSystem, "ROOT", str(tmp_path))
    blobs = [np.random.default_rng(i).bytes(100_000) for i in range(20)]  # 2 MB of stored crops
    (tmp_path / "out").mkdir()
    pq.write_table(pa.table({"emotion": ["happy"] * 20, "crop_jpeg": blobs}),
                   tmp_path / "out" / "faces-00000-of-00001.parquet")
    read = []
    opened = DiskBackedFileSystem.open

    class Counting:  # the opened file, counting the bytes read from it
        def __init__(self, f):
            self._f = f

        def read(self, size=-1):
            data = self._f.read(size)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(DiskBackedFileSystem, "open", lambda self, path, *a, **k: Counting(opened(self, path, *a, **k)))
    assert read_table("fbtest://out", "faces", ["emotion"]).column("emotion").to_pylist() == ["happy"] * 20
    assert 0 < sum(read) < 100_000


def test_a_summary_that_cannot_be_read_back_does_not_fail_a_finished_run(tmp_path, monkeypatch, capsys):
    from pipelines import analyze

    monkeypatch.setattr(analyze, "run", lambda argv: (None, "fbtest://gone"))
    assert analyze.main(["--input", "x", "--output", "fbtest://gone"]) == 0
    assert "the run finished, but its tables could not be read back" in capsys.readouterr().err
    assert analyze.main(["--input", "x", "--output", "fbtest://gone", "--fail_on_error"]) == 1


@pytest.mark.parametrize("when, status, message", [
    ("build", 2, "facebeam analyze: error: a bad setting"),
    ("run", 3, "facebeam analyze: the run failed: ValueError: a broken worker"),
])
def test_a_job_the_runner_fails_is_not_called_a_configuration_error(tmp_path, monkeypatch, capsys, when, status,
                                                                     message):
    import apache_beam as beam

    from pipelines import analyze

    def build(p, *args, **kwargs):
        if when == "build":
            raise ValueError("a bad setting")

        def broken(x):
            raise ValueError("a broken worker")

        p | beam.Create([1]) | beam.Map(broken)

    monkeypatch.setattr(analyze, "build", build)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    d = tmp_path / "in"
    _small_corpus(d)
    assert analyze.main(["--input", str(d), "--output", str(tmp_path / "out"), "--quiet"]) == status
    assert message in capsys.readouterr().err
    assert not list(scratch.glob("beam-pipeline-temp*"))  # Beam's own temp directory goes either way


@pytest.mark.parametrize("flags, message", [
    (["--input", ""], "--input is empty"),
    (["--max_frames_per_video", "-1"], "--max_frames_per_video -1 is below 0"),
    (["--video_chunk_seconds", "-1"], "--video_chunk_seconds -1.0 is below 0"),
    (["--min_batch_size", "8", "--max_batch_size", "4"], "--max_batch_size 4 is below 8"),
    (["--min_confidence", "1.5"], "above 1"),
    (["--min_face_size", "nan"], "--min_face_size nan is not a finite number"),
    (["--video_fps", "inf"], "--video_fps inf is not a finite number"),
    (["--emotion_model", "no_such_model"], "no_such_model"),
    (["--dry_run=True"], "--dry_run builds a Dataflow job graph"),
    (["--min-face-size", "200"], "unknown flag --min-face-size: did you mean --min_face_size?"),
    (["--min_face_sise=40"], "unknown flag --min_face_sise: did you mean --min_face_size?"),
    (["--store-crops"], "unknown flag --store-crops: did you mean --store_crops?"),
])
def test_bad_flags_are_refused_before_the_output_is_touched(tmp_path, capsys, flags, message):
    from pipelines.analyze import main

    d = tmp_path / "in"
    _small_corpus(d)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sources-00000-of-00001.parquet").write_bytes(b"an earlier run")
    assert main(["--input", str(d), "--output", str(out), "--overwrite"] + flags) == 2
    assert message in capsys.readouterr().err
    assert (out / "sources-00000-of-00001.parquet").read_bytes() == b"an earlier run"


def test_a_model_file_that_is_not_what_its_sidecar_records_is_refused_up_front(tmp_path, capsys):
    from models.registry import WEIGHTS_DIR, DEFAULT_MODELS
    from pipelines.analyze import main

    d = tmp_path / "in"
    _small_corpus(d)
    name = DEFAULT_MODELS["emotion"]
    model = tmp_path / "models" / f"{name}.keras"
    model.parent.mkdir()
    model.write_bytes((WEIGHTS_DIR / f"{name}.keras").read_bytes() + b"\0")  # retrained or damaged: other bytes
    shutil.copy(WEIGHTS_DIR / f"{name}.json", model.with_suffix(".json"))
    assert main(["--input", str(d), "--output", str(tmp_path / "out"), "--emotion_model", str(model)]) == 2
    assert "does not match the recorded" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["run[1]", "run*", "run?"])
def test_an_output_named_like_a_pattern_is_refused_before_anything_is_written(tmp_path, capsys, name):
    from pipelines.analyze import main

    d = tmp_path / "in"
    _small_corpus(d)
    assert main(["--input", str(d), "--output", str(tmp_path / name)]) == 2
    assert "choose a location without *, ? or [" in capsys.readouterr().err
    assert not (tmp_path / name).exists()


def test_an_output_that_is_a_file_is_refused(tmp_path, capsys):
    from pipelines.analyze import main

    d = tmp_path / "in"
    _small_corpus(d)
    (tmp_path / "out").write_text("not a directory")
    assert main(["--input", str(d), "--output", str(tmp_path / "out")]) == 2
    assert "cannot use it as the output directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Pure helpers.


def test_header_size_reads_png_and_jpeg_headers_only():
    assert imaging.header_size(png_header(50_000, 40_000)) == (50_000, 40_000)
    assert imaging.header_size(jpeg_header(50_000, 40_000)) == (50_000, 40_000)
    assert imaging.header_size(_encoded(gradient_image(40, 60), ".jpg")) == (60, 40)
    assert imaging.header_size(_encoded(gradient_image(40, 60), ".png")) == (60, 40)
    assert imaging.header_size(bmp_header(10, 10)) is None
    assert imaging.header_size(b"\xff\xd8\xff\xda") is None  # a scan before any frame header
    assert imaging.header_size(b"\xff\xd8") is None


def test_bombs_are_refused_before_decoding():
    for data in (png_header(50_000, 50_000), jpeg_header(50_000, 50_000), bmp_header(50_000, 50_000)):
        with pytest.raises(imaging.ImageError, match="50000x50000 pixels exceeds --max_pixels=100000000"):
            imaging.decode_image(data)
    with pytest.raises(imaging.ImageError, match="max_pixels=99"):
        imaging.decode_image(png_header(10, 10), max_pixels=99)
    # The limit is --max_pixels, also above Pillow's own (179 Mpx) for the formats Pillow measures.
    assert imaging.probe_image_size(bmp_header(14_000, 14_000)) == (14_000, 14_000)


def test_png_problem():
    good = _encoded(gradient_image(), ".png")
    assert imaging.png_problem(good) is None
    assert imaging.png_problem(b"not a png") is None
    assert "chunk 'IDAT' has a bad CRC" in imaging.png_problem(bad_crc_png())
    assert "cut short" in imaging.png_problem(good[: len(good) // 2])
    assert "before the IEND" in imaging.png_problem(good[:-12])


def test_describe_content():
    d = imaging.describe_content
    assert d(b"") == "nothing (0 bytes)"
    assert d(_encoded(gradient_image(), ".jpg")) == "a JPEG image"
    assert d(b"  <!doctype html><p>x") == "HTML"
    assert d("plain text, ünïcødé\n".encode()) == "text"
    assert d(b"%PDF-1.7") == "a PDF document"
    assert d(b"\x00\x00\x00\x1cftypisom") == "an MP4/QuickTime video"
    assert d(bmp_header(2, 2)) == "a BMP image"
    assert d(bytes(range(256))) is None


def test_video_problem(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", 10)
    assert video.video_problem(str(clip)) is None
    data = clip.read_bytes()
    cases = {"empty.mp4": b"", "text.mp4": b"hello\n" * 10, "cut.mp4": cut(clip),
             "no-index.mp4": data[:data.find(b"moov") - 4], "zero.mp4": make_video(tmp_path / "z.mp4", 0).read_bytes()}
    found = {name: video.video_problem(str(write_bytes(tmp_path / name, data))) for name, data in cases.items()}
    assert found["empty.mp4"] == "empty file (0 bytes)"
    assert found["text.mp4"] == "not a video: the file holds text"
    assert found["cut.mp4"].startswith("truncated MP4/QuickTime file: box") and "is cut short" in found["cut.mp4"]
    assert "without its 'moov' index" in found["no-index.mp4"]
    assert "no media data (0 frames)" in found["zero.mp4"]
    with pytest.raises(video.VideoError, match="cannot open as a video: not a video: the file holds text"):
        video.probe_video(str(tmp_path / "text.mp4"))


def test_walk_local_follows_links_once_and_ends_loops(tmp_path):
    d = tmp_path / "d"
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "x.jpg").write_bytes(b"x")
    (d / "top.png").write_bytes(b"top")
    os.symlink(d, d / "a" / "b" / "to-root")  # a loop through the root
    os.symlink("loop2", d / "loop1")
    os.symlink("loop1", d / "loop2")  # a two-link loop: neither resolves
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.png").write_bytes(b"o")
    os.symlink(outside, outside / "self")  # a loop outside the root
    os.symlink(outside, d / "out-1")
    os.symlink(outside, d / "out-2")
    listed = {os.path.relpath(e.uri, d): e for e in walk_local(str(d))}
    assert set(listed) == {"top.png", "loop1", "loop2", "a/b/x.jpg", "out-1/o.png"}
    assert listed["top.png"] == Listed(str(d / "top.png"), 3, None)
    assert "symbolic link loop" in listed["loop1"].problem
    # depth limits what a pattern can reach
    assert {os.path.relpath(e.uri, d) for e in walk_local(str(d), max_depth=0)} == {"top.png", "loop1", "loop2"}
    assert list(walk_local(str(tmp_path / "missing"))) == []


def test_list_input_patterns_follow_beam_semantics(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "b.png", "sub/c.jpg", "lit[1].jpg", "l.jpg"):
        (tmp_path / name).write_bytes(b"x")
    def names(pattern, is_dir=False):
        return sorted(os.path.relpath(e.uri, tmp_path) for e in list_input(str(tmp_path / pattern), is_dir))
    assert names("*.jpg") == ["a.jpg", "l.jpg", "lit[1].jpg"]  # '*' stays within a directory
    assert names("**.jpg") == ["a.jpg", "l.jpg", "lit[1].jpg", "sub/c.jpg"]  # '**' crosses them
    assert names("lit[1].jpg") == ["lit[1].jpg"]  # an existing name is taken literally
    assert names("l[i].jpg") == []  # not a file: a pattern whose '[i]' is a class ('li.jpg' does not exist)
    assert names("[la].jpg") == ["a.jpg", "l.jpg"]
    assert names(".", is_dir=True) == ["a.jpg", "b.png", "l.jpg", "lit[1].jpg", "sub/c.jpg"]


def test_expand_inputs_refusals(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no media here")
    with pytest.raises(ValueError, match="holds no image or video file"):
        expand_inputs([str(tmp_path / "docs")])
    with pytest.raises(ValueError, match="matches no file"):
        expand_inputs([str(tmp_path / "nothing-*.jpg")])
    os.symlink("nowhere", tmp_path / "dangling.jpg")
    assert expand_inputs([str(tmp_path / "dangling.jpg")]) == [(str(tmp_path / "dangling.jpg"), False)]


def test_non_utf8_names_become_printable_errors(tmp_path):
    with open(os.path.join(os.fsencode(tmp_path), BAD_UTF8), "wb") as f:
        f.write(b"x")
    (entry,) = walk_local(str(tmp_path))
    assert entry.uri == str(tmp_path / "bad-\\xff-name.png") and "not valid UTF-8" in entry.problem
    entry.uri.encode("utf-8")


def test_sha256_of_streams(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    path = write_bytes(tmp_path / "blob.bin", data)
    assert sha256_of(str(path)) == hashlib.sha256(data).hexdigest()


def test_source_row_skipped_and_hashed():
    src = SourceFile("/x/a.jpg", "image", 10)
    skipped = source_row(src, 0, 0, [], "r2", SourceContent("ab" * 32, "r1"))
    assert (skipped["status"], skipped["previous_run_id"], skipped["content_sha256"]) == ("skipped", "r1", "ab" * 32)
    ok = source_row(src, 1, 2, [], "r2", SourceContent("cd" * 32))
    assert (ok["status"], ok["previous_run_id"], ok["content_sha256"]) == ("ok", None, "cd" * 32)
    failed = source_row(src, 0, 0, [ErrorRecord(src.uri, "read", "boom")], "r2", SourceContent("ef" * 32, "r1"))
    assert (failed["status"], failed["previous_run_id"]) == ("error", None)
    assert source_row(src, 1, 0, [], "r2")["content_sha256"] is None
    pa.Table.from_pylist([skipped, ok, failed], schema=SOURCES_SCHEMA)


# ---------------------------------------------------------------------------------------------
# The real command (MTCNN, shipped models) on a small hostile subset and one real photo.


def test_real_cli_on_hostile_subset(tmp_path, capsys):
    from pipelines import cli

    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(EXAMPLES / "photos" / "obama_family.jpg", d / "obama family.jpg")
    write_bytes(d / "empty.jpg", b"")
    write_bytes(d / "bad-crc.png", bad_crc_png())
    write_bytes(d / "page.jpg", b"<html><body>not a photo</body></html>\n")
    write_bytes(d / "bomb.png", png_header(50_000, 50_000))
    write_bytes(d / "cmyk.jpg", _pil(Image.fromarray(_picture(1)).convert("CMYK"), "JPEG"))
    write_bytes(d / "fake.mp4", b"this is not a video\n" * 10)
    os.symlink("missing.jpg", d / "broken.jpg")
    os.mkfifo(d / "pipe.jpg")
    first, second = tmp_path / "first", tmp_path / "second"

    assert cli.main(["analyze", "--input", str(d), "--output", str(first), "--run_id", "real-1"]) == 0
    printed = capsys.readouterr().out
    counts = parse_summary(printed)
    assert (counts["inputs"], counts["error"]) == (9, 7)
    rows = {Path(r["source_uri"]).name: r for r in read_table(str(first), "sources").to_pylist()}
    assert (rows["obama family.jpg"]["status"], rows["obama family.jpg"]["faces"]) == ("ok", 4)
    assert rows["cmyk.jpg"]["status"] in ("ok", "no_face") and rows["cmyk.jpg"]["frames"] == 1
    for name, rel in (("empty.jpg", "in/empty.jpg"), ("bad-crc.png", "in/bad-crc.png"), ("page.jpg", "in/page.jpg"),
                      ("bomb.png", "in/bomb.png"), ("fake.mp4", "in/fake.mp4"), ("broken.jpg", "in/broken.jpg"),
                      ("pipe.jpg", "in/pipe.jpg")):
        status, stage, message = EXPECTED[rel]
        assert (rows[name]["status"], rows[name]["stage"]) == (status, stage), rows[name]
        assert message in rows[name]["error"], rows[name]

    # A rerun skips what was analysed, tries the failures again, and fails on them when asked to.
    assert cli.main(["analyze", "--input", str(d), "--output", str(second), "--skip_existing", str(first),
                     "--fail_on_error"]) == 1
    captured = capsys.readouterr()
    assert parse_summary(captured.out)["skipped"] == 2 and "--fail_on_error" in captured.err
    again = {Path(r["source_uri"]).name: r for r in read_table(str(second), "sources").to_pylist()}
    assert (again["obama family.jpg"]["status"], again["obama family.jpg"]["previous_run_id"]) == ("skipped", "real-1")
    assert sum(r["status"] == "error" for r in again.values()) == 7
    assert read_table(str(second), "faces").num_rows == 0


def test_summary_keeps_odd_file_names_on_one_line():
    from pipelines.summary import format_summary

    summary = {"inputs": 1, "images": 1, "videos": 0, "frames": 0, "ok": 0, "no_face": 0, "error": 1, "skipped": 0,
               "faces": 0, "emotions": {}, "errors": [("/in/new\nline.png", "decode", "ImageError: empty file")]}
    text = format_summary(summary, "/out")
    assert "  error at decode: /in/new\\nline.png: ImageError: empty file" in text.splitlines()
