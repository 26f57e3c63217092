"""Load user images into plain 8-bit RGB, with errors a person can act on.

Uploads are whatever people have on disk: empty files, SVGs, renamed text files, half-downloaded
JPEGs, 16-bit PNGs, CMYK scans, transparent logos, phone photos stored sideways. Each becomes
either an RGB `PIL.Image` or one `ImageLoadError` whose message says what is wrong.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from inference.limits import DEFAULT_MAX_PIXELS

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class ImageLoadError(ValueError):
    """An input that cannot be used as an image; the message is meant for the user."""


class ImageTooLargeError(ImageLoadError):
    """An image refused for its pixel count, before decoding it: a limit of the server, not a broken file."""


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a path, bytes or binary file object into an RGB image.

    Animated images give their first frame; EXIF orientation is applied; transparency is
    composited on white. PIL's own decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`) still
    applies, so a `max_pixels` above it has no effect.
    """
    name, data = _read(source)
    if not data:
        raise ImageLoadError(f"{name} is empty (0 bytes).")
    if _looks_like_svg(name, data):
        raise ImageLoadError(f"{name} is an SVG (vector) image, which is not supported; convert it to PNG or JPEG.")

    with warnings.catch_warnings():
        # PIL only warns between its limit and twice its limit; make that a refusal too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise _refused_by_pil(name, error, max_pixels) from error
        except UnidentifiedImageError as error:
            raise ImageLoadError(
                f"{name} is not an image file that can be read (supported: PNG, JPEG, GIF, WebP, BMP, TIFF)."
            ) from error
        except (OSError, SyntaxError, ValueError, EOFError) as error:  # some formats decode while opening
            raise ImageLoadError(f"{name} is truncated or corrupt and cannot be decoded ({error}).") from error

        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{name} is {width}×{height} = {width * height / 1e6:.1f} megapixels, above the limit of "
                f"{max_pixels / 1e6:g} megapixels; downscale it first."
            )

        try:
            image.seek(0)  # animated GIF/WebP/APNG: the first frame
            image.load()  # decoding is lazy; force it so truncated files fail here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise _refused_by_pil(name, error, max_pixels) from error
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ImageLoadError(f"{name} is truncated or corrupt and cannot be decoded ({error}).") from error

    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as error:
        raise ImageLoadError(f"{name} has corrupt EXIF metadata ({error}).") from error
    return to_rgb(image)


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


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _high_bit_depth_to_rgb(image)
    if mode in ("P", "PA", "LA", "La", "RGBa", "RGBA"):
        # A palette may carry transparency, so P and PA go through RGBA like the alpha modes.
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, CMYK, YCbCr, ...
    except ValueError as error:
        raise ImageLoadError(f"images in PIL mode {mode!r} are not supported ({error}).") from error


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's own convert clips 16-bit values to 255, which turns most of the image white;
    # rescale the 16-bit range onto 8 bits instead (65535 / 257 = 255).
    if image.mode == "F":
        raise ImageLoadError("floating-point images (PIL mode 'F') are not supported; save as 8- or 16-bit.")
    values = np.asarray(image)
    scaled = np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")


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


def _looks_like_svg(name: str, data: bytes) -> bool:
    if name.lower().endswith((".svg", ".svgz")):
        return True
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<svg") or (head.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in head)
