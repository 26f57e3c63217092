"""The HTTP inference service: classify uploads, make tail samples, list the models. Interactive docs at /docs.

    python -m inference serve --models-dir model_zoo --port 8000

    curl -F files=@cat.png -F files=@dog.jpg -F top_k=3 http://127.0.0.1:8000/v1/classify
    curl -H 'Content-Type: application/json' -d '{"class_name": "frog", "count": 4}' http://127.0.0.1:8000/v1/generate

It is a thin layer over `inference.service.Studio`, the same object the Gradio app uses: the models on
offer, image loading, the limits and the generator all live there. A `RequestError` becomes its HTTP status
with `{"detail": "..."}`, and so does every other failure: a request that does not fit the schema (422, one
sentence naming the field), a body that does not arrive in time (408), anything unforeseen (500; the traceback
goes to the server's log, never to the client). Request parameters are checked by the one table,
`inference.limits`, exactly as in the app and the CLI. Classification and generation are plain `def`
endpoints, so they run in the threadpool: a generation that takes a minute holds one thread, not the event loop.
"""

import asyncio
import base64
import io
import logging
import re
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.classifier import record
from inference.images import ImageTooLargeError
from inference.limits import PARAMETERS, number_from_text, shown_value
from inference.service import Generation, Limits, RequestError, Studio, png_bytes

log = logging.getLogger(__name__)

DEFAULT_BODY_TIMEOUT = 30.0  # seconds for a whole request body to arrive
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a request's line and headers to arrive
DEFAULT_WRITE_TIMEOUT = 60.0  # seconds an answer may wait, unread, for the client to take more of it

# Multipart wraps each file in a few hundred bytes of headers; these bounds are generous on purpose, so the
# body limit only ever stops requests that the per-file and per-batch limits would refuse anyway.
PART_OVERHEAD = 16 * 2**10
FORM_OVERHEAD = 64 * 2**10


def max_body_bytes(limits: Limits) -> int:
    return limits.max_batch * (limits.max_upload_bytes + PART_OVERHEAD) + FORM_OVERHEAD


# --- Response schemas (for /docs; the records themselves come from the service's to_dict) -------------


class ClassScore(BaseModel):
    index: int
    name: str
    probability: float
    train_count: int | None = Field(description="training images of the class; null when the model has no counts")
    group: Literal["many", "medium", "few"] | None = Field(description="head (many), medium or tail (few)")


class ImagePrediction(BaseModel):
    image: str = Field(description="the uploaded file's name, without any folders")
    prediction: str
    probability: float
    group: str | None
    train_count: int | None
    tau: float = Field(description="the post-hoc logit adjustment applied: logits − tau·log(training prior); 0 is the "
                                   "model as trained")
    warning: str | None = Field(None, description="why the prediction may mean little (an almost flat image: all "
                                                  "white, fully transparent, one pixel); absent when there is no doubt")
    top_k: list[ClassScore] = Field(description="the top_k classes, most probable first")
    classes: list[ClassScore] = Field(description="every class, in class-index order")


class ImageError(BaseModel):
    image: str = Field(description="the uploaded file's name, without any folders")
    error: str = Field(description="why the file cannot be used as an image")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ImagePrediction | ImageError] = Field(description="one record per uploaded file, in upload order")


class ErrorResponse(BaseModel):
    detail: str


def parameter_field(name: str, default, description: str):
    """A request field taken as sent, documented as its type and bounds in the one table."""
    parameter = PARAMETERS[name]
    schema = {"type": "integer" if parameter.kind is int else "number", "minimum": parameter.kind(parameter.low)}
    if not isinstance(parameter.high, str):  # a bound the operator sets is in GET /v1/models
        schema["maximum"] = parameter.kind(parameter.high)
    return Field(default, description=description, json_schema_extra=schema)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"class_name": "frog", "count": 4, "seed": 0}]})

    # The numbers are taken as sent (Any) and checked by the one table (inference.limits) in the Studio, so a bad
    # value gets the sentence the app and the CLI give; the schema still says what they are.
    class_name: str = Field(max_length=200, description="a class the generator makes (GET /v1/models lists them)")
    count: Any = parameter_field("count", 4, "how many images, 1 to the server's max_generate")
    seed: Any = parameter_field("seed", 0, "an image depends only on (seed, class, index), so it can be made again")
    steps: Any = parameter_field("steps", None, "denoising steps (1 to max_steps); the generator's default if absent")
    guidance: Any = parameter_field("guidance", None, "classifier-free guidance scale; the generator's default if absent")
    first_index: Any = parameter_field("first_index", 0, "index of the first image in the class: first_index 4 "
                                                         "continues a count-4 run")
    model: str | None = Field(None, description="the classifier that recognises the images; the default model if absent")
    format: Literal["json", "zip"] = Field("json", description="json: base64 PNGs inline; zip: the PNGs plus "
                                                                "generation.json as application/zip")


class GeneratedImage(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    seed: int = Field(description="the image's own seed, derived from (seed, class, index)")
    predicted: str = Field(description="the class the model sees in the image")
    probability: float = Field(description="the model's probability of `predicted`")
    intended_probability: float | None = Field(description="its probability of class_name; null if it lacks it")
    matches: bool = Field(description="the model recognises the image as the class asked for")
    file_name: str
    png_base64: str


class GenerateResponse(BaseModel):
    model_config = ConfigDict(extra="allow")  # every setting Generation records, enough to make the images again

    class_name: str
    class_index: int
    count: int
    seed: int
    first_index: int
    steps: int
    guidance: float
    seeds: list[int]
    generator: dict[str, Any]
    model: str
    images: list[GeneratedImage]


class ModelInfo(BaseModel):
    name: str
    class_names: list[str]
    train_counts: list[int] | None = Field(description="training images per class; null when unknown")
    groups: list[str] | None = Field(description="many / medium / few per class; null when unknown")
    group_rule: dict[str, Any]
    preprocessing: dict[str, Any]
    method: str
    dataset: str
    imbalance_factor: float | None
    quantization: dict[str, Any] | None = Field(
        default=None, description="for an int8 model: its format, calibration and fp32 vs int8 test accuracy; "
                                  "null for a float32 model")


class ModelUnavailable(BaseModel):
    name: str
    error: str


class ModelsResponse(BaseModel):
    models: list[ModelInfo | ModelUnavailable]
    default_model: str | None
    generator: dict[str, Any] = Field(description="the generator's source and, once it has been used, what it is")
    limits: dict[str, int]


class Health(BaseModel):
    status: Literal["ok"]
    models: int = Field(description="how many models are on offer")
    generator: dict[str, Any]


# --- The app --------------------------------------------------------------------------------------


def create_app(studio: Studio, body_timeout: float = DEFAULT_BODY_TIMEOUT) -> FastAPI:
    """The API over `studio`; a request body must arrive whole within `body_timeout` seconds."""
    limits = studio.limits
    app = FastAPI(
        title="LongTail Studio API",
        version="1",
        summary="Long-tailed image classification: top-k with head/medium/tail groups and training counts, "
                "plus class-conditional tail samples.",
        description=(
            "Every prediction says whether its class is a head, medium or tail class of the training data and how "
            "many training images it had. The generator makes new images of a (rare) class, each checked by a "
            "classifier.\n\n"
            f"Limits of this server: {limits.max_batch} images of at most {limits.max_upload_text} and "
            f"{limits.max_pixels / 1e6:g} megapixels each per classification; {limits.max_generate} images and "
            f"{limits.max_steps} steps per generation; a request body must arrive within {body_timeout:g} s. "
            "Every error is `{\"detail\": \"<one sentence>\"}` with 404 (unknown model), 408 (body too slow), "
            "413 (too large), 422 (invalid request), 429 (generator busy), 503 (no generator) or 500 (a fault of "
            "the server, logged there)."),
    )
    add_middlewares(app, limits, body_timeout)
    add_error_handlers(app)

    errors = {status: {"model": ErrorResponse} for status in (404, 413)}

    # exclude_unset: a record carries `warning` only when there is one, as `predict` writes it.
    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_unset=True,
              summary="Classify one or several images",
              responses={**errors, 422: {"description": "no uploaded file is a readable image (the body lists why "
                                                        "for each), or a form field is invalid"}})
    def classify(
        files: Annotated[list[UploadFile], File(description=f"the images; repeat the field for several (at most "
                                                            f"{limits.max_batch}, each at most {limits.max_upload_text})")],
        model: Annotated[str | None, Form(description="a model file name from GET /v1/models; default model if absent")] = None,
        top_k: Annotated[str, Form(description="how many classes to list per image", json_schema_extra={
            "type": "integer", "minimum": PARAMETERS["top_k"].low, "maximum": PARAMETERS["top_k"].high, "default": 5})] = "5",
        tau: Annotated[str, Form(description="post-hoc logit adjustment: logits − tau·log(training prior); 0 is the "
                                             "model as trained, above 0 favours the tail, below 0 the head",
                                 json_schema_extra={"type": "number", "minimum": PARAMETERS["tau"].low,
                                                    "maximum": PARAMETERS["tau"].high, "default": 0})] = "0",
    ):
        """One record per file, in upload order, shaped like `python -m inference predict` output. A file that
        is not a readable image gets `{"image", "error"}` and the others are still classified; when none is
        readable the answer is 422 with the same records. Files or images over the limits refuse the whole
        request with 413."""
        top_k = studio.checked("top_k", number_from_text(top_k))  # a form field is text: "3" is 3, as in the CLI
        tau = studio.checked("tau", number_from_text(tau))
        name = studio.catalog.get(model).path.name  # an unknown model is a 404 before any file is read
        names = [upload_name(upload.filename, i) for i, upload in enumerate(files)]
        for upload, upload_label in zip(files, names):
            too_large = limits.file_too_large(upload_label, upload.size or 0)
            if too_large:
                raise RequestError(too_large, status=413)
        results = studio.classify(name, [NamedUpload(upload, n) for upload, n in zip(files, names)], top_k=top_k,
                                  tau=tau)
        too_large = next((r for r in results if isinstance(r, ImageTooLargeError)), None)
        if too_large is not None:
            raise RequestError(str(too_large), status=413)
        records = [record(n, r) for n, r in zip(names, results)]
        if all("error" in record for record in records):
            return JSONResponse({"detail": "none of the files is a readable image", "model": name,
                                 "results": records}, status_code=422)
        return {"model": name, "results": records}

    @app.post("/v1/generate", response_model=GenerateResponse, summary="Make new images of a class",
              responses={**errors, 200: {"content": {"application/zip": {}},
                                         "description": "JSON with base64 PNGs, or with format zip the PNGs plus "
                                                        "generation.json"},
                         422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
    def generate(request: GenerateRequest):
        """`count` new images of `class_name`, each recognised by the classifier `model`: the class it sees, its
        probability, and its probability of the class asked for. The settings in the answer (seeds, steps,
        guidance, generator) make the same images again. One generation runs at a time; a request that would
        wait behind too many others gets 429."""
        generation = studio.generate(request.model, request.class_name, count=request.count, seed=request.seed,
                                     steps=request.steps, guidance=request.guidance, first_index=request.first_index)
        if request.format == "zip":
            seed = generation.settings["seed"]  # as checked: the request's may be 3.0
            file_name = re.sub(r"[^\w.-]", "_", f"{request.class_name}_seed{seed}.zip", flags=re.ASCII)
            return Response(generation.zip_bytes(), media_type="application/zip",
                            headers={"Content-Disposition": f'attachment; filename="{file_name}"'})
        return generation_record(generation)

    @app.get("/v1/models", response_model=ModelsResponse, summary="The models, the generator and the limits")
    def models():
        """Every model on offer with its classes, training counts, head/medium/tail groups and preprocessing (from
        the model card inside the ONNX file); a model that cannot be opened is listed with its error."""
        return {"models": [describe_model(studio, name) for name in studio.catalog.names()],
                "default_model": studio.catalog.default(), "generator": studio.generator.describe(),
                "limits": {**asdict(limits), "max_body_bytes": max_body_bytes(limits)}}

    @app.get("/healthz", response_model=Health, summary="Liveness, without loading any model")
    def healthz():
        """Answers at once, even while a generation runs: it counts the model files and opens nothing."""
        return {"status": "ok", "models": len(studio.catalog.names()), "generator": studio.generator.describe()}

    return app


def add_middlewares(app: FastAPI, limits: Limits, body_timeout: float) -> None:
    # The last one added runs first: unexpected errors are caught around everything else.
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes(limits))
    app.add_middleware(BodyTimeout, seconds=body_timeout)
    app.add_middleware(UnexpectedErrors)


def add_error_handlers(app: FastAPI) -> None:
    """Every error the API gives is `{"detail": "<one sentence>"}`."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_sentence(error.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": http_error_sentence(request, error)}, status_code=error.status_code,
                            headers=error.headers)


def validation_sentence(problems: list[dict]) -> str:
    """FastAPI's list of validation problems as one sentence that names the field (and how many more there are)."""
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path", "header", "cookie"))
    if first["type"] == "json_invalid":
        sentence = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})"
    elif first["type"] == "missing":
        sentence = f"{field} is required"
    elif not field:  # the body as a whole: not an object, or not sent as JSON
        sentence = ("the request body must be a JSON object (Content-Type: application/json); got "
                    f"{shown_value(first.get('input'))}")
    else:
        message = first["msg"][:1].lower() + first["msg"][1:]
        sentence = f"{field}: {message}; got {shown_value(first.get('input'))}"
    more = len(problems) - 1
    return sentence + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def http_error_sentence(request: Request, error: HTTPException) -> str:
    """Starlette's own errors (no such path, wrong method) as sentences; ours (408, 413) are sentences already."""
    if error.status_code == 404 and error.detail == "Not Found":
        return f"there is no {request.url.path} here: the API is /v1/classify, /v1/generate, /v1/models and /healthz"
    if error.status_code == 405 and error.detail == "Method Not Allowed":
        return f"{request.url.path} does not take {request.method} requests (see /docs)"
    if error.status_code == 400 and error.detail == "There was an error parsing the body":
        return ("the request body could not be parsed: send JSON (Content-Type: application/json) or a multipart "
                "form, as /docs shows")
    return str(error.detail)


def upload_name(filename: str | None, index: int) -> str:
    """What records and messages call an upload: the base name of the client's file name ("../../x.png" and
    "C:\\fakepath\\x.png" are "x.png"). Only ever a label; the server reads the uploaded bytes, never a path."""
    base = re.split(r"[\\/]", filename or "")[-1]
    return base if base not in ("", ".", "..") else f"file {index}"


class NamedUpload:
    """An upload as the image loader reads it: a binary file object with the upload's `name` (the loader names the
    file in its messages). Its bytes stay in the request's spooled file (in memory up to 1 MB, on disk beyond) until
    its own decode reads them, one file at a time, so a request's files are never all in memory at once."""

    def __init__(self, upload: UploadFile, name: str):
        self._file = upload.file
        self.name = name

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def generation_record(generation: Generation) -> dict:
    record = generation.to_dict()
    for item, name, image in zip(record["images"], generation.file_names(), generation.images):
        item.update(file_name=name, png_base64=base64.b64encode(png_bytes(image)).decode("ascii"))
    return record


def describe_model(studio: Studio, name: str) -> dict:
    try:
        classifier = studio.catalog.get(name)
    except RequestError as error:
        return {"name": name, "error": str(error)}
    card, known = classifier.card, classifier.has_training_counts
    return {"name": name, "class_names": card.class_names, "train_counts": card.class_counts if known else None,
            "groups": card.class_groups if known else None, "group_rule": card.group_rule,
            "preprocessing": asdict(card.preprocessing), "method": card.method, "dataset": card.dataset,
            "imbalance_factor": card.imbalance_factor, "quantization": card.quantization or None}


class BodyTooLarge(HTTPException):
    """Raised from `receive`: FastAPI lets an HTTPException out of body parsing, so it becomes the 413 answer."""


class BodySizeLimit:
    """Refuse a request body over `max_bytes` with 413 before anything parses or spools it: at once when its
    Content-Length says so, and for a chunked body (no Content-Length) as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"the request body is larger than this server's limit of {max_bytes / 2**20:.1f} MB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(413, self.detail)
            return message

        await self.app(scope, counting_receive, send)


class BodyTimedOut(HTTPException):
    """Raised from `receive`, like BodyTooLarge, so it becomes the 408 answer."""


class BodyTimeout:
    """Answer 408 when a request body has not arrived whole within `seconds` of the request's start: without it a
    client that sends half a body and stalls holds its connection and a worker forever. Only waiting for the client
    counts: body bytes that have already arrived are handed over even when the server is late to ask for them."""

    def __init__(self, app: ASGIApp, seconds: float):
        self.app = app
        self.seconds = seconds
        self.detail = f"the request body did not arrive within {seconds:g} s; send it whole, without pauses"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_complete = False

        async def timed_receive() -> Message:
            nonlocal body_complete
            if body_complete:  # what follows is the wait for a disconnect, which is not bounded
                return await receive()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimedOut(408, self.detail, headers={"Connection": "close"}) from None
            body_complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


class UnexpectedErrors:
    """Anything the handlers did not foresee: the traceback goes to the server's log, the client gets a 500 with one
    sentence, never the traceback (nor the exception's text, which may name server paths)."""

    detail = "the server failed on this request (an internal error, logged on the server); please report it"

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        response_started = False

        async def watched_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not response_started:  # else the half-sent answer can only be cut off, which returning does
                await JSONResponse({"detail": self.detail}, status_code=500)(scope, receive, send)


def deadline_protocol(header_seconds: float, write_seconds: float) -> type:
    """uvicorn's h11 protocol with two deadlines uvicorn lacks, each closing the connection of a client that stalls:

    - a request's line and headers must arrive within `header_seconds` of the connection opening, or of the previous
      answer on a kept-alive one (uvicorn's keep-alive timer stops at the first byte of the next request, so a
      client that sends a few bytes of headers and stalls would hold its socket for ever);
    - an answer the client stops reading (the socket's and the transport's buffers full) may wait `write_seconds`
      for it to read on; then the connection is cut, which also ends the request's task (uvicorn would keep it,
      with the rest of its answer in memory, waiting for ever)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        header_deadline: asyncio.TimerHandle | None = None
        write_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:  # a request's headers are all in
                self._disarm_header_deadline()

        def on_response_complete(self) -> None:
            self._arm_header_deadline()  # before: answering may start a pipelined request at once, which disarms it
            super().on_response_complete()

        def pause_writing(self) -> None:  # the transport's buffer is above its high-water mark: nobody is reading
            super().pause_writing()
            self._disarm_write_deadline()
            self.write_deadline = self.loop.call_later(write_seconds, self._reader_too_slow)

        def resume_writing(self) -> None:
            self._disarm_write_deadline()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            self._disarm_write_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self.header_deadline = self.loop.call_later(header_seconds, self._headers_too_slow)

        def _disarm_header_deadline(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def _disarm_write_deadline(self) -> None:
            if self.write_deadline is not None:
                self.write_deadline.cancel()
                self.write_deadline = None

        def _headers_too_slow(self) -> None:
            # No answer is possible: HTTP has no response before a request has been read. The socket is closed.
            if not self.transport.is_closing():
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:
                    pass
                self.transport.close()

        def _reader_too_slow(self) -> None:
            # abort, not close: close would wait, for ever, to flush the buffered answer to a client that does not read.
            # connection_lost follows; it marks the request disconnected and releases its waiting send.
            self.write_deadline = None
            log.warning("a client stopped reading its answer for %g s; its connection is closed", write_seconds)
            self.transport.abort()

    return DeadlineH11Protocol


def server_config(studio: Studio, host: str = "127.0.0.1", port: int = 8000,
                  body_timeout: float = DEFAULT_BODY_TIMEOUT, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                  write_timeout: float = DEFAULT_WRITE_TIMEOUT):
    """The uvicorn configuration `serve` runs: the API over `studio`, its timeouts, uvicorn logging only warnings."""
    import uvicorn

    return uvicorn.Config(create_app(studio, body_timeout), host=host, port=port, log_level="warning",
                          http=deadline_protocol(header_timeout, write_timeout))


def serve(studio: Studio, host: str = "127.0.0.1", port: int = 8000, body_timeout: float = DEFAULT_BODY_TIMEOUT,
          header_timeout: float = DEFAULT_HEADER_TIMEOUT, write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> None:
    """Run the service with uvicorn until interrupted; we log where the docs are."""
    import uvicorn

    log.setLevel(logging.INFO)
    log.info("LongTail Studio API on http://%s:%d (docs: http://%s:%d/docs)", host, port, host, port)
    uvicorn.Server(server_config(studio, host, port, body_timeout, header_timeout, write_timeout)).run()
