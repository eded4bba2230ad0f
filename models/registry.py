"""Model files and what the pipeline must know about them, verified by sha256 before loading.

A model is a ``.keras`` file with a JSON sidecar of the same stem (written by ``models.train``):
task, input shape, alignment template of its training data, classes, and the file's sha256.
The shipped models' hashes are also pinned here, so a swapped file is refused.

A spec travels with the pipeline to its workers, which may be other machines (Dataflow, Flink):
a shipped model is then found in the worker's own installation, and a model given as a
FileSystems URI (``gs://bucket/models/mine.keras`` with ``mine.json`` beside it) is copied into
the worker's cache; a local path must exist where the model is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["ModelSpec", "WEIGHTS_DIR", "SHIPPED", "DEFAULT_MODELS", "default_specs", "resolve", "verify", "load_checked", "sha256_of",
           "ModelIntegrityError", "cache_root", "is_uri", "replaced_whole", "record_in_sidecar"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# sha256 of the shipped weights; each model card states the same value.
SHIPPED: dict[str, str] = {
    "emotion_v2": "6bb4d4965d9ae99bb0c88905b3f3a426f411d8d66425ae4fc4583f348e9f4196",
    "age_gender_v4": "2199b2cfc1ef0432591d866660abb7178f3d9bf76e7008567a7c9ebc793546ec",
}


# The models the pipeline, the live view, evaluation and the benchmarks use unless told otherwise.
DEFAULT_MODELS: dict[str, str] = {"emotion": "emotion_v2", "age-gender": "age_gender_v4"}

# A URI with a scheme (gs://, s3://, ...), read through Beam's FileSystems.
_URI = re.compile(r"[a-zA-Z][-a-zA-Z0-9+.]*://")


def is_uri(path: str) -> bool:
    """True for a FileSystems URI (``gs://...``), False for a local path; without importing Beam."""
    return bool(_URI.match(str(path)))


@contextlib.contextmanager
def replaced_whole(path: str | os.PathLike) -> Iterator[str]:
    """A new temporary file beside ``path``, with its suffix (Keras and numpy choose the format by
    it), renamed over ``path`` when the block ends without an error: readers, other processes
    included, see the old file or the new one, never part of one, and a kill leaves the old one."""
    path = Path(path)
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix
    # A name of its own per writer (not a file made here: the writer creates it, with the usual mode).
    part = str(path.with_name(f"{path.name.removesuffix(suffix)}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part{suffix}"))
    try:
        yield part
        fd = os.open(part, os.O_RDONLY)
        try:  # on disk before it takes the name: after a crash, the old file or the whole new one
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, path)
    finally:
        if os.path.exists(part):
            os.unlink(part)


def cache_root() -> Path:
    """facebeam's cache on this machine: ``$FACEBEAM_CACHE``, else ``$XDG_CACHE_HOME/facebeam`` or
    ``~/.cache/facebeam``."""
    root = os.environ.get("FACEBEAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "facebeam")
    return Path(root)


class ModelIntegrityError(RuntimeError):
    """A model file whose content does not match its recorded sha256."""


@dataclass(frozen=True)
class ModelSpec:
    """A model file and its contract.

    ``input_shape``: (side, side, channels) of the pixels it takes (float32 in [0, 255]);
    ``template``: (eye_distance, eye_y) fractions of the side where its training faces had the eyes;
    ``temperature``: the softmax temperature fitted for an emotion model's probabilities (1: none);
    ``temperatures``: (TTA mode, temperature) pairs, each fitted for the probabilities averaged over
    that mode's views (``models.tta``), see ``temperature_for``.
    """

    name: str
    task: str
    path: str
    sha256: str
    input_shape: tuple[int, int, int]
    template: tuple[float, float]
    classes: tuple[str, ...] = ()
    temperature: float = 1.0
    temperatures: tuple[tuple[str, float], ...] = ()
    shipped: bool = False  # a file of models/weights, found in the installation of whichever machine loads it

    def local_file(self) -> str:
        """The model file as a local path on this machine: a shipped model in this installation's
        ``models/weights`` (the spec may come from the machine that submitted the job), a model on a
        FileSystems URI copied once into the cache, or else the path as given."""
        if self.shipped:
            return str(WEIGHTS_DIR / f"{self.name}.keras")
        if is_uri(self.path):
            return _fetched(self.path, self.sha256)
        return self.path

    def sidecar(self) -> dict:
        """The record written beside the model file (its ``.json``): how it was made and scored. A
        shipped model's is this installation's, one on a FileSystems URI is read from beside it there."""
        if is_uri(self.path):
            return json.loads(_read_uri_sidecar(self.path))
        return json.loads(Path(self.local_file()).with_suffix(".json").read_text())

    def temperature_for(self, tta: str = "none") -> float:
        """The temperature fitted for the mean probabilities over the views of TTA mode ``tta``; 1 (none)
        where no fit for that mode is recorded, as one fitted for other views would miscalibrate them."""
        fitted = dict(self.temperatures) or {"none": self.temperature}
        return float(fitted.get(tta, 1.0))

    @property
    def tag(self) -> str:
        """Name and short hash, as written into every output row."""
        return f"{self.name}@{self.sha256[:12]}"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(name_or_path: str, task: str) -> ModelSpec:
    """The spec of a shipped model (by name), of a local ``.keras`` file with its JSON sidecar, or of
    one on a FileSystems URI (``gs://...``)."""
    if is_uri(name_or_path):
        path, sidecar_text = name_or_path, _read_uri_sidecar(name_or_path)
        name, shipped = name_or_path.rsplit("/", 1)[-1].removesuffix(".keras"), False
        sidecar = name_or_path.removesuffix(".keras") + ".json"
    else:
        local = Path(name_or_path)
        if not local.suffix:
            local = WEIGHTS_DIR / f"{name_or_path}.keras"
        sidecar = local.with_suffix(".json")
        if not local.is_file():
            raise FileNotFoundError(f"model file {local} not found")
        if not sidecar.is_file():
            raise FileNotFoundError(f"model {local} has no sidecar {sidecar.name} (written by 'facebeam train')")
        path, sidecar_text, name = str(local), sidecar.read_text(), local.stem
        shipped = local.parent.resolve() == WEIGHTS_DIR
    try:
        meta = json.loads(sidecar_text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{sidecar}: not a JSON sidecar ({e})") from None
    missing = [k for k in ("task", "sha256", "input", "template") if k not in meta]
    if missing:
        raise ValueError(f"{sidecar} lacks {', '.join(missing)} (sidecars are written by 'facebeam train')")
    if meta.get("task") != task:
        raise ValueError(f"{path} is a {meta.get('task')!r} model, not {task!r}")
    pinned = SHIPPED.get(name) if shipped else None
    if pinned and pinned != meta["sha256"]:
        raise ModelIntegrityError(f"{sidecar} records sha256 {meta['sha256']}, facebeam ships {pinned}")
    return ModelSpec(
        name=name, task=task, path=path, sha256=meta["sha256"],
        input_shape=tuple(meta["input"]), template=tuple(meta["template"]), classes=tuple(meta.get("classes", ())),
        temperature=float(meta.get("temperature") or 1.0),
        temperatures=tuple(sorted((str(k), float(v)) for k, v in (meta.get("temperatures") or {}).items())),
        shipped=shipped,
    )


def _read_uri_sidecar(uri: str) -> str:
    """The sidecar of a model on a FileSystems URI, as text."""
    from apache_beam.io.filesystems import FileSystems

    if not uri.endswith(".keras"):
        raise ValueError(f"{uri}: give the .keras file of the model (its .json sidecar beside it)")
    sidecar = uri.removesuffix(".keras") + ".json"
    for what in (uri, sidecar):
        try:
            found = FileSystems.exists(what)
        except Exception as e:  # BeamIOError: the location cannot be reached
            raise FileNotFoundError(f"cannot reach {what}: {e}") from e
        if not found:
            raise FileNotFoundError(f"model file {what} not found" if what == uri else
                                    f"model {uri} has no sidecar {sidecar} (written by 'facebeam train')")
    with FileSystems.open(sidecar) as f:
        return f.read().decode("utf-8")


def _fetched(uri: str, sha256: str) -> str:
    """A local copy of the model file at ``uri``, kept in the cache under its recorded sha256."""
    from apache_beam.io.filesystems import FileSystems

    target = cache_root() / "models" / f"{sha256}.keras"
    if target.is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(target) as part, open(part, "wb") as out, FileSystems.open(uri) as src:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    return str(target)


def default_specs() -> tuple[ModelSpec, ModelSpec]:
    """The specs of the default emotion and age + gender models (``DEFAULT_MODELS``)."""
    return resolve(DEFAULT_MODELS["emotion"], "emotion"), resolve(DEFAULT_MODELS["age-gender"], "age-gender")


def verify(spec: ModelSpec) -> None:
    """Raises ModelIntegrityError unless the file's sha256 is the recorded one."""
    path = spec.local_file()
    actual = sha256_of(path)
    if actual != spec.sha256:
        if is_uri(spec.path):  # a cached copy gone bad: fetched again next time
            os.unlink(path)
        raise ModelIntegrityError(
            f"{path}: sha256 {actual} does not match the recorded {spec.sha256}; refusing to load it")


def load_checked(spec: ModelSpec):
    """The Keras model of ``spec``, uncompiled, loaded only after its sha256 is checked."""
    import keras

    verify(spec)
    return keras.models.load_model(spec.local_file(), compile=False)


def record_in_sidecar(spec: ModelSpec, record: dict, scored_by: str) -> Path:
    """Merges ``record``, figures scored on the model's own weights, into its JSON sidecar (written
    whole) with ``scored_by``, the command that scored them, which its card then names."""
    if is_uri(spec.path):
        raise ValueError(f"{spec.path}: a model on a remote file system; record into a local copy of it")
    sidecar = Path(spec.local_file()).with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta.update(record)
    meta["scored_by"] = scored_by
    with replaced_whole(sidecar) as part:
        Path(part).write_text(json.dumps(meta, indent=2) + "\n")
    return sidecar
