"""Model files and what the pipeline must know about them, verified by sha256 before loading.

A model is a ``.keras`` file with a JSON sidecar of the same stem (written by ``models.train``):
task, input shape, alignment template of its training data, classes, and the file's sha256.
The shipped models' hashes are also pinned here, so a swapped file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelSpec", "WEIGHTS_DIR", "SHIPPED", "DEFAULT_MODELS", "default_specs", "resolve", "verify", "load_checked", "sha256_of",
           "ModelIntegrityError"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# sha256 of the shipped weights; each model card states the same value.
SHIPPED: dict[str, str] = {
    "emotion_v2": "6bb4d4965d9ae99bb0c88905b3f3a426f411d8d66425ae4fc4583f348e9f4196",
    "age_gender_v4": "2199b2cfc1ef0432591d866660abb7178f3d9bf76e7008567a7c9ebc793546ec",
}


# The models the pipeline, the live view, evaluation and the benchmarks use unless told otherwise.
DEFAULT_MODELS: dict[str, str] = {"emotion": "emotion_v2", "age-gender": "age_gender_v4"}


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
    """The spec of a shipped model (by name) or of a ``.keras`` file with its JSON sidecar."""
    path = Path(name_or_path)
    if not path.suffix:
        path = WEIGHTS_DIR / f"{name_or_path}.keras"
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    if not sidecar.is_file():
        raise FileNotFoundError(f"model {path} has no sidecar {sidecar.name} (written by 'facebeam train')")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{sidecar}: not a JSON sidecar ({e})") from None
    missing = [k for k in ("task", "sha256", "input", "template") if k not in meta]
    if missing:
        raise ValueError(f"{sidecar} lacks {', '.join(missing)} (sidecars are written by 'facebeam train')")
    if meta.get("task") != task:
        raise ValueError(f"{path} is a {meta.get('task')!r} model, not {task!r}")
    pinned = SHIPPED.get(path.stem) if path.parent.resolve() == WEIGHTS_DIR else None
    if pinned and pinned != meta["sha256"]:
        raise ModelIntegrityError(f"{sidecar} records sha256 {meta['sha256']}, facebeam ships {pinned}")
    return ModelSpec(
        name=path.stem, task=task, path=str(path), sha256=meta["sha256"],
        input_shape=tuple(meta["input"]), template=tuple(meta["template"]), classes=tuple(meta.get("classes", ())),
        temperature=float(meta.get("temperature") or 1.0),
        temperatures=tuple(sorted((str(k), float(v)) for k, v in (meta.get("temperatures") or {}).items())),
    )


def default_specs() -> tuple[ModelSpec, ModelSpec]:
    """The specs of the default emotion and age + gender models (``DEFAULT_MODELS``)."""
    return resolve(DEFAULT_MODELS["emotion"], "emotion"), resolve(DEFAULT_MODELS["age-gender"], "age-gender")


def verify(spec: ModelSpec) -> None:
    """Raises ModelIntegrityError unless the file's sha256 is the recorded one."""
    actual = sha256_of(spec.path)
    if actual != spec.sha256:
        raise ModelIntegrityError(
            f"{spec.path}: sha256 {actual} does not match the recorded {spec.sha256}; refusing to load it")


def load_checked(spec: ModelSpec):
    """The Keras model of ``spec``, uncompiled, loaded only after its sha256 is checked."""
    import keras

    verify(spec)
    return keras.models.load_model(spec.path, compile=False)
