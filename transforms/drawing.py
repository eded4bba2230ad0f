"""Overlays (OpenCV, no Beam): face boxes with their emotion, age group and gender."""

from __future__ import annotations

import cv2
import numpy as np

from models.handler import FaceAttributes
from models.labels import EMOTIONS, GENDERS, age_group

__all__ = ["label_text", "draw_labelled_box", "draw_text"]

BOX_COLOUR = (0, 255, 0)
TEXT_COLOUR = (255, 255, 255)
LABEL_BACKGROUND = (40, 40, 40)
_FONT, _SCALE, _THICK = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1


def label_text(attrs: FaceAttributes, track_id: int | None = None) -> str:
    """The text drawn over a face, e.g. ``#3 happy | 20-29 | female`` (no ``#n`` without a track)."""
    emotion = EMOTIONS[int(np.argmax(attrs.emotion))]
    gender = GENDERS[1] if attrs.p_female >= 0.5 else GENDERS[0]
    prefix = f"#{track_id} " if track_id is not None else ""
    return f"{prefix}{emotion} | {age_group(attrs.age)} | {gender}"


def draw_labelled_box(bgr: np.ndarray, box, text: str, scale: float = 1.0) -> np.ndarray:
    """Draws the ``[x1, y1, x2, y2]`` box and ``text`` above it onto BGR uint8 ``bgr`` in place.

    ``scale`` enlarges line width and text for big pictures.
    """
    h, w = bgr.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = max(0, min(x1, w - 1)), max(0, min(x2, w - 1))
    y1, y2 = max(0, min(y1, h - 1)), max(0, min(y2, h - 1))
    cv2.rectangle(bgr, (x1, y1), (x2, y2), BOX_COLOUR, max(int(round(2 * scale)), 1))
    font_scale, thick = _SCALE * scale, max(int(round(_THICK * scale)), 1)
    (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, thick)
    # Above the box when there is room, otherwise just inside its top edge; kept inside the frame.
    pad = int(round(4 * scale))
    top = y1 - th - base - pad if y1 - th - base - pad >= 0 else y1 + 2
    left = max(0, min(x1, w - tw - pad))
    cv2.rectangle(bgr, (left, top), (left + tw + pad, top + th + base + pad), LABEL_BACKGROUND, cv2.FILLED)
    cv2.putText(bgr, text, (left + pad // 2, top + th + pad // 2), _FONT, font_scale, TEXT_COLOUR, thick,
                cv2.LINE_AA)
    return bgr


def draw_text(bgr: np.ndarray, text: str, origin: tuple[int, int]) -> np.ndarray:
    """Plain text (e.g. a frame rate) at ``origin`` (x, baseline y)."""
    cv2.putText(bgr, text, origin, _FONT, _SCALE, TEXT_COLOUR, _THICK, cv2.LINE_AA)
    return bgr
