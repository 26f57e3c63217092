"""`python -m training push`: publish a classifier or a generator on the Hugging Face Hub, and print the pinned
reference that loads it.

    python -m training push --checkpoint runs/c10_ce --repo-id alice/c10-lt-ce             # a run: exported first
    python -m training push --checkpoint model.onnx --repo-id alice/c10-lt-ce              # an exported model
    python -m training push --checkpoint runs/gen/generator --repo-id alice/c10-lt-gen     # a generator folder
    python -m training push --checkpoint model.onnx --repo-id alice/c10-lt-ce --dry-run staged/   # upload nothing

A classifier's repo gets `<name>.onnx` (its card is in the ONNX metadata), README.md (the same card for people,
under the Hub's YAML front matter) and, from a run, the run's config.yaml. A generator folder is uploaded as it
is: generator.json, unet/, scheduler/ and its README.md card (with front matter added). Uploading needs a token
with write access: `hf auth login`, or HF_TOKEN in the environment.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import yaml

from inference.card import ModelCard, evaluation_columns, markdown_document
from inference.generator_folder import (
    CARD_FILE,
    GENERATOR_FORMAT,
    INFO_FILE,
    MODEL_FOLDERS,
    GeneratorError,
    GeneratorInfo,
    is_generator_folder,
    read_generator_info,
)
from inference.hub import HubRef

# The Hub's ids of the data sets our long-tailed versions are drawn from (only those we know for sure).
HUB_DATASETS = {"cifar10_lt": "uoft-cs/cifar10", "cifar100_lt": "uoft-cs/cifar100"}


class PushError(RuntimeError):
    """A push that cannot be done; the message says why and what to do."""


def push(checkpoint, repo_id: str, which: str = "best", private: bool = False, branch: str | None = None,
         commit_message: str | None = None, dry_run=None) -> str | None:
    """Stage the repo content and upload it in one commit; returns the pinned hf:// reference (None for a dry
    run, which leaves the staged content in the `dry_run` folder)."""
    _check_repo_id(repo_id)
    if dry_run is not None:
        folder = _empty_folder(Path(dry_run))
        path = stage(checkpoint, folder, which)
        _print_dry_run(folder, repo_id, branch, path)
        return None
    with tempfile.TemporaryDirectory(prefix="longtail-push-") as staging:
        path = stage(checkpoint, Path(staging), which)
        message = commit_message or f"Upload {path or Path(checkpoint).name} with `python -m training push`"
        commit = upload(Path(staging), repo_id, private, branch, message)
    reference = str(HubRef(repo_id, commit, path))
    use = "LONGTAIL_GENERATOR or synthesize --generator" if not path else "LONGTAIL_HUB_MODELS"
    print(f"pushed to {_repo_url(repo_id)} (branch {branch or 'main'}), commit {commit}\n"
          f"pinned reference, e.g. for {use}:\n  {reference}")
    return reference


def stage(checkpoint, folder: Path, which: str = "best") -> str:
    """Write the repo content into `folder`; returns the path in the repo a reference names ("" for a generator,
    which is the whole folder)."""
    source = Path(checkpoint)
    if not source.exists():
        raise PushError(f"{source} does not exist (expected a run directory, an exported .onnx file or a "
                        "generator folder with generator.json)")
    if is_generator_folder(source):
        return stage_generator(source, folder)
    if source.suffix == ".onnx":
        return stage_classifier(source, _card(source), source.stem, folder)
    return stage_run(source, folder, which)


def stage_run(run: Path, folder: Path, which: str) -> str:
    """A training run (or checkpoint file) → the parity-checked ONNX export, its card and the run's config."""
    from training.export import export_checkpoint

    exported = folder / "exported.onnx"
    export_checkpoint(run, exported, which)
    card = _card(exported)
    path = stage_classifier(exported, card, _classifier_name(card), folder)
    if (run / "config.yaml").is_file():
        shutil.copy2(run / "config.yaml", folder / "config.yaml")
    return path


def stage_classifier(onnx_file: Path, card: ModelCard, name: str, folder: Path) -> str:
    target = folder / f"{name}.onnx"
    if onnx_file.parent == folder:
        onnx_file.replace(target)  # exported into the staging folder: just name it
    else:
        shutil.copy2(onnx_file, target)
    (folder / "README.md").write_text(with_front_matter(classifier_front_matter(card), markdown_document(card, name)))
    return target.name


def stage_generator(source: Path, folder: Path) -> str:
    """A generator folder → the same files, its card under the Hub's front matter."""
    try:
        info = read_generator_info(source)
    except GeneratorError as error:
        raise PushError(f"{source} is not a complete LongTail Studio generator (format {GENERATOR_FORMAT}, "
                        f"with unet/ and scheduler/): {error}") from error
    for name in MODEL_FOLDERS:
        shutil.copytree(source / name, folder / name)
    shutil.copy2(source / INFO_FILE, folder / INFO_FILE)  # as it is: the file that was tested is the one pushed
    card = (source / CARD_FILE).read_text() if (source / CARD_FILE).is_file() else f"# {info.name}\n"
    if not card.startswith("---\n"):  # keep front matter someone already wrote
        card = with_front_matter(generator_front_matter(info), card)
    (folder / CARD_FILE).write_text(card)
    return ""


# ------------------------------------------------------------------------------------------- the model card


def classifier_front_matter(card: ModelCard) -> dict:
    """The Hub's metadata for a classifier: only what the card truthfully knows."""
    meta = {"library_name": "onnx", "pipeline_tag": "image-classification",
            "tags": ["long-tail", "longtail-studio", "onnx"] + ([card.method] if card.method else [])}
    if card.dataset in HUB_DATASETS:
        meta["datasets"] = [HUB_DATASETS[card.dataset]]
    if evaluation_columns(card.metrics, splits=("test",)):
        meta["metrics"] = ["accuracy"]
    return meta


def generator_front_matter(info: GeneratorInfo) -> dict:
    # No library_name: without model_index.json the Hub's diffusers snippet would not load it.
    meta = {"tags": ["long-tail", "longtail-studio", "diffusion", "class-conditional"]}
    if info.dataset in HUB_DATASETS:
        meta["datasets"] = [HUB_DATASETS[info.dataset]]
    return meta


def with_front_matter(meta: dict, markdown: str) -> str:
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n{markdown}"


# --------------------------------------------------------------------------------------------------- upload


def upload(folder: Path, repo_id: str, private: bool, branch: str | None, message: str) -> str:
    """Create the repo (and branch) if needed and upload `folder` in one commit; returns the commit sha."""
    from huggingface_hub import HfApi

    api = HfApi(token=True)  # a token is required: fail at once, without a request, when there is none
    try:
        # private=None keeps the Hub's default (public, or the organisation's setting).
        api.create_repo(repo_id, exist_ok=True, private=True if private else None)
        if branch:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message, revision=branch)
    except Exception as error:  # the client raises its own errors, httpx errors, OSError, ValueError…
        raise PushError(_explain(error, repo_id)) from error
    return commit.oid


def _explain(error: Exception, repo_id: str) -> str:
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if isinstance(error, LocalTokenNotFoundError):
        return "not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN (a token with write access)"
    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it, or stage only with --dry-run DIR"
    first_line = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, HfHubHTTPError) and error.response is not None and error.response.status_code in (401, 403):
        return (f"the Hub refused the push to {repo_id} ({first_line}): check that your token has write access "
                "to that namespace (`hf auth whoami`)")
    return f"could not push to {repo_id} ({type(error).__name__}: {first_line}); check the network, the repo id and your token"


# ------------------------------------------------------------------------------------------------- helpers


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"--repo-id {repo_id!r} is not a valid repo id: {error}") from error
    if repo_id.count("/") != 1:
        raise PushError(f"--repo-id {repo_id!r} must be owner/name, so that the printed reference is complete")


def _card(onnx_file: Path) -> ModelCard:
    """The card in an ONNX file's metadata, read by the same classifier the app serves with."""
    from inference.classifier import MODEL_ERRORS, OnnxClassifier

    try:
        return OnnxClassifier(onnx_file, providers=["CPUExecutionProvider"], threads=1).card
    except MODEL_ERRORS as error:
        raise PushError(f"{onnx_file} cannot be pushed: {error}") from error


def _classifier_name(card: ModelCard) -> str:
    """The file name model_zoo/ uses, e.g. cifar10_lt_ce_resnet32."""
    name = "_".join(part for part in (card.dataset, card.method, card.model_name) if part) or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def _empty_folder(folder: Path) -> Path:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise PushError(f"--dry-run {folder} exists and is not an empty folder: choose a new one")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _repo_url(repo_id: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}"


def _print_dry_run(folder: Path, repo_id: str, branch: str | None, path: str) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    print(f"dry run, nothing uploaded; would push {len(files)} files to {repo_id} (branch {branch or 'main'}), "
          f"staged in {folder}:")
    for file in files:
        print(f"  {file.relative_to(folder)} ({file.stat().st_size / 1024:.1f} kB)")
    print(f"the pushed commit would be referenced as {HubRef(repo_id, '<commit sha>', path)}")
