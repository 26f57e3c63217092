"""Classify images with an exported ONNX model and its model card.

    clf = OnnxClassifier("model_zoo/cifar10_lt_ce_resnet32.onnx")
    [prediction] = clf.classify_files(["cat.png"], top_k=3)
    print(describe(prediction.top[0]))  # "cat · tail class · 387 training images"
    [adjusted] = clf.classify_files(["cat.png"], tau=1.0)  # post-hoc logit adjustment: logits − τ·log(prior)

Everything the classifier needs (class names, training counts, head/medium/tail groups,
preprocessing) is read from the ONNX file's metadata, so serving never guesses how the model
was trained. A foreign model without that metadata is refused unless class names are given.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from inference.card import (
    FORMAT_KEY,
    MissingMetadataError,
    ModelCard,
    Preprocessing,
    group_name,
)
from inference.images import DecodedImage, ImageLoadError, ImageSource, decode_image, release_freed_memory, to_rgb
from inference.limits import DEFAULT_MAX_PIXELS, check
from inference.long_tail import PriorUnavailableError, adjust_logits, log_prior, softmax

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BATCH_SIZE = 64
# An upload is decoded reduced (inference/images.py) as long as its shorter side keeps this many times the pixels
# the resize leaves: resizing that to the model's size gives the full-size result within a grey level (measured
# on real photos enlarged 6-11x, PNG and JPEG, bilinear and bicubic, 32 and 224 inputs; a gap of 4 gave 3 levels).
REDUCING_GAP = 8
# Resizing the shorter side scales the longer one too: a 2-kilobyte 1×2,000,000 PNG, well under the pixel limit,
# would become a 36×72,000,000 image (10 GB). Above this many pixels only the part the centre crop keeps is resized.
MAX_RESIZED_PIXELS = 2**22
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class IncompatibleModelError(ValueError):
    """An ONNX file this classifier cannot run (wrong input/output shape, not ONNX at all, ...)."""


# What opening a model file can raise, each with a message fit for the user.
MODEL_ERRORS = (MissingMetadataError, IncompatibleModelError, FileNotFoundError, ValueError)


@dataclass
class ClassScore:
    index: int
    name: str
    probability: float
    train_count: int | None  # None when the model carries no training statistics
    group: str | None  # "many" / "medium" / "few"; None when unknown

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prediction:
    top: list[ClassScore]  # the top-k, most probable first
    scores: list[ClassScore]  # every class, in class-index order
    warning: str | None = None  # why the prediction may mean little (an almost flat image); None: no doubt
    tau: float = 0.0  # the post-hoc logit adjustment applied (0: the model as trained)

    def to_dict(self) -> dict:
        best = self.top[0]
        warning = {} if self.warning is None else {"warning": self.warning}
        return {
            "prediction": best.name,
            "probability": best.probability,
            "group": best.group,
            "train_count": best.train_count,
            "tau": self.tau,
            **warning,
            "top_k": [score.to_dict() for score in self.top],
            "classes": [score.to_dict() for score in self.scores],
        }


def record(image: str, result: Prediction | ImageLoadError) -> dict:
    """The JSON record of one input, as `python -m inference predict`, the app and the HTTP API give it:
    the prediction (with "warning" when it may mean little), or {"image", "error"} for a file that cannot be read."""
    if isinstance(result, ImageLoadError):
        return {"image": image, "error": str(result)}
    return {"image": image, **result.to_dict()}


def describe(score: ClassScore) -> str:
    """One line for people, e.g. "cat · tail class · 387 training images"."""
    if score.group is None:
        return f"{score.name} · training counts unknown"
    noun = "image" if score.train_count == 1 else "images"
    return f"{score.name} · {group_name(score.group)} class · {score.train_count:,} training {noun}"


class OnnxClassifier:
    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        class_names: Sequence[str] | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {self.path} does not exist")
        self.session = self._create_session(providers, threads)
        self.provider = self.session.get_providers()[0]

        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise IncompatibleModelError(f"{self.path.name} has {len(inputs)} inputs; expected one image batch input")
        self.input_name = inputs[0].name
        self.output_name = self.session.get_outputs()[0].name
        input_shape = inputs[0].shape  # ints for static axes, str or None for dynamic ones
        if len(input_shape) != 4 or (isinstance(input_shape[1], int) and input_shape[1] != 3):
            raise IncompatibleModelError(
                f"{self.path.name} takes input of shape {input_shape}; expected (batch, 3, height, width)"
            )
        if inputs[0].type != "tensor(float)":
            raise IncompatibleModelError(f"{self.path.name} takes {inputs[0].type}; expected tensor(float)")

        self.card = self._read_card(input_shape, class_names)
        self._check_shapes(input_shape)
        self.has_training_counts = self.card.group_rule.get("rule") != "unknown"
        # log π for post-hoc logit adjustment; None when the counts are unknown (or zero somewhere): τ ≠ 0 is refused.
        self.prior_log = None
        if self.has_training_counts:
            try:
                self.prior_log = log_prior(self.card.class_counts)
            except PriorUnavailableError:
                pass
        if not self.has_training_counts:
            log.warning(
                "%s has no LongTail Studio metadata: guessing preprocessing (resize to %dx%d, ImageNet "
                "mean/std, bilinear); predictions may be off if the model was trained differently",
                self.path.name, *self.card.preprocessing.input_size[1:],
            )

    def _create_session(self, providers: Sequence[str] | None, threads: int | None) -> ort.InferenceSession:
        requested = list(providers or DEFAULT_PROVIDERS)
        available = ort.get_available_providers()
        usable = [name for name in requested if name in available] or ["CPUExecutionProvider"]
        if providers is not None and len(usable) < len(requested):
            log.warning("providers %s are not available in this onnxruntime build", sorted(set(requested) - set(usable)))

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(self.path), options, providers=usable)
        except Exception as error:  # onnxruntime's exception classes are not public API
            raise IncompatibleModelError(f"{self.path.name} could not be loaded by ONNX Runtime: {error}") from error

        # ONNX Runtime falls back to CPU silently when CUDA fails to initialise.
        if "CUDAExecutionProvider" in usable and "CUDAExecutionProvider" not in session.get_providers():
            log.warning("CUDAExecutionProvider was requested but the session runs on %s", session.get_providers()[0])
        return session

    def _read_card(self, input_shape: list, class_names: Sequence[str] | None) -> ModelCard:
        props = self.session.get_modelmeta().custom_metadata_map
        if FORMAT_KEY in props or class_names is None:
            card = ModelCard.from_metadata_props(props, source=self.path.name)
            if class_names is not None and list(class_names) != card.class_names:
                raise ValueError(
                    f"{self.path.name} carries its own class names {card.class_names}; "
                    "the class names passed in differ, so leave them out"
                )
            return card

        height, width = input_shape[2], input_shape[3]
        if not (isinstance(height, int) and isinstance(width, int)):
            raise MissingMetadataError(
                f"{self.path.name} has no LongTail Studio metadata and a dynamic input size "
                f"{input_shape}, so the image size cannot be known; re-export it with a static height and width"
            )
        return ModelCard.without_training_data(
            class_names, Preprocessing(input_size=[3, height, width], mean=IMAGENET_MEAN, std=IMAGENET_STD),
            model_name=self.path.stem)

    def _check_shapes(self, input_shape: list) -> None:
        size = self.card.preprocessing.input_size
        if size[0] != 3:
            raise IncompatibleModelError(f"{self.path.name}: model card input size {size} does not have 3 channels")
        for axis, expected in ((2, size[1]), (3, size[2])):
            if isinstance(input_shape[axis], int) and input_shape[axis] != expected:
                raise IncompatibleModelError(
                    f"{self.path.name}: graph input {input_shape} does not match the card's input size {size}"
                )
        output_shape = self.session.get_outputs()[0].shape
        if len(output_shape) != 2:
            raise IncompatibleModelError(
                f"{self.path.name} outputs shape {output_shape}; expected (batch, classes) logits"
            )
        if isinstance(output_shape[1], int) and output_shape[1] != self.card.num_classes:
            raise IncompatibleModelError(
                f"{self.path.name} outputs {output_shape[1]} classes but has {self.card.num_classes} class names"
            )
        if self.card.preprocessing.interpolation not in INTERPOLATIONS:
            raise IncompatibleModelError(
                f"{self.path.name}: unknown interpolation {self.card.preprocessing.interpolation!r}; "
                f"expected one of {sorted(INTERPOLATIONS)}"
            )

    @property
    def class_names(self) -> list[str]:
        return self.card.class_names

    def preprocess(self, images: Sequence[Image.Image | DecodedImage]) -> np.ndarray:
        return preprocess(images, self.card.preprocessing)

    @property
    def decoded_shorter_side(self) -> int:
        """The fewest pixels the shorter side of a decoded upload keeps (see REDUCING_GAP)."""
        return REDUCING_GAP * self.card.preprocessing.decoded_size

    def decode(self, source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
        """An upload decoded no larger than this model needs; an `ImageLoadError` says why it cannot be."""
        return decode_image(source, max_pixels, keep_shorter_side=self.decoded_shorter_side)

    def input_tensor(self, image: Image.Image | DecodedImage) -> np.ndarray:
        """One image as the model takes it, (3, height, width): all that needs keeping once it is decoded."""
        return self.preprocess([image])[0]

    def probabilities(self, images: Sequence[Image.Image | DecodedImage]) -> np.ndarray:
        """Softmax over the classes, shape (len(images), num_classes)."""
        return self.tensor_probabilities([self.input_tensor(image) for image in images])

    def tau_refusal(self, tau: float) -> str | None:
        """Why τ cannot be applied to this model (one sentence), or None when it can: τ = 0 always can; τ ≠ 0
        needs the training counts (a foreign model has none)."""
        if tau == 0 or self.prior_log is not None:
            return None
        return (f"{self.path.name} has no training class counts, so post-hoc logit adjustment (tau) cannot be "
                "applied to it; use tau 0")

    def tensor_probabilities(self, tensors: Sequence[np.ndarray], tau: float = 0.0) -> np.ndarray:
        """Softmax over the classes of preprocessed images (`input_tensor`), after post-hoc logit adjustment by τ
        (logits − τ·log(training prior); τ = 0: as trained)."""
        refusal = self.tau_refusal(tau)
        if refusal:
            raise PriorUnavailableError(refusal)
        return softmax(adjust_logits(self.tensor_logits(tensors), self.prior_log, tau))

    def tensor_logits(self, tensors: Sequence[np.ndarray]) -> np.ndarray:
        """The model's logits for preprocessed images, run BATCH_SIZE at a time."""
        rows = []
        for start in range(0, len(tensors), BATCH_SIZE):
            batch = np.stack(tensors[start : start + BATCH_SIZE])
            [logits] = self.session.run([self.output_name], {self.input_name: batch})
            if logits.shape != (len(batch), self.card.num_classes):
                raise IncompatibleModelError(
                    f"{self.path.name} returned logits of shape {logits.shape}; "
                    f"expected ({len(batch)}, {self.card.num_classes})"
                )
            rows.append(logits)
        return np.concatenate(rows) if rows else np.zeros((0, self.card.num_classes), dtype=np.float32)

    def predict(self, images: Sequence[Image.Image | DecodedImage], top_k: int = 5, tau: float = 0.0,
                ) -> list[Prediction]:
        return self.predict_tensors([self.input_tensor(image) for image in images], top_k,
                                    [getattr(image, "warning", None) for image in images], tau)

    def predict_tensors(self, tensors: Sequence[np.ndarray], top_k: int = 5,
                        warnings: Sequence[str | None] | None = None, tau: float = 0.0) -> list[Prediction]:
        """One prediction per preprocessed image, carrying its decoding warning (if any), after post-hoc logit
        adjustment by τ (a `ParameterError` outside the limits table's range, `PriorUnavailableError` for τ ≠ 0
        on a model without training counts)."""
        tau = check("tau", tau)
        top_k = max(1, min(int(top_k), self.card.num_classes))
        warnings = warnings or [None] * len(tensors)
        return [self._prediction(row, top_k, warning, tau)
                for row, warning in zip(self.tensor_probabilities(tensors, tau), warnings)]

    def classify_files(
        self, paths: Sequence[str | os.PathLike], top_k: int = 5, tau: float = 0.0,
    ) -> list[Prediction | ImageLoadError]:
        """Predict for image files; a file that cannot be read gives its `ImageLoadError` in its place. One file is
        decoded at a time and only its input tensor is kept."""
        tau = check("tau", tau)
        refusal = self.tau_refusal(tau)
        if refusal:  # before any file is decoded
            raise PriorUnavailableError(refusal)
        inputs = [self._decoded_input(path) for path in paths]
        readable = [item for item in inputs if not isinstance(item, ImageLoadError)]
        predictions = iter(self.predict_tensors([tensor for tensor, _ in readable], top_k,
                                                [warning for _, warning in readable], tau))
        return [item if isinstance(item, ImageLoadError) else next(predictions) for item in inputs]

    def _decoded_input(self, path: str | os.PathLike) -> tuple[np.ndarray, str | None] | ImageLoadError:
        try:
            decoded = self.decode(path)
        except ImageLoadError as error:
            return error
        finally:
            release_freed_memory()
        return self.input_tensor(decoded), decoded.warning

    def _prediction(self, probabilities: np.ndarray, top_k: int, warning: str | None = None, tau: float = 0.0,
                    ) -> Prediction:
        card = self.card
        scores = [
            ClassScore(
                index=i,
                name=card.class_names[i],
                probability=float(p),
                train_count=card.class_counts[i] if self.has_training_counts else None,
                group=card.class_groups[i] if self.has_training_counts else None,
            )
            for i, p in enumerate(probabilities)
        ]
        # A stable sort keeps class order among ties, so results are deterministic.
        order = np.argsort(-probabilities, kind="stable")
        return Prediction(top=[scores[i] for i in order[:top_k]], scores=scores, warning=warning, tau=tau)


def preprocess(images: Sequence[Image.Image | DecodedImage], preprocessing: Preprocessing) -> np.ndarray:
    """NCHW float32, equal (within 1 ulp) to torchvision's eval transform on PIL images, as in
    training/data/transforms.py: Resize(resize_to, interpolation) + CenterCrop(input H, W) + to [0, 1] + Normalize,
    after, when the card has a native_size, Resize(native_size) + CenterCrop(native_size): the training images' size.
    A `DecodedImage` reduced while decoding is resized with the geometry of its full size: the same output pixels
    from fewer source pixels, within a grey level (REDUCING_GAP)."""
    _, height, width = preprocessing.input_size
    interpolation = INTERPOLATIONS[preprocessing.interpolation]
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(3, 1, 1)
    batch = np.empty((len(images), 3, height, width), dtype=np.float32)
    for i, image in enumerate(images):
        decoded = image if isinstance(image, DecodedImage) else DecodedImage(to_rgb(image), image.size, 1)
        if preprocessing.native_size:
            native = preprocessing.native_size
            thumbnail = _resize_and_crop(decoded, native, interpolation, native, native)
            decoded = DecodedImage(thumbnail, thumbnail.size, 1)
        image = _resize_and_crop(decoded, preprocessing.resize_to, interpolation, height, width)
        # Multiplying by 1/255 (not dividing by 255) is what training's v2.ToDtype(scale=True) does.
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255)
        batch[i] = (pixels - mean) / std
    return batch


def _resize_and_crop(decoded: DecodedImage, size: int, interpolation: Image.Resampling, height: int, width: int,
                     ) -> Image.Image:
    # Sizes and offsets are those of the full-size image; `factor` maps them onto the pixels at hand (PIL's `box`
    # takes fractional source coordinates, so the edge pixel of an uneven reduction is weighted by what it covers).
    image, factor = decoded.image, decoded.factor
    w, h = decoded.full_size
    new_w, new_h = _shorter_side_size(w, h, size)
    if new_w * new_h <= MAX_RESIZED_PIXELS:
        resized = _resize(image, (new_w, new_h), interpolation, (0, 0, w / factor, h / factor))
        return _center_crop(resized, height, width)
    # An extreme aspect ratio: resize only the window the centre crop keeps, from only the source pixels the
    # filter reaches. PIL's `box` maps that window onto the output with the scale and filter taps of the whole
    # resize, so the result differs from resize-then-crop by float rounding only: a level at most, or with
    # "nearest" the neighbouring source pixel where a sample falls exactly between two.
    keep_w, keep_h = min(width, new_w), min(height, new_h)
    left, top = round((new_w - keep_w) / 2.0), round((new_h - keep_h) / 2.0)
    x_first, x_last, box_left, box_right = _source_span(left, keep_w, w / new_w / factor, w / factor, image.width)
    y_first, y_last, box_top, box_bottom = _source_span(top, keep_h, h / new_h / factor, h / factor, image.height)
    source = image.crop((x_first, y_first, x_last, y_last))
    window = source.resize((keep_w, keep_h), interpolation, box=(box_left, box_top, box_right, box_bottom))
    return _center_crop(window, height, width)


def _source_span(offset: int, length: int, scale: float, extent: float, pixels: int) -> tuple[int, int, float, float]:
    """The source pixels that output pixels [offset, offset + length) of a resize by 1/scale read: first, last, and
    the window's edges relative to first. `extent` is where the image ends in source coordinates (its width or
    height, divided by the reduction factor), `pixels` how many source pixels there are."""
    start, end = offset * scale, min((offset + length) * scale, extent)  # not past the edge by a rounding
    reach = 3 * max(scale, 1) + 2  # the widest filter (Lanczos: 3 pixels, widened when shrinking), and rounding
    first, last = max(0, int(start - reach)), min(pixels, math.ceil(end + reach))
    return first, last, start - first, end - first


def _shorter_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision truncates the long side
    return (new_short, new_long) if w <= h else (new_long, new_short)


def _resize(image: Image.Image, size: tuple[int, int], interpolation: Image.Resampling,
            box: tuple[float, float, float, float]) -> Image.Image:
    if size == image.size and box == (0, 0, *image.size):
        return image
    return image.resize(size, interpolation, box=box)


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    w, h = image.size
    if width > w or height > h:
        # torchvision pads with black, the extra pixel of an odd difference on the right/bottom.
        padded = Image.new("RGB", (max(w, width), max(h, height)))
        padded.paste(image, (max(0, (width - w) // 2), max(0, (height - h) // 2)))
        image, (w, h) = padded, padded.size
    top = round((h - height) / 2.0)
    left = round((w - width) / 2.0)
    return image.crop((left, top, left + width, top + height))


def list_models(models_dir: str | os.PathLike) -> list[Path]:
    """The `*.onnx` files directly inside `models_dir` (none if it does not exist), sorted by name."""
    folder = Path(models_dir)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob("*.onnx") if _inside(path, folder) and path.is_file())


def resolve_model(models_dir: str | os.PathLike, name: str) -> Path:
    """The path of model file `name` in `models_dir`; refuses anything that would leave the folder."""
    folder = Path(models_dir)
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name or "/" in name:
        raise ValueError(f"{name!r} is not a model file name; pick one of the files in {folder}")
    if not name.endswith(".onnx"):
        raise ValueError(f"{name!r} is not an .onnx file")
    path = folder / name
    if not _inside(path, folder):
        raise ValueError(f"{name!r} points outside the models folder {folder}")
    if not path.is_file():
        raise ValueError(f"model {name!r} not found in {folder}")
    return path


def _inside(path: Path, folder: Path) -> bool:
    # resolve() follows symlinks, so a link pointing out of the folder is caught too.
    return path.resolve().is_relative_to(folder.resolve())
