"""The image signature check: real encoders' output passes, pages and other files do not."""

from __future__ import annotations

import io

import pytest
from PIL import Image, features

from flowdc.imagesig import SNIFF_BYTES, image_format_ok
from flowdc.testing.fakehosts import HTML_PAGE, make_png

FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "JPEG2000", "AVIF", "PPM"]


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_images_from_real_encoders_pass(fmt: str) -> None:
    """What Pillow writes in each format starts with a signature the check knows."""
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF encoder")
    body = encoded(fmt)
    assert image_format_ok(body[:SNIFF_BYTES], "image/whatever")


def test_heif_and_jpeg_xl_headers_pass() -> None:
    """HEIC (an ISO BMFF ftyp box with a HEIF brand, major or compatible) and JPEG XL (bare
    codestream or container) need no encoder to be recognised by their first bytes."""
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    compatible = b"\x00\x00\x00\x1cftypXXXX\x00\x00\x00\x00isommif1miaf" + bytes(64)
    assert image_format_ok(heic) and image_format_ok(compatible)
    assert image_format_ok(b"\xff\x0a\xfa\x7f" + bytes(8))
    assert image_format_ok(b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(8))


@pytest.mark.parametrize("body", [
    HTML_PAGE,
    b"\n\n  <html><body>rate limited</body></html>",
    b'{"error": "forbidden"}',
    b"Access Denied",
    b"P5 tickets left",  # text that starts like Netpbm but is not
    b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isommp42" + bytes(64),  # an MP4 video
    b"%PDF-1.7\n",
    b"PK\x03\x04",  # a zip
    b"",
])
def test_other_bodies_fail(body: bytes) -> None:
    assert not image_format_ok(body[:SNIFF_BYTES], "image/jpeg")


def test_svg_only_when_served_as_svg() -> None:
    """SVG is XML text: it passes as image/svg+xml with an <svg> element, never as another type,
    and an HTML page served as image/svg+xml does not pass."""
    svg = b'<?xml version="1.0"?>\n<!-- made by hand -->\n<svg xmlns="http://www.w3.org/2000/svg"/>'
    assert image_format_ok(svg, "image/svg+xml")
    assert not image_format_ok(svg, "image/png")
    assert not image_format_ok(HTML_PAGE, "image/svg+xml")


def test_fake_host_images_pass() -> None:
    assert image_format_ok(make_png("/x.png", 4096)[:SNIFF_BYTES], "image/png")
