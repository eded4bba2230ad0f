"""Loaders for the labelled data sets (FER2013 and UTKFace npz layouts), numpy + OpenCV only.

Layouts are those of ``shared/data/README.md``. Nothing here downloads anything: the data sets are
research-use files that users place themselves; ``default_data_dir()`` says where they are looked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np

from models.labels import EMOTIONS

__all__ = [
    "save_cache",
    "load_cache",
    "faces_digest",
    "FerData",
    "UtkData",
    "default_data_dir",
    "load_fer",
    "load_utkface",
    "validation_mask",
    "ferplus_soft_labels",
    "ferplus_not_a_face",
    "label_set_of",
    "emotion_targets",
    "EmotionTargets",
    "fer_faces",
    "check_face_size",
    "LABEL_SETS",
    "FER_TEMPLATE",
    "UTK_TEMPLATE",
]

# Label sets for the emotion model: each maps the 7 FER2013 labels to the set's classes (-1 drops).
LABEL_SETS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "7": (EMOTIONS, (0, 1, 2, 3, 4, 5, 6)),
    # angry and disgust merged: disgust has ~10x fewer examples than happy.
    "6": (("angry", "fear", "happy", "sad", "surprise", "neutral"), (0, 0, 1, 2, 3, 4, 5)),
    # without disgust and fear, the two classes FER2013 labels least reliably.
    "5": (("angry", "happy", "sad", "surprise", "neutral"), (0, -1, -1, 1, 2, 3, 4)),
}

# Where the eyes sit in each data set's faces, as (eye distance, eye-line height) fractions of the
# image side: medians of MTCNN's eye landmarks on ~300 faces of each (FER2013 PublicTest upscaled 4x,
# UTKFace train). The pipeline frames its crops the same way before calling a model.
FER_TEMPLATE = (0.368, 0.385)
UTK_TEMPLATE = (0.391, 0.289)

# FER+ vote columns (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF)
# mapped to FER2013's emotion order; contempt, unknown and NF have no FER2013 class.
_FERPLUS_TO_FER = {4: 0, 5: 1, 6: 2, 1: 3, 3: 4, 2: 5, 0: 6}
_FERPLUS_NOT_A_FACE = 9


class FerData(NamedTuple):
    """FER2013 faces: ``images`` uint8 (N, 48, 48) grey; ``labels`` int64 (N,) in EMOTIONS order."""

    images: np.ndarray
    labels: np.ndarray
    ferplus_votes: np.ndarray | None
    filenames: np.ndarray


class UtkData(NamedTuple):
    """UTKFace faces: ``images`` uint8 (N, S, S, 3) RGB; age in years, gender 0 male 1 female, race 0-4."""

    images: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    race: np.ndarray
    filenames: np.ndarray


def default_data_dir() -> Path:
    """``$FACEBEAM_DATA`` if set, else ``../shared/data`` beside the repository (for an installed
    package, which has no repository around it: beside the working directory)."""
    env = os.environ.get("FACEBEAM_DATA")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent
    base = checkout if (checkout / "setup.py").is_file() else Path.cwd()
    return base.parent / "shared" / "data"


@contextlib.contextmanager
def _npz(path: str | os.PathLike) -> Iterator[np.lib.npyio.NpzFile]:
    """The open archive of an .npz file; a file that is not one (a single .npy array, a pickle,
    text), or whose members do not read back whole (a cut-off or damaged download), is a ValueError
    that names the file."""
    try:
        d = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz ({e})" if isinstance(e, zipfile.BadZipFile)
                         else f"{path}: not an .npz archive") from e
    if not isinstance(d, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz archive but a single .npy array (the layouts are archives "
                         "of named arrays, np.savez)")
    with d:
        try:
            yield d
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise ValueError(f"{path}: not a readable .npz: a member is damaged or cut off ({e})") from e


def load_fer(path: str | os.PathLike) -> FerData:
    """Loads a FER2013 npz (``images``, ``labels``; ``ferplus_votes`` when present).

    Pixels must be whole numbers in 0..255 (uint8, or any numeric type holding such values); images
    scaled to [0, 1] are refused rather than read as almost black. A ``classes`` array, where there
    is one, must name the FER2013 classes in their order, which the labels are read in."""
    with _npz(path) as d:
        if "images" not in d.files or "labels" not in d.files:
            raise ValueError(f"{path}: not a FER2013 npz (needs 'images' and 'labels', has {d.files})")
        if "classes" in d.files:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in d["classes"].ravel().tolist()]
            if classes != list(EMOTIONS):
                raise ValueError(f"{path}: its classes are {', '.join(classes)}; the FER2013 layout's labels are "
                                 f"{', '.join(f'{i} {c}' for i, c in enumerate(EMOTIONS))}")
        images, labels = d["images"], d["labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{path}: FER2013 images are grey (N, H, W) with one label each (N,); got images "
                             f"{images.shape} and labels {labels.shape}")
        images = _pixels(path, images)
        labels = _whole(path, "labels", labels)
        bad = (labels < 0) | (labels >= len(EMOTIONS))
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} labels outside 0..{len(EMOTIONS) - 1} "
                             f"(the FER2013 classes {', '.join(EMOTIONS)}), e.g. {labels[bad][0]}")
        votes = d["ferplus_votes"] if "ferplus_votes" in d.files else None
        if votes is not None and votes.shape != (len(labels), 10):
            raise ValueError(f"{path}: ferplus_votes must be (N, 10) for its {len(labels)} faces, not {votes.shape}")
        names = _names(path, d, len(labels))
        return FerData(images, labels, votes, names)


def _pixels(path, images: np.ndarray) -> np.ndarray:
    """``images`` as uint8, refused unless every pixel is a whole number in 0..255."""
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.number) or np.issubdtype(images.dtype, np.complexfloating):
        raise ValueError(f"{path}: images must be uint8 pixels, not {images.dtype}")
    if images.size:
        lo, hi = float(np.min(images)), float(np.max(images))
        if not (0 <= lo and hi <= 255 and np.array_equal(images, np.round(images))):
            hint = " (scaled to [0, 1]? multiply by 255)" if 0 <= lo and hi <= 1 else ""
            raise ValueError(f"{path}: images must be whole-number pixels in 0..255; got {images.dtype} values "
                             f"in [{lo:g}, {hi:g}]{hint}")
    return images.astype(np.uint8)


def _whole(path, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as int64, refused unless they are whole numbers."""
    if np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.bool_):
        return values.astype(np.int64)
    if (np.issubdtype(values.dtype, np.floating) and np.isfinite(values).all()
            and np.array_equal(values, np.round(values))):
        return values.astype(np.int64)
    raise ValueError(f"{path}: {name} must be whole numbers, not {values.dtype}"
                     + (f" values such as {values.ravel()[0]!r}" if values.size else ""))


def _names(path, d, n: int) -> np.ndarray:
    """The ``filenames`` of an npz (one per face), or the face indices as text when it has none."""
    if "filenames" not in d.files:
        return np.arange(n).astype(str)
    names = d["filenames"]
    if names.shape != (n,):
        raise ValueError(f"{path}: filenames must be one per face ({n},), not {names.shape}")
    if names.dtype.kind == "S":  # bytes: as text, or the validation split's hash sees "b'name'"
        try:
            names = np.char.decode(names, "utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: filenames are not UTF-8 text ({e})") from e
    return names


def load_utkface(path: str | os.PathLike, size: int = 64, validation: bool | None = None) -> UtkData:
    """Loads a UTKFace npz of concatenated JPEGs, decoded to RGB and resized to ``size`` square.

    ``validation``: None for every face, True / False for only the held-back / training faces
    of ``validation_mask``.
    """
    with _npz(path) as d:
        needed = {"jpeg", "offsets", "age", "gender"}
        if not needed <= set(d.files):
            raise ValueError(f"{path}: not a UTKFace npz (needs {sorted(needed)}, has {d.files})")
        jpeg, offsets = d["jpeg"], _whole(path, "offsets", d["offsets"])
        if jpeg.dtype != np.uint8 or jpeg.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1:
            raise ValueError(f"{path}: jpeg must be bytes, uint8 (M,), and offsets (N+1,); got {jpeg.dtype} "
                             f"{jpeg.shape} and {offsets.shape}")
        if offsets[0] != 0 or (np.diff(offsets) <= 0).any() or offsets[-1] > len(jpeg):
            raise ValueError(f"{path}: offsets must rise from 0 to at most the {len(jpeg)} bytes of jpeg, "
                             "one image between each two")
        n = len(offsets) - 1
        age = d["age"]
        gender = _whole(path, "gender", d["gender"])
        race = _whole(path, "race", d["race"]) if "race" in d.files else np.full(n, -1, np.int64)
        for name, values in (("age", age), ("gender", gender), ("race", race)):
            if values.shape != (n,):
                raise ValueError(f"{path}: {name} must have one value per image ({n},), not {values.shape}")
        if not np.issubdtype(age.dtype, np.number) or not np.isfinite(age).all() or (age < 0).any():
            raise ValueError(f"{path}: ages must be years, finite and not negative")
        bad = (gender != 0) & (gender != 1)
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} gender labels are neither 0 (male) nor 1 (female), "
                             f"e.g. {gender[bad][0]}")
        bad = (race < -1) | (race > 4)
        if bad.any():
            raise ValueError(f"{path}: {int(bad.sum())} race labels outside 0..4, e.g. {race[bad][0]}")
        if validation is not None and "filenames" not in d.files:
            raise ValueError(f"{path}: has no filenames, by which the validation split is made (a split by row "
                             "would hold back other faces than training did)")
        names = _names(path, d, n)
        keep = np.arange(n) if validation is None else np.flatnonzero(validation_mask(names) == validation)
        images = np.empty((len(keep), size, size, 3), np.uint8)
        for j, i in enumerate(keep):
            bgr = cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{path}: image {i} does not decode")
            images[j] = cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA),
                                     cv2.COLOR_BGR2RGB)
        return UtkData(images, age.astype(np.float32)[keep], gender[keep], race[keep], names[keep])


def validation_mask(filenames: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """True for the files held back for validation: a stable split by a hash of the file name."""
    buckets = np.array(
        [int.from_bytes(hashlib.sha256(str(f).encode()).digest()[:4], "big") % 10_000 for f in filenames]
    )
    return buckets < int(round(fraction * 10_000))


def ferplus_soft_labels(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FER+ crowd votes (N, 10) as soft labels (N, 7) in EMOTIONS order, and a mask of usable rows.

    A row is usable when at least one vote falls on one of the 7 FER2013 classes.
    """
    soft = np.zeros((len(votes), len(EMOTIONS)), np.float32)
    for col, cls in _FERPLUS_TO_FER.items():
        soft[:, cls] = votes[:, col]
    total = soft.sum(axis=1, keepdims=True)
    usable = total[:, 0] > 0
    soft[usable] /= total[usable]
    return soft, usable


def ferplus_not_a_face(votes: np.ndarray) -> np.ndarray:
    """True where most FER+ annotators said the image is not a face."""
    return votes[:, _FERPLUS_NOT_A_FACE] * 2 > votes.sum(axis=1)


def label_set_of(classes: tuple[str, ...] | list[str]) -> str:
    """The key of LABEL_SETS whose classes are ``classes`` (a model's sidecar); "7" when empty."""
    if not classes:
        return "7"
    for key, (names, _) in LABEL_SETS.items():
        if tuple(classes) == names:
            return key
    raise ValueError(f"classes {list(classes)} are none of the label sets {sorted(LABEL_SETS)}")


class EmotionTargets(NamedTuple):
    """Faces over a label set's classes: ``images`` uint8 (M, 48, 48), ``targets`` float32 (M, C)
    distributions, ``labels`` int64 (M,) class indices, ``filenames`` (M,)."""

    images: np.ndarray
    targets: np.ndarray
    labels: np.ndarray
    filenames: np.ndarray


def emotion_targets(d: FerData, label_set: str, clean: bool = False, soft: bool = False) -> EmotionTargets:
    """The faces of ``d`` a label set keeps, with their targets over its classes.

    ``clean`` also leaves out FER+ "not a face" images; ``soft`` gives FER+ vote distributions as
    targets (rows without usable votes keep the FER2013 label).
    """
    classes, mapping = LABEL_SETS[label_set]
    mapping = np.asarray(mapping)
    y = mapping[d.labels]
    keep = y >= 0
    if clean and d.ferplus_votes is not None:
        keep &= ~ferplus_not_a_face(d.ferplus_votes)
    if soft and d.ferplus_votes is not None:
        fer_soft, usable = ferplus_soft_labels(d.ferplus_votes)
        t = np.zeros((len(y), len(classes)), np.float32)
        for src, dst in enumerate(mapping):
            if dst >= 0:
                t[:, dst] += fer_soft[:, src]
        total = t.sum(1, keepdims=True)
        usable &= total[:, 0] > 0
        t[usable] /= total[usable]
        # Rows without usable votes fall back to the FER2013 label.
        t[~usable] = np.eye(len(classes), dtype=np.float32)[np.maximum(y[~usable], 0)]
    else:
        t = np.eye(len(classes), dtype=np.float32)[np.maximum(y, 0)]
    return EmotionTargets(d.images[keep], t[keep], y[keep], d.filenames[keep])


def fer_faces(d: FerData, classes: tuple[str, ...] | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the faces a model with ``classes`` can be scored on, labels in its order."""
    faces = emotion_targets(d, label_set_of(classes))
    return faces.images, faces.labels


def check_face_size(path, images: np.ndarray, name: str, input_shape) -> None:
    """Refuses faces ``images`` (N, H, W[, C]) of ``path`` whose size is not the ``input_shape`` of
    model ``name``: it would fail deep inside the model, or score something else than it was trained on."""
    if images.shape[1:3] != tuple(input_shape[:2]):
        raise ValueError(f"{path}: faces of {images.shape[1]}x{images.shape[2]} pixels; {name} takes "
                         f"{input_shape[0]}x{input_shape[1]}")


def save_cache(path: Path, **arrays) -> None:
    """Writes a training cache (features, teacher outputs) as ``path`` (.npz), whole or not at all:
    written beside it and renamed over it."""
    from models.registry import replaced_whole

    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(path) as part:
        np.savez(part, **arrays)


def faces_digest(images: np.ndarray) -> str:
    """sha256 of the faces' pixels: the part of a cache's key that tells which faces it was made from,
    wherever they were read from."""
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def load_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache ``save_cache`` wrote; None when there is none or it cannot be read (it is
    then computed again)."""
    if not path.is_file():
        return None
    try:
        with _npz(path) as d:
            return {k: d[k] for k in d.files}
    except (OSError, ValueError):
        return None
