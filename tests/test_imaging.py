"""Tier 1: pure image helpers on small synthetic arrays."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import gradient_image
from transforms import imaging


def _encode(rgb, ext, **kw):
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [])
    assert ok
    return buf.tobytes()


def _pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def test_decode_png_roundtrip_is_rgb():
    rgb = gradient_image()
    out = imaging.decode_image(_encode(rgb, ".png"))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG"),
                                      ("CMYK", "JPEG"), ("RGB", "BMP"), ("RGB", "TIFF"), ("RGB", "WEBP"), ("1", "PNG")])
def test_decode_converts_every_mode_to_rgb(mode, fmt):
    base = Image.fromarray(gradient_image())
    img = base.convert("I;16") if mode == "I;16" else base.convert(mode)
    out = imaging.decode_image(_pil_bytes(img, fmt))
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8


def test_decode_sixteen_bit_keeps_brightness():
    arr = (np.arange(60, dtype=np.uint16)[None, :].repeat(40, 0) * 1000)
    ok, buf = cv2.imencode(".png", arr)
    out = imaging.decode_image(buf.tobytes())
    assert out[0, 59, 0] == 59000 >> 8


def test_decode_one_pixel_image():
    out = imaging.decode_image(_encode(np.full((1, 1, 3), 200, np.uint8), ".png"))
    assert out.shape == (1, 1, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_honours_exif_orientation(orientation):
    # A 40x60 picture with a bright top-left corner, stored with each EXIF orientation.
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:10, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(rgb).transpose(
        {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
         7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}[orientation]
    ) if orientation != 1 else Image.fromarray(rgb)
    out = imaging.decode_image(_pil_bytes(stored, "JPEG", exif=exif, quality=95))
    assert out.shape == (40, 60, 3)
    assert out[:10, :10].mean() > 200 and out[-10:, -10:].mean() < 50


def test_decode_errors_are_clear():
    with pytest.raises(imaging.ImageError, match="empty"):
        imaging.decode_image(b"")
    with pytest.raises(imaging.ImageError, match="not an image"):
        imaging.decode_image(b"hello, this is text\n" * 10)
    jpeg = _encode(gradient_image(), ".jpg")
    with pytest.raises(imaging.ImageError, match="truncated JPEG"):
        imaging.decode_image(jpeg[: len(jpeg) // 2])
    for cut in (3, 12, 30):  # inside the header
        with pytest.raises(imaging.ImageError):
            imaging.decode_image(jpeg[:cut])


def test_jpeg_with_data_after_its_end_is_read():
    """Cameras append data after the image (maker trailers, the video of a motion photo)."""
    rgb = gradient_image()
    jpeg = _encode(rgb, ".jpg")
    for trailer in (b"\0" * 200, b"....ftypmp42" + bytes(range(256)) * 40):
        assert not imaging.jpeg_truncated(jpeg + trailer)
        assert np.array_equal(imaging.decode_image(jpeg + trailer), imaging.decode_image(jpeg))
        assert imaging.jpeg_truncated(jpeg[: len(jpeg) - 40])


def test_decode_refuses_too_many_pixels_before_decoding():
    png = _pil_bytes(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(imaging.ImageError, match="max_pixels"):
        imaging.decode_image(png, max_pixels=1_000_000)


def test_detection_scale():
    assert imaging.detection_scale(1000, 800, 20, 0) == 1.0
    assert imaging.detection_scale(1000, 800, 40, 0) == 0.5
    assert imaging.detection_scale(4000, 3000, 20, 2000) == 0.5
    assert imaging.detection_scale(400, 300, 10, 0) == 2.0
    # without a cap, a small minimum enlarges only up to MAX_ENLARGED_SIDE, and never shrinks
    assert imaging.detection_scale(4000, 3000, 1, 0) == imaging.MAX_ENLARGED_SIDE / 4000
    assert imaging.detection_scale(8000, 6000, 1, 0) == 1.0
    assert imaging.detection_scale(8000, 6000, 40, 0) == 0.5


def test_align_puts_eyes_on_template():
    image = np.zeros((200, 300, 3), np.uint8)
    left, right = (120.0, 90.0), (170.0, 110.0)  # tilted face
    for x, y in (left, right):
        cv2.circle(image, (int(x), int(y)), 3, (255, 255, 255), -1)
    crop = imaging.align_face(image, np.array([left, right]), 128, imaging.CANONICAL)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    t = imaging.CANONICAL
    expected_x = sorted([128 * (0.5 - t.eye_distance / 2), 128 * (0.5 + t.eye_distance / 2)])
    left_blob = xs < 64
    assert abs(xs[left_blob].mean() - expected_x[0]) < 2
    assert abs(xs[~left_blob].mean() - expected_x[1]) < 2
    assert abs(ys.mean() - 128 * t.eye_y) < 2


def test_align_matrix_is_similarity():
    m = imaging.align_matrix((10, 10), (30, 10), 100, imaging.AlignTemplate(0.4, 0.5))
    np.testing.assert_allclose(m @ [10, 10, 1], [30, 50])
    np.testing.assert_allclose(m @ [30, 10, 1], [70, 50])
    with pytest.raises(ValueError):
        imaging.align_matrix((5, 5), (5, 5), 100, imaging.CANONICAL)


def test_shrinking_big_faces_is_area_averaged():
    # A fine checkerboard shrunk 8x must average to grey, not alias to black or white.
    board = (np.indices((1024, 1024)).sum(0) % 2 * 255).astype(np.uint8)
    rgb = np.repeat(board[..., None], 3, -1)
    eyes = np.array([[512 - 150.0, 450.0], [512 + 150.0, 450.0]])
    crop = imaging.align_face(rgb, eyes, 128, imaging.AlignTemplate(0.3, 0.4))
    assert abs(float(crop.mean()) - 127.5) < 10 and crop.std() < 20


def test_retarget_matches_direct_alignment():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8), (9, 9), 3)
    eyes = np.array([[120.0, 130.0], [180.0, 132.0]])
    canonical = imaging.align_face(image, eyes)
    target = imaging.AlignTemplate(0.368, 0.385)
    via = imaging.retarget(canonical, 48, target).astype(float)
    direct = imaging.align_face(image, eyes, 48, target).astype(float)
    assert np.abs(via - direct).mean() < 6


def test_box_eyes_inside_box():
    eyes = imaging.box_eyes(np.array([10.0, 20.0, 110.0, 140.0]), "haar")
    assert (eyes[:, 0] > 10).all() and (eyes[:, 0] < 110).all() and eyes[0, 0] < eyes[1, 0]


@pytest.mark.parametrize("ext", [".hdr", ".pfm", ".pam"])
def test_content_whose_size_no_header_tells_is_refused_not_decoded(ext):
    # OpenCV decodes these by content under any name, and none has a header read here: --max_pixels
    # could not be checked, so they are refused.
    rgb = gradient_image(30, 40)
    ok, buf = cv2.imencode(ext, rgb.astype(np.float32) / 255 if ext == ".pfm" else rgb)
    assert ok and cv2.imdecode(buf, cv2.IMREAD_COLOR) is not None
    assert imaging.probe_image_size(buf.tobytes()) is None
    with pytest.raises(imaging.ImageError, match="not an image in a supported format|not an image: the file holds"):
        imaging.decode_image(buf.tobytes())

