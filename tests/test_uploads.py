"""Every kind of file people upload, through every upload path: the app's classify function (and once through a
launched Gradio server), POST /v1/classify on a real uvicorn server, and `python -m inference predict`.

One table: each case builds its file and says what must come of it, either an error message (a substring) or
a prediction whose class probabilities equal those of a reference image (an animated GIF's are its first
frame's, a 16-bit PNG's its 8-bit equivalent's, an RGBA PNG's its composite on white's, ...). Every path gets
every case; over HTTP, /healthz must answer after each upload. Pixel limits are the defaults (40 megapixels).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from inference.classifier import OnnxClassifier
from tests.helpers_onnx import make_card
from tests.helpers_servers import gradio_launched
from tests.helpers_uploads import (
    MODEL,
    app_handlers_over,
    encode,
    http_client,
    picture,
    png_chunk,
    reference_records,
    tiny_model_folder,
    write_uploads,
)

TOO_LARGE = "above the limit of 40 megapixels"


# --- Building the files -----------------------------------------------------------------------------


def png_by_hand(width: int, height: int, bit_depth: int, colour_type: int, row: bytes | None,
                palette: bytes | None = None) -> bytes:
    """A PNG of `height` copies of `row` (None: no pixel data at all), compressed row by row, so a file that
    declares a billion pixels costs a fraction of a second and about 100 kB."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
    chunks = [header] + ([png_chunk(b"PLTE", palette)] if palette else [])
    if row is not None:
        compressor = zlib.compressobj(9)
        data = b"".join(compressor.compress(b"\0" + row) for _ in range(height)) + compressor.flush()
        chunks.append(png_chunk(b"IDAT", data))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + png_chunk(b"IEND", b"")


def on_white(image: Image.Image) -> Image.Image:
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


# Each builder returns the file's bytes and, for a file that must be classified, the reference image whose
# probabilities it must give.
Built = tuple[bytes, Image.Image | None]


def empty() -> Built:
    return b"", None


def truncated_png() -> Built:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    return data[: len(data) // 2], None


def truncated_jpeg() -> Built:
    data = encode(picture(64, 64), "JPEG", quality=95)
    return data[: len(data) // 2], None


def text_renamed_jpg() -> Built:
    return b"shopping list: milk, eggs, flour\n", None


def svg() -> Built:
    return b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', None


def svg_named_png() -> Built:
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="5" height="5"/></svg>', None


def animated_gif() -> Built:
    frames = [picture().quantize(64), picture().transpose(Image.Transpose.ROTATE_180).quantize(64)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return data, frames[0].convert("RGB")


def cmyk_jpeg() -> Built:
    # PIL's CMYK conversions are the naive ones, so only JPEG's loss separates the result from the original.
    return encode(picture().convert("CMYK"), "JPEG", quality=95), picture()


def grey_16_bit_png() -> Built:
    grey = np.asarray(picture())[..., 0]
    return encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), Image.fromarray(grey, "L")


def rgb_16_bit_png() -> Built:
    pixels = np.asarray(picture())
    row_major = (pixels.astype(">u2") * 257).reshape(pixels.shape[0], -1)
    rows = b"".join(b"\0" + row.tobytes() for row in row_major)
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 16, 2, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")
    return data, picture()


def palette_png() -> Built:
    image = picture().quantize(16)
    return encode(image, "PNG"), image.convert("RGB")


def palette_png_with_transparency() -> Built:
    image = picture().quantize(16)
    transparent = int(np.asarray(image)[0, 0])  # the red block's colour
    reference = np.asarray(image.convert("RGB")).copy()
    reference[np.asarray(image) == transparent] = 255
    return encode(image, "PNG", transparency=transparent), Image.fromarray(reference)


def rgba_png() -> Built:
    rgba = picture().convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))))
    return encode(rgba, "PNG"), on_white(rgba)


def greyscale_png() -> Built:
    grey = np.asarray(picture())[..., 1]
    return encode(Image.fromarray(grey, "L"), "PNG"), Image.fromarray(np.stack([grey] * 3, -1))


def exif_rotated_jpeg() -> Built:
    """Stored sideways (40×24) with Orientation 6, "rotate 90° clockwise to view": upright it is 24×40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(picture(24, 40).transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    decoded = Image.open(io.BytesIO(data)).convert("RGB")  # the same decoding, without the orientation
    return data, decoded.transpose(Image.Transpose.ROTATE_270)


def bomb_1_bit_png() -> Built:
    """A real 30000×30000 black 1-bit PNG, about 110 kB: 900 megapixels, 3.6 GB as RGBA."""
    return png_by_hand(30_000, 30_000, 1, 0, bytes(30_000 // 8)), None


def huge_palette_png() -> Built:
    """8000×6000: 48 megapixels, above our limit but below PIL's own guard (89 megapixels)."""
    return png_by_hand(8000, 6000, 8, 3, bytes(8000), palette=b"\0\0\0"), None


def header_claims_huge() -> Built:
    """An IHDR that claims 100000×100000 and no pixel data at all."""
    return png_by_hand(100_000, 100_000, 1, 0, None), None


def long_strip_png() -> Built:
    """100000×1: a tenth of a megapixel, but resizing its short side to the model's 36 would make it
    3,600,000×36. The centre, all the crop sees, is green; the ends are red."""
    strip = Image.new("P", (100_000, 1), 0)
    strip.putpalette([30, 160, 90, 220, 40, 40])
    strip.paste(1, (0, 0, 1000, 1))
    strip.paste(1, (99_000, 0, 100_000, 1))
    return encode(strip, "PNG"), Image.new("RGB", (32, 32), (30, 160, 90))


@dataclass(frozen=True)
class Case:
    id: str
    file_name: str
    build: Callable[[], Built]
    error: str | None = None  # a substring of the error message; None: the file is classified
    too_large: bool = False  # refused for its pixel count: the whole HTTP request is a 413
    atol: float = 0.0  # on each class probability against the reference image's; 0: exactly equal

    def __str__(self) -> str:
        return self.id


CASES = [
    Case("empty", "empty.png", empty, error="empty.png is empty (0 bytes)"),
    Case("truncated-png", "cut.png", truncated_png, error="cut.png is truncated or corrupt"),
    Case("truncated-jpeg", "cut.jpg", truncated_jpeg, error="cut.jpg is truncated or corrupt"),
    Case("text-renamed-jpg", "notes.jpg", text_renamed_jpg, error="notes.jpg is not an image file"),
    Case("svg", "drawing.svg", svg, error="drawing.svg is an SVG (vector) image, which is not supported"),
    Case("svg-named-png", "drawing.png", svg_named_png, error="drawing.png is an SVG (vector) image"),
    Case("animated-gif", "animated.gif", animated_gif),
    Case("cmyk-jpeg", "cmyk.jpg", cmyk_jpeg, atol=1e-3),
    Case("16-bit-grey-png", "grey16.png", grey_16_bit_png),
    Case("16-bit-rgb-png", "rgb16.png", rgb_16_bit_png),
    Case("palette-png", "palette.png", palette_png),
    Case("palette-png-transparent", "palette_transparent.png", palette_png_with_transparency),
    Case("rgba-png", "rgba.png", rgba_png),
    Case("greyscale-png", "grey.png", greyscale_png),
    Case("exif-rotated-jpeg", "sideways.jpg", exif_rotated_jpeg),
    Case("bomb-30000x30000", "bomb.png", bomb_1_bit_png, error=f"bomb.png has too many pixels to decode safely: "
                                                              f"900.0 megapixels, {TOO_LARGE}", too_large=True),
    Case("huge-8000x6000", "huge.png", huge_palette_png, error=f"huge.png is 8000×6000 = 48.0 megapixels, {TOO_LARGE}",
         too_large=True),
    Case("header-claims-100000x100000", "claims.png", header_claims_huge,
         error=f"claims.png has too many pixels to decode safely: 10000.0 megapixels, {TOO_LARGE}", too_large=True),
    Case("long-strip-100000x1", "strip.png", long_strip_png),
]
BY_ID = {case.id: case for case in CASES}


# --- Fixtures: the files, the model, the servers ---------------------------------------------------


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, Path]:
    return write_uploads(tmp_path_factory.mktemp("uploads"), CASES)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def expected(models_dir) -> dict[str, dict]:
    return reference_records(models_dir, CASES)


@pytest.fixture(scope="module")
def demo(models_dir, tmp_path_factory):
    import app

    return app.build_app(models_dir, examples_dir=tmp_path_factory.mktemp("no_examples"))


@pytest.fixture(scope="module")
def app_handlers(models_dir):
    return app_handlers_over(models_dir)


@pytest.fixture(scope="module")
def http(models_dir):
    with http_client(models_dir) as client:
        yield client


# --- The three paths: each gives the one record of one uploaded file --------------------------------


def through_app(case: Case, file: Path, handlers) -> dict:
    # gr.Warning (the toast) is a Python warning outside a request.
    with pytest.warns(UserWarning, match=re.escape(case.error)) if case.error else contextlib.nullcontext():
        gallery, label, _, _, messages, records, _ = handlers.classify(MODEL, [str(file)], 3)
    [record] = records
    if case.error:
        assert gallery == [] and label is None and record["error"] in messages
    else:
        assert len(gallery) == 1 and messages == "" and set(label) == {s["name"] for s in record["top_k"]}
    return record


def through_http(case: Case, file: Path, client: httpx.Client) -> dict:
    response = client.post("/v1/classify", files=[("files", (file.name, file.read_bytes(), "application/octet-stream"))],
                           data={"model": MODEL, "top_k": "3"})
    assert client.get("/healthz").status_code == 200  # the server is still up
    body = response.json()
    if case.too_large:  # the whole request is refused, saying why
        assert response.status_code == 413, response.text
        return {"image": file.name, "error": body["detail"]}
    assert response.status_code == (422 if case.error else 200), response.text
    assert body["model"] == MODEL
    [record] = body["results"]
    return record


def through_cli(case: Case, file: Path, models_dir: Path, capsys) -> dict:
    from inference.__main__ import main

    status = main(["predict", "--model", str(models_dir / MODEL), "--top-k", "3", str(file)])
    [record] = json.loads(capsys.readouterr().out)
    assert status == (1 if case.error else 0)
    assert record["image"] == str(file)  # the path as given
    return {**record, "image": file.name}


# --- The table, through every path ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["app", "http", "cli"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_upload(case, path, uploads, expected, models_dir, request, capsys):
    file = uploads[case.id]
    if path == "app":
        record = through_app(case, file, request.getfixturevalue("app_handlers"))
    elif path == "http":
        record = through_http(case, file, request.getfixturevalue("http"))
    else:
        record = through_cli(case, file, models_dir, capsys)

    assert record["image"] == case.file_name
    if case.error:
        assert set(record) == {"image", "error"}
        assert case.error in record["error"]
        return
    assert "error" not in record, record["error"]
    reference = expected[case.id]
    probabilities = [score["probability"] for score in record["classes"]]
    assert probabilities == pytest.approx([s["probability"] for s in reference["classes"]], rel=0, abs=case.atol)
    assert record["prediction"] == reference["prediction"]
    assert [s["name"] for s in record["top_k"]] == [s["name"] for s in reference["top_k"]]


def test_the_references_are_not_what_a_naive_decoder_gives(models_dir):
    """The table has teeth: ignoring the orientation, taking the last GIF frame, clipping 16 bits or dropping
    the alpha channel would each give other probabilities than the reference."""
    classifier = OnnxClassifier(models_dir / MODEL)

    def probabilities(image: Image.Image) -> np.ndarray:
        return classifier.probabilities([image.convert("RGB")])[0]

    def reference(case_id: str) -> np.ndarray:
        return probabilities(BY_ID[case_id].build()[1])

    def naive(case_id: str, frame: int = 0) -> Image.Image:
        image = Image.open(io.BytesIO(BY_ID[case_id].build()[0]))
        image.seek(frame)
        return image

    different = {
        "exif-rotated-jpeg": naive("exif-rotated-jpeg"),
        "animated-gif": naive("animated-gif", frame=1),
        "16-bit-grey-png": naive("16-bit-grey-png"),  # PIL's convert clips 16-bit values at 255
        "rgba-png": naive("rgba-png"),  # the colours under the transparency
        "palette-png-transparent": naive("palette-png-transparent"),
    }
    for case_id, image in different.items():
        assert np.abs(probabilities(image) - reference(case_id)).max() > 1e-3, case_id  # above any atol of the table
    # The upright reference of the EXIF case is the picture the camera saw.
    upright = np.asarray(BY_ID["exif-rotated-jpeg"].build()[1], dtype=int)
    assert np.abs(upright - np.asarray(picture(24, 40), dtype=int)).mean() < 3


def test_a_long_strip_is_never_resized_whole(uploads, monkeypatch):
    """Only the window the centre crop keeps is resized: a strip costs kilobytes, not gigabytes."""
    from inference.card import Preprocessing
    from inference.classifier import MAX_RESIZED_PIXELS, preprocess

    real_resize, sizes = Image.Image.resize, []

    def resize(self, size, *args, **kwargs):
        sizes.append(size)
        assert size[0] * size[1] <= MAX_RESIZED_PIXELS, f"resizing to {size}"
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    config = make_card().preprocessing
    for image_size in [(1, 2_000_000), (2_000_000, 1)]:  # 2 megapixels: would be 36×72,000,000 resized whole
        strip = Image.new("RGB", image_size, (30, 160, 90))
        assert np.allclose(preprocess([strip], config), preprocess([Image.new("RGB", (32, 32), (30, 160, 90))], config))
    assert sizes  # the spy saw the resizes

    # Where both fit in memory, the window gives what resizing the whole image and cropping gives, up to a level
    # of rounding, for the filters (with "nearest" a sample exactly between two pixels may take the other one).
    monkeypatch.setattr(Image.Image, "resize", real_resize)
    rng = np.random.default_rng(1)
    for interpolation in ["bilinear", "bicubic", "lanczos"]:
        for image_size, input_size in [((3000, 7), [3, 32, 32]), ((5, 2500), [3, 32, 32]), ((300, 41), [3, 24, 40])]:
            image = Image.fromarray(rng.integers(0, 256, image_size[::-1] + (3,), dtype=np.uint8))
            config = Preprocessing(input_size=input_size, mean=[0, 0, 0], std=[1, 1, 1], interpolation=interpolation,
                                   crop_pct=0.875)
            whole = preprocess([image], config)
            monkeypatch.setattr("inference.classifier.MAX_RESIZED_PIXELS", 0)  # the window, whatever the size
            window = preprocess([image], config)
            monkeypatch.setattr("inference.classifier.MAX_RESIZED_PIXELS", MAX_RESIZED_PIXELS)
            assert np.abs(whole - window).max() <= 1.01 / 255, (interpolation, image_size)


# --- Served for real: the Gradio server stays up; upload names are labels, never paths ---------------


def test_the_served_app_answers_after_bad_uploads(demo, uploads, expected):
    from gradio_client import Client, handle_file

    with gradio_launched(demo) as url:
        client = Client(url, verbose=False)
        bad = ["bomb-30000x30000", "truncated-jpeg", "text-renamed-jpg", "empty"]
        for case_id in bad:  # one request each, then all together with a good one
            *_, messages, records = client.predict(MODEL, [handle_file(uploads[case_id])], 3, api_name="/classify")
            assert BY_ID[case_id].error in records[0]["error"] and BY_ID[case_id].error in messages
        files = [handle_file(uploads[case_id]) for case_id in [*bad, "exif-rotated-jpeg"]]
        gallery, *_, messages, records = client.predict(MODEL, files, 3, api_name="/classify")
        assert [r["image"] for r in records] == [BY_ID[c].file_name for c in [*bad, "exif-rotated-jpeg"]]
        assert len(gallery) == 1 and f"Could not read {len(bad)} of {len(bad) + 1} files" in messages
        assert records[-1]["prediction"] == expected["exif-rotated-jpeg"]["prediction"]
        assert records[-1]["classes"][0]["probability"] == pytest.approx(
            expected["exif-rotated-jpeg"]["classes"][0]["probability"], abs=1e-6)


def test_http_upload_names_are_labels_not_paths(http, uploads, tmp_path):
    """A client's file name is only echoed, as its base name: the server reads the uploaded bytes, never a path.
    A name that is the path of a real image on the server, sent with text as its content, is still text."""
    good, text = uploads["greyscale-png"], uploads["text-renamed-jpg"]
    sent = [("../../etc/passwd.png", good), ("..\\..\\win.png", good), ("C:\\fakepath\\photo.png", good),
            (str(good), text.read_bytes()), ('<img src=x onerror=alert(1)>.png', text), ("..", good)]
    files = [("files", (name, source if isinstance(source, bytes) else source.read_bytes(), "image/png"))
             for name, source in sent]
    response = http.post("/v1/classify", files=files, data={"model": MODEL})
    assert response.status_code == 200, response.text
    records = response.json()["results"]
    assert [r["image"] for r in records] == ["passwd.png", "win.png", "photo.png", good.name,
                                             '<img src=x onerror=alert(1)>.png', "file 5"]
    assert ["error" in r for r in records] == [False, False, False, True, True, False]
    assert records[3]["error"].startswith(f"{good.name} is not an image file")
    assert response.headers["content-type"] == "application/json"  # names are JSON strings, never markup
    assert http.get("/healthz").status_code == 200


def test_the_cli_reports_a_folder_and_follows_a_symlink(models_dir, uploads, tmp_path, capsys):
    from inference.__main__ import main

    link = tmp_path / "link.png"
    link.symlink_to(uploads["greyscale-png"])
    status = main(["predict", "--model", str(models_dir / MODEL), str(tmp_path), str(link)])
    folder, linked = json.loads(capsys.readouterr().out)
    assert status == 1
    assert folder == {"image": str(tmp_path), "error": f"{tmp_path} is a folder, not an image file."}
    assert linked["image"] == str(link) and "error" not in linked
