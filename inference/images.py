"""Load user images into plain 8-bit RGB, with errors a person can act on.

Uploads are whatever people have on disk: empty files, SVGs, renamed text files, half-downloaded
JPEGs, 16-bit PNGs, CMYK scans, transparent logos, phone photos stored sideways. Each becomes
either an RGB `PIL.Image` or one `ImageLoadError` whose message says what is wrong.

Six formats are decoded, recognised by their bytes and never by the file name: PNG, JPEG, GIF (the first
frame), WebP, BMP and TIFF. Pillow is never asked to try another one: some delegate to external programs
(EPS and PostScript run Ghostscript), and Pillow's own security advice is to block them in the application.
Data that stop properly before the size their header declares are refused as truncated (`inference.coverage`),
instead of decoding as a black or grey picture.

`decode_image` decodes no more than a model needs: a JPEG through libjpeg's scaled decoding (`draft`), every
format by an integer box reduction made band by band while converting to RGB, so a 40-megapixel upload never
exists as a 40-megapixel RGB image; it also says when an image is almost one flat colour.
"""

from __future__ import annotations

import ctypes
import io
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageStat, UnidentifiedImageError

from inference.coverage import jpeg_data_cover_size, jpeg_without_end_marker, png_data_cover_size
from inference.limits import DEFAULT_MAX_PIXELS

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")  # Pillow's names; MPO photos open as JPEG
ACCEPTED_TEXT = "PNG, JPEG, GIF, WebP, BMP, TIFF"
# Formats recognised by their first bytes only to name them in the refusal; none is ever handed to a decoder.
REFUSED_SIGNATURES = (
    ((b"%!PS", b"\xc5\xd0\xd3\xc6"), "a PostScript/EPS file (decoding it would run Ghostscript, an external program)"),
    ((b"%PDF-",), "a PDF document"),
    ((b"8BPS",), "a Photoshop (PSD) file"),
    ((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"), "a JPEG 2000 image"),
    ((b"\x00\x00\x01\x00",), "a Windows icon (ICO)"),
    ((b"qoif",), "a QOI image"),
    ((b"DDS ",), "a DDS texture"),
)
ISO_MEDIA_BRANDS = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
TGA_FOOTER = b"TRUEVISION-XFILE.\x00"
ORIENTATIONS = {  # EXIF orientation → the transpose that makes the picture upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
BAND_PIXELS = 2**20  # source pixels converted to RGB at a time while reducing: a band, never the whole image
FLAT_STDDEV = 2.0  # grey levels: an image whose every channel varies less than this is "almost one flat colour"

# warnings.catch_warnings changes process-wide state; openings (header parsing only) take turns.
_OPENING = threading.Lock()


class ImageLoadError(ValueError):
    """An input that cannot be used as an image; the message is meant for the user."""


class ImageTooLargeError(ImageLoadError):
    """An image refused for its pixel count, before decoding it: a limit of the server, not a broken file."""


@dataclass
class DecodedImage:
    """An upload decoded for a model: 8-bit RGB and upright, possibly reduced."""

    image: Image.Image
    full_size: tuple[int, int]  # (width, height) of the upright picture at its own resolution
    factor: int  # source pixels per pixel of `image` along each side (1: not reduced)
    warning: str | None = None  # set when the picture is almost one flat colour


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a path, bytes or binary file object into an RGB image at its full size.

    Animated images give their first frame; EXIF orientation is applied; transparency is
    composited on white. PIL's own decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`) still
    applies, so a `max_pixels` above it has no effect.
    """
    return decode_image(source, max_pixels).image


def decode_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS,
                 keep_shorter_side: int | None = None) -> DecodedImage:
    """As `load_image`, reduced by the largest integer factor that keeps the shorter side at least
    `keep_shorter_side` pixels (None: not reduced), with a warning for an almost flat picture."""
    name, data = _read(source)
    _refuse_what_is_not_accepted(name, data)
    image = _open(name, data, max_pixels)
    _refuse_data_short_of_the_size(name, data, image)
    width, height = image.size
    draft_scale = _decode_scaled(image, keep_shorter_side)
    _load(name, image, max_pixels)
    orientation = _orientation(name, image)
    rgb, reduction = _reduced_rgb(name, image, keep_shorter_side)  # after draft: keeps as many pixels
    del image  # the decoded pixels at their own resolution: gone before the next image
    if orientation in ORIENTATIONS:
        rgb = rgb.transpose(ORIENTATIONS[orientation])
    full_size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # these four turn it a quarter
    return DecodedImage(rgb, full_size, draft_scale * reduction, _flat_warning(name, rgb))


@dataclass(frozen=True)
class Header:
    """What a file's header declares, read without decoding anything."""

    format: str | None  # Pillow's name of the format; None for a file that is not an accepted image
    pixels: int  # width × height; 0 when unknown

    @property
    def decodes_heavily(self) -> bool:
        """Whether decoding holds several copies of the pixels: libwebp decodes into two canvases of its own and
        Pillow copies the frame out twice, four times the RGBA image in all (the others hold about one)."""
        return self.format == "WEBP"


def read_header(source: ImageSource) -> Header:
    """The format and the declared pixel count of a path, bytes or file object (left where it was); a file that is
    not an accepted image gives Header(None, 0) (decoding it gives the reason)."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with Image.open(source, formats=ACCEPTED_FORMATS) as image:
                return Header(image.format, image.size[0] * image.size[1])
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(source)
        position = source.tell()
        try:
            with Image.open(source, formats=ACCEPTED_FORMATS) as image:
                return Header(image.format, image.size[0] * image.size[1])
        finally:
            source.seek(position)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Header(None, 0)  # unreadable, or refused for its size when decoded: neither costs a decode


def release_freed_memory() -> None:
    """Hand the memory that decoding freed back to the system. glibc keeps freed blocks in its arenas for reuse,
    so without this a server that once decoded a large batch stays that large; elsewhere there is nothing to do."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim():
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    except OSError:
        return None


_MALLOC_TRIM = _malloc_trim()


# --- Steps of decode_image ------------------------------------------------------------------------------


def _refuse_what_is_not_accepted(name: str, data: bytes) -> None:
    if not data:
        raise ImageLoadError(f"{name} is empty (0 bytes).")
    if _looks_like_svg(data):
        raise ImageLoadError(f"{name} is an SVG (vector) image, which is not supported; convert it to PNG or JPEG.")
    refused = _refused_format(data)
    if refused is not None:
        raise ImageLoadError(f"{name} is {refused}, which is not accepted (accepted: {ACCEPTED_TEXT}).")


def _open(name: str, data: bytes, max_pixels: int) -> Image.Image:
    """The image with its header read and its size checked; no pixel decoded yet."""
    with _OPENING, warnings.catch_warnings():
        # PIL only warns between its limit and twice its limit; make that a refusal too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(jpeg_without_end_marker(data)), formats=ACCEPTED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise _refused_by_pil(name, error, max_pixels) from error
        except UnidentifiedImageError as error:
            raise ImageLoadError(_not_an_image(name)) from error
        except (OSError, SyntaxError, ValueError, EOFError) as error:  # some formats decode while opening
            raise ImageLoadError(f"{name} is truncated or corrupt and cannot be decoded ({error}).") from error
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}×{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
            f"{max_pixels / 1e6:g} megapixels; downscale it first."
        )
    return image


def _refuse_data_short_of_the_size(name: str, data: bytes, image: Image.Image) -> None:
    check = {"PNG": png_data_cover_size, "JPEG": jpeg_data_cover_size, "MPO": jpeg_data_cover_size}.get(image.format)
    if check is not None and check(data) is False:
        width, height = image.size
        raise ImageLoadError(f"{name} is truncated or corrupt: its pixel data cover only part of the {width}×{height} "
                             "pixels its header declares.")


def _decode_scaled(image: Image.Image, keep_shorter_side: int | None) -> int:
    """Have libjpeg decode a JPEG at 1/2, 1/4 or 1/8 of its size when the shorter side keeps at least
    `keep_shorter_side` pixels; the scale it will decode at (1 for every other format)."""
    if keep_shorter_side is None or image.format not in ("JPEG", "MPO"):
        return 1
    if image.draft(None, (keep_shorter_side, keep_shorter_side)) is None:
        return 1
    return image.decoderconfig[0]  # draft's choice: (scale, 0)


def _load(name: str, image: Image.Image, max_pixels: int) -> None:
    try:
        image.seek(0)  # animated GIF/WebP/APNG, multi-page TIFF: the first frame
        image.load()  # decoding is lazy; force it so truncated files fail here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:  # a GIF frame's own size
        raise _refused_by_pil(name, error, max_pixels) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(f"{name} is truncated or corrupt and cannot be decoded ({error}).") from error


def _orientation(name: str, image: Image.Image) -> int:
    """The EXIF (or XMP) orientation, read from the opened file: a reduced copy no longer has the TIFF tags."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as error:
        raise ImageLoadError(f"{name} has corrupt EXIF metadata ({error}).") from error
    return orientation if orientation in ORIENTATIONS else 1


def _reduced_rgb(name: str, image: Image.Image, keep_shorter_side: int | None) -> tuple[Image.Image, int]:
    """8-bit RGB reduced by the largest integer factor that keeps the shorter side at least `keep_shorter_side`,
    converted band by band (the same pixels as converting the whole, then reducing); the factor used."""
    factor = 1 if not keep_shorter_side else max(1, min(image.size) // keep_shorter_side)
    convert = _rgb_converter(image, name)
    if factor == 1:
        return convert(image), 1
    width, height = image.size
    rows = max(1, BAND_PIXELS // (width * factor)) * factor
    reduced = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(height, top + rows)))
        reduced.paste(convert(band).reduce(factor), (0, top // factor))
    return reduced, factor


def _flat_warning(name: str, rgb: Image.Image) -> str | None:
    stats = ImageStat.Stat(rgb)
    if max(stats.stddev) >= FLAT_STDDEV:
        return None
    r, g, b = (round(channel) for channel in stats.mean)
    return (f"{name} is almost one flat colour (RGB {r}, {g}, {b}), as blank, fully transparent and one-pixel images "
            "are; the prediction says nothing about what it shows.")


# --- Modes --------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image, name: str = "The image") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency on white."""
    return _rgb_converter(image, name)(image)


def _rgb_converter(image: Image.Image, name: str):
    """The conversion for `image` and any band of it: high-bit-depth modes are scaled by one range for the whole
    image, so a band converts as it would inside the whole."""
    mode = image.mode
    if mode.startswith("I;16"):
        return lambda part: _scaled_to_rgb(part, 0, 65535)  # 16 bits declared: its full range, like 16-bit colour
    if mode in ("I", "F"):
        low, high = _value_range(name, image)
        return lambda part: _scaled_to_rgb(part, low, high)
    return lambda part: _eight_bit_to_rgb(name, part)


def _eight_bit_to_rgb(name: str, image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("P", "PA", "LA", "La", "RGBa", "RGBA"):
        # A palette may carry transparency, so P and PA go through RGBA like the alpha modes.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, CMYK, YCbCr, ...
    except ValueError as error:
        raise ImageLoadError(f"{name} is in PIL mode {mode!r}, which is not supported ({error}).") from error


def _value_range(name: str, image: Image.Image) -> tuple[float, float]:
    """Darkest and brightest value of a 32-bit integer or floating-point image, which declare no range of their own
    (their type's would turn them black); read band by band."""
    low, high = math.inf, -math.inf
    rows = max(1, BAND_PIXELS // max(1, image.size[0]))
    for top in range(0, image.size[1], rows):
        values = np.asarray(image.crop((0, top, image.size[0], min(image.size[1], top + rows))))
        if image.mode == "F" and not np.isfinite(values).all():
            raise ImageLoadError(f"{name} is a floating-point image with NaN or infinite values, which cannot be "
                                 "shown as colours; save it with finite values, or with 8 or 16 bits.")
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high


def _scaled_to_rgb(image: Image.Image, low: float, high: float) -> Image.Image:
    # PIL's own convert clips values above 255, which turns most of a 16-bit image white; map low..high onto
    # 0..255 instead (for 16 bits: 65535 / 255 = 257 per level).
    values = np.asarray(image, dtype=np.float64)
    per_level = (high - low) / 255 or 1.0  # a flat image: all black (and it gets the flat warning)
    scaled = np.clip(np.rint((values - low) / per_level), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")


# --- Reading and recognising the bytes -----------------------------------------------------------------


def _refused_by_pil(name: str, error: Exception, max_pixels: int) -> ImageTooLargeError:
    # PIL's guard fires inside Image.open, before we can read the size; its message holds the pixel count.
    # An image it refuses is above PIL's limit, so above the lower of PIL's and ours: name that one, in the
    # words of the check after opening (PIL's own message speaks of its limit and a "DOS attack").
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f" {int(found[1]) / 1e6:.1f} megapixels," if found else ""
    return ImageTooLargeError(
        f"{name} has too many pixels to decode safely:{size} above the limit of {limit / 1e6:g} megapixels; "
        "downscale it first."
    )


def _read(source: ImageSource) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "The image data", bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            return path.name, path.read_bytes()
        except FileNotFoundError as error:
            raise ImageLoadError(f"{path} does not exist.") from error
        except IsADirectoryError as error:
            raise ImageLoadError(f"{path} is a folder, not an image file.") from error
        except OSError as error:
            raise ImageLoadError(f"{path} cannot be read ({error.strerror or error}).") from error
    if hasattr(source, "read"):
        name = Path(str(getattr(source, "name", "The uploaded file"))).name
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("load_image needs a binary file object (opened with 'rb')")
        return name, bytes(data)
    raise TypeError(f"load_image expects a path, bytes or a binary file object, not {type(source).__name__}")


def _not_an_image(name: str) -> str:
    if name.lower().endswith((".svg", ".svgz")):  # the name only as a hint, once the bytes are no accepted image
        return f"{name} is an SVG (vector) image, which is not supported; convert it to PNG or JPEG."
    return f"{name} is not an image file that can be read (accepted: {ACCEPTED_TEXT})."


def _looks_like_svg(data: bytes) -> bool:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in head)


def _refused_format(data: bytes) -> str | None:
    for signatures, description in REFUSED_SIGNATURES:
        if data.startswith(signatures):
            return description
    if data[4:8] == b"ftyp" and data[8:12] in ISO_MEDIA_BRANDS:
        return "a HEIC/HEIF or AVIF image"
    if data.endswith(TGA_FOOTER):
        return "a TGA image"
    return None
