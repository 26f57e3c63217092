"""Tail-sample generators behind one interface, for `python -m training synthesize` and the app.

    generator = open_generator("model_zoo/cifar10_lt_generator")        # our class-conditional DDIM model
    generator = open_generator("some-user/sd-model", revision="abc123",  # any diffusers text-to-image model
                               class_names=names, image_size=32)
    images = generator.generate(class_index=7, count=4, seed=0, steps=20, progress=callback)

Every image gets its own seed (`image_seeds`), drawn into its own starting noise, so an image depends only
on (seed, class, index): a resumed or re-batched synthesis reproduces the same pictures.

The class-conditional model is a generator folder (`unet/` + `scheduler/` + `generator.json` with the
class names, image size and default sampling settings, and since the pipeline layout `model_index.json` +
`pipeline.py` for diffusers; the contract is in inference.generator_folder). It is trained by `python -m
training train-generator`, works offline, and samples with classifier-free guidance when it was trained with
class dropout (the extra "no class" embedding is the last index). It samples through
`inference.pipeline.ClassConditionalPipeline`, the diffusers pipeline diffusers itself loads from the folder,
so both give the same images for the same seeds.

On CPU in fp32 it predicts the noise with the UNet's ONNX export (unet/model.onnx, inference/onnx_unet.py)
when the folder has one: the same numbers to a few 1e-6 (an image within one pixel level of PyTorch's),
1.5-2.4x faster. `generator.runtime` says which it uses ("onnxruntime" or "torch"); bf16 means torch.

`generator.sampling_settings(class_index, steps, guidance)` says which steps and guidance a `generate` call
with those arguments uses, checked the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from inference.generator_folder import (
    GENERATOR_FORMAT,  # noqa: F401  (it and GeneratorError live with the folder contract; importable from here too)
    GeneratorError,
    GeneratorInfo,
    is_generator_folder,
    pipeline_config,
    read_generator_info,
)
from inference.hub import HubError, resolve_generator_source
from inference.onnx_unet import OnnxUNet, open_onnx_unet
from inference.precision import has_native_bf16

if TYPE_CHECKING:  # diffusers is imported when a generator is loaded, not with this module
    from inference.pipeline import ClassConditionalPipeline

DEFAULT_PROMPT_TEMPLATE = "A photo of a {class}."
Progress = Callable[[int, int], None]  # (finished denoising steps, total steps)


def image_seeds(seed: int, class_index: int, first: int, count: int) -> list[int]:
    """One seed per image from (seed, class, index within the class), independent of batching."""
    return [((seed * 1_000_003 + class_index) * 1_000_003 + first + k) % 2**62 for k in range(count)]


def seeded_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU random generator per image: its starting noise, whatever the device or the batch."""
    return [torch.Generator().manual_seed(s) for s in seeds]


def report_steps(progress: Progress | None, steps: int):
    """A diffusers `callback_on_step_end` that tells `progress` (done, total) after every step."""

    def on_step_end(pipeline, step, timestep, tensors):
        if progress is not None:
            progress(step + 1, steps)
        return tensors

    return on_step_end


class Sampling:
    """What both generators share: defaults for steps and guidance, and the checks on a request. A subclass
    has `class_names`, `default_steps`, `default_guidance` and `supports_guidance`."""

    def sampling_settings(self, class_index: int, steps: int | None = None,
                          guidance: float | None = None) -> tuple[int, float]:
        """The (steps, guidance) that `generate(class_index, ..., steps=steps, guidance=guidance)` samples with:
        None (or 0 steps) means the generator's default. GeneratorError for a class index out of range, or
        guidance other than 1 from a generator that cannot guide."""
        if not 0 <= class_index < len(self.class_names):
            raise GeneratorError(f"class index {class_index} is out of range (0-{len(self.class_names) - 1})")
        guidance = self.default_guidance if guidance is None else guidance
        if guidance != 1.0 and not self.supports_guidance:
            raise GeneratorError("this generator was trained without class dropout, so guidance must be 1")
        return steps or self.default_steps, guidance


@dataclass
class ClassConditionalGenerator(Sampling):
    """Our UNet2DModel with class embeddings, sampled with DDIM (deterministic, eta = 0) by its pipeline."""

    pipeline: ClassConditionalPipeline
    info: GeneratorInfo
    source: str
    bf16: bool = True  # autocast the UNet to bfloat16 (load() turns it off where an export or emulation says so)
    onnx_unet: OnnxUNet | None = None  # the UNet's ONNX export, used for fp32 on CPU; None: PyTorch only
    kind: str = "class_conditional"

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> ClassConditionalGenerator:
        """Either layout: the pipeline is built from unet/, scheduler/ and generator.json, never from the
        folder's pipeline.py, so opening a generator runs none of the code it carries."""
        from diffusers import DDIMScheduler, UNet2DModel

        from inference.pipeline import ClassConditionalPipeline

        directory = Path(directory)
        info = read_generator_info(directory)
        try:
            # low_cpu_mem_usage needs accelerate, which we do not install; asking for it only prints a warning.
            unet = UNet2DModel.from_pretrained(directory / "unet", use_safetensors=True, local_files_only=True,
                                               low_cpu_mem_usage=False)
            scheduler = DDIMScheduler.from_pretrained(directory / "scheduler", local_files_only=True)
        except (OSError, ValueError) as error:
            raise GeneratorError(f"{directory} holds no loadable UNet / scheduler: {error}") from error
        try:
            onnx_unet = open_onnx_unet(directory / "unet") if torch.device(device).type == "cpu" else None
        except ValueError as error:  # a stale or broken export: never sample through it
            raise GeneratorError(str(error)) from error
        pipeline = ClassConditionalPipeline(unet.to(device).eval(), scheduler, **pipeline_config(info))
        pipeline.set_progress_bar_config(disable=True)
        # With an export, fp32 through ONNX Runtime: faster than bf16 PyTorch at batch 1, 4 and 128 even on
        # AVX-512 (docs/benchmarks.md), and one precision on every CPU, so a synthetic set begun on one machine
        # resumes on another. Without one, bf16 only where it has kernels: on AVX2 it is emulated, 20-36x slower.
        bf16 = onnx_unet is None and has_native_bf16(torch.device(device).type)
        return cls(pipeline, info, str(directory), bf16=bf16, onnx_unet=onnx_unet)

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    @property
    def image_size(self) -> int:
        return self.info.image_size

    @property
    def default_steps(self) -> int:
        return self.info.default_steps

    @property
    def default_guidance(self) -> float:
        return float(self.info.default_guidance)

    @property
    def supports_guidance(self) -> bool:
        return self.info.supports_guidance

    @property
    def runtime(self) -> str:
        """What predicts the noise in `generate`: "onnxruntime" (fp32, CPU, an export present) or "torch"."""
        return "onnxruntime" if self.onnx_unet is not None and not self.bf16 else "torch"

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "model_id": self.info.name,
                "trained": self.info.training, "sampler": "DDIM (eta 0)", "runtime": self.runtime,
                "precision": "bf16" if self.bf16 else "fp32"}

    def prompt(self, class_index: int, index: int) -> str | None:
        return None

    @torch.no_grad()
    def generate(self, class_index: int, count: int, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, first_index: int = 0, progress: Progress | None = None,
                 ) -> list[Image.Image]:
        steps, guidance = self.sampling_settings(class_index, steps, guidance)
        generators = seeded_generators(image_seeds(seed, class_index, first_index, count))
        output = self.pipeline(class_labels=[class_index] * count, num_inference_steps=steps, guidance_scale=guidance,
                               generator=generators, bf16=self.bf16, callback_on_step_end=report_steps(progress, steps),
                               noise_model=self.onnx_unet if self.runtime == "onnxruntime" else None)
        return output.images


@dataclass
class TextToImageGenerator(Sampling):
    """Any diffusers text-to-image pipeline (Stable Diffusion and the like), from the Hub or a local folder.

    Prompts: `prompt_template` with {class} replaced, or per-class lists from a JSON prompts file
    ({"class name": ["prompt", ...]}), used in turn. Outputs are resized to the dataset's image size."""

    pipeline: object
    class_names: list[str]
    image_size: int
    source: str
    revision: str | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    prompts: dict | None = None
    generation_size: int | None = None  # the pipeline's own resolution; None: its default
    default_steps: int = 30
    default_guidance: float = 7.5
    kind: str = "text_to_image"
    supports_guidance: bool = True

    @classmethod
    def load(cls, model: str, class_names: list[str], image_size: int, revision: str | None = None,
             prompt_template: str = DEFAULT_PROMPT_TEMPLATE, prompts_file: str | None = None,
             generation_size: int | None = None, device: str = "cpu") -> TextToImageGenerator:
        from diffusers import DiffusionPipeline

        if "{class}" not in prompt_template:
            raise GeneratorError(f"the prompt template must contain {{class}}: {prompt_template!r}")
        prompts = _read_prompts(prompts_file, class_names) if prompts_file else None
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        try:
            pipeline = DiffusionPipeline.from_pretrained(model, revision=revision, local_files_only=offline,
                                                         safety_checker=None, requires_safety_checker=False)
        except Exception as error:  # diffusers raises OSError, ValueError, HTTP errors…: all mean "not available"
            where = "in the local Hugging Face cache (offline mode)" if offline else "locally or on the Hub"
            raise GeneratorError(f"could not load the text-to-image model '{model}'"
                                 f"{'@' + revision if revision else ''} {where}: {str(error).splitlines()[0]}"
                                 ) from error
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline.to(device), list(class_names), image_size, model, revision, prompt_template, prompts,
                   generation_size)

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "model_id": self.source, "revision": self.revision,
                "prompt_template": self.prompt_template if self.prompts is None else None,
                "prompts_file": self.prompts is not None, "pipeline": type(self.pipeline).__name__}

    def prompt(self, class_index: int, index: int) -> str:
        name = self.class_names[class_index]
        if self.prompts is not None:
            options = self.prompts[name]
            return options[index % len(options)]
        return self.prompt_template.replace("{class}", name)

    @torch.no_grad()
    def generate(self, class_index: int, count: int, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, first_index: int = 0, progress: Progress | None = None,
                 ) -> list[Image.Image]:
        steps, guidance = self.sampling_settings(class_index, steps, guidance)
        seeds = image_seeds(seed, class_index, first_index, count)
        prompts = [self.prompt(class_index, first_index + k) for k in range(count)]
        size = {"height": self.generation_size, "width": self.generation_size} if self.generation_size else {}
        output = self.pipeline(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance,
                               generator=seeded_generators(seeds), callback_on_step_end=report_steps(progress, steps),
                               **size)
        return [image.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
                for image in output.images]


def _read_prompts(path: str, class_names: list[str]) -> dict:
    try:
        prompts = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise GeneratorError(f"prompts file {path} is unreadable: {error}") from error
    if not isinstance(prompts, dict) or not all(isinstance(v, list) and v and all(isinstance(p, str) for p in v)
                                                for v in prompts.values()):
        raise GeneratorError(f"{path} must map each class name to a non-empty list of prompts")
    missing = [name for name in class_names if name not in prompts]
    if missing:
        raise GeneratorError(f"{path} has no prompts for the classes {missing}")
    return prompts


def open_generator(source: str | Path, class_names: list[str] | None = None, image_size: int | None = None,
                   revision: str | None = None, device: str = "cpu", **text_to_image_options):
    """A folder with generator.json → our class-conditional model; anything else → a text-to-image model
    (a local diffusers folder or a Hub model id), which needs the class names and the output image size.
    An hf://owner/name@<commit sha>[/folder] reference to a generator is downloaded first (inference.hub)."""
    try:
        source, revision = resolve_generator_source(str(source), revision)
    except HubError as error:  # callers handle one error type
        raise GeneratorError(str(error)) from error
    path = Path(source)
    if is_generator_folder(path):
        generator = ClassConditionalGenerator.load(path, device)
        if class_names is not None and list(class_names) != generator.class_names:
            raise GeneratorError(f"{path} was trained on the classes {generator.class_names}, "
                                 f"not {list(class_names)}")
        return generator
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise GeneratorError(f"{path} is neither a class-conditional generator (generator.json) nor a "
                             "diffusers pipeline folder (model_index.json)")
    if class_names is None or image_size is None:
        raise GeneratorError("a text-to-image generator needs the class names and the image size of the dataset")
    return TextToImageGenerator.load(str(source), list(class_names), image_size, revision, device=device,
                                     **text_to_image_options)
