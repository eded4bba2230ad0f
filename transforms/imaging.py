"""Pure image helpers (numpy + OpenCV): decoding, scaling, boxes, face alignment and crops.

No Beam and no TensorFlow here. Images are RGB uint8 arrays of shape (H, W, 3); boxes are
``[x1, y1, x2, y2]`` float pixels; landmarks are (5, 2) float pixels in MTCNN's order
(left eye, right eye, nose, mouth left, mouth right), "left" meaning the left of the picture.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Iterator, NamedTuple

import cv2
import numpy as np

__all__ = [
    "ImageError",
    "AlignTemplate",
    "CANONICAL",
    "CANONICAL_SIZE",
    "EMOTION_TEMPLATE",
    "AGE_GENDER_TEMPLATE",
    "decode_image",
    "MAX_ENLARGED_SIDE",
    "describe_content",
    "header_size",
    "png_problem",
    "probe_image_size",
    "detection_scale",
    "resize_by",
    "box_eyes",
    "align_matrix",
    "align_face",
    "retarget",
    "to_grey",
    "encode_jpeg",
]


class ImageError(ValueError):
    """An input that is not a usable image; the message says why."""


class AlignTemplate(NamedTuple):
    """Where the eyes sit in an aligned square crop, as fractions of its side.

    ``eye_distance``: distance between the eye centres; ``eye_y``: height of the eye line;
    the eye midpoint is centred horizontally.
    """

    eye_distance: float
    eye_y: float


# Templates measured with MTCNN's eye landmarks on the training data (median over ~300 faces each):
# FER2013 PublicTest (48x48, upscaled 4x): eye distance 0.368, eye line 0.385;
# UTKFace aligned crops (128x128): eye distance 0.391, eye line 0.289.
EMOTION_TEMPLATE = AlignTemplate(eye_distance=0.368, eye_y=0.385)
AGE_GENDER_TEMPLATE = AlignTemplate(eye_distance=0.391, eye_y=0.289)
# The crop handed between transforms: wider than both model templates so each can be cut from it.
CANONICAL = AlignTemplate(eye_distance=0.30, eye_y=0.40)
CANONICAL_SIZE = 128

# Eye positions inside a detector's box when it gives no landmarks, as fractions of the box:
# (eye midpoint x, eye midpoint y, eye distance / box width). MTCNN's boxes measure (0.51, 0.34, 0.47)
# on the training data; Haar's frontal-face boxes are looser around the face.
BOX_EYES = {"mtcnn": (0.506, 0.34, 0.47), "haar": (0.5, 0.38, 0.40)}

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Leading bytes ("magic numbers") of the formats worth naming in an error message.
_MAGIC = (
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, _PNG_SIGNATURE, "a PNG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (4, b"ftyp", "an MP4/QuickTime video"),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"\x1f\x8b", "a gzip archive"),
)


def describe_content(head: bytes) -> str | None:
    """What the first bytes of a file look like, for error messages ('a PNG image', 'HTML', 'text', ...).

    None when nothing is recognised. Only the leading bytes are looked at (a few hundred suffice).
    """
    if not head:
        return "nothing (0 bytes)"
    for offset, magic, name in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    if head.startswith(b"RIFF") and head[8:12] in (b"WEBP", b"AVI "):
        return "a WebP image" if head[8:12] == b"WEBP" else "an AVI video"
    # BMP: "BM", then the file size, then two reserved 16-bit fields that must be zero.
    if head.startswith(b"BM") and head[6:10] == b"\x00\x00\x00\x00":
        return "a BMP image"
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", errors="replace")
    if text.count("\ufffd") > 2:  # a multi-byte character cut at the end is allowed for
        return None
    lower = text.lstrip("\ufeff \t\r\n").lower()
    if lower.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in lower:
        return "HTML"
    if lower.startswith("<?xml") or lower.startswith("<svg"):
        return "XML"
    return "text"


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by a PNG or JPEG header, read without decoding; None for other data.

    Read by hand rather than by Pillow so that a header declaring billions of pixels is measured
    against ``--max_pixels`` instead of Pillow's own fixed limit.
    """
    if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return (width, height) if width and height else None
    if data.startswith(_JPEG_SOI):
        return _jpeg_size(data)
    return None


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, offset, length) of the segments of a JPEG header (ITU T.81 B.1.1), up to and
    including the first start-of-scan or end-of-image marker; stops early at a corrupt header."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return  # not at a marker: a corrupt header
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker == 0xD9:
            yield marker, i, 0
            return
        length = int.from_bytes(data[i + 2:i + 4], "big")
        yield marker, i, length
        if marker == 0xDA or length < 2:
            return
        i += 2 + length


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Size from the first SOFn segment of a JPEG (ITU T.81 B.2.2); None if none comes before the scan."""
    for marker, i, _ in _jpeg_segments(data):
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return (width, height) if width and height else None
    return None


def jpeg_truncated(data: bytes) -> bool:
    """True for a JPEG whose image data has no end-of-image marker after its first scan.

    Looked for after the scan, not at the end of the file, as cameras append data after the
    image (maker trailers, the video of a motion photo). In the compressed data a 0xFF byte is
    always followed by 0x00 or a restart marker, so the marker cannot occur there by chance.
    """
    last = None
    for last in _jpeg_segments(data):
        pass
    if last is None:
        return len(data) < 8  # cut inside the first segment's header
    marker, i, length = last
    if marker == 0xDA:
        return data.find(_JPEG_EOI, i) < 0
    # The header ends early: cut inside a segment (truncated), or a corrupt byte (the decoder says).
    return marker != 0xD9 and i + 2 + length + 4 > len(data)


def png_problem(data: bytes) -> str | None:
    """Why a PNG is unreadable, from its chunk structure: a bad CRC, a chunk cut short, no IEND.

    None when the structure is sound or the data is not a PNG. Each chunk's CRC covers its type
    and data (PNG specification, section 5.3).
    """
    if not data.startswith(_PNG_SIGNATURE):
        return None
    view = memoryview(data)
    i, n = len(_PNG_SIGNATURE), len(data)
    while i + 8 <= n:
        length, ctype = struct.unpack(">I4s", view[i:i + 8])
        name = ctype.decode("latin-1")
        end = i + 12 + length
        if end > n:
            return f"truncated PNG: chunk {name!r} is cut short ({n - i - 8} of {length + 4} bytes present)"
        if zlib.crc32(view[i + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            return f"corrupt PNG: chunk {name!r} has a bad CRC"
        if ctype == b"IEND":
            return None
        i = end
    return "truncated PNG: the file ends before the IEND chunk"


def probe_image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header without decoding pixels, or None if unknown.

    PNG and JPEG headers are read here; other formats by Pillow, which only reads their header.
    Pillow's own pixel limit is turned off: the caller measures the size against ``--max_pixels``.
    """
    size = header_size(data)
    if size is not None:
        return size
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # facebeam uses Pillow only here, to read headers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.size
        except Exception:  # unknown to Pillow: OpenCV decides below
            return None


def decode_image(data: bytes, max_pixels: int = 100_000_000) -> np.ndarray:
    """Decodes image bytes to RGB uint8 (H, W, 3), upright per EXIF.

    Grey, palette, alpha, 16-bit and CMYK inputs are converted. Raises ImageError for empty,
    truncated, oversized or non-image data, and for data whose size no header tells (so
    ``max_pixels`` could not be checked), before decoding pixels where the header tells.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    size = probe_image_size(data)
    if size is None:
        # OpenCV also decodes formats facebeam does not read (Radiance HDR, PFM, PAM, by content, whatever
        # the file's name), some of them run-length coded: a few MB can declare a picture of gigapixels.
        # What has no header Pillow or this module can read is refused rather than decoded unchecked.
        raise ImageError(_decode_failure(data, None))
    if size[0] * size[1] > max_pixels:
        raise ImageError(f"image of {size[0]}x{size[1]} pixels exceeds --max_pixels={max_pixels}; "
                         "refused before decoding (raise the limit to read it)")
    if data.startswith(_JPEG_SOI) and jpeg_truncated(data):
        # libjpeg decodes a cut-off JPEG into a half-grey picture with only a warning.
        raise ImageError("truncated JPEG (no end-of-image marker)")
    # IMREAD_COLOR applies the EXIF orientation and converts grey/alpha/16-bit/CMYK/palette to 8-bit BGR.
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(_decode_failure(data, size))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_failure(data: bytes, size: tuple[int, int] | None) -> str:
    """The most specific reason we can give for data the decoder refused, or whose size no header tells."""
    problem = png_problem(data)
    if problem:
        return problem
    content = describe_content(data[:512])
    if content and "image" not in content:
        return f"not an image: the file holds {content}"
    if size is not None or content:
        return f"corrupt or truncated image ({content or 'header readable'}): its header or pixels could not be read"
    return "not an image in a supported format (JPEG, PNG, BMP, TIFF, WebP): no header of one was found"


# The longest side of an enlarged copy for detection when --detect_max_side is 0 (50 MB of RGB).
MAX_ENLARGED_SIDE = 4096


def detection_scale(width: int, height: int, min_face_size: float, max_side: int, detector_min_face: float = 20.0) -> float:
    """Scale at which to run the detector.

    Faces of ``min_face_size`` original pixels land on the detector's own minimum
    (``detector_min_face``): bigger minimums shrink the image (faster), smaller ones enlarge it.
    The longest side is capped at ``max_side``; with no cap (0) the image is never shrunk, and an
    enlarged copy's longest side stays within ``MAX_ENLARGED_SIDE`` (a 1 px minimum would otherwise
    enlarge a 4000x3000 photo 20 times, to 14 GB).
    """
    scale = detector_min_face / max(float(min_face_size), 1.0)
    longest = max(width, height)
    if max_side and longest * scale > max_side:
        scale = max_side / longest
    elif not max_side and scale > 1.0 and longest * scale > MAX_ENLARGED_SIDE:
        scale = max(MAX_ENLARGED_SIDE / longest, 1.0)
    return scale


def resize_by(image: np.ndarray, scale: float) -> np.ndarray:
    """The image scaled by ``scale`` (area interpolation when shrinking)."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def box_eyes(box: np.ndarray, detector: str) -> np.ndarray:
    """Estimated (2, 2) eye centres for a ``[x1, y1, x2, y2]`` box when a detector gives no landmarks."""
    mx, my, dist = BOX_EYES.get(detector, BOX_EYES["haar"])
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy, half = x1 + mx * w, y1 + my * h, dist * w / 2
    return np.array([[cx - half, cy], [cx + half, cy]], np.float64)


def align_matrix(left_eye, right_eye, size: int, template: AlignTemplate) -> np.ndarray:
    """2x3 similarity transform taking the eyes to the template's positions in a ``size`` square."""
    src = np.array([left_eye, right_eye], np.float64)
    dst = np.array([
        [size * (0.5 - template.eye_distance / 2), size * template.eye_y],
        [size * (0.5 + template.eye_distance / 2), size * template.eye_y],
    ])
    # Similarity from two point pairs in complex form: z' = a z + b.
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    if abs(zs[1] - zs[0]) < 1e-6:
        raise ValueError("eye positions coincide; cannot align")
    a = (zd[1] - zd[0]) / (zs[1] - zs[0])
    b = zd[0] - a * zs[0]
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def align_face(image: np.ndarray, eyes: np.ndarray, size: int = CANONICAL_SIZE,
               template: AlignTemplate = CANONICAL) -> np.ndarray:
    """Upright face crop (size, size, C) with the eyes at the template's positions."""
    return _warp(image, align_matrix(eyes[0], eyes[1], size, template), size)


def retarget(crop: np.ndarray, size: int, template: AlignTemplate, source: AlignTemplate = CANONICAL) -> np.ndarray:
    """Re-frames an aligned crop made with ``source`` to ``template`` at ``size`` pixels."""
    n = crop.shape[0]
    eyes = np.array([
        [n * (0.5 - source.eye_distance / 2), n * source.eye_y],
        [n * (0.5 + source.eye_distance / 2), n * source.eye_y],
    ])
    return _warp(crop, align_matrix(eyes[0], eyes[1], size, template), size)


def _warp(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """warpAffine into a ``size`` square; when shrinking, the covered region is first area-averaged.

    Bilinear sampling alone aliases when a big face shrinks several times into a small crop.
    """
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    if scale < 0.75:
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inv.T
        h, w = image.shape[:2]
        x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, [w, h])
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            region = image[y0:y1, x0:x1]
            small = cv2.resize(region, (max(int(round((x1 - x0) * scale)), 1), max(int(round((y1 - y0) * scale)), 1)),
                               interpolation=cv2.INTER_AREA)
            sx, sy = small.shape[1] / region.shape[1], small.shape[0] / region.shape[0]
            m = np.column_stack([m[:, 0] / sx, m[:, 1] / sy, m @ np.array([x0, y0, 1.0])])
            image = small
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buf.tobytes()


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luminance of an RGB image (ITU-R BT.601 weights, as FER2013's grey images)."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
