"""Hostile and odd images, through every surface: the app's handlers (and once a launched Gradio server), POST
/v1/classify on a real uvicorn server, and `python -m inference predict`.

One allow-list of formats checked on the bytes (an EPS is never parsed, a TGA or a PPM is refused by name, a PNG
called `cat.png.exe` or `photo` is a PNG); data that do not cover their declared size are refused as truncated
instead of decoding as grey; 32-bit integer and floating-point images are scaled by their range; almost flat images
are classified with a warning; a request's pixels are bounded before anything is decoded; decodes take turns; and an
upload decoded reduced gives the full-size result within a grey level.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from PIL import Image

from inference.card import Preprocessing
from inference.classifier import REDUCING_GAP, OnnxClassifier, preprocess
from inference.images import ImageLoadError, decode_image, load_image, to_rgb
from inference.service import DecodeSlots, Limits, ModelCatalog, RequestError, Studio
from studio_app import render
from tests.helpers_onnx import make_card
from tests.helpers_servers import gradio_launched, uvicorn_in_thread
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

ACCEPTED = "(accepted: PNG, JPEG, GIF, WebP, BMP, TIFF)"
FLAT = "is almost one flat colour"
TRUNCATED = "is truncated or corrupt"


# --- Building the files -----------------------------------------------------------------------------


def grey() -> np.ndarray:
    return np.asarray(picture())[..., 0]  # 0 to 255


def jpeg_declaring(width: int, height: int, progressive: bool = False) -> bytes:
    """A complete 32×32 JPEG (its scan ends at the end-of-image marker) whose frame header says width×height."""
    data = encode(picture(32, 32), "JPEG", quality=90, progressive=progressive)
    frame = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    return data[:frame + 5] + struct.pack(">HH", height, width) + data[frame + 9:]


def jpeg_scan_ending_halfway() -> bytes:
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)), "JPEG")
    scan = data.index(b"\xff\xda")
    start = scan + 2 + struct.unpack(">H", data[scan + 2:scan + 4])[0]
    return data[:start + (len(data) - start) // 2] + b"\xff\xd9"


def png_stream_ending_early(interlace: int = 0) -> bytes:
    """IHDR says 600×660 RGB; the (complete, properly ended) zlib stream holds 10 rows."""
    rows = b"".join(b"\0" + bytes(600 * 3) for _ in range(10))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 600, 660, 8, 2, 0, 0, interlace))
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"

# Each builder returns the file's bytes and, for a file that must be classified, the image whose probabilities it
# must give.
Built = tuple[bytes, Image.Image | None]


@dataclass(frozen=True)
class Case:
    id: str
    file_name: str
    build: Callable[[], Built]
    error: str | None = None  # a substring of the error; None: the file is classified
    warning: str | None = None  # a substring of the record's warning
    atol: float = 0.0  # on each class probability against the reference image's

    def __str__(self) -> str:
        return self.id


CASES = [
    # One allow-list, on the bytes.
    Case("eps", "figure.eps", lambda: (EPS, None), error="figure.eps is a PostScript/EPS file (decoding it would "
                                                         f"run Ghostscript, an external program), which is not accepted {ACCEPTED}"),
    Case("eps-named-png", "figure.png", lambda: (EPS, None), error="figure.png is a PostScript/EPS file"),
    Case("tga", "texture.tga", lambda: (encode(picture(), "TGA"), None),
         error=f"texture.tga is a TGA image, which is not accepted {ACCEPTED}"),
    Case("ppm", "scan.ppm", lambda: (encode(picture(), "PPM"), None),
         error=f"scan.ppm is not an image file that can be read {ACCEPTED}"),
    Case("pdf", "page.png", lambda: (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", None), error="page.png is a PDF document"),
    Case("png-without-extension", "photo", lambda: (encode(picture(), "PNG"), picture())),
    Case("png-named-exe", "cat.png.exe", lambda: (encode(picture(), "PNG"), picture())),
    Case("bmp", "picture.bmp", lambda: (encode(picture(), "BMP"), picture())),
    Case("tiff", "picture.tif", lambda: (encode(picture(), "TIFF"), picture())),
    Case("webp-lossless", "picture.webp", lambda: (encode(picture(), "WEBP", lossless=True), picture())),
    # Data short of the declared size: refused, not grey.
    Case("jpeg-6600x6000-over-32x32", "grey.jpg", lambda: (jpeg_declaring(6600, 6000), None),
         error=f"grey.jpg {TRUNCATED}: its pixel data cover only part of the 6600×6000 pixels its header declares"),
    Case("progressive-jpeg-6600x6000", "grey_progressive.jpg", lambda: (jpeg_declaring(6600, 6000, True), None),
         error=f"grey_progressive.jpg {TRUNCATED}: its pixel data cover only part of the 6600×6000 pixels"),
    Case("jpeg-scan-ends-halfway", "half.jpg", lambda: (jpeg_scan_ending_halfway(), None),
         error=f"half.jpg {TRUNCATED}"),
    Case("png-stream-ends-early", "rows.png", lambda: (png_stream_ending_early(), None),
         error=f"rows.png {TRUNCATED}: its pixel data cover only part of the 600×660 pixels"),
    Case("interlaced-png-stream-ends-early", "rows7.png", lambda: (png_stream_ending_early(interlace=1), None),
         error=f"rows7.png {TRUNCATED}"),
    # High bit depths: scaled by their range, not divided by 257 and clipped.
    Case("tiff-32-bit-integer", "counts.tif",
         lambda: (encode(Image.fromarray(grey().astype(np.int32) * 1000 + 5000), "TIFF"), Image.fromarray(grey()))),
    Case("tiff-floating-point", "float.tif",
         lambda: (encode(Image.fromarray((grey() / 255 * 2 - 1).astype(np.float32)), "TIFF"),
                  Image.fromarray(grey()))),
    Case("tiff-floating-point-nan", "nan.tif",
         lambda: (encode(Image.fromarray(np.full((4, 4), np.nan, np.float32)), "TIFF"), None),
         error="nan.tif is a floating-point image with NaN or infinite values"),
    # Almost flat: classified, with a warning.
    Case("all-white", "white.png", lambda: (encode(Image.new("RGB", (50, 40), "white"), "PNG"),
                                            Image.new("RGB", (50, 40), "white")), warning=f"white.png {FLAT}"),
    Case("fully-transparent", "clear.png", lambda: (encode(Image.new("RGBA", (50, 40), (0, 0, 0, 0)), "PNG"),
                                                    Image.new("RGB", (50, 40), "white")), warning=f"clear.png {FLAT}"),
    Case("one-pixel", "dot.png", lambda: (encode(Image.new("RGB", (1, 1), (10, 120, 30)), "PNG"),
                                          Image.new("RGB", (1, 1), (10, 120, 30))), warning=f"dot.png {FLAT}"),
]
BY_ID = {case.id: case for case in CASES}


# --- Fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_postscript_is_ever_parsed(monkeypatch):
    """Pillow's EPS plugin runs Ghostscript; it must never even be asked to read a header."""
    from PIL import EpsImagePlugin

    def refuse(*args, **kwargs):
        raise AssertionError("the EPS plugin was asked to open a file")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", refuse)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, Path]:
    return write_uploads(tmp_path_factory.mktemp("hostile"), CASES)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def expected(models_dir) -> dict[str, dict]:
    return reference_records(models_dir, CASES)


@pytest.fixture(scope="module")
def app_handlers(models_dir):
    return app_handlers_over(models_dir)


@pytest.fixture(scope="module")
def http(models_dir):
    with http_client(models_dir) as client:
        yield client


# --- The three surfaces: the records of one request -----------------------------------------------------


def through_app(files: list[Path], handlers) -> tuple[list[dict], list[tuple], str]:
    """Records, gallery and summary of one app call (gr.Warning toasts are Python warnings outside a request)."""
    with warnings_allowed():
        gallery, _, _, summary, _, records, _ = handlers.classify(MODEL, [str(f) for f in files], 3)
    return records, gallery, summary


def through_http(files: list[Path], client: httpx.Client) -> list[dict]:
    response = client.post("/v1/classify", data={"model": MODEL, "top_k": "3"},
                           files=[("files", (f.name, f.read_bytes(), "application/octet-stream")) for f in files])
    assert response.status_code in (200, 422), response.text
    return response.json()["results"]


def through_cli(files: list[Path], models_dir: Path, capsys) -> list[dict]:
    from inference.__main__ import main

    main(["predict", "--model", str(models_dir / MODEL), "--top-k", "3", *map(str, files)])
    return [{**record, "image": Path(record["image"]).name} for record in json.loads(capsys.readouterr().out)]


@contextlib.contextmanager
def warnings_allowed():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def check_record(case: Case, record: dict, expected: dict[str, dict]) -> None:
    assert record["image"] == case.file_name
    if case.error:
        assert set(record) == {"image", "error"} and case.error in record["error"], record
        return
    assert "error" not in record, record["error"]
    reference = expected[case.id]
    assert [s["probability"] for s in record["classes"]] == pytest.approx(
        [s["probability"] for s in reference["classes"]], rel=0, abs=case.atol)
    assert record["prediction"] == reference["prediction"]


@pytest.mark.parametrize("path", ["app", "http", "cli"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_image(case, path, uploads, expected, models_dir, request, capsys):
    file = uploads[case.id]
    if path == "app":
        [record], gallery, summary = through_app([file], request.getfixturevalue("app_handlers"))
        if case.warning:  # the app shows it: on the caption, and in full in the summary
            assert gallery[0][1].endswith(render.WARNING_MARK) and case.warning in summary
    elif path == "http":
        [record] = through_http([file], request.getfixturevalue("http"))
    else:
        [record] = through_cli([file], models_dir, capsys)
    check_record(case, record, expected)
    if case.warning:
        assert case.warning in record["warning"]
    else:  # absent, not null, on every surface
        assert "warning" not in record


def test_the_service_gives_every_surface_the_warning(models_dir, uploads):
    studio = Studio(ModelCatalog(models_dir))
    files = [io.BytesIO(uploads[case_id].read_bytes()) for case_id in ("all-white", "png-without-extension")]
    flat, textured = studio.classify(MODEL, files)
    assert FLAT in flat.warning and textured.warning is None


MIXED = ["tga", "png-without-extension", "eps", "png-named-exe", "jpeg-6600x6000-over-32x32", "ppm", "one-pixel"]


@pytest.mark.parametrize("path", ["app", "http", "cli"])
def test_one_odd_file_costs_the_others_nothing(path, uploads, expected, models_dir, request, capsys):
    files = [uploads[case_id] for case_id in MIXED]
    if path == "app":
        records, gallery, _ = through_app(files, request.getfixturevalue("app_handlers"))
        assert len(gallery) == 3
    elif path == "http":
        records = through_http(files, request.getfixturevalue("http"))
    else:
        records = through_cli(files, models_dir, capsys)
    assert len(records) == len(MIXED)
    for case_id, record in zip(MIXED, records):
        check_record(BY_ID[case_id], record, expected)


def test_the_served_app_takes_any_file(models_dir, uploads, expected):
    """No file-type filter on the upload component: Gradio itself would refuse a TGA or a file without an
    extension before the service could say anything."""
    from gradio_client import Client, handle_file

    import app

    demo = app.build_app(models_dir, examples_dir=models_dir / "no_examples")
    [upload] = [block for block in demo.blocks.values() if isinstance(block, gr.File) and block.label == "Images"]
    assert upload.file_types is None
    files = ["tga", "png-without-extension", "png-named-exe"]
    with gradio_launched(demo) as url:
        *_, records = Client(url, verbose=False).predict(MODEL, [handle_file(str(uploads[c])) for c in files], 3,
                                                         api_name="/classify")
    for case_id, record in zip(files, records, strict=True):
        check_record(BY_ID[case_id], record, expected)


# --- The request's pixels, and decodes taking turns -----------------------------------------------------


def small_png(size=(40, 40)) -> bytes:
    return encode(picture(*size), "PNG")


def test_a_request_over_its_pixel_budget_is_refused_before_decoding(models_dir, monkeypatch):
    from inference.server import create_app
    from studio_app.handlers import Handlers

    studio = Studio(ModelCatalog(models_dir), limits=Limits(max_request_pixels=3000))
    monkeypatch.setattr(OnnxClassifier, "decode", lambda *a, **k: pytest.fail("an image was decoded"))
    message = "the 2 images of this request hold 0.0 megapixels in all; the limit is 0.003 megapixels per request"
    with pytest.raises(RequestError, match=message) as refused:
        studio.classify(MODEL, [small_png(), small_png()])  # 3,200 pixels
    assert refused.value.status == 413
    with uvicorn_in_thread(create_app(studio)) as url:
        response = httpx.post(f"{url}/v1/classify", files=[("files", ("a.png", small_png())),
                                                           ("files", ("b.png", small_png()))], timeout=30)
    assert response.status_code == 413 and message in response.json()["detail"]
    with pytest.raises(gr.Error, match=message):
        Handlers(studio).classify(MODEL, [io.BytesIO(small_png()), io.BytesIO(small_png())], 3)


def test_the_budget_counts_what_is_decoded(models_dir):
    """An image refused for its own size costs nothing; one within the budget is classified."""
    studio = Studio(ModelCatalog(models_dir), limits=Limits(max_pixels=1000, max_request_pixels=1000))
    too_large, small = studio.classify(MODEL, [small_png((40, 40)), small_png((30, 30))])
    assert isinstance(too_large, ImageLoadError) and "above the limit of 0.001 megapixels" in str(too_large)
    assert small.top[0].name in make_card().class_names


def test_decodes_take_turns_and_a_webp_decodes_alone(models_dir, monkeypatch):
    studio = Studio(ModelCatalog(models_dir), limits=Limits(max_parallel_decodes=2))
    real_decode, running, most = OnnxClassifier.decode, [], {"any": 0, "beside a webp": 0}
    lock = threading.Lock()

    def decode(self, source, max_pixels):
        kind = "webp" if source.getvalue()[8:12] == b"WEBP" else "png"
        with lock:
            running.append(kind)
            most["any"] = max(most["any"], len(running))
            if "webp" in running:
                most["beside a webp"] = max(most["beside a webp"], len(running))
        time.sleep(0.05)
        with lock:
            running.remove(kind)
        return real_decode(self, source, max_pixels)

    monkeypatch.setattr(OnnxClassifier, "decode", decode)
    png, webp = small_png(), encode(picture(), "WEBP", lossless=True)
    requests = [[png] * 3] * 4 + [[webp] * 2] * 2
    threads = [threading.Thread(target=studio.classify, args=(MODEL, [io.BytesIO(d) for d in files]))
               for files in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most["any"] == 2  # two at once, never more
    assert most["beside a webp"] == 1  # nothing else runs beside a WebP decode
    assert studio.decode_slots.free == 2


def test_decode_slots_wait_for_room():
    slots = DecodeSlots(2)
    from inference.images import Header

    with slots.taken(Header("PNG", 10)):
        assert slots.free == 1
        started = threading.Event()

        def heavy():
            with slots.taken(Header("WEBP", 10)):
                started.set()

        thread = threading.Thread(target=heavy)
        thread.start()
        assert not started.wait(0.2)  # a WebP waits for every slot
    thread.join(5)
    assert started.is_set() and slots.free == 2


def test_a_stream_of_light_decodes_never_starves_a_heavy_one():
    """Two light decodes always overlap, so at no moment are both slots free; the WebP that asked first still
    starts before the light ones that asked after it."""
    from inference.images import Header

    slots, order, lock = DecodeSlots(2), [], threading.Lock()

    def decode(kind: str, seconds: float):
        with slots.taken(Header(kind, 10)):
            with lock:
                order.append(kind)
            time.sleep(seconds)

    first = threading.Thread(target=decode, args=("PNG", 0.3))
    first.start()
    time.sleep(0.05)
    heavy = threading.Thread(target=decode, args=("WEBP", 0.01))
    heavy.start()
    time.sleep(0.05)  # the WebP is waiting: one slot is taken
    later = [threading.Thread(target=decode, args=("PNG", 0.05)) for _ in range(6)]
    for thread in later:
        thread.start()
        time.sleep(0.02)
    for thread in [first, heavy, *later]:
        thread.join(10)
    assert order.index("WEBP") == 1 and order.count("PNG") == 7 and slots.free == 2


# --- Reduced while decoding, classified as at full size -------------------------------------------------


def large_picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Photo-like: smooth random shapes (a small random image enlarged) with a few hard edges."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 64, width // 64, 3), dtype=np.uint8))
    image = small.resize((width, height), Image.Resampling.BICUBIC)
    for _ in range(12):
        x, y = rng.integers(0, width - width // 6), rng.integers(0, height - height // 6)
        image.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), (x, y, x + width // 7, y + height // 9))
    return image


def plain_preprocessing(size: int, interpolation: str = "bilinear") -> Preprocessing:
    return Preprocessing(input_size=[3, size, size], mean=[0, 0, 0], std=[1, 1, 1], interpolation=interpolation,
                         crop_pct=0.875)


@pytest.mark.parametrize("size, image_size, interpolation", [(32, (2600, 1900), "bilinear"),
                                                             (32, (1900, 2600), "bicubic"),
                                                             (224, (4300, 4120), "bilinear")])
@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_a_large_upload_decoded_reduced_gives_the_full_size_result(size, image_size, interpolation, image_format):
    config = plain_preprocessing(size, interpolation)
    options = {"quality": 92} if image_format == "JPEG" else {"compress_level": 1}
    data = encode(large_picture(*image_size), image_format, **options)
    decoded = decode_image(data, keep_shorter_side=REDUCING_GAP * config.resize_to)
    assert decoded.factor >= 2 and decoded.full_size == image_size
    if image_format == "JPEG" and size == 32:
        assert decoded.factor >= 4  # libjpeg decoded scaled down (draft), not at full size
    # libjpeg's scaled decoding works in the DCT domain, so a JPEG may differ by up to 2 grey levels; PNG by 1
    levels = 2 if image_format == "JPEG" else 1
    difference = np.abs(preprocess([decoded], config) - preprocess([load_image(data)], config)).max()
    assert difference <= levels / 255 + 1e-6, f"{difference * 255:.2f} grey levels"


def test_a_sideways_photo_decoded_reduced_is_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    data = encode(large_picture(2600, 1900), "JPEG", quality=92, exif=exif)
    config = plain_preprocessing(32)
    decoded = decode_image(data, keep_shorter_side=REDUCING_GAP * config.resize_to)
    assert decoded.full_size == (1900, 2600) and decoded.image.size[0] < decoded.image.size[1]
    assert np.abs(preprocess([decoded], config) - preprocess([load_image(data)], config)).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "I;16", "I", "1", "CMYK"])
def test_reducing_band_by_band_gives_the_pixels_of_reducing_the_whole(mode, monkeypatch):
    monkeypatch.setattr("inference.images.BAND_PIXELS", 5000)  # dozens of bands
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 256, (203, 311, 3), dtype=np.uint8))
    if mode in ("I;16", "I"):
        values = rng.integers(0, 65535 if mode == "I;16" else 10**6, (203, 311))
        image = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    else:
        image = base.quantize(32) if mode == "P" else base.convert(mode)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 256, (203, 311), dtype=np.uint8)))
    data = encode(image, "TIFF" if mode in ("I", "CMYK") else "PNG", **({"transparency": 3} if mode == "P" else {}))
    decoded = decode_image(data, keep_shorter_side=40)
    assert decoded.factor == 5
    assert np.array_equal(np.asarray(decoded.image), np.asarray(to_rgb(Image.open(io.BytesIO(data))).reduce(5)))


def test_the_window_of_a_reduced_strip_is_the_window_of_its_whole_resize(monkeypatch):
    """An extreme aspect ratio resizes only the window the crop keeps, in the reduced image's coordinates too."""
    strip = Image.fromarray(np.random.default_rng(4).integers(0, 256, (14, 20_000, 3), dtype=np.uint8))
    decoded = decode_image(encode(strip, "PNG"), keep_shorter_side=4)
    assert decoded.factor == 3
    config = plain_preprocessing(32)
    whole = preprocess([decoded], config)
    monkeypatch.setattr("inference.classifier.MAX_RESIZED_PIXELS", 0)
    assert np.abs(preprocess([decoded], config) - whole).max() <= 1.01 / 255


def test_normal_uploads_are_not_reduced():
    """Photos up to REDUCING_GAP times the model's resize keep every pixel: the same tensor as before."""
    data = encode(large_picture(580, 400), "JPEG", quality=92)
    decoded = decode_image(data, keep_shorter_side=REDUCING_GAP * plain_preprocessing(32).resize_to)
    assert decoded.factor == 1 and np.array_equal(np.asarray(decoded.image), np.asarray(load_image(data)))


def test_a_truncated_jpeg_was_grey_before(uploads):
    """The refused JPEG is what libjpeg alone turns into a flat grey picture, without an error."""
    image = Image.open(uploads["jpeg-6600x6000-over-32x32"])
    image.draft("RGB", (825, 750))  # libjpeg at 1/8: the same fill, 64 times fewer pixels
    pixels = np.asarray(image.convert("RGB"))
    assert image.size == (825, 750) and (pixels[8:] == 128).all()
    with pytest.raises(ImageLoadError, match=re.escape(TRUNCATED)):
        load_image(uploads["jpeg-6600x6000-over-32x32"])
