"""The images and zips the app hands to the browser, as files written whole."""

from __future__ import annotations

import collections
import io
import json
import tempfile
import threading
import zipfile
from pathlib import Path

from PIL import Image

from inference.service import png_bytes

KEPT_FILES = 1024  # thumbnails, generated images and zips kept on disk for the browser to fetch
THUMBNAIL_SIZE = (384, 384)
EXAMPLE_SIZE = 96  # pixels: the examples' thumbnails, enlarged pixel by pixel so a 32×32 picture stays crisp


class OutputFiles:
    """The images and zips the app returns, as files written whole under their own folder and handed to
    Gradio by path. Gradio copies a returned file into its cache atomically, but re-encodes a returned PIL
    image into a path named after its content and overwrites it in place: two requests returning the same
    picture then race, and a browser can fetch a half-written file (seen under bench/load_test.py as h11's
    "Too little data for declared Content-Length"). The oldest files are deleted beyond `keep`."""

    def __init__(self, keep: int = KEPT_FILES):
        self.folder = Path(tempfile.mkdtemp(prefix="longtail_app_"))
        self.keep = keep
        self._recent: collections.deque[Path] = collections.deque()
        self._lock = threading.Lock()

    def write(self, name: str, data: bytes) -> str:
        path = Path(tempfile.mkdtemp(dir=self.folder)) / name.replace("/", "_")
        path.write_bytes(data)
        with self._lock:
            self._recent.append(path)
            while len(self._recent) > self.keep:
                old = self._recent.popleft()
                old.unlink(missing_ok=True)
                old.parent.rmdir()
        return str(path)

    def image(self, image: Image.Image, name: str) -> str:
        """A PNG (lossless, so a generated image can be compared pixel for pixel)."""
        return self.write(f"{Path(name).stem}.png", png_bytes(image))

    def thumbnail(self, image: Image.Image, name: str) -> str:
        """A gallery-sized PNG of an upload: a large photo is not sent back to the browser whole."""
        small = image.copy()
        small.thumbnail(THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
        return self.image(small, name)

    def example_thumbnail(self, path: Path) -> str:
        """An example picture at EXAMPLE_SIZE: a small one enlarged without smoothing (nearest neighbour)."""
        with Image.open(path) as image:
            picture = image.convert("RGB")
        scale = max(1, EXAMPLE_SIZE // max(picture.size))
        enlarged = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
        enlarged.thumbnail((EXAMPLE_SIZE, EXAMPLE_SIZE), Image.Resampling.LANCZOS)
        return self.image(enlarged, path.name)


def zip_of(images: dict[str, Image.Image], record: dict) -> bytes:
    """PNGs by name plus generation.json, as the service's own zip of a generation."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, image in images.items():
            archive.writestr(name, png_bytes(image))
        archive.writestr("generation.json", json.dumps(record, indent=2))
    return buffer.getvalue()
