"""Train the class-conditional diffusion generator on a long-tailed training set.

    python -m training train-generator --config configs/generator/cifar10_lt.yaml --output-dir runs/gen
    python -m training train-generator --output-dir runs/gen --resume

A diffusers UNet2DModel with one embedding per class plus a "no class" embedding (class dropout, so
sampling can use classifier-free guidance), trained with the DDPM noise-prediction loss; EMA weights are
what gets exported. Training draws classes by `sampler` (sqrt: p(c) ∝ √n_c, between following the long
tail and balancing it), since the tail is what the generator is for.

Steps run in chunks of `checkpoint_every`; each chunk reseeds every RNG from (seed, chunk), so a resumed
run replays exactly what an uninterrupted one does. At the end the EMA UNet and a DDIM scheduler, saved as a
diffusers pipeline (inference/pipeline.py), the UNet's ONNX export (unet/model.onnx, which fp32 sampling on
CPU runs) and generator.json go to `<output-dir>/generator/`, the folder `inference.generators` opens and
diffusers loads.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from inference.generator_folder import (
    CARD_FILE,
    GeneratorError,
    GeneratorInfo,
    pipeline_config,
    read_generator_info,
    write_generator_info,
)
from inference.onnx_unet import UNET_WEIGHTS_FILE
from training.checkpoint import git_revision, restore_model, restore_optimizer
from training.config import ConfigError, DataConfig, RunConfig, parse_options, read_config_tree, validate_run
from training.data.lt_data import build_datasets
from training.engine import AmpStep, scheduled_lr
from training.run import resume_config, seed_epoch, start_run
from training.run_dir import RunDir
from training.unet_export import export_unet_onnx


@dataclass
class UNetConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    attention: list[bool] = field(default_factory=lambda: [False, False, True])  # self-attention per level
    norm_num_groups: int = 16


@dataclass
class GeneratorTrainingConfig:
    steps: int = 4000
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 200  # then cosine decay to 0
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    class_dropout: float = 0.1  # share of labels replaced by "no class", for classifier-free guidance
    sampler: str = "sqrt"  # sqrt | balance | instance: how often each class is drawn
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    checkpoint_every: int = 250
    default_steps: int = 20  # DDIM steps recorded as the sampling default
    default_guidance: float = 1.0
    # A generator folder (generator.json) whose UNet starts this run instead of random weights: training an
    # exported generator further, with a fresh optimizer and schedule. Same classes and UNet layout required.
    init_from: str = ""


@dataclass
class GeneratorConfig:
    data: DataConfig = field(default_factory=DataConfig)
    image_size: int = 32
    unet: UNetConfig = field(default_factory=UNetConfig)
    train: GeneratorTrainingConfig = field(default_factory=GeneratorTrainingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SAMPLERS = ("sqrt", "balance", "instance")
LOG = "log.jsonl"  # one record per chunk of steps, in the run directory
# Keys of the shared sections that the generator trainer does not use: changing one is an error, not a silent no-op.
# (A saved config holds every key at its default, so only a value other than the default is refused.)
UNUSED_KEYS = {"data.batch_size": "set train.batch_size instead", "run.channels_last": "",
               "run.eval_test_every": "", "run.sync_batchnorm": ""}


def generator_config_from_dict(tree: dict) -> GeneratorConfig:
    config = parse_options(GeneratorConfig, tree, "")
    validate_run(config.run)
    _refuse_unused_keys(config)
    unet, train = config.unet, config.train
    if train.sampler not in SAMPLERS:
        raise ConfigError(f"train.sampler must be one of {', '.join(SAMPLERS)}; got '{train.sampler}'")
    if len(unet.attention) != len(unet.block_out_channels):
        raise ConfigError("unet.attention needs one true/false per entry of unet.block_out_channels")
    if config.image_size % 2 ** (len(unet.block_out_channels) - 1):
        raise ConfigError(f"image_size {config.image_size} must be divisible by 2^(levels - 1)")
    if any(width % unet.norm_num_groups for width in unet.block_out_channels):
        raise ConfigError("every unet.block_out_channels entry must be a multiple of unet.norm_num_groups")
    if not 0 <= train.class_dropout < 1 or not 0 < train.ema_decay < 1 or train.steps < 1:
        raise ConfigError("train.class_dropout must lie in [0, 1), train.ema_decay in (0, 1), train.steps >= 1")
    return config


def _refuse_unused_keys(config: GeneratorConfig) -> None:
    defaults = GeneratorConfig()
    for key, hint in UNUSED_KEYS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value != getattr(getattr(defaults, section), name):
            raise ConfigError(f"{key}={value} has no effect on the generator trainer" + (f"; {hint}" if hint else ""))


def load_generator_config(path: str | None, overrides=()) -> GeneratorConfig:
    return generator_config_from_dict(read_config_tree(path, overrides))


# --------------------------------------------------------------------------------------------- model


def build_unet(config: GeneratorConfig, num_classes: int):
    from diffusers import UNet2DModel

    unet = config.unet
    down = ["AttnDownBlock2D" if attend else "DownBlock2D" for attend in unet.attention]
    up = ["AttnUpBlock2D" if attend else "UpBlock2D" for attend in reversed(unet.attention)]
    with_null_class = config.train.class_dropout > 0
    return UNet2DModel(sample_size=config.image_size, in_channels=3, out_channels=3,
                       block_out_channels=tuple(unet.block_out_channels), layers_per_block=unet.layers_per_block,
                       down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=unet.norm_num_groups,
                       num_class_embeds=num_classes + int(with_null_class),
                       attention_head_dim=max(8, unet.block_out_channels[-1] // 4))


def load_exported_unet(unet, folder: str | Path, class_names: list[str]) -> None:
    """Copy an exported generator's (EMA) UNet weights into `unet`; a ConfigError says what does not fit."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        info = read_generator_info(folder)
    except GeneratorError as error:
        raise ConfigError(f"train.init_from: {error}") from error
    if info.class_names != list(class_names):
        raise ConfigError(f"train.init_from: {folder} was trained on the classes {info.class_names}, "
                          f"not {list(class_names)}")
    weights = folder / "unet" / UNET_WEIGHTS_FILE
    if not weights.is_file():
        raise ConfigError(f"train.init_from: {folder / 'unet'} holds no {UNET_WEIGHTS_FILE}")
    try:
        unet.load_state_dict(load_file(weights))
    except RuntimeError as error:  # missing / unexpected keys or other shapes: another UNet layout
        raise ConfigError(f"train.init_from: {folder}'s UNet does not match this config's unet section "
                          f"(set unet.* and image_size as it was trained): {str(error).splitlines()[0]}") from error


def noise_schedulers(config: GeneratorConfig):
    from diffusers import DDIMScheduler, DDPMScheduler

    settings = {"num_train_timesteps": config.train.train_timesteps, "beta_schedule": config.train.beta_schedule}
    return DDPMScheduler(**settings), DDIMScheduler(**settings, steps_offset=1, clip_sample=True)


class Ema(torch.nn.Module):
    """Exponential moving average of a model's weights, with the usual warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__()
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, current in zip(self.model.parameters(), model.parameters()):
            average.lerp_(current.detach(), 1 - decay)
        for average, current in zip(self.model.buffers(), model.buffers()):
            average.copy_(current)


# ---------------------------------------------------------------------------------------------- data


def generator_transform(image_size: int) -> v2.Compose:
    """uint8 image → float in [-1, 1] at the generator's size, flipped at random."""
    return v2.Compose([v2.ToImage(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
                       v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize([0.5] * 3, [0.5] * 3)])


def sample_weights(labels: np.ndarray, sampler: str) -> torch.Tensor:
    """Per-image weights that draw class c with probability ∝ n_c (instance), √n_c (sqrt) or 1 (balance)."""
    counts = np.bincount(labels).astype(float)
    exponent = {"instance": 0.0, "sqrt": -0.5, "balance": -1.0}[sampler]
    return torch.as_tensor(counts[labels] ** exponent, dtype=torch.double)


def learning_rate(config: GeneratorTrainingConfig, step: int) -> float:
    """The LR of (0-based) step `step`: the classifier's schedule counted in steps, cosine to 0."""
    return scheduled_lr(config.lr, step + 1, config.warmup_steps, config.steps, "cosine")


# --------------------------------------------------------------------------------------------- train


def train_generator(config: GeneratorConfig, output_dir: str | Path, resume: bool = False) -> Path:
    output_dir = Path(output_dir)
    run = RunDir(output_dir)
    run.prepare(resume)
    device = start_run(config.run)
    amp = AmpStep(config.run.amp, device)

    bundle = build_datasets(config.data)
    labels = bundle.train.labels
    num_classes = bundle.num_classes
    unet = build_unet(config, num_classes).to(device)
    if config.train.init_from and not resume:  # a resumed run restores its own weights below
        load_exported_unet(unet, config.train.init_from, bundle.class_names)
        print(f"starting from the UNet of {config.train.init_from}")
    ema = Ema(unet, config.train.ema_decay)
    modules = torch.nn.ModuleDict({"unet": unet, "ema": ema.model})
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    train_scheduler, _ = noise_schedulers(config)
    null_class = num_classes if config.train.class_dropout > 0 else None

    step, seconds, log = 0, 0.0, []
    if resume:
        tensors, info = run.load("last")
        restore_model(modules, tensors, info)
        restore_optimizer(optimizer, tensors, info)
        step, seconds = info["step"], info["train_seconds"]
        log = [record for record in run.read_history(LOG) if record["step"] <= step]
        print(f"resuming {output_dir} after step {step}")
    run.save_config(config)
    print(f"{config.data.dataset}: {len(labels)} training images, {num_classes} classes, counts "
          f"{bundle.train_counts}; UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")

    dataset = bundle.train.with_transform(generator_transform(config.image_size))
    weights = sample_weights(labels, config.train.sampler)
    chunk = config.train.checkpoint_every
    bar = tqdm(total=config.train.steps, initial=step, disable=not config.run.progress, desc="train-generator")
    while step < config.train.steps:
        chunk_steps = min(chunk, config.train.steps - step)
        chunk_seed = seed_epoch(config.run.seed, step // chunk)
        sampler = WeightedRandomSampler(weights, chunk_steps * config.train.batch_size, replacement=True,
                                        generator=torch.Generator().manual_seed(chunk_seed))
        loader = DataLoader(dataset, batch_size=config.train.batch_size, sampler=sampler,
                            num_workers=config.data.num_workers, drop_last=True,
                            generator=torch.Generator().manual_seed(chunk_seed))
        started, losses = time.perf_counter(), []
        unet.train()
        for images, classes in loader:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config.train, step)
            with amp.autocast():
                loss = denoising_loss(unet, train_scheduler, images.to(device), classes.to(device), config, null_class)
            amp.step(loss, optimizer)
            ema.update(unet, step)
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        seconds += time.perf_counter() - started
        info = {"step": step, "train_seconds": seconds, "loss": float(np.mean(losses)),
                "config": config.to_dict(), "class_names": bundle.class_names, "class_counts": bundle.train_counts}
        run.save("last", modules, info, optimizer)
        log.append({"step": step, "loss": info["loss"], "train_seconds": round(seconds, 1)})
        run.write_history(log, LOG)
    bar.close()
    return export_generator(output_dir, ema.model, config, bundle, step, seconds)


def denoising_loss(unet, scheduler, images: torch.Tensor, classes: torch.Tensor, config: GeneratorConfig,
                   null_class: int | None) -> torch.Tensor:
    """DDPM's noise-prediction loss on a batch, with class dropout to "no class" for classifier-free guidance."""
    if null_class is not None:
        dropped = torch.rand(len(classes), device=classes.device) < config.train.class_dropout
        classes = torch.where(dropped, torch.full_like(classes, null_class), classes)
    noise = torch.randn_like(images)
    timesteps = torch.randint(0, config.train.train_timesteps, (len(images),), device=images.device)
    predicted = unet(scheduler.add_noise(images, noise, timesteps), timesteps, class_labels=classes).sample
    return F.mse_loss(predicted.float(), noise)


def export_generator(output_dir: Path, ema_unet, config: GeneratorConfig, bundle, step: int, seconds: float) -> Path:
    """The EMA UNet + DDIM scheduler as a diffusers pipeline (unet/, scheduler/, model_index.json, pipeline.py),
    with README.md and generator.json, in `<output_dir>/generator/`."""
    from inference.pipeline import ClassConditionalPipeline

    _, sampling_scheduler = noise_schedulers(config)
    target = output_dir / "generator"
    info = GeneratorInfo(
        name=f"{config.data.dataset}_class_conditional_ddim",
        class_names=list(bundle.class_names),
        class_counts=list(bundle.train_counts),
        dataset=config.data.dataset,
        imbalance_factor=config.data.imbalance_factor,
        image_size=config.image_size,
        null_class_index=bundle.num_classes if config.train.class_dropout > 0 else None,
        default_steps=config.train.default_steps,
        default_guidance=config.train.default_guidance,
        training={"steps": step, "batch_size": config.train.batch_size, "train_seconds": round(seconds, 1),
                  "device": str(next(ema_unet.parameters()).device), "git_revision": git_revision(),
                  "parameters": sum(p.numel() for p in ema_unet.parameters()),
                  **earlier_training(config.train.init_from)},
        config=config.to_dict(),
    )
    pipeline = ClassConditionalPipeline(ema_unet, sampling_scheduler, **pipeline_config(info))
    pipeline.save_pretrained(target, safe_serialization=True)
    export_unet_onnx(copy.deepcopy(ema_unet).float().cpu(), target / "unet")  # fp32 sampling on CPU runs this
    # The card next: generator.json is what marks the folder as a generator, so it comes last.
    (target / CARD_FILE).write_text(generator_card(info))
    write_generator_info(target, info)
    print(f"generator written to {target} ({step} steps, {seconds / 60:.1f} min)")
    return target


def earlier_training(init_from: str) -> dict:
    """What the generator a run started from had been through (its card repeats it), or nothing."""
    if not init_from:
        return {}
    earlier = read_generator_info(init_from).training
    before = earlier.get("continued_from", {"steps": 0, "train_seconds": 0.0})  # a chain counts in full
    return {"continued_from": {"name": str(init_from), "steps": earlier["steps"] + before["steps"],
                               "train_seconds": round(earlier["train_seconds"] + before["train_seconds"], 1),
                               "git_revision": earlier["git_revision"]}}


def resume_generator_config(output_dir: str | Path, config_path: str | None = None, overrides=()) -> GeneratorConfig:
    """Like the classifier trainer: only paths, workers, threads, progress and device may change on resume."""
    return resume_config(output_dir, config_path, overrides, build=generator_config_from_dict)


def generator_card(info: GeneratorInfo) -> str:
    """The generator's card: what it was trained on, for how long, and how to sample from it."""
    training, config = info.training, info.config
    counts = ", ".join(f"{name} {count}" for name, count in zip(info.class_names, info.class_counts))
    return f"""# {info.name}

A class-conditional diffusion model (diffusers `UNet2DModel`, {training["parameters"] / 1e6:.2f}M parameters,
EMA weights) that makes {info.image_size}x{info.image_size} images of the classes below, for topping up
tail classes. Trained by `python -m training train-generator` with the DDPM noise-prediction loss
({config["train"]["train_timesteps"]} timesteps, {config["train"]["beta_schedule"]} schedule); sampled with DDIM.

- Data: {info.dataset} training split only (imbalance factor {info.imbalance_factor}); per-class images: {counts}.
- Training: {training["steps"]} steps of {training["batch_size"]} images, classes drawn by
  `{config["train"]["sampler"]}`, class dropout {config["train"]["class_dropout"]} (classifier-free guidance
  {"available" if info.supports_guidance else "not available"}); {training["train_seconds"] / 60:.1f} min on
  {training["device"]}; source revision {training["git_revision"]}.{continued_from(training)}
- Sampling defaults: {info.default_steps} DDIM steps, guidance {info.default_guidance}.
- `unet/model.onnx`: the same UNet exported to ONNX, which fp32 sampling on CPU runs with ONNX Runtime
  (faster than PyTorch; an image within one pixel level of PyTorch's). Diffusers ignores it.

```bash
python -m training synthesize --generator <this folder> --config configs/cifar10_lt/sau.yaml --output synthetic/
```

```python
from inference.generators import open_generator
images = open_generator("<this folder>").generate(class_index={len(info.class_names) - 1}, count=4, seed=0)
```

{diffusers_loading(info)}"""


def continued_from(training: dict) -> str:
    earlier = training.get("continued_from")
    if not earlier:
        return ""
    return (f"\n  Started from the generator in `{earlier['name']}` ({earlier['steps']} steps, "
            f"{earlier['train_seconds'] / 60:.1f} min, revision {earlier['git_revision']}): "
            f"{earlier['steps'] + training['steps']} steps in all.")


def diffusers_loading(info: GeneratorInfo) -> str:
    """The card's section on loading the folder with diffusers alone (its pipeline.py is the pipeline class)."""
    return f"""With diffusers alone (no LongTail Studio): `trust_remote_code=True` runs this folder's `pipeline.py`,
the pipeline class that `model_index.json` names. From the Hub, the pinned revision pins that code too.

```python
import torch
from diffusers import DiffusionPipeline
pipeline = DiffusionPipeline.from_pretrained("<this folder>", trust_remote_code=True)
# from the Hub: DiffusionPipeline.from_pretrained("<owner/name>", revision="<commit sha>", trust_remote_code=True)
images = pipeline(class_labels=["{info.class_names[-1]}"] * 4, generator=torch.Generator().manual_seed(0)).images
```
"""
