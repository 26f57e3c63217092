"""The HTTP service end to end: a real uvicorn server in a thread, on a tiny ONNX model and a tiny random
generator, spoken to over HTTP with httpx. Limits are set small so each one can be hit with small requests."""

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import replace

import httpx
import numpy as np
import pytest
from conftest import REPO_ROOT, write_tiny_generator
from helpers_onnx import CLASS_COUNTS, CLASS_NAMES, make_card, tiny_net_path, write_model
from helpers_servers import uvicorn_in_thread
from PIL import Image

from inference.images import load_image
from inference.server import create_app, max_body_bytes
from inference.service import GeneratorService, Limits, ModelCatalog, Studio

LIMITS = Limits(max_upload_bytes=64 * 2**10, max_pixels=64 * 64, max_batch=4, max_generate=3, max_steps=5)


def png(size=(32, 32), colour=(200, 30, 30), image_format="PNG") -> bytes:
    """A flat picture (its record carries the near-flat warning)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=image_format)
    return buffer.getvalue()


def textured(size=(32, 32), seed=0, image_format="PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def upload(name: str, data: bytes) -> tuple:
    return ("files", (name, data, "image/png"))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    (root / "models").mkdir()
    write_model(tiny_net_path(tmp_path_factory), root / "models" / "tiny.onnx", make_card())
    # A real model file next to the folder: a request for "../x.onnx" must not reach it.
    write_model(tiny_net_path(tmp_path_factory), root / "x.onnx", make_card())
    return root / "models"


@pytest.fixture(scope="module")
def studio(models_dir):
    generator = write_tiny_generator(models_dir.parent / "generator", CLASS_NAMES)
    return Studio(ModelCatalog(models_dir), GeneratorService(generator, device="cpu"), LIMITS)


@pytest.fixture(scope="module")
def base_url(studio):
    with uvicorn_in_thread(create_app(studio)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


# --- Classification ---------------------------------------------------------------------------------


def test_classify_several_images_in_order_with_a_broken_one(client, studio):
    images = [("red.png", textured()), ("broken.png", b"this is not an image"),
              ("blue.jpg", textured(seed=1, image_format="JPEG"))]
    response = client.post("/v1/classify", files=[upload(*image) for image in images], data={"top_k": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny.onnx"
    assert [record["image"] for record in body["results"]] == ["red.png", "broken.png", "blue.jpg"]
    assert set(body["results"][1]) == {"image", "error"} and "not an image file" in body["results"][1]["error"]
    for record, (_, data) in zip(body["results"][::2], images[::2]):
        # The record of `python -m inference predict`, from the same classifier.
        expected = studio.catalog.get("tiny.onnx").predict([load_image(data)], top_k=2)[0].to_dict()
        assert set(record) == {"image", *expected}
        assert record["prediction"] == expected["prediction"]
        assert record["probability"] == pytest.approx(expected["probability"], abs=1e-5)
        assert len(record["top_k"]) == 2 and len(record["classes"]) == len(CLASS_NAMES)
        assert record["train_count"] == CLASS_COUNTS[CLASS_NAMES.index(record["prediction"])]

    assert client.post("/v1/classify", files=[upload(*images[0])], data={"top_k": "21"}).status_code == 422


def test_a_near_flat_image_carries_its_warning_and_the_others_none(client):
    response = client.post("/v1/classify", files=[upload("flat.png", png()), upload("noise.png", textured())])
    assert response.status_code == 200, response.text
    flat, noise = response.json()["results"]
    assert "flat.png is almost one flat colour" in flat["warning"]
    assert "warning" not in noise  # absent, as `predict` writes it, not null
    assert "warning" in client.get("/openapi.json").json()["components"]["schemas"]["ImagePrediction"]["properties"]


def test_uploads_reach_the_service_unread(client, studio, monkeypatch):
    """Each file stays in the request's spooled file until its own decode reads it: the server never holds a
    request's files in memory all at once."""
    seen = []
    classify = studio.classify

    def watching(model_name, sources, top_k=5, **options):
        seen.extend((type(source).__name__, source.name, source.tell()) for source in sources)
        return classify(model_name, sources, top_k, **options)

    monkeypatch.setattr(studio, "classify", watching)
    response = client.post("/v1/classify", files=[upload("a.png", textured()), upload("b.png", textured(seed=2))])
    assert response.status_code == 200, response.text
    assert seen == [("NamedUpload", "a.png", 0), ("NamedUpload", "b.png", 0)]


def test_classify_with_no_readable_image_is_422_with_each_reason(client):
    response = client.post("/v1/classify", files=[upload("a.png", b""), upload("b.svg", b"<svg></svg>")])
    assert response.status_code == 422
    body = response.json()
    assert "none of the files" in body["detail"]
    assert [(r["image"], "error" in r) for r in body["results"]] == [("a.png", True), ("b.svg", True)]
    assert "empty" in body["results"][0]["error"] and "SVG" in body["results"][1]["error"]


@pytest.mark.parametrize("files, detail", [
    ([upload(f"{i}.png", png()) for i in range(LIMITS.max_batch + 1)], "the limit is 4"),
    ([upload("small.png", png()), upload("big.png", b"\0" * (LIMITS.max_upload_bytes + 1))], "big.png is"),
    ([upload("huge.png", png(size=(100, 100)))], "above the limit"),  # 10,000 pixels > 64 × 64
], ids=["too-many-files", "file-too-large", "too-many-pixels"])
def test_classify_over_a_limit_is_413(client, files, detail):
    response = client.post("/v1/classify", files=files)
    assert response.status_code == 413
    assert detail in response.json()["detail"]


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(client):
    too_much = max_body_bytes(LIMITS) + 1
    response = client.post("/v1/classify", files=[upload("big.png", b"\0" * too_much)])
    assert response.status_code == 413 and "request body" in response.json()["detail"]

    # Chunked: no Content-Length, so the middleware counts the bytes as they stream in.
    head = (b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    chunks = [head] + [b"\0" * 2**16] * (too_much // 2**16 + 1)
    response = client.post("/v1/classify", content=iter(chunks),
                           headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "request body" in response.json()["detail"]


@pytest.mark.parametrize("model", ["missing.onnx", "../x.onnx", "..", "/etc/passwd", "a" * 300 + ".onnx", "x.onnx\n",
                                   "a\\b.onnx", "$(reboot).onnx"],
                         ids=["missing", "parent", "dotdot", "absolute", "300-bytes", "newline", "backslash", "shell"])
def test_an_unknown_model_is_404_and_never_leaves_the_models_folder(client, model):
    response = client.post("/v1/classify", files=[upload("red.png", png())], data={"model": model})
    assert response.status_code == 404
    assert "tiny.onnx" in response.json()["detail"]  # names what is on offer
    response = client.post("/v1/generate", json={"class_name": "cat", "count": 1, "model": model})
    assert response.status_code == 404
    assert len(response.json()["detail"]) < 400  # quotes the start of a long name only


def test_a_model_name_too_long_for_the_file_system_is_refused_before_it_is_looked_up(client, models_dir):
    """300 bytes: is_file() raised "File name too long" (a 500) before the name was checked."""
    detail = client.post("/v1/generate", json={"class_name": "cat", "count": 1, "model": "é" * 130 + ".onnx"}).json()["detail"]
    assert "is not a model name (an .onnx file name of at most 255 bytes" in detail and "(265 bytes)" in detail


# --- Generation -------------------------------------------------------------------------------------


def decode(image_record: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(image_record["png_base64"]))))


def test_generate_json_is_reproducible_and_recognised(client):
    request = {"class_name": "bird", "count": 2, "seed": 3}
    response = client.post("/v1/generate", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["class_name"], body["count"], body["seed"], body["steps"], body["model"]) == ("bird", 2, 3, 2, "tiny.onnx")
    assert [image["index"] for image in body["images"]] == [0, 1]
    for image in body["images"]:
        assert decode(image).shape == (16, 16, 3)  # the generator's size
        assert image["predicted"] in CLASS_NAMES and 0 <= image["probability"] <= 1
        assert 0 <= image["intended_probability"] <= 1 and isinstance(image["matches"], bool)
        assert image["file_name"].endswith(".png")

    again = client.post("/v1/generate", json=request).json()
    assert [decode(a).tolist() for a in again["images"]] == [decode(b).tolist() for b in body["images"]]
    # The second image again on its own: an image depends on (seed, class, index), not on the batch.
    second = client.post("/v1/generate", json={**request, "count": 1, "first_index": 1}).json()["images"][0]
    assert second["seed"] == body["images"][1]["seed"]
    assert np.abs(decode(second).astype(int) - decode(body["images"][1])).max() <= 1


def test_generate_zip_holds_the_pngs_and_the_settings(client):
    response = client.post("/v1/generate", json={"class_name": "dog", "count": 2, "seed": 1, "format": "zip"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert 'filename="dog_seed1.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        pngs = [name for name in names if name.endswith(".png")]
        assert len(pngs) == 2 and "generation.json" in names
        assert Image.open(io.BytesIO(archive.read(pngs[0]))).size == (16, 16)
        settings = json.loads(archive.read("generation.json"))
    assert settings["class_name"] == "dog" and len(settings["images"]) == 2


@pytest.mark.parametrize("request_body", [
    {"class_name": "cat", "count": LIMITS.max_generate + 1},
    {"class_name": "cat", "steps": LIMITS.max_steps + 1},
    {"class_name": "cat", "count": 0},
    {"class_name": "unicorn"},
], ids=["count", "steps", "zero", "class"])
def test_generation_outside_the_limits_is_422(client, request_body):
    response = client.post("/v1/generate", json=request_body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)


def test_classify_and_health_answer_while_a_generation_runs(client, base_url, studio, monkeypatch):
    """The generation is held until the classify answer has arrived, so the order proves they overlapped."""
    generator = studio.generator.generator()  # open it now, to wrap the object requests will use
    real_generate, started, release = generator.generate, threading.Event(), threading.Event()

    def held_generate(*args, **kwargs):
        started.set()
        assert release.wait(120), "the test never released the generation"
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(generator, "generate", held_generate)
    # No request may wait behind the running one, so a second generation is refused at once.
    monkeypatch.setattr(studio, "limits", replace(studio.limits, max_waiting_generations=0))
    finished = []

    def generate_in_background():
        with httpx.Client(base_url=base_url, timeout=120) as other:
            response = other.post("/v1/generate", json={"class_name": "cat", "count": 1})
        finished.append(("generate", response.status_code))

    thread = threading.Thread(target=generate_in_background)
    thread.start()
    try:
        assert started.wait(120)
        assert client.get("/healthz").status_code == 200
        busy = client.post("/v1/generate", json={"class_name": "cat", "count": 1})
        assert busy.status_code == 429 and "busy" in busy.json()["detail"]
        response = client.post("/v1/classify", files=[upload("red.png", png())])
        finished.append(("classify", response.status_code))
    finally:
        release.set()
        thread.join(120)
    assert finished == [("classify", 200), ("generate", 200)]


# --- Every error is one sentence ------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, request_kwargs, status, detail", [
    ("post", "/v1/generate", {"json": {"count": 1}}, 422, "class_name is required"),
    ("post", "/v1/generate", {"json": {"class_name": 7}}, 422, "class_name: input should be a valid string; got 7"),
    ("post", "/v1/generate", {"json": {"class_name": "cat", "format": "png"}}, 422,
     "format: input should be 'json' or 'zip'; got 'png'"),
    ("post", "/v1/generate", {"content": b'{"class_name": ', "headers": {"Content-Type": "application/json"}}, 422,
     "the request body is not valid JSON (Expecting value)"),
    ("post", "/v1/generate", {"content": b"cat", "headers": {"Content-Type": "text/plain"}}, 422,
     "the request body must be a JSON object (Content-Type: application/json); got b'cat'"),
    ("post", "/v1/generate", {"json": {"class_name": "x" * 10**5}}, 422,
     f"class_name: string should have at most 200 characters; got '{'x' * 56}... (100,002 characters)"),
    ("post", "/v1/classify", {"data": {"top_k": "3"}}, 422, "files is required"),
    ("post", "/v1/classify", {"files": [upload("red.png", png())], "data": {"top_k": "2.5"}}, 422,
     "top_k must be an integer from 1 to 20 (classes listed per image); got 2.5"),
    ("get", "/v2/classify", {}, 404,
     "there is no /v2/classify here: the API is /v1/classify, /v1/generate, /v1/models and /healthz"),
    ("delete", "/v1/models", {}, 405, "/v1/models does not take DELETE requests (see /docs)"),
], ids=["missing-field", "wrong-type", "wrong-choice", "broken-json", "not-json", "huge-string", "no-files",
        "fractional-top-k", "no-such-path", "wrong-method"])
def test_every_error_is_one_sentence_in_detail(client, method, path, request_kwargs, status, detail):
    response = client.request(method.upper(), path, **request_kwargs)
    assert (response.status_code, response.json()) == (status, {"detail": detail})


def test_an_unexpected_failure_is_a_500_sentence_and_a_logged_traceback(client, studio, monkeypatch, caplog):
    def broken():
        raise RuntimeError("the secret path /srv/models is gone")

    monkeypatch.setattr(studio.catalog, "names", broken)
    with caplog.at_level("ERROR", logger="inference.server"):
        response = client.get("/v1/models")
    assert response.status_code == 500
    assert response.json() == {"detail": "the server failed on this request (an internal error, logged on the server); "
                                         "please report it"}
    [logged] = [r for r in caplog.records if r.name == "inference.server"]
    assert logged.getMessage() == "GET /v1/models failed" and "the secret path" in caplog.text  # with its traceback
    assert logged.exc_info[0] is RuntimeError
    monkeypatch.undo()
    assert client.get("/v1/models").status_code == 200  # and the server carries on


# --- A body that does not arrive ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient_url(studio):
    with uvicorn_in_thread(create_app(studio, body_timeout=1.0)) as url:
        yield url


def stalled_request(url: str, head: bytes, sent_body: bytes, wait: float = 30) -> tuple[bytes, float]:
    """Send the head and part of the body, then nothing; the answer (until the server closes) and how long it took."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as connection:
        connection.sendall(head + sent_body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


@pytest.mark.parametrize("path, content_type, body", [
    ("/v1/generate", "application/json", b'{"class_name": "cat", "count": 1}'),
    ("/v1/classify", "multipart/form-data; boundary=xyz",
     b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="red.png"\r\nContent-Type: image/png\r\n\r\n'
     + png() + b"\r\n--xyz--\r\n"),
], ids=["json", "multipart"])
def test_a_half_sent_body_gets_408_after_the_body_timeout(impatient_url, path, content_type, body):
    head = (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    answer, seconds = stalled_request(impatient_url, head, body[: len(body) // 2])
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {
        "detail": "the request body did not arrive within 1 s; send it whole, without pauses"}
    assert 1.0 <= seconds < 10  # the server closed the connection after answering
    # The same body sent whole is served.
    assert httpx.post(impatient_url + path, content=body, headers={"Content-Type": content_type}, timeout=60
                      ).status_code == 200


def test_a_connection_whose_headers_stall_is_closed_after_the_header_timeout(studio):
    from inference.server import server_config

    with uvicorn_in_thread(None, config=server_config(studio, port=0, header_timeout=1.0)) as url:
        host, port = url.removeprefix("http://").split(":")
        for head in (b"", b"GET /healthz HTTP/1.1\r\nHost: te"):  # nothing at all; half a header
            started = time.monotonic()
            with socket.create_connection((host, int(port)), timeout=30) as connection:
                connection.sendall(head)
                assert connection.recv(65536) == b""  # closed, without an answer: there is no request to answer
            assert 1.0 <= time.monotonic() - started < 10
        # Requests sent whole are answered, also after a pause longer than the deadline (the idle kept-alive
        # connection is closed at its next deadline, and the client opens a new one).
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
            time.sleep(1.5)
            assert client.get("/healthz").status_code == 200


def test_a_client_that_stops_reading_its_answer_is_cut_off_after_the_write_timeout():
    """The answer (64 MB) cannot fit the socket buffers: without the write deadline its task would wait for ever."""
    import uvicorn

    from inference.server import deadline_protocol

    ended = threading.Event()

    async def large_answer(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(64):
            await send({"type": "http.response.body", "body": bytes(1 << 20), "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        ended.set()

    config = uvicorn.Config(large_answer, host="127.0.0.1", port=0, log_level="error", lifespan="off",
                            http=deadline_protocol(header_seconds=10.0, write_seconds=1.0))
    with uvicorn_in_thread(None, config=config) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = socket.socket()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.connect((host, int(port)))
        started = time.monotonic()
        connection.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")  # and read nothing
        assert ended.wait(30), "the request's task still waits for a client that does not read"
        assert 1.0 <= time.monotonic() - started < 30
        connection.settimeout(30)
        received = 0
        with contextlib.suppress(ConnectionResetError):  # cut off (a reset), after what the buffers held
            while chunk := connection.recv(1 << 20):
                received += len(chunk)
        connection.close()
        assert received < 64 << 20
        # A client that reads gets the whole answer.
        with httpx.Client(base_url=url, timeout=60) as client:
            assert len(client.get("/").content) == 64 << 20


# --- Listing, health, docs --------------------------------------------------------------------------


def test_models_lists_cards_generator_and_limits(client):
    body = client.get("/v1/models").json()
    [model] = body["models"]
    assert model["name"] == "tiny.onnx" and model["class_names"] == CLASS_NAMES
    assert model["train_counts"] == CLASS_COUNTS and model["groups"] == ["many", "medium", "few"]
    assert model["group_rule"]["rule"] == "count" and model["preprocessing"]["input_size"] == [3, 32, 32]
    assert (model["method"], model["dataset"]) == ("ce", "toy-lt")
    assert body["default_model"] == "tiny.onnx"
    assert body["generator"]["available"] and body["generator"]["source"].endswith("generator")
    assert body["limits"]["max_batch"] == 4 and body["limits"]["max_body_bytes"] == max_body_bytes(LIMITS)


def test_health_and_docs(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == 1 and health["generator"]["available"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/classify", "/v1/generate", "/v1/models", "/healthz"} <= set(paths)
    assert paths["/v1/classify"]["post"]["summary"] and "413" in paths["/v1/classify"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


# --- The command line -------------------------------------------------------------------------------


def test_serve_cli_help():
    result = subprocess.run([sys.executable, "-m", "inference", "serve", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "--models-dir" in result.stdout and "--max-pixels" in result.stdout
    assert "--body-timeout" in result.stdout
    assert "--max-request-pixels" in result.stdout and "--max-parallel-decodes" in result.stdout
    assert "--header-timeout" in result.stdout and "--write-timeout" in result.stdout


def test_serve_defaults_are_the_servers():
    """The CLI writes the server's default timeouts out (so that --help loads no FastAPI); they must agree."""
    from inference import server
    from inference.__main__ import get_args_parser

    args = get_args_parser().parse_args(["serve"])
    assert (args.body_timeout, args.header_timeout, args.write_timeout) == (
        server.DEFAULT_BODY_TIMEOUT, server.DEFAULT_HEADER_TIMEOUT, server.DEFAULT_WRITE_TIMEOUT)


def test_serve_options_set_every_limit_of_the_table():
    from inference.__main__ import get_args_parser, serve_limits

    args = get_args_parser().parse_args(["serve", "--max-upload-mb", "2", "--max-batch", "3", "--max-generate", "4",
                                         "--max-pixels", "5000", "--max-request-pixels", "9000",
                                         "--max-parallel-decodes", "1"])
    assert serve_limits(args) == replace(Limits(), max_upload_bytes=2 * 2**20, max_batch=3, max_generate=4,
                                         max_pixels=5000, max_request_pixels=9000, max_parallel_decodes=1)
    for option in ("--max-batch", "--max-parallel-decodes", "--max-request-pixels"):
        for bad in ("0", "-1", "1.5", "many"):
            with pytest.raises(SystemExit) as exit_info:
                get_args_parser().parse_args(["serve", option, bad])
            assert exit_info.value.code == 2


def test_serve_cli_answers_health(models_dir, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    # Run from an empty folder: no model_zoo/cifar10_lt_generator there, so no generator by default.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(log, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "inference", "serve", "--models-dir", str(models_dir),
                                    "--port", str(port), "--max-batch", "2"], cwd=tmp_path, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        health = None
        deadline = time.monotonic() + 60
        while health is None:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
            except httpx.TransportError:
                time.sleep(0.2)
        assert health["models"] == 1 and not health["generator"]["available"]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json()["limits"]["max_batch"] == 2
    finally:
        process.terminate()
        process.wait(30)
    assert f"http://127.0.0.1:{port}/docs" in log.read_text()
