"""The generator folder: what `python -m training train-generator` writes and everything else reads.

A LongTail Studio generator is a folder holding

    generator.json   what the model is: GENERATOR_FORMAT, class names and counts, image size, the "no class"
                     index for classifier-free guidance, default sampling settings, how it was trained
    unet/            a diffusers UNet2DModel with class embeddings (safetensors), and optionally model.onnx,
                     its ONNX export for fp32 sampling on CPU (inference/onnx_unet.py; diffusers ignores it)
    scheduler/       the diffusers DDIM scheduler to sample with
    README.md        its card, for people (and the Hub)
    model_index.json the diffusers pipeline config: the components and `pipeline_config(info)`
    pipeline.py      ClassConditionalPipeline (a copy of inference/pipeline.py), the class model_index.json
                     names, so `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it

The last two (PIPELINE_FILES) make the folder a diffusers pipeline; generators written before they existed
lack them and open as before, since our loader reads generator.json and the two model folders only.

`read_generator_info` is the one reader of generator.json: it checks the format, that unet/ and scheduler/
are there and that a model_index.json agrees with generator.json, and turns every problem into a
`GeneratorError` that says what is wrong. `write_generator_info` writes the file atomically.
`GENERATOR_FILES` is the folder's content, `GENERATOR_DOWNLOAD_PATTERNS` the same as Hub download patterns,
so a Hub download fetches the generator and nothing else of its repo.

This module imports neither torch nor diffusers nor the Hub client, so the generators, the Hub code, the app's
service and `python -m training push` can all use it cheaply.
"""

from __future__ import annotations

import json
import os
import reprlib
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path

GENERATOR_FORMAT = "longtail_studio.generator/1"
INFO_FILE = "generator.json"
CARD_FILE = "README.md"
MODEL_FOLDERS = ("unet", "scheduler")
PIPELINE_INDEX = "model_index.json"
PIPELINE_CODE = "pipeline.py"
PIPELINE_FILES = (PIPELINE_INDEX, PIPELINE_CODE)  # absent from generators written before the pipeline layout
GENERATOR_FILES = (INFO_FILE, *MODEL_FOLDERS, CARD_FILE, *PIPELINE_FILES)
# Hub allow_patterns, relative to the generator folder: a folder's pattern takes every file in it.
GENERATOR_DOWNLOAD_PATTERNS = tuple(f"{name}/*" if name in MODEL_FOLDERS else name for name in GENERATOR_FILES)


class GeneratorError(ValueError):
    """A generator that cannot be opened or asked for something it cannot do; the message says why."""


@dataclass(frozen=True, kw_only=True)
class GeneratorInfo:
    """generator.json, field by field, in the file's order (its "format" key is GENERATOR_FORMAT)."""

    name: str
    class_names: list[str]
    class_counts: list[int] = field(default_factory=list)  # training images per class
    dataset: str = ""
    imbalance_factor: float | None = None
    image_size: int  # the generated images are image_size x image_size
    null_class_index: int | None = None  # the "no class" embedding; None: trained without class dropout
    default_steps: int = 20
    default_guidance: float = 1.0
    training: dict = field(default_factory=dict)  # steps, batch size, time, device, git revision, parameters
    config: dict = field(default_factory=dict)  # the training config
    extra: dict = field(default_factory=dict)  # other keys in the file (e.g. notes), kept so a rewrite loses none

    @property
    def supports_guidance(self) -> bool:
        """Classifier-free guidance needs the "no class" embedding that class dropout trains."""
        return self.null_class_index is not None

    def to_dict(self) -> dict:
        """The content of generator.json: format first, then the fields in order, then the extra keys."""
        known = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "extra"}
        extra = {key: value for key, value in self.extra.items() if key not in known and key != "format"}
        return {"format": GENERATOR_FORMAT, **known, **extra}


def is_generator_folder(path: str | Path) -> bool:
    """Whether `path` claims to be a LongTail Studio generator (it holds generator.json). A cheap test that
    loads nothing: a folder that claims to be one but is broken is then reported by `read_generator_info`."""
    return (Path(path) / INFO_FILE).is_file()


def read_generator_info(folder: str | Path) -> GeneratorInfo:
    """The generator folder's generator.json, checked, with unet/ and scheduler/ present; GeneratorError
    naming the problem otherwise. Loads no weights, so it is cheap enough to list classes and defaults."""
    folder = Path(folder)
    if not folder.exists():
        raise GeneratorError(f"{folder} does not exist (expected a LongTail Studio generator folder)")
    if not folder.is_dir():
        raise GeneratorError(f"{folder} is a file, not a LongTail Studio generator folder")
    if not (folder / INFO_FILE).is_file():
        raise GeneratorError(f"{folder} is not a LongTail Studio generator: it has no {INFO_FILE}")
    raw = _read_json(folder / INFO_FILE)
    _check_format(raw, folder / INFO_FILE)
    missing = [f"{name}/" for name in MODEL_FOLDERS if not (folder / name).is_dir()]
    if missing:
        raise GeneratorError(f"{folder} is an incomplete generator: {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} missing (expected next to {INFO_FILE})")
    info = _info_from_json(raw, folder)
    _check_pipeline_index(folder, info)
    return info


def pipeline_config(info: GeneratorInfo) -> dict:
    """What ClassConditionalPipeline keeps in model_index.json besides its components, from generator.json."""
    return {"image_size": info.image_size, "null_class_index": info.null_class_index,
            "default_steps": info.default_steps, "default_guidance": info.default_guidance,
            "id2label": {str(index): name for index, name in enumerate(info.class_names)}}


def write_generator_info(folder: str | Path, info: GeneratorInfo) -> Path:
    """Write `info` as `folder`/generator.json and return its path. Atomic: a crash leaves the old file or the
    new one, never half a file, since the file is what marks the folder as a generator."""
    path = Path(folder) / INFO_FILE
    _check_fields(info, path)
    text = json.dumps(info.to_dict(), indent=1)
    temporary = path.with_name(f".{INFO_FILE}.{secrets.token_hex(4)}.tmp")  # same folder: os.replace stays atomic
    try:
        # os.open with 0o666 lets the umask decide the mode, as for any other file (mkstemp would make it 0600).
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------------ helpers


def _read_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise GeneratorError(f"{path} cannot be read: {error}") from error
    except json.JSONDecodeError as error:
        raise GeneratorError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise GeneratorError(f"{path} must hold a JSON object, not {type(raw).__name__}")
    return raw


def _check_format(raw: dict, path: Path) -> None:
    found = raw.get("format")
    if found != GENERATOR_FORMAT:
        what = "has no format" if found is None else f"has the format {found!r}"
        raise GeneratorError(f"{path} {what}, but a LongTail Studio generator has the format {GENERATOR_FORMAT!r}")


def _check_pipeline_index(folder: Path, info: GeneratorInfo) -> None:
    """diffusers samples with the settings in model_index.json, we with generator.json's: they must agree."""
    path = folder / PIPELINE_INDEX
    if not path.exists():
        return  # written before the pipeline layout: nothing to disagree with
    index = _read_json(path)
    disagreeing = [key for key, value in pipeline_config(info).items() if index.get(key) != value]
    if disagreeing:
        raise GeneratorError(f"{path} disagrees with {INFO_FILE} on {', '.join(disagreeing)}, so diffusers would "
                             "sample differently from LongTail Studio: make the two files agree")


def _info_from_json(raw: dict, folder: Path) -> GeneratorInfo:
    path = folder / INFO_FILE
    missing = [key for key in ("class_names", "image_size") if key not in raw]
    if missing:
        raise GeneratorError(f"{path} has no {' and no '.join(repr(key) for key in missing)}")
    known = {item.name for item in fields(GeneratorInfo)} - {"extra"}
    values = {key: value for key, value in raw.items() if key in known}
    values.setdefault("name", folder.name)  # older files may lack a name; the folder's is the obvious one
    extra = {key: value for key, value in raw.items() if key not in known and key != "format"}
    info = GeneratorInfo(**values, extra=extra)
    _check_fields(info, path)
    return info


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not a number


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Each field: the test its value must pass, and what the message says it should be.
_FIELD_CHECKS = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "class_names": (lambda v: isinstance(v, list) and v != [] and all(isinstance(n, str) for n in v),
                    "a non-empty list of class names"),
    "class_counts": (lambda v: isinstance(v, list) and all(_is_int(n) for n in v), "a list of image counts"),
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "imbalance_factor": (lambda v: v is None or _is_number(v), "a number or null"),
    "image_size": (lambda v: _is_int(v) and v > 0, "a positive whole number"),
    "null_class_index": (lambda v: v is None or (_is_int(v) and v >= 0), "a class index or null"),
    "default_steps": (lambda v: _is_int(v) and v > 0, "a positive whole number"),
    "default_guidance": (_is_number, "a number"),
    "training": (lambda v: isinstance(v, dict), "an object"),
    "config": (lambda v: isinstance(v, dict), "an object"),
}


def _check_fields(info: GeneratorInfo, path: Path) -> None:
    for name, (is_valid, expected) in _FIELD_CHECKS.items():
        value = getattr(info, name)
        if not is_valid(value):
            raise GeneratorError(f"{path}: '{name}' must be {expected}, not {reprlib.repr(value)}")
    if info.class_counts and len(info.class_counts) != len(info.class_names):
        raise GeneratorError(f"{path}: 'class_counts' has {len(info.class_counts)} entries for "
                             f"{len(info.class_names)} classes")
