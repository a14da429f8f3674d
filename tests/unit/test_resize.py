"""Each resize mode's output size and each encode format, on real images made by Pillow."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from flowdc.resize import ResizeSettings, resize_body


def _image(w: int, h: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 90)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("mode", "only_if_bigger", "src", "size"), [
    ("no", False, (400, 200), (400, 200)),
    ("keep_ratio", False, (400, 200), (128, 64)),  # the smaller side becomes 64
    ("keep_ratio", False, (40, 20), (128, 64)),  # enlarged
    ("keep_ratio", True, (40, 20), (40, 20)),  # never enlarged
    ("keep_ratio_largest", False, (400, 200), (64, 32)),  # the larger side becomes 64
    ("center_crop", False, (400, 200), (64, 64)),
    ("center_crop", True, (40, 20), (40, 20)),
    ("border", False, (400, 200), (64, 64)),
    ("border", True, (40, 20), (40, 20)),
])
def test_each_mode_gives_its_size(mode: str, only_if_bigger: bool, src: tuple[int, int], size: tuple[int, int]) -> None:
    out = resize_body(_image(*src), ResizeSettings(64, mode, only_if_bigger, "jpg", 90))
    with Image.open(io.BytesIO(out.body)) as img:
        assert img.size == size == (out.width, out.height)
        assert img.format == out.format == "JPEG" and out.ext == ".jpg"
    assert (out.original_width, out.original_height) == src


def test_border_pads_with_black_and_center_crop_keeps_the_middle() -> None:
    bordered = resize_body(_image(400, 200), ResizeSettings(64, "border", False, "png"))
    with Image.open(io.BytesIO(bordered.body)) as img:
        assert img.getpixel((32, 0)) == (0, 0, 0) and img.getpixel((32, 32)) == (200, 30, 90)


@pytest.mark.parametrize(("fmt", "pil", "ext"), [("png", "PNG", ".png"), ("webp", "WEBP", ".webp"),
                                                 ("keep", "GIF", ".gif")])
def test_encode_formats(fmt: str, pil: str, ext: str) -> None:
    out = resize_body(_image(50, 40, "GIF"), ResizeSettings(32, "keep_ratio_largest", False, fmt, 80))
    with Image.open(io.BytesIO(out.body)) as img:
        assert img.format == pil and img.size == (32, 26)
    assert out.ext == ext


def test_a_corrupt_body_raises() -> None:
    with pytest.raises(Exception):  # noqa: B017 - whatever Pillow raises; the caller records not_decodable
        resize_body(_image(60, 60, "JPEG")[:300], ResizeSettings(32, "keep_ratio", False, "jpg"))


@pytest.mark.parametrize(("mode", "size"), [("keep_ratio", (128, 64)), ("center_crop", (64, 64)),
                                            ("keep_ratio_largest", (64, 32))])
def test_a_jpeg_shrunk_to_an_eighth_is_decoded_small_and_sized_exactly(mode: str, size: tuple[int, int]) -> None:
    """libjpeg decodes at reduced scale (draft) but never below the target: sizes stay exact, the
    original size is the served one, and the colour survives."""
    out = resize_body(_image(800, 400, "JPEG"), ResizeSettings(64, mode, False, "jpg", 90))
    assert (out.width, out.height, out.original_width, out.original_height) == (*size, 800, 400)
    with Image.open(io.BytesIO(out.body)) as img:
        assert img.size == size
        r, g, b = img.getpixel((size[0] // 2, size[1] // 2))
        assert abs(r - 200) < 8 and abs(g - 30) < 8 and abs(b - 90) < 8
