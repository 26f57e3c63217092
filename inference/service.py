"""What the Gradio app and the HTTP service share: the models on offer, the tail-sample generator, and
the limits on what one request may ask for.

    catalog = ModelCatalog("model_zoo", hub_refs=["hf://alice/c10-lt@0123…/model.onnx"])
    studio = Studio(catalog, GeneratorService("model_zoo/cifar10_lt_generator"), Limits())
    results = studio.classify("cifar10_lt_ce_resnet32.onnx", [b"…png bytes…"], top_k=5, tau=1.0)
    generation = studio.generate("cifar10_lt_ce_resnet32.onnx", "frog", count=4, seed=0)

Both front ends turn a `RequestError` into their own kind of error: a message in the UI, or an HTTP
status with a JSON body. Nothing here knows about Gradio or FastAPI.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import zipfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from inference.classifier import MODEL_ERRORS, OnnxClassifier, Prediction, list_models, resolve_model
from inference.generator_folder import GeneratorError, GeneratorInfo, is_generator_folder, read_generator_info
from inference.images import Header, ImageLoadError, ImageSource, read_header, release_freed_memory
from inference.limits import Limits, ParameterError, check

log = logging.getLogger(__name__)

DEFAULT_MODEL = "cifar10_lt_concutmix_efficientnet_lite0.onnx"
Progress = Callable[[int, int], None]  # (finished denoising steps, total steps)


class RequestError(ValueError):
    """A request that cannot be served as asked; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --- Models -----------------------------------------------------------------------------------


# A model name is a plain file name, checked before the file system sees it: a request's name becomes a path
# only once it is short enough for any file system (a longer one made is_file() raise "File name too long")
# and holds no separator, no "..", no control or shell characters.
MAX_MODEL_NAME_BYTES = 255
MODEL_NAME_PUNCTUATION = ". _ - ( ) + , = @ ~"
MODEL_NAME = re.compile(r"\w[\w .()+,=@~-]*\.onnx")


def is_model_name(name) -> bool:
    return (isinstance(name, str) and len(name.encode("utf-8", "surrogatepass")) <= MAX_MODEL_NAME_BYTES
            and MODEL_NAME.fullmatch(name) is not None)


def shown_name(name) -> str:
    """A requested name as messages quote it: the start of a long one, never megabytes of it."""
    if not isinstance(name, str):
        return f"{type(name).__name__} {name!r}"[:80]
    if len(name) <= 60:
        return repr(name)
    return f"{name[:57]!r}... ({len(name.encode('utf-8', 'surrogatepass')):,} bytes)"


class ModelCatalog:
    """The classifiers on offer, by file name: the `.onnx` files of a local folder (listed afresh on every
    call, so a new export shows up without a restart) plus files fetched from the Hugging Face Hub at
    pinned revisions. Only these names can be opened, so a request cannot reach any other file."""

    def __init__(self, models_dir: str | Path, hub_refs: Sequence[str] = ()):
        self.models_dir = Path(models_dir)
        self.hub_models: dict[str, Path] = {}
        self.problems: list[str] = []  # Hub models that could not be fetched: shown, not fatal
        for ref in hub_refs:
            from inference.hub import HubError, hub_file  # only servers that use the Hub need it

            try:
                path = hub_file(ref)
            except HubError as error:
                log.error("%s", error)
                self.problems.append(str(error))
                continue
            if not is_model_name(path.name):
                self.problems.append(f"{ref}: {shown_name(path.name)} is not a model name a request can ask for "
                                     f"(an .onnx file name: letters, digits, spaces and {MODEL_NAME_PUNCTUATION}); "
                                     "this one is left out")
                continue
            if path.name in self.hub_models or path.name in self._local_names():
                self.problems.append(f"{ref}: a model called {path.name} is already on offer; this one is left out")
                continue
            self.hub_models[path.name] = path
        self._loaded: dict[Path, tuple[int, OnnxClassifier]] = {}
        self._lock = threading.Lock()

    def _local_names(self) -> list[str]:
        # Only names a request could ask for: what is listed is what can be opened.
        return [path.name for path in list_models(self.models_dir) if is_model_name(path.name)]

    def names(self) -> list[str]:
        return self._local_names() + sorted(self.hub_models)

    def default(self) -> str | None:
        names = self.names()
        return DEFAULT_MODEL if DEFAULT_MODEL in names else next(iter(names), None)

    def path(self, name: str) -> Path:
        if not is_model_name(name):  # before any path is built from it
            raise RequestError(f"{shown_name(name)} is not a model name (an .onnx file name of at most "
                               f"{MAX_MODEL_NAME_BYTES} bytes: letters, digits, spaces and {MODEL_NAME_PUNCTUATION}); "
                               f"the models on offer are {self.names()}", status=404)
        if name in self.hub_models:
            return self.hub_models[name]
        try:
            return resolve_model(self.models_dir, name)
        except ValueError as error:
            raise RequestError(f"{error}; the models on offer are {self.names()}", status=404) from error

    def get(self, name: str | None) -> OnnxClassifier:
        """The classifier for a model name (the default model when None), opened once per file version."""
        name = name or self.default()
        if name is None:
            raise RequestError(f"there are no models: put exported .onnx files in {self.models_dir}", status=404)
        path = self.path(name)
        mtime = path.stat().st_mtime_ns
        with self._lock:
            cached = self._loaded.get(path)
            if cached is None or cached[0] != mtime:
                try:
                    cached = (mtime, OnnxClassifier(path))
                except MODEL_ERRORS as error:
                    raise RequestError(f"cannot use model {name}: {error}", status=422) from error
                self._loaded[path] = cached
            return cached[1]


# --- Generation -------------------------------------------------------------------------------


@dataclass
class Recognition:
    """What the classifier makes of a generated image: is it useful data for the class it was made for?"""

    intended: str  # the class the image was generated for
    predicted: str
    probability: float  # of the predicted class
    intended_probability: float | None  # None when the classifier does not know the intended class

    @property
    def matches(self) -> bool:
        return self.predicted == self.intended

    def caption(self) -> str:
        return f"recognised as {self.predicted} · {self.probability:.2f}"

    def to_dict(self) -> dict:
        return {"predicted": self.predicted, "probability": self.probability,
                "intended_probability": self.intended_probability, "matches": self.matches}


@dataclass
class Generation:
    images: list[Image.Image]
    recognitions: list[Recognition]
    settings: dict  # class, count, seed, steps, guidance, generator, model: enough to make the same images again

    def to_dict(self) -> dict:
        return {**self.settings, "images": [{"index": self.settings["first_index"] + i, "seed": seed, **r.to_dict()}
                                            for i, (seed, r) in enumerate(zip(self.settings["seeds"],
                                                                              self.recognitions))]}

    def file_names(self) -> list[str]:
        name = self.settings["class_name"].replace("/", "_")
        return [f"{name}_seed{self.settings['seed']}_{self.settings['first_index'] + i:03d}.png"
                for i in range(len(self.images))]

    def zip_bytes(self) -> bytes:
        """The PNGs plus generation.json (settings and recognitions), ready to download."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, image in zip(self.file_names(), self.images):
                archive.writestr(name, png_bytes(image))
            archive.writestr("generation.json", json.dumps(self.to_dict(), indent=2))
        return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def recognise(classifier: OnnxClassifier, images: Sequence[Image.Image], intended: str) -> list[Recognition]:
    names = classifier.class_names
    intended_index = names.index(intended) if intended in names else None
    recognitions = []
    for row in classifier.probabilities(images):
        best = int(row.argmax())
        recognitions.append(Recognition(intended, names[best], float(row[best]),
                                        None if intended_index is None else float(row[intended_index])))
    return recognitions


# --- The generator: where it comes from, opening it, one run at a time ------------------------------


class GeneratorSource:
    """Where the generator comes from: the configured source with an hf:// reference to our generator
    resolved to its folder in the local cache (once; a failure is remembered), and, for our class-conditional
    generator, its generator.json, read without loading the UNet (so the app can list classes and defaults
    before the first generation)."""

    def __init__(self, source: str | Path | None, revision: str | None = None):
        self.source = source  # None: no generator configured
        self.revision = revision
        self.error: str | None = None  # why the source cannot be resolved, once that is known
        self._resolved: tuple[str, str | None] | None = None
        self._lock = threading.Lock()  # one Hub look-up, even when the first requests come together

    def local(self) -> tuple[str, str | None]:
        """(source, revision), an hf:// reference to our generator resolved to its local folder; a
        `RequestError` (503) when it cannot be."""
        with self._lock:
            if self._resolved is None and self.error is None:
                from inference.hub import HubError, resolve_generator_source  # only a server with a generator needs it

                try:
                    self._resolved = resolve_generator_source(str(self.source), self.revision)
                except HubError as error:
                    self.error = str(error)
            if self.error is not None:
                raise RequestError(f"the generator cannot be used: {self.error}", status=503)
            return self._resolved

    def is_class_conditional(self) -> bool:
        if self.source is None:
            return False
        try:
            return is_generator_folder(self.local()[0])
        except RequestError:
            return False

    def info(self) -> GeneratorInfo | None:
        """generator.json of our class-conditional generator; None for other generators, and for one whose
        generator.json is broken (opening it then says why)."""
        if not self.is_class_conditional():
            return None
        try:
            return read_generator_info(self.local()[0])
        except GeneratorError:
            return None


class GeneratorOpener:
    """Opens the generator on first use and keeps it. A failure to open is remembered, so an offline Hub
    model fails fast on every later request instead of retrying the download each time."""

    def __init__(self, source: GeneratorSource, device: str | None = None, text_to_image_options: dict | None = None):
        self.source = source
        self.device = device
        self.text_to_image_options = dict(text_to_image_options or {})
        self.generator = None  # the opened generator, once it is
        self.error: str | None = None  # why it cannot be opened, once that is known
        self._lock = threading.Lock()  # opened once, even when the first requests come together

    def get(self, classifier: OnnxClassifier | None = None):
        """The opened generator, or a `RequestError` (503) saying why there is none."""
        with self._lock:
            if self.generator is None and self.error is None:
                try:
                    self.generator = self._open(classifier)
                except GeneratorError as error:
                    self.error = str(error)
                    log.error("generator %s cannot be opened: %s", self.source.source, error)
            if self.error is not None:
                raise RequestError(f"the generator cannot be used: {self.error}", status=503)
            return self.generator

    def _open(self, classifier: OnnxClassifier | None):
        from inference.generators import open_generator  # torch and diffusers: only once a generation is asked for

        source, revision = self.source.local()
        if is_generator_folder(source):
            generator = open_generator(source, device=self._device())
            # fp32 makes an image independent of how many were asked for (bf16 rounding depends on the
            # batch). It costs time: 1.5x per image at 4 images on CPU, 2.1x at 16 (docs/benchmarks.md), which
            # the UNet's ONNX export mostly wins back (open_generator samples fp32 on CPU through it).
            generator.bf16 = False
            return generator
        if classifier is None:  # not remembered: a later request with a model can open it
            raise RequestError("the generator cannot be used: a text-to-image generator takes its class names from "
                               "a model; there is none", status=503)
        return open_generator(source, class_names=list(classifier.class_names),
                              image_size=classifier.card.preprocessing.input_size[1], revision=revision,
                              device=self._device(), **self.text_to_image_options)

    def _device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class RunQueue:
    """One run at a time (a generation already uses every core or the whole GPU; side by side they would
    only slow each other), with a bound on how many may wait their turn."""

    def __init__(self):
        self.pending = 0  # the running request and those waiting behind it
        self._count_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def run(self, work: Callable[[], list[Image.Image]], max_waiting: int) -> list[Image.Image]:
        """`work()` once the runs before it are done; a `RequestError` (429) when `max_waiting` already wait."""
        with self._count_lock:
            if self.pending > max_waiting:
                raise RequestError(f"the generator is busy with {self.pending} requests; try again shortly",
                                   status=429)
            self.pending += 1
        try:
            with self._run_lock:
                return work()
        finally:
            with self._count_lock:
                self.pending -= 1


@dataclass
class GeneratorService:
    """The one tail-sample generator of a server: where it comes from (`GeneratorSource`), opened on first
    use (`GeneratorOpener`), run one request at a time (`RunQueue`).

    `source` is anything `open_generator` takes: our class-conditional folder, a diffusers text-to-image
    folder or Hub id (with `revision`), or an hf:// reference. A text-to-image model learns the class
    names and image size from the classifier whose classes are asked for."""

    source: str | Path | None
    revision: str | None = None
    device: str | None = None
    text_to_image_options: dict = field(default_factory=dict)
    origin: GeneratorSource = field(init=False, repr=False)
    opener: GeneratorOpener = field(init=False, repr=False)
    queue: RunQueue = field(init=False, repr=False)

    def __post_init__(self):
        self.origin = GeneratorSource(self.source, self.revision)
        self.opener = GeneratorOpener(self.origin, self.device, self.text_to_image_options)
        self.queue = RunQueue()

    def local_source(self) -> tuple[str, str | None]:
        """The source with an hf:// reference to our generator resolved to its folder in the local cache."""
        return self.origin.local()

    def is_class_conditional(self) -> bool:
        return self.origin.is_class_conditional()

    def class_conditional_info(self) -> GeneratorInfo | None:
        """generator.json of our class-conditional generator, without loading it; None for other generators."""
        return self.origin.info()

    def defaults(self) -> tuple[int, float]:
        """Default (steps, guidance), known before the generator is loaded."""
        if self.opener.generator is not None:
            return self.opener.generator.default_steps, self.opener.generator.default_guidance
        info = self.origin.info()
        if info is not None:
            return info.default_steps, float(info.default_guidance)
        from inference.generators import TextToImageGenerator

        return TextToImageGenerator.default_steps, TextToImageGenerator.default_guidance

    def generator(self, classifier: OnnxClassifier | None = None):
        """The opened generator, fitted to `classifier`; a `RequestError` with the reason when there is none."""
        if self.source is None:
            raise RequestError("this server has no generator configured", status=503)
        generator = self.opener.get(classifier)
        if generator.kind == "text_to_image" and classifier is not None:
            # The pipeline is shared; only the class names and the output size follow the model.
            generator = replace(generator, class_names=list(classifier.class_names),
                                image_size=classifier.card.preprocessing.input_size[1])
        return generator

    def describe(self) -> dict:
        """For /v1/models and the UI, without opening a generator that has not been used yet."""
        if self.source is None:
            return {"available": False, "error": "no generator configured"}
        opened = self.opener.generator
        info = {"source": str(self.source), "revision": self.revision, "loaded": opened is not None}
        error = self.origin.error or self.opener.error
        if error is not None:
            return {**info, "available": False, "error": error}
        if opened is not None:
            return {**info, "available": True, **opened.describe()}
        return {**info, "available": True}

    def run(self, generate: Callable[[], list[Image.Image]], max_waiting: int) -> list[Image.Image]:
        """Run one generation at a time; refuse a request when `max_waiting` are already queued."""
        return self.queue.run(generate, max_waiting)


# --- The service ------------------------------------------------------------------------------


@dataclass
class ClassChoice:
    """One class the generator can make, with what the current model knows about it."""

    name: str
    index: int
    train_count: int | None
    group: str | None


PREVIEW_SIZE = 384  # pixels: the longer side of the copy of an upload a front end gets to show (the app's gallery)


@dataclass
class Classified:
    """One input of a classification: a preview of the image (at most PREVIEW_SIZE a side; None when it could not
    be read or no preview was asked for) and its prediction, or the `ImageLoadError` saying why there is none."""

    image: Image.Image | None
    result: Prediction | ImageLoadError


@dataclass
class ModelInput:
    """What is kept of one upload once it is decoded: its input tensor, or why there is none."""

    tensor: np.ndarray | None = None  # (3, height, width), as the model takes it
    warning: str | None = None
    preview: Image.Image | None = None
    error: ImageLoadError | None = None


class DecodeSlots:
    """At most `count` images decoded at once over all requests; a decode that holds several copies of its pixels
    (`Header.decodes_heavily`) takes every slot, so it runs alone. Decodes start in the order they asked (a ticket
    each), so a stream of light decodes never starves a heavy one waiting for every slot to be free."""

    def __init__(self, count: int):
        self.count = count
        self.free = count
        self._changed = threading.Condition()
        self._next_ticket = 0  # the ticket the next decode to ask gets
        self._now_serving = 0  # the ticket whose turn it is to start

    @contextmanager
    def taken(self, header: Header):
        slots = self.count if header.decodes_heavily else 1
        with self._changed:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._changed.wait_for(lambda: self._now_serving == ticket and self.free >= slots)
            self.free -= slots
            self._now_serving += 1
            self._changed.notify_all()  # the next ticket may start too, if a slot is left
        try:
            yield
        finally:
            with self._changed:
                self.free += slots
                self._changed.notify_all()


class Studio:
    def __init__(self, catalog: ModelCatalog, generator: GeneratorService | None = None,
                 limits: Limits | None = None):
        self.catalog = catalog
        self.generator = generator or GeneratorService(None)
        self.limits = limits or Limits()
        # Each decode holds one image's pixels; bounding how many run at once bounds the memory of any load.
        self.decode_slots = DecodeSlots(self.limits.max_parallel_decodes)

    def checked(self, name: str, value):
        """A request parameter as the one table (inference/limits.py) takes it; its sentence as a 422 if not."""
        try:
            return check(name, value, self.limits)
        except ParameterError as error:
            raise RequestError(str(error), status=422) from error

    # Classification

    def check_request(self, sources: Sequence[ImageSource]) -> list[Header]:
        """Each file's header, once the request is known to be within the limits: a request with no images, too
        many, or more pixels in all than `max_request_pixels` is refused before any is decoded (an image above the
        per-image limit is refused by itself and costs nothing)."""
        if not sources:
            raise RequestError("no images were sent", status=400)
        if len(sources) > self.limits.max_batch:
            raise RequestError(f"{len(sources)} images in one request; the limit is {self.limits.max_batch}",
                               status=413)
        headers = [read_header(source) for source in sources]
        pixels = sum(header.pixels for header in headers if header.pixels <= self.limits.max_pixels)
        if pixels > self.limits.max_request_pixels:
            raise RequestError(f"the {len(sources)} images of this request hold {pixels / 1e6:,.1f} megapixels in all; "
                               f"the limit is {self.limits.max_request_pixels / 1e6:g} megapixels per request, so "
                               "send fewer or smaller images", status=413)
        return headers

    def classify(self, model_name: str | None, sources: Sequence[ImageSource], top_k: int = 5, tau: float = 0.0,
                 ) -> list[Prediction | ImageLoadError]:
        """One prediction per image, in order; an unreadable image gets its `ImageLoadError` in its place. `tau`:
        post-hoc logit adjustment, logits − τ·log(training prior) (0: the model as trained; a model without
        training counts refuses any other value with 422)."""
        return [item.result for item in self._classify(model_name, sources, top_k, tau, previews=False)]

    def classify_with_images(self, model_name: str | None, sources: Sequence[ImageSource], top_k: int = 5,
                             tau: float = 0.0) -> list[Classified]:
        """As `classify`, with a preview of each image (at most PREVIEW_SIZE pixels a side), for a front end that
        shows them (the app's gallery)."""
        return self._classify(model_name, sources, top_k, tau, previews=True)

    def _classify(self, model_name: str | None, sources: Sequence[ImageSource], top_k: int, tau: float,
                  previews: bool) -> list[Classified]:
        top_k = self.checked("top_k", top_k)
        tau = self.checked("tau", tau)
        classifier = self.catalog.get(model_name)
        refusal = classifier.tau_refusal(tau)
        if refusal:  # before any image is decoded
            raise RequestError(refusal, status=422)
        headers = self.check_request(sources)
        inputs = [self._model_input(classifier, source, header, previews) for source, header in zip(sources, headers)]
        readable = [item for item in inputs if item.error is None]
        predictions = iter(classifier.predict_tensors([item.tensor for item in readable], top_k,
                                                      [item.warning for item in readable], tau))
        return [Classified(item.preview, item.error or next(predictions)) for item in inputs]

    def _model_input(self, classifier: OnnxClassifier, source: ImageSource, header: Header, preview: bool,
                     ) -> ModelInput:
        """One upload decoded (no larger than the model needs), turned into its input tensor and dropped, with at
        most `max_parallel_decodes` of them at a time over all requests; its memory goes back at once."""
        try:
            with self.decode_slots.taken(header):
                return self._decoded_input(classifier, source, preview)
        finally:
            release_freed_memory()

    def _decoded_input(self, classifier: OnnxClassifier, source: ImageSource, preview: bool) -> ModelInput:
        try:
            decoded = classifier.decode(source, max_pixels=self.limits.max_pixels)
        except ImageLoadError as error:
            return ModelInput(error=error)
        tensor = classifier.input_tensor(decoded)
        if preview:
            decoded.image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE), Image.Resampling.LANCZOS)
        return ModelInput(tensor, decoded.warning, decoded.image if preview else None)

    # Generation

    def class_choices(self, model_name: str | None) -> list[ClassChoice]:
        """The classes the generator makes, rarest first by the model's training counts (its tail first)."""
        classifier = self._classifier_or_none(model_name)
        names = self._generator_class_names(classifier)
        counts, groups = self._class_statistics(classifier, names)
        choices = [ClassChoice(name, i, counts.get(name), groups.get(name)) for i, name in enumerate(names)]
        return sorted(choices, key=lambda c: (c.train_count is None, c.train_count or 0, c.index))

    def _classifier_or_none(self, model_name: str | None) -> OnnxClassifier | None:
        try:
            return self.catalog.get(model_name)
        except RequestError:
            return None

    def _generator_class_names(self, classifier: OnnxClassifier | None) -> list[str]:
        info = self.generator.class_conditional_info()
        if info is not None:
            return list(info.class_names)
        if self.generator.source is None or classifier is None:
            return []
        return list(classifier.class_names)  # a text-to-image model makes whatever classes the model knows

    @staticmethod
    def _class_statistics(classifier: OnnxClassifier | None, names: list[str]) -> tuple[dict, dict]:
        if classifier is None or not classifier.has_training_counts:
            return {}, {}
        card = classifier.card
        counts = dict(zip(card.class_names, card.class_counts))
        groups = dict(zip(card.class_names, card.class_groups))
        return ({n: counts[n] for n in names if n in counts}, {n: groups[n] for n in names if n in groups})

    def generate(self, model_name: str | None, class_name: str, count: int = 4, seed: int = 0,
                 steps: int | None = None, guidance: float | None = None, first_index: int = 0,
                 progress: Progress | None = None) -> Generation:
        """`count` new images of `class_name`, each classified by the model (its confidence in its top class
        and in the class asked for)."""
        limits = self.limits
        count = self.checked("count", count)
        seed = self.checked("seed", seed)
        first_index = self.checked("first_index", first_index)
        # None: the generator's own default.
        steps = None if steps is None else self.checked("steps", steps)
        guidance = None if guidance is None else self.checked("guidance", guidance)
        classifier = self.catalog.get(model_name)
        generator = self.generator.generator(classifier)
        if class_name not in generator.class_names:
            raise RequestError(f"the generator has no class {class_name!r}; it makes {generator.class_names}",
                               status=422)
        class_index = generator.class_names.index(class_name)

        from inference.generators import image_seeds

        def sample() -> list[Image.Image]:
            return generator.generate(class_index, count, seed=seed, steps=steps, guidance=guidance,
                                      first_index=first_index, progress=progress)

        try:
            images = self.generator.run(sample, limits.max_waiting_generations)
        except GeneratorError as error:
            raise RequestError(str(error), status=422) from error
        used_steps, used_guidance = generator.sampling_settings(class_index, steps, guidance)
        settings = {"class_name": class_name, "class_index": class_index, "count": count, "seed": seed,
                    "first_index": first_index, "steps": used_steps, "guidance": used_guidance,
                    "seeds": image_seeds(seed, class_index, first_index, count),
                    "generator": generator.describe(), "model": classifier.path.name}
        return Generation(images, recognise(classifier, images, class_name), settings)
