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


def test_an_image_not_resized_under_keep_is_the_served_body() -> None:
    """`keep` re-encodes only what it resizes: an image --resize_only_if_bigger leaves alone was
    re-encoded all the same (an LA PNG grew 2.5x as RGBA, a WebP was compressed again)."""
    out = resize_body(_image(40, 20, "WEBP"), ResizeSettings(64, "keep_ratio", True, "keep"))
    assert out.as_served and out.body == b"" and (out.width, out.height, out.format) == (40, 20, "WEBP")
    assert not resize_body(_image(40, 20, "WEBP"), ResizeSettings(64, "keep_ratio", True, "png")).as_served


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_grey_image_keeps_its_tones(fmt: str) -> None:
    """RGB conversion clipped 16-bit values: a grey of mean 32,768 came out nearly white."""
    import numpy as np

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format=fmt)
    with Image.open(io.BytesIO(buf.getvalue())) as served:
        assert served.mode in ("I;16", "I")  # as Pillow reads a 16-bit grey
    out = resize_body(buf.getvalue(), ResizeSettings(16, "keep_ratio", False, "png"))
    with Image.open(io.BytesIO(out.body)) as img:
        grey = np.asarray(img.convert("L"), dtype=float)
    assert 100 < grey.mean() < 155 and grey[:, 0].max() < 20 and grey[:, -1].min() > 235


def test_an_exif_rotated_photo_is_stored_as_it_is_shown() -> None:
    """A photo stored 600x200 with EXIF orientation 6 is shown 200x600 (loaders apply it); resized,
    it kept its stored orientation and lost the tag, so it came out on its side."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (600, 200), (200, 30, 90)).save(buf, format="JPEG", exif=exif.tobytes())
    out = resize_body(buf.getvalue(), ResizeSettings(100, "keep_ratio", False, "jpg"))
    assert (out.width, out.height, out.original_width, out.original_height) == (100, 300, 200, 600)
    with Image.open(io.BytesIO(out.body)) as img:
        assert img.size == (100, 300) and img.getexif().get(0x0112, 1) == 1
