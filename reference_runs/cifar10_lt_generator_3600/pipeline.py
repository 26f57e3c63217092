"""ClassConditionalPipeline: the LongTail Studio class-conditional generator as a diffusers pipeline.

    import torch
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained("<generator folder or Hub repo>", trust_remote_code=True)
    images = pipeline(class_labels=["truck", "truck"], generator=torch.Generator().manual_seed(0)).images

A diffusers UNet2DModel with one embedding per class plus a "no class" one, sampled with DDIM (eta 0) and,
when the model was trained with class dropout, classifier-free guidance. Besides its two components the
pipeline's config (model_index.json) holds what sampling needs: `image_size`, `null_class_index` (the "no
class" embedding; None: trained without class dropout, so guidance must be 1), `default_steps`,
`default_guidance` and `id2label` (class index, as a string, to class name).

This file imports only torch, numpy, Pillow and diffusers, because it travels with the model:
`save_pretrained` copies it into the saved folder as pipeline.py, and writes model_index.json with
`"_class_name": ["pipeline", "ClassConditionalPipeline"]`, which tells diffusers to take the class from
that file. In LongTail Studio it is inference/pipeline.py, the one sampling loop that
`inference.generators.ClassConditionalGenerator` also samples through.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

PIPELINE_MODULE = "pipeline"  # the module file save_pretrained writes next to model_index.json
OUTPUT_TYPES = ("pil", "np")

StepCallback = Callable[["ClassConditionalPipeline", int, torch.Tensor, dict], dict]
NoiseModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (sample, timestep, classes) → noise


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] → RGB images."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def to_numpy(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] → (N, H, W, 3) floats in [0, 1], diffusers' "np" output."""
    return ((images.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


class ClassConditionalPipeline(DiffusionPipeline):
    """Class-conditional DDIM sampling with classifier-free guidance; `__call__` returns ImagePipelineOutput."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler, image_size: int = 32,
                 null_class_index: int | None = None, default_steps: int = 20, default_guidance: float = 1.0,
                 id2label: dict | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # Keys as strings: model_index.json is JSON, so what from_pretrained restores equals what was saved.
        labels = {str(index): name for index, name in (id2label or {}).items()}
        self.register_to_config(image_size=image_size, null_class_index=null_class_index,
                                default_steps=default_steps, default_guidance=default_guidance, id2label=labels)

    @property
    def num_classes(self) -> int:
        """Real classes: every class embedding but the "no class" one."""
        return self.unet.config.num_class_embeds - int(self.config.null_class_index is not None)

    def get_label_ids(self, class_labels: int | str | list[int | str]) -> list[int]:
        """Class indices for class indices or names (the names in id2label); ValueError for an unknown one."""
        labels = class_labels if isinstance(class_labels, (list, tuple)) else [class_labels]
        return [self._label_id(label) for label in labels]

    @torch.no_grad()
    def __call__(self, class_labels: int | str | list[int | str], num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil", return_dict: bool = True, bf16: bool = False,
                 callback_on_step_end: StepCallback | None = None,
                 noise_model: NoiseModel | None = None) -> ImagePipelineOutput | tuple:
        """One image per entry of `class_labels`. None steps or guidance: the config's defaults. A list of
        generators seeds each image's starting noise on its own, so an image does not depend on its batch.
        `bf16` autocasts the UNet to bfloat16 (about half its time on CPU); the DDIM update stays fp32.
        `callback_on_step_end(pipeline, step, timestep, {"latents": sample})` runs after every step.
        `noise_model(sample, timestep, class_labels)`, when given, predicts the noise in place of the UNet
        (LongTail Studio passes the UNet's ONNX export, which is faster on CPU)."""
        labels = self.get_label_ids(class_labels)
        steps = num_inference_steps or self.config.default_steps
        guidance = self.config.default_guidance if guidance_scale is None else float(guidance_scale)
        self._check_request(guidance, generator, len(labels), output_type)
        sample = self.initial_noise(len(labels), generator)
        sample = self.denoise(sample, labels, steps, guidance, bf16, callback_on_step_end, noise_model)
        images = to_pil(sample) if output_type == "pil" else to_numpy(sample)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def initial_noise(self, count: int, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
        size = self.config.image_size
        shape = (count, self.unet.config.in_channels, size, size)
        return randn_tensor(shape, generator=generator, device=self._execution_device, dtype=torch.float32)

    def denoise(self, sample: torch.Tensor, labels: list[int], steps: int, guidance: float, bf16: bool,
                callback_on_step_end: StepCallback | None = None, noise_model: NoiseModel | None = None,
                ) -> torch.Tensor:
        """DDIM from pure noise to images; with guidance other than 1 the batch runs twice through the UNet,
        with its classes and with "no class", and the two noise predictions are extrapolated."""
        device = sample.device
        guided = guidance != 1.0
        class_labels = torch.tensor(labels, device=device)
        if guided:
            class_labels = torch.cat([class_labels, torch.full_like(class_labels, self.config.null_class_index)])
        self.scheduler.set_timesteps(steps)
        for step, timestep in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = torch.cat([sample, sample]) if guided else sample
            if noise_model is not None:
                noise = noise_model(model_input, timestep, class_labels)
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    noise = self.unet(model_input, timestep, class_labels=class_labels).sample.float()
            if guided:
                conditional, unconditional = noise.chunk(2)
                noise = unconditional + guidance * (conditional - unconditional)
            sample = self.scheduler.step(noise, timestep, sample, eta=0.0).prev_sample
            if callback_on_step_end is not None:
                sample = callback_on_step_end(self, step, timestep, {"latents": sample}).get("latents", sample)
        return sample

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """diffusers' save_pretrained (unet/, scheduler/, model_index.json), plus this file as pipeline.py."""
        # The code first: with push_to_hub=True, diffusers uploads the folder inside its save_pretrained.
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(__file__, Path(save_directory) / f"{PIPELINE_MODULE}.py")
        super().save_pretrained(save_directory, *args, **kwargs)

    def to_json_string(self) -> str:
        # diffusers writes the class name alone and looks it up in diffusers itself; the [module, class] form
        # makes DiffusionPipeline.from_pretrained take it from pipeline.py next to model_index.json instead.
        index = json.loads(super().to_json_string())
        index["_class_name"] = [PIPELINE_MODULE, type(self).__name__]
        return json.dumps(index, indent=2, sort_keys=True) + "\n"

    # ------------------------------------------------------------------------------------------ helpers

    def _label_id(self, label: int | str) -> int:
        names = self.config.id2label
        if isinstance(label, str):
            ids = {name: int(index) for index, name in names.items()}
            if label not in ids:
                raise ValueError(f"unknown class {label!r}; the classes are {', '.join(names.values()) or 'unnamed'}")
            return ids[label]
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
            raise ValueError(f"class label {label!r} is not a class index 0-{self.num_classes - 1} or a class name")
        return int(label)

    def _check_request(self, guidance: float, generator, count: int, output_type: str) -> None:
        if guidance != 1.0 and self.config.null_class_index is None:
            raise ValueError("this model was trained without class dropout, so guidance_scale must be 1")
        if isinstance(generator, list) and len(generator) != count:
            raise ValueError(f"{len(generator)} generators for {count} images: pass one per image, or a single one")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, not {output_type!r}")
