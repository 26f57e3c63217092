"""load_image: every kind of bad upload gets a clear ImageLoadError; every mode becomes RGB."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from inference.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, to_rgb


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header but holds no pixel data (PIL checks size on open)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def gradient(width=64, height=48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    pixels = np.stack([np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)), np.full((height, width), 77, np.uint8)], -1)
    return Image.fromarray(pixels)


# --- bad inputs -----------------------------------------------------------------------------


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty.jpg is empty \(0 bytes\)"):
        load_image(path)


def test_text_renamed_to_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: milk, eggs\n")
    with pytest.raises(ImageLoadError, match="notes.jpg is not an image file"):
        load_image(path)


@pytest.mark.parametrize("name", ["drawing.svg", "drawing.png"])
def test_svg_is_refused_with_advice(tmp_path, name):
    path = tmp_path / name
    path.write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    with pytest.raises(ImageLoadError, match="SVG.*not supported.*PNG or JPEG"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt):
    data = encode(gradient(256, 256), fmt)
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_too_many_pixels_for_the_explicit_limit():
    data = encode(Image.new("L", (2000, 1000)), "PNG")
    with pytest.raises(ImageLoadError, match=r"2000×1000 = 2.0 megapixels, above the limit of 1 megapixels"):
        load_image(data, max_pixels=1_000_000)
    assert load_image(data, max_pixels=2_000_000).size == (2000, 1000)
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_default_limit_is_40_megapixels():
    with pytest.raises(ImageLoadError, match="above the limit of 40 megapixels"):
        load_image(png_header_only(8000, 6000))


@pytest.mark.parametrize("side", [10_000, 20_000])  # PIL warns above 89 MP, raises above 179 MP
def test_pil_decompression_bomb_guard_becomes_image_load_error(side):
    limit_before = Image.MAX_IMAGE_PIXELS
    filters_before = list(warnings.filters)
    with pytest.raises(ImageLoadError, match="too many pixels"):
        load_image(png_header_only(side, side), max_pixels=10**12)
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert warnings.filters == filters_before


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.png")


# --- sources, frames, orientation -------------------------------------------------------------


def test_path_bytes_and_file_object_give_the_same_image(tmp_path):
    data = encode(gradient(), "PNG")
    path = tmp_path / "g.png"
    path.write_bytes(data)
    from_path, from_str = load_image(path), load_image(str(path))
    from_bytes, from_file = load_image(data), load_image(io.BytesIO(data))
    for image in (from_path, from_str, from_bytes, from_file):
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(gradient()))


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    image = load_image(data)
    assert image.mode == "RGB"
    assert image.getpixel((8, 8)) == (255, 0, 0)


def test_exif_orientation_is_applied():
    # 40 wide, 20 high, red on the left half; orientation 6 means "rotate 90° clockwise to view".
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(encode(stored, "PNG", exif=exif))
    assert image.size == (20, 40)
    assert image.getpixel((10, 5))[0] > 200  # the left half is now on top
    assert image.getpixel((10, 35))[2] > 200


# --- modes ----------------------------------------------------------------------------------


def test_cmyk_jpeg():
    image = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    assert image.mode == "RGB"
    r, g, b = image.getpixel((4, 4))
    assert r > 230 and g < 25 and b < 25


def test_16_bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 32896, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = load_image(data)
    assert image.mode == "RGB"
    assert np.asarray(image)[0, :, 0].tolist() == [0, 100, 128, 255]


def test_palette_with_transparency_goes_on_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    loaded = load_image(encode(image, "PNG", transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 1)) == (0, 255, 0)


def test_pa_mode():
    image = Image.new("PA", (4, 4))
    image.putpalette([0, 0, 255] + [0] * 765)
    image.putpixel((0, 0), (0, 255))
    image.putpixel((1, 0), (0, 0))
    rgb = to_rgb(image)
    assert rgb.getpixel((0, 0)) == (0, 0, 255)
    assert rgb.getpixel((1, 0)) == (255, 255, 255)


def test_rgba_composited_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.putpixel((1, 0), (255, 0, 0, 0))
    image.putpixel((2, 0), (0, 0, 0, 128))
    loaded = load_image(encode(image, "PNG"))
    assert loaded.getpixel((0, 0)) == (255, 0, 0)
    assert loaded.getpixel((1, 0)) == (255, 255, 255)
    assert all(120 <= channel <= 135 for channel in loaded.getpixel((2, 0)))


def test_la_composited_on_white():
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 255))
    image.putpixel((1, 0), (0, 0))
    loaded = load_image(encode(image, "PNG"))
    assert loaded.getpixel((0, 0)) == (0, 0, 0)
    assert loaded.getpixel((1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode, value, expected", [("L", 90, (90, 90, 90)), ("1", 1, (255, 255, 255))])
def test_greyscale_and_bilevel(mode, value, expected):
    loaded = load_image(encode(Image.new(mode, (5, 5), value), "PNG"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((2, 2)) == expected
