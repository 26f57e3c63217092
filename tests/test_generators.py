"""Generators and synthesis, offline: the class-conditional path on a tiny UNet trained for a few steps
through the CLI (and loaded by diffusers itself as a pipeline), the text-to-image path on a tiny randomly
initialised Stable Diffusion pipeline built from configs (with a CLIP tokenizer built here), `synthesize` with
its top-up counts, resume and filter."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASS_NAMES, REPO_ROOT, write_tiny_generator
from PIL import Image

import inference.pipeline
from inference.generator_folder import (
    GENERATOR_DOWNLOAD_PATTERNS,
    GENERATOR_FORMAT,
    GeneratorInfo,
    is_generator_folder,
    pipeline_config,
    read_generator_info,
    write_generator_info,
)
from inference.generators import GeneratorError, image_seeds, open_generator, seeded_generators
from training.config import ConfigError
from training.data.synthetic_set import read_synthetic_set, top_up_counts

TINY_GENERATOR = ["image_size=16", "unet.block_out_channels=[16, 32]", "unet.attention=[false, true]",
                  "unet.norm_num_groups=8", "train.steps=4", "train.batch_size=8", "train.warmup_steps=1",
                  "train.checkpoint_every=2", "train.default_steps=3", "run.progress=false", "data.num_workers=0",
                  "data.imbalance_factor=10", "data.val_per_class=5"]
PIPELINE_SOURCE = Path(inference.pipeline.__file__)  # what every generator folder carries as pipeline.py


def run_cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600, check=False)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def overrides(*pairs):
    return [item for pair in pairs for item in ("--set", pair)]


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory, tiny_cifar_npz):
    """A class-conditional generator trained for 4 steps on the tiny data: (run dir, generator dir)."""
    run = tmp_path_factory.mktemp("generator") / "run"
    run_cli("train-generator", "--config", "configs/generator/cifar10_lt.yaml", "--output-dir", str(run),
            *overrides(f"data.root={tiny_cifar_npz}", *TINY_GENERATOR))
    return run, run / "generator"


def test_train_generator_writes_a_loadable_generator(tiny_generator):
    run, folder = tiny_generator
    info = json.loads((folder / "generator.json").read_text())
    assert info["class_names"] == CLASS_NAMES and info["image_size"] == 16
    assert info["null_class_index"] == 10 and info["training"]["steps"] == 4
    assert info["class_counts"][0] > info["class_counts"][-1]  # trained on the long-tailed split
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [2, 4]
    assert list((folder / "unet").glob("*.safetensors")), "weights must be safetensors"
    assert (folder / "unet" / "model.onnx").is_file()  # the UNet's ONNX export, for fp32 sampling on CPU
    assert read_generator_info(folder).to_dict() == info  # what the trainer writes is what the reader reads
    index = json.loads((folder / "model_index.json").read_text())  # and a diffusers pipeline around it
    assert index["_class_name"] == ["pipeline", "ClassConditionalPipeline"]
    assert (index["unet"], index["scheduler"]) == (["diffusers", "UNet2DModel"], ["diffusers", "DDIMScheduler"])
    assert (folder / "pipeline.py").read_bytes() == PIPELINE_SOURCE.read_bytes()
    assert "trust_remote_code=True" in (folder / "README.md").read_text()

    generator = open_generator(folder)
    calls = []
    images = generator.generate(3, 2, seed=5, progress=lambda done, total: calls.append((done, total)))
    assert [image.size for image in images] == [(16, 16)] * 2 and images[0].mode == "RGB"
    assert calls == [(1, 3), (2, 3), (3, 3)]
    guided = generator.generate(3, 1, seed=5, guidance=3.0)
    assert np.asarray(guided[0]).shape == (16, 16, 3)


def test_fp32_sampling_on_cpu_runs_the_onnx_export_within_a_pixel_level_of_torch(tiny_generator):
    generator = open_generator(tiny_generator[1])
    generator.bf16 = False
    assert generator.runtime == "onnxruntime" and generator.describe()["runtime"] == "onnxruntime"
    exported = pixels(generator.generate(4, 3, seed=2, guidance=3.0))
    onnx_unet, generator.onnx_unet = generator.onnx_unet, None
    assert generator.runtime == "torch"
    eager = pixels(generator.generate(4, 3, seed=2, guidance=3.0))
    assert np.abs(exported - eager).max() <= 1 and (exported != eager).mean() < 0.01
    generator.onnx_unet, generator.bf16 = onnx_unet, True
    assert generator.runtime == "torch"  # bf16 autocast is a PyTorch path


def test_a_stale_or_broken_onnx_export_is_refused_and_export_unet_rewrites_it(tiny_generator, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "generator"
    shutil.copytree(tiny_generator[1], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({name: tensor * 1.01 for name, tensor in state.items()}, weights)  # retrained, say
    with pytest.raises(GeneratorError, match="exported from other weights.*export-unet"):
        open_generator(folder)
    run_cli("export-unet", str(folder))
    assert open_generator(folder).runtime == "onnxruntime"

    (folder / "unet" / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(GeneratorError, match="not a readable ONNX model"):
        open_generator(folder)
    (folder / "unet" / "model.onnx").unlink()
    assert open_generator(folder).onnx_unet is None  # no export: PyTorch samples, as before
    result = run_cli("export-unet", str(tmp_path / "nowhere"), check=False)
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr


def test_a_generator_samples_its_onnx_export_in_fp32_else_bf16_only_where_the_device_has_bf16_kernels(
        tiny_generator, tmp_path, monkeypatch):
    import inference.generators

    folder = tmp_path / "generator"
    shutil.copytree(tiny_generator[1], folder)
    (folder / "unet" / "model.onnx").unlink()
    for native in (False, True):  # AVX2-only CPUs emulate bf16, 20-36x slower than fp32 for this UNet
        monkeypatch.setattr(inference.generators, "has_native_bf16", lambda device_type: native)
        exported = open_generator(tiny_generator[1])  # fp32 on every CPU, whatever its kernels
        assert not exported.bf16 and exported.runtime == "onnxruntime"
        assert open_generator(folder).bf16 is native


def test_each_image_depends_only_on_seed_class_and_index(tiny_generator):
    generator = open_generator(tiny_generator[1])
    generator.bf16 = False  # bf16 kernels may round differently at another batch size
    batch = [np.asarray(image) for image in generator.generate(2, 3, seed=1)]
    alone = np.asarray(generator.generate(2, 1, seed=1, first_index=2)[0])
    assert np.abs(batch[2].astype(int) - alone.astype(int)).max() <= 1
    assert not np.array_equal(batch[0], batch[1])
    assert len(set(image_seeds(0, 1, 0, 100)) | set(image_seeds(0, 2, 0, 100))) == 200


def test_generator_resume_gives_identical_weights(tmp_path, tiny_cifar_npz, monkeypatch):
    from safetensors.torch import load_file

    import training.generator_training as trainer
    from training.run_dir import RunDir

    settings = [f"data.root={tiny_cifar_npz}", *TINY_GENERATOR]
    trainer.train_generator(trainer.load_generator_config("configs/generator/cifar10_lt.yaml", settings),
                            tmp_path / "straight")
    real_save, saves = RunDir.save, []

    def killed_after_first_chunk(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # during the second chunk's save: the first chunk is on disk
        return real_save(*args, **kwargs)

    monkeypatch.setattr(RunDir, "save", killed_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_generator(trainer.load_generator_config("configs/generator/cifar10_lt.yaml", settings),
                                tmp_path / "resumed")
    monkeypatch.setattr(RunDir, "save", real_save)
    config = trainer.resume_generator_config(tmp_path / "resumed", "configs/generator/cifar10_lt.yaml", settings)
    trainer.train_generator(config, tmp_path / "resumed", resume=True)
    straight = load_file(next((tmp_path / "straight" / "generator" / "unet").glob("*.safetensors")))
    resumed = load_file(next((tmp_path / "resumed" / "generator" / "unet").glob("*.safetensors")))
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(straight[name], resumed[name], rtol=0, atol=0)


def test_a_generator_trains_on_from_an_exported_one(tmp_path, tiny_cifar_npz, tiny_generator):
    from safetensors.torch import load_file

    import training.generator_training as trainer

    source = tiny_generator[1]
    settings = [f"data.root={tiny_cifar_npz}", *TINY_GENERATOR, f"train.init_from={source}", "train.lr=0"]
    config = trainer.load_generator_config("configs/generator/cifar10_lt.yaml", settings)
    folder = trainer.train_generator(config, tmp_path / "continued")
    weights = [load_file(next((path / "unet").glob("*.safetensors"))) for path in (source, folder)]
    for name in weights[0]:  # at learning rate 0 the UNet and its EMA stay what the exported one was
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=0)
    info = read_generator_info(folder)
    assert info.training["continued_from"]["steps"] == 4 and info.training["steps"] == 4
    assert "8 steps in all" in (folder / "README.md").read_text()

    wider = [*settings, "unet.block_out_channels=[16, 48]"]
    with pytest.raises(ConfigError, match="does not match this config's unet section"):
        trainer.train_generator(trainer.load_generator_config("configs/generator/cifar10_lt.yaml", wider),
                                tmp_path / "wider")
    missing = [*settings[:-2], f"train.init_from={tmp_path / 'nowhere'}"]
    with pytest.raises(ConfigError, match="train.init_from"):
        trainer.train_generator(trainer.load_generator_config("configs/generator/cifar10_lt.yaml", missing),
                                tmp_path / "missing")


def test_generator_config_errors_are_clear(tmp_path):
    result = run_cli("train-generator", "--config", "configs/generator/cifar10_lt.yaml", "--output-dir",
                     str(tmp_path / "x"), *overrides("unet.attention=[true]"), check=False)
    assert result.returncode == 2 and "one true/false per entry" in result.stderr
    result = run_cli("train-generator", "--config", "configs/generator/cifar10_lt.yaml", "--output-dir",
                     str(tmp_path / "x"), *overrides("train.sampler=uniform"), check=False)
    assert result.returncode == 2 and "train.sampler must be one of" in result.stderr


def test_sampling_settings_are_the_ones_generate_uses(tiny_generator):
    generator = open_generator(tiny_generator[1])
    assert generator.sampling_settings(3) == (3, 1.0)  # the defaults train.default_steps / default_guidance wrote
    assert generator.sampling_settings(3, steps=5, guidance=2.0) == (5, 2.0)
    with pytest.raises(GeneratorError, match="out of range"):
        generator.sampling_settings(10)


# ------------------------------------------------------------------------------------- the diffusers pipeline


@pytest.fixture
def remote_code_cache(tmp_path, monkeypatch):
    """diffusers copies a folder's pipeline.py into its modules cache and imports it from there: a fresh cache."""
    from diffusers.utils import dynamic_modules_utils

    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(int)


def test_diffusers_loads_the_generator_folder_and_samples_what_generate_does(tiny_generator, remote_code_cache):
    from diffusers import DiffusionPipeline

    folder = tiny_generator[1]
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folder)  # the folder carries code, which diffusers runs only when asked
    pipeline = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(pipeline).__name__ == "ClassConditionalPipeline"
    settings = pipeline_config(read_generator_info(folder))  # from_pretrained restores what generator.json says
    assert {key: pipeline.config[key] for key in settings} == settings and settings["null_class_index"] == 10
    explicit = DiffusionPipeline.from_pretrained(folder, custom_pipeline=str(folder), trust_remote_code=True)
    assert type(explicit).__name__ == "ClassConditionalPipeline"

    generator = open_generator(folder)
    for bf16 in (False, True):
        generator.bf16 = bf16
        ours = generator.generate(3, 2, seed=5, guidance=3.0)
        # fp32 on CPU: ours predicts the noise with the ONNX export, handed to diffusers' pipeline the same way
        noise_model = generator.onnx_unet if generator.runtime == "onnxruntime" else None
        theirs = pipeline(class_labels=[CLASS_NAMES[3]] * 2, guidance_scale=3.0, bf16=bf16, noise_model=noise_model,
                          generator=seeded_generators(image_seeds(5, 3, 0, 2))).images
        assert np.array_equal(pixels(ours), pixels(theirs)), f"bf16={bf16}"


def reference_ddim(unet, scheduler, noise, class_index, null_class, steps, guidance):
    """DDIM (eta 0) with classifier-free guidance written out plainly, one UNet call per condition."""
    labels = torch.full((len(noise),), class_index)
    sample = noise
    scheduler.set_timesteps(steps)
    for timestep in scheduler.timesteps:
        conditional = unet(sample, timestep, class_labels=labels).sample
        unconditional = unet(sample, timestep, class_labels=torch.full_like(labels, null_class)).sample
        noise = unconditional + guidance * (conditional - unconditional)
        sample = scheduler.step(noise, timestep, sample, eta=0.0).prev_sample
    return ((sample.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(int)


def test_the_pipeline_samples_plain_ddim_with_classifier_free_guidance(tiny_generator):
    generator = open_generator(tiny_generator[1])
    generator.bf16 = False
    seeds = image_seeds(2, 7, 0, 3)
    noise = torch.stack([torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        expected = reference_ddim(generator.pipeline.unet, generator.pipeline.scheduler, noise, 7, 10, 4, 2.5)
    images = pixels(generator.generate(7, 3, seed=2, steps=4, guidance=2.5))
    assert np.abs(images - expected).max() <= 1  # one batch of 6 vs two of 3: fp32 kernels may round apart


def test_the_old_layout_opens_and_samples_like_the_pipeline_layout(tmp_path):
    old = write_tiny_generator(tmp_path / "old", ["red", "green", "blue"])  # unet/ scheduler/ generator.json README
    assert not (old / "model_index.json").exists()
    generator = open_generator(old)
    new = tmp_path / "new"
    generator.pipeline.save_pretrained(new)
    assert sorted(path.name for path in new.iterdir()) == ["model_index.json", "pipeline.py", "scheduler", "unet"]
    shutil.copy2(old / "generator.json", new / "generator.json")
    assert read_generator_info(new) == read_generator_info(old)
    converted = open_generator(new)
    generator.bf16 = converted.bf16 = False
    assert np.array_equal(pixels(generator.generate(1, 2, seed=3, guidance=2.0)),
                          pixels(converted.generate(1, 2, seed=3, guidance=2.0)))


def test_the_pipeline_refuses_what_it_cannot_do(tiny_generator):
    from inference.pipeline import ClassConditionalPipeline

    pipeline = open_generator(tiny_generator[1]).pipeline
    assert pipeline.get_label_ids([CLASS_NAMES[9], 2]) == [9, 2]
    with pytest.raises(ValueError, match="unknown class 'teal'"):
        pipeline(class_labels="teal")
    with pytest.raises(ValueError, match="not a class index 0-9"):
        pipeline(class_labels=10)  # the "no class" embedding is not a class
    with pytest.raises(ValueError, match="pass one per image"):
        pipeline(class_labels=[1, 2], generator=seeded_generators([1]))
    with pytest.raises(ValueError, match="output_type must be one of pil, np"):
        pipeline(class_labels=1, output_type="latent")
    unguided = ClassConditionalPipeline(pipeline.unet, pipeline.scheduler, image_size=16, null_class_index=None)
    with pytest.raises(ValueError, match="without class dropout"):
        unguided(class_labels=1, guidance_scale=2.0)
    array = pipeline(class_labels=[0], num_inference_steps=1, output_type="np").images
    assert array.shape == (1, 16, 16, 3) and 0 <= array.min() <= array.max() <= 1


SHIPPED_UNET_SHA256 = "e20bd28985edc3a27ac10640fbef95d9df4c1bbd67bc74e9c950bff6d5633edc"  # the weights as trained


def test_shipped_generator_is_a_diffusers_pipeline_around_its_trained_weights(remote_code_cache):
    from diffusers import DiffusionPipeline

    weights = SHIPPED_GENERATOR / "unet" / "diffusion_pytorch_model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == SHIPPED_UNET_SHA256
    assert (SHIPPED_GENERATOR / "pipeline.py").read_bytes() == PIPELINE_SOURCE.read_bytes(), \
        "inference/pipeline.py changed: copy it to model_zoo/cifar10_lt_generator/pipeline.py"
    generator = open_generator(SHIPPED_GENERATOR)
    shipped_index = json.loads((SHIPPED_GENERATOR / "model_index.json").read_text())
    written_index = json.loads(generator.pipeline.to_json_string())  # what save_pretrained writes today
    shipped_index.pop("_diffusers_version"), written_index.pop("_diffusers_version")
    assert shipped_index == written_index

    pipeline = DiffusionPipeline.from_pretrained(SHIPPED_GENERATOR, trust_remote_code=True)
    generator.bf16 = False
    assert generator.runtime == "onnxruntime"  # its unet/model.onnx is of the shipped weights (checked on open)
    ours = generator.generate(9, 1, seed=0, steps=2)  # the shipped default guidance, 7
    theirs = pipeline(class_labels="truck", num_inference_steps=2, generator=seeded_generators(image_seeds(0, 9, 0, 1)))
    assert np.abs(pixels(ours) - pixels(theirs.images)).max() <= 1  # ONNX Runtime vs PyTorch: a pixel level at most


def test_a_pipeline_generator_on_the_hub_opens_with_our_loader_and_with_diffusers(tiny_generator, tmp_path, monkeypatch,
                                                                                remote_code_cache):
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants
    from test_hub import SHA, cache_files, folder_files

    from inference.hub import resolve_generator_source

    assert {"model_index.json", "pipeline.py"} <= set(GENERATOR_DOWNLOAD_PATTERNS)  # a Hub download fetches them
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # as tests/test_hub.py's hub_cache does
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snapshot = cache_files(cache, "alice/c10-gen", folder_files(tiny_generator[1]))
    # model_index.json is cached, as after any download of the repo: still our generator, not a text-to-image model.
    local, revision = resolve_generator_source(f"hf://alice/c10-gen@{SHA}", None)
    assert Path(local) == snapshot and revision is None
    assert open_generator(f"hf://alice/c10-gen@{SHA}").class_names == CLASS_NAMES
    # Offline, diffusers cannot ask the Hub for the repo's files, says so, and loads the cached snapshot.
    pipeline = DiffusionPipeline.from_pretrained("alice/c10-gen", revision=SHA, trust_remote_code=True)
    assert type(pipeline).__name__ == "ClassConditionalPipeline" and pipeline.config.image_size == 16


# ------------------------------------------------------------------------------------- the generator folder

SHIPPED_GENERATOR = REPO_ROOT / "model_zoo" / "cifar10_lt_generator"


@pytest.fixture
def generator_folder(tmp_path):
    """The shipped generator.json with empty unet/ and scheduler/ folders: the contract without the weights."""
    folder = tmp_path / "generator"
    (folder / "unet").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    shutil.copy2(SHIPPED_GENERATOR / "generator.json", folder / "generator.json")
    return folder


def test_shipped_generator_info_reads_and_rewrites_byte_for_byte(tmp_path):
    info = read_generator_info(SHIPPED_GENERATOR)
    assert info.name == "cifar10_lt_class_conditional_ddim" and len(info.class_names) == 10
    assert (info.image_size, info.null_class_index, info.default_steps, info.default_guidance) == (32, 10, 7, 7.0)
    assert info.supports_guidance and "sampling_defaults_note" in info.extra
    assert (info.training["steps"], info.training["continued_from"]["steps"]) == (1500, 3600)  # trained further
    assert is_generator_folder(SHIPPED_GENERATOR) and not is_generator_folder(tmp_path)
    written = write_generator_info(tmp_path, info)
    assert written.read_bytes() == (SHIPPED_GENERATOR / "generator.json").read_bytes()
    assert list(tmp_path.iterdir()) == [written]  # the temporary file is gone


def test_generator_info_write_read_round_trip(generator_folder):
    info = GeneratorInfo(name="toy", class_names=["a", "b"], class_counts=[9, 1], dataset="toy-lt", image_size=8,
                         null_class_index=None, default_steps=4, default_guidance=1.0, training={"steps": 2},
                         config={"image_size": 8}, extra={"note": "kept"})
    write_generator_info(generator_folder, info)
    assert read_generator_info(generator_folder) == info
    assert json.loads((generator_folder / "generator.json").read_text())["format"] == GENERATOR_FORMAT


def edit_info(folder, **changes):
    info = json.loads((folder / "generator.json").read_text())
    (folder / "generator.json").write_text(json.dumps({**info, **changes}))


@pytest.mark.parametrize("break_it, message", [
    (lambda folder: (folder / "generator.json").unlink(), "it has no generator.json"),
    (lambda folder: (folder / "generator.json").write_text("{not json"), "is not valid JSON"),
    (lambda folder: edit_info(folder, format="someone.else/2"), "has the format 'someone.else/2'"),
    (lambda folder: (folder / "unet").rmdir(), "unet/ is missing"),
    (lambda folder: edit_info(folder, image_size="large"), "'image_size' must be a positive whole number"),
    (lambda folder: edit_info(folder, class_counts=[1, 2]), "'class_counts' has 2 entries for 10 classes"),
    (lambda folder: (folder / "model_index.json").write_text(json.dumps(
        {**pipeline_config(read_generator_info(folder)), "default_steps": 50})),
     "model_index.json disagrees with generator.json on default_steps, so diffusers would sample differently"),
    (lambda folder: (folder / "model_index.json").write_text("{"), "model_index.json is not valid JSON"),
], ids=["no generator.json", "not JSON", "wrong format", "no unet", "bad image size", "counts mismatch",
        "pipeline settings disagree", "model_index not JSON"])
def test_generator_folder_problems_are_named(generator_folder, break_it, message):
    break_it(generator_folder)
    with pytest.raises(GeneratorError, match=message):
        read_generator_info(generator_folder)
    if is_generator_folder(generator_folder):  # without generator.json it is not ours, for open_generator too
        with pytest.raises(GeneratorError, match=message):  # open_generator reports the same problem
            open_generator(generator_folder)


def test_top_up_counts():
    assert top_up_counts([500, 120, 5]) == [0, 380, 495]
    assert top_up_counts([500, 120, 5], per_class=200) == [0, 80, 195]


def test_synthesize_tops_up_resumes_and_records(tiny_generator, tiny_cifar_npz, tmp_path):
    data = [f"data.root={tiny_cifar_npz}", "data.imbalance_factor=10", "data.val_per_class=5",
            "data.num_workers=0", "model.name=resnet32"]
    command = ["synthesize", "--generator", str(tiny_generator[1]), "--config", "configs/cifar10_lt/ce.yaml",
               *overrides(*data), "--per-class", "20", "--classes", "white,black,purple", "--steps", "2",
               "--batch-size", "4"]
    # The tiny generator makes 16-px images but ResNet-32 takes 32 px: refused before anything is written.
    result = run_cli(*command, "--output", str(tmp_path / "wrong"), check=False)
    assert result.returncode == 2 and "16px" in result.stderr and not (tmp_path / "wrong").exists()

    import training.synthesize as synthesis
    from training.config import load_config
    from training.data.lt_data import build_datasets

    bundle = build_datasets(load_config("configs/cifar10_lt/ce.yaml", data).data)
    generator = open_generator(tiny_generator[1])
    wanted = [0] * 6 + top_up_counts(bundle.train_counts, 20)[6:8] + [0, 3]
    straight = synthesis.synthesize(generator, CLASS_NAMES, wanted, tmp_path / "straight", steps=2, batch_size=4,
                                    progress=False)
    assert straight["counts"] == wanted

    real_generate, calls = generator.generate, []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    generator.generate = dies_on_third_batch
    with pytest.raises(KeyboardInterrupt):
        synthesis.synthesize(generator, CLASS_NAMES, wanted, tmp_path / "resumed", steps=2, batch_size=4,
                             progress=False)
    generator.generate = real_generate
    assert sum(read_synthetic_set(tmp_path / "resumed").counts()) == 8
    synthesis.synthesize(generator, CLASS_NAMES, wanted, tmp_path / "resumed", steps=2, batch_size=4, progress=False)
    once, twice = read_synthetic_set(tmp_path / "straight"), read_synthetic_set(tmp_path / "resumed", CLASS_NAMES)
    assert [r["file"] for r in once.records] == [r["file"] for r in twice.records]
    for a, b in zip(once.paths, twice.paths):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert twice.manifest["generator"]["kind"] == "class_conditional" and twice.manifest["steps"] == 2
    assert twice.manifest["generator"]["precision"] == ("bf16" if generator.bf16 else "fp32")
    generator.bf16 = not generator.bf16  # bf16 images differ from fp32 ones: a resumed set keeps its first precision
    with pytest.raises(Exception, match=r"different settings \(generator\)"):
        synthesis.synthesize(generator, CLASS_NAMES, wanted, tmp_path / "resumed", steps=2, progress=False)
    generator.bf16 = not generator.bf16

    with pytest.raises(Exception, match="different settings"):
        synthesis.synthesize(generator, CLASS_NAMES, wanted, tmp_path / "resumed", steps=3, progress=False)
    paths, labels = twice.first_per_class([0] * 9 + [2])
    assert labels.tolist() == [9, 9] and all(p.is_file() for p in paths)
    with pytest.raises(Exception, match="too few synthetic images"):
        twice.first_per_class([0] * 9 + [4])


class KeepEveryOther:
    """A stand-in for the ONNX confidence filter: passes the 1st, 3rd, … image of every batch."""

    def __init__(self):
        self.threshold = 0.5
        self.description = {"model": "every other image", "threshold": 0.5}

    def scores(self, images, class_index):
        return [0.9 if k % 2 == 0 else 0.1 for k in range(len(images))]


def test_synthesize_filter_keeps_only_passing_images_and_records_scores(tiny_generator, tmp_path):
    import training.synthesize as synthesis

    generator = open_generator(tiny_generator[1])
    summary = synthesis.synthesize(generator, CLASS_NAMES, [3] + [0] * 9, tmp_path / "kept", steps=2, batch_size=4,
                                   image_filter=KeepEveryOther(), progress=False)
    kept = read_synthetic_set(tmp_path / "kept")
    assert kept.manifest["filter"] == KeepEveryOther().description
    assert [r["index"] for r in kept.records] == [0, 2, 4] and summary["counts"][0] == 3
    assert all(record["score"] == 0.9 for record in kept.records)

    strict = KeepEveryOther()
    strict.threshold = 1.01
    with pytest.raises(GeneratorError, match="passed the filter"):
        synthesis.synthesize(generator, CLASS_NAMES, [1] + [0] * 9, tmp_path / "none", steps=1, batch_size=8,
                             image_filter=strict, progress=False)


def test_confidence_filter_uses_an_exported_classifier(tmp_path):
    from training.synthesize import ConfidenceFilter

    model = REPO_ROOT / "model_zoo" / "cifar10_lt_ce_resnet32.onnx"
    names = json.loads(json.dumps(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                   "ship", "truck"]))
    keep = ConfidenceFilter(str(model), 0.5, names)
    red = Image.new("RGB", (32, 32), (200, 30, 30))
    scores = keep.scores([red, red], 3)
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    assert keep.description["threshold"] == 0.5 and len(keep.description["sha256"]) == 64
    with pytest.raises(Exception, match="not this dataset's classes"):
        ConfidenceFilter(str(model), 0.5, CLASS_NAMES)


# ------------------------------------------------------------------------------------- text-to-image


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    words = ["a</w>", "photo</w>", "of</w>", "red</w>", "green</w>", "blue</w>", ".</w>"]
    letters = sorted({c for w in words for c in w.replace("</w>", "")})
    vocab = {token: i for i, token in enumerate(["<|startoftext|>", "<|endoftext|>", *letters,
                                                  *[c + "</w>" for c in letters], *words])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def save_tiny_text_to_image_pipeline(folder):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=1000,  # ≥ every id the tokenizer emits
                                                hidden_size=32, intermediate_size=37,
                                                num_attention_heads=4, num_hidden_layers=2, projection_dim=32,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, sample_size=32)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                              clip_sample=False, set_alpha_to_one=False)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return save_tiny_text_to_image_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd")


def test_text_to_image_generator_offline(tiny_pipeline, tmp_path):
    names = ["red", "green", "blue"]
    generator = open_generator(tiny_pipeline, class_names=names, image_size=24)
    assert generator.prompt(1, 0) == "A photo of a green."
    calls = []
    images = generator.generate(0, 2, seed=3, steps=2, guidance=2.0,
                                progress=lambda done, total: calls.append((done, total)))
    assert [image.size for image in images] == [(24, 24)] * 2 and calls == [(1, 2), (2, 2)]
    again = generator.generate(0, 1, seed=3, steps=2, guidance=2.0)
    assert np.array_equal(np.asarray(images[0]), np.asarray(again[0]))

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"red": ["a red photo."], "green": ["a photo of green."], "blue": ["blue."]}))
    custom = open_generator(tiny_pipeline, class_names=names, image_size=24, prompts_file=str(prompts))
    assert custom.prompt(2, 5) == "blue."
    prompts.write_text(json.dumps({"red": ["a red photo."]}))
    with pytest.raises(GeneratorError, match="no prompts for the classes"):
        open_generator(tiny_pipeline, class_names=names, image_size=24, prompts_file=str(prompts))
    with pytest.raises(GeneratorError, match=r"\{class\}"):
        open_generator(tiny_pipeline, class_names=names, image_size=24, prompt_template="A photo.")


def test_text_to_image_synthesize_cli(tiny_pipeline, tiny_cifar_npz, tmp_path):
    from training.config import load_config
    from training.data.lt_data import build_datasets

    data = [f"data.root={tiny_cifar_npz}", "data.imbalance_factor=10", "data.val_per_class=5", "data.num_workers=0"]
    output = tmp_path / "synthetic"
    run_cli("synthesize", "--generator", str(tiny_pipeline), "--config", "configs/cifar10_lt/ce.yaml",
            *overrides(*data), "--output", str(output), "--per-class", "45", "--classes", "purple", "--steps", "2",
            "--guidance", "1.5")
    synthetic = read_synthetic_set(output, CLASS_NAMES)
    real_purple = build_datasets(load_config("configs/cifar10_lt/ce.yaml", data).data).train_counts[9]
    assert synthetic.counts() == [0] * 9 + [45 - real_purple]
    assert synthetic.records[0]["prompt"] == "A photo of a purple."
    assert Image.open(synthetic.paths[0]).size == (32, 32)
    assert synthetic.manifest["generator"]["kind"] == "text_to_image"
    assert synthetic.manifest["guidance"] == 1.5
    refused = run_cli("synthesize", "--generator", str(tiny_pipeline), "--config", "configs/cifar10_lt/ce.yaml",
                      *overrides(*data), "--output", str(tmp_path / "bf16"), "--precision", "bf16", check=False)
    assert refused.returncode == 2 and "--precision applies to our class-conditional" in refused.stderr
    assert not (tmp_path / "bf16").exists()


def test_missing_hub_model_offline_is_a_clear_error(tmp_path):
    with pytest.raises(GeneratorError, match="offline"):
        open_generator("no-such-user/no-such-model", class_names=["a"], image_size=32)
    with pytest.raises(GeneratorError, match="neither a class-conditional generator"):
        open_generator(tmp_path, class_names=["a"], image_size=32)


def test_shared_clip_tokenizer_loads_if_present():
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "clip_tokenizer"
    if not folder.is_dir():
        pytest.skip("../shared/data/clip_tokenizer is absent (fresh clone)")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 49408  # a 2-token tokenizer would mean a silently broken offline load
    assert tokenizer("A photo of a cat.").input_ids[0] == 49406


def test_check_synthetic_reports_per_class_recognition(tmp_path):
    from conftest import write_synthetic_set

    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    folder = write_synthetic_set(tmp_path / "synthetic", cifar, [0, 3, 0, 0, 0, 0, 0, 0, 0, 5])
    report_file = tmp_path / "report.json"
    result = run_cli("check-synthetic", "--synthetic", str(folder), "--model",
                     str(REPO_ROOT / "model_zoo" / "cifar10_lt_ce_resnet32.onnx"), "--sample-per-class", "4",
                     "--output", str(report_file))
    report = json.loads(report_file.read_text())
    assert report["images"] == 3 + 4 and sorted(report["per_class"]) == ["automobile", "truck"]
    assert report["per_class"]["truck"]["images"] == 4 and 0 <= report["recognised"] <= 100
    assert "7 synthetic images" in result.stdout
    wrong = run_cli("check-synthetic", "--synthetic", str(write_synthetic_set(tmp_path / "other", CLASS_NAMES, [1] * 10)),
                    "--model", str(REPO_ROOT / "model_zoo" / "cifar10_lt_ce_resnet32.onnx"), check=False)
    assert wrong.returncode == 2 and "not this dataset's classes" in wrong.stderr
