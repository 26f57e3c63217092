"""`python -m training push`: publish a classifier or a generator on the Hugging Face Hub, and print the pinned
reference that loads it.

    python -m training push --checkpoint runs/c10_ce --repo-id alice/c10-lt-ce             # a run: exported first
    python -m training push --checkpoint model.onnx --repo-id alice/c10-lt-ce              # an exported model
    python -m training push --checkpoint runs/gen/generator --repo-id alice/c10-lt-gen     # a generator folder
    python -m training push --checkpoint model.onnx --repo-id alice/c10-lt-ce --dry-run staged/   # upload nothing

A classifier's repo gets `<name>.onnx` (its card is in the ONNX metadata), README.md (the same card for people,
under the Hub's YAML metadata with a `model-index` of its test accuracy) and, from a run, the run's config.yaml.
A generator folder is uploaded as it is (the files `GENERATOR_FILES` lists), its README.md card under the Hub's
metadata; with `--recognition-report` (written by `check-synthetic --output`) the card's model-index holds how
often a classifier recognises its samples. The metadata is built with huggingface_hub's `ModelCardData` and
`EvalResult`, so the YAML is the library's. Uploading needs a token with write access: `hf auth login`, or
HF_TOKEN in the environment.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData
from huggingface_hub import ModelCard as HubModelCard

from inference.card import EVALUATIONS, GROUPS, ModelCard, group_accuracy, group_name, group_rule_text, markdown_document
from inference.generator_folder import (
    CARD_FILE,
    GENERATOR_FILES,
    GENERATOR_FORMAT,
    MODEL_FOLDERS,
    GeneratorError,
    GeneratorInfo,
    is_generator_folder,
    read_generator_info,
)
from inference.hub import HubRef

# The Hub's ids of the data sets our long-tailed versions are drawn from (only those we know for sure). The
# test split of each is the original balanced test set, so the model-index names it as the evaluated data set.
HUB_DATASETS = {"cifar10_lt": "uoft-cs/cifar10", "cifar100_lt": "uoft-cs/cifar100"}
LICENSE = "apache-2.0"  # the project's licence (pyproject.toml), in the Hub's spelling
# The Hub has no task for class-conditional generation; of its ids, the one for generating images without a text
# or image input fits a generator that takes only a class index (text-to-image would promise a prompt).
GENERATOR_TASK = "unconditional-image-generation"
# The model-index's evaluations: key in card.metrics → the `which` that card.checkpoint records for those weights.
# Only honest estimates: the test-selected oracle stays in the body's table, labelled there as not a fair estimate.
HUB_EVALUATIONS = {"last_epoch": "last", "val_selected": "val-selected"}
RECOGNITION_HEADING = "## Recognition of the samples by a classifier"


class PushError(RuntimeError):
    """A push that cannot be done; the message says why and what to do."""


def push(checkpoint, repo_id: str, which: str = "best", private: bool = False, branch: str | None = None,
         commit_message: str | None = None, dry_run=None, recognition_report=None) -> str | None:
    """Stage the repo content and upload it in one commit; returns the pinned hf:// reference (None for a dry
    run, which leaves the staged content in the `dry_run` folder). `recognition_report`: a generator's
    `check-synthetic --output` JSON, for its card."""
    _check_repo_id(repo_id)
    if dry_run is not None:
        folder = _empty_folder(Path(dry_run))
        path = stage(checkpoint, folder, which, recognition_report)
        _print_dry_run(folder, repo_id, branch, path)
        return None
    with tempfile.TemporaryDirectory(prefix="longtail-push-") as staging:
        path = stage(checkpoint, Path(staging), which, recognition_report)
        message = commit_message or f"Upload {path or Path(checkpoint).name} with `python -m training push`"
        commit = upload(Path(staging), repo_id, private, branch, message)
    reference = str(HubRef(repo_id, commit, path))
    use = "LONGTAIL_GENERATOR or synthesize --generator" if not path else "LONGTAIL_HUB_MODELS"
    print(f"pushed to {_repo_url(repo_id)} (branch {branch or 'main'}), commit {commit}\n"
          f"pinned reference, e.g. for {use}:\n  {reference}")
    return reference


def stage(checkpoint, folder: Path, which: str = "best", recognition_report=None) -> str:
    """Write the repo content into `folder`; returns the path in the repo a reference names ("" for a generator,
    which is the whole folder)."""
    source = Path(checkpoint)
    if not source.exists():
        raise PushError(f"{source} does not exist (expected a run directory, an exported .onnx file or a "
                        "generator folder with generator.json)")
    if is_generator_folder(source):
        return stage_generator(source, folder, recognition_report)
    if recognition_report is not None:  # before a run's export, which takes a while
        raise PushError(f"--recognition-report scores a generator's samples, but {source} is a classifier")
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
    classifier_card(card, name).save(folder / "README.md")
    return target.name


def stage_generator(source: Path, folder: Path, recognition_report=None) -> str:
    """A generator folder → the same files, its card under the Hub's metadata (with the recognition scores of
    `recognition_report`, a check-synthetic JSON, when one is given)."""
    try:
        info = read_generator_info(source)
    except GeneratorError as error:
        folders = " and ".join(f"{name}/" for name in MODEL_FOLDERS)
        raise PushError(f"{source} is not a complete LongTail Studio generator (format {GENERATOR_FORMAT}, "
                        f"with {folders}): {error}") from error
    report = None if recognition_report is None else read_recognition_report(Path(recognition_report), info.class_names)
    _copy_generator_files(source, folder)
    readme = (source / CARD_FILE).read_text() if (source / CARD_FILE).is_file() else f"# {info.name}\n"
    # The Hub's diffusers snippet loads a repo only through model_index.json: claim the library only with it.
    library = "diffusers" if (folder / "model_index.json").is_file() else None
    generator_card(info, readme, report, library).save(folder / CARD_FILE)
    return ""


def _copy_generator_files(source: Path, folder: Path) -> None:
    """What the folder contract lists, as it is (the files that were tested are the ones pushed), but the card,
    which is rewritten with the Hub's metadata."""
    for name in GENERATOR_FILES:
        if name == CARD_FILE or not (source / name).exists():
            continue
        if (source / name).is_dir():
            shutil.copytree(source / name, folder / name)
        else:
            shutil.copy2(source / name, folder / name)


# ------------------------------------------------------------------------------------ a classifier's Hub card


def classifier_card(card: ModelCard, name: str) -> HubModelCard:
    """A classifier repo's README.md: the Hub's metadata from the typed card (with a model-index of its test
    accuracy), and the card for people (`markdown_document`) as the body."""
    results = classifier_eval_results(card)
    data = ModelCardData(
        model_name=name if results else None, eval_results=results or None, license=LICENSE,
        library_name="onnx", pipeline_tag="image-classification", datasets=_hub_datasets(card.dataset),
        metrics=["accuracy"] if results else None,
        tags=["long-tail", "longtail-studio", "onnx"] + ([card.method] if card.method else []))
    return _hub_card(data, markdown_document(card, name))


def classifier_eval_results(card: ModelCard) -> list[EvalResult]:
    """Overall and head/medium/tail test accuracy (%) of the last-epoch and the val-selected checkpoints, the
    evaluations of `inference.card.EVALUATIONS` that HUB_EVALUATIONS keeps."""
    results = []
    for key, split, label in EVALUATIONS:
        entry = card.metrics.get(key) or {}
        if key in HUB_EVALUATIONS and split == "test" and entry.get("test"):
            results += _checkpoint_results(card, HUB_EVALUATIONS[key], label, entry.get("epoch"), entry["test"])
    return results


def _checkpoint_results(card: ModelCard, which: str, label: str, epoch, evaluation: dict) -> list[EvalResult]:
    """One checkpoint's test accuracy, overall and per group; metric_args say which checkpoint and group, in
    the words card.checkpoint and the display groups use, so that a reader can pick a value without parsing."""
    these_weights = ", the weights in this repo" if card.checkpoint.get("which") == which else ""
    checkpoint = f"{label} checkpoint (epoch {epoch}){these_weights}"
    args = {"checkpoint": which, "epoch": epoch}
    results = [_test_accuracy(card, f"Accuracy (%), {checkpoint}", evaluation.get("overall"), None, args)]
    rule = card.group_rule.get("rule", "count")  # the card's own rule, as in its Markdown table
    for group in GROUPS:
        shown = group_name(group)
        # The rule in words (thresholds and classes per group) is the metric's configuration.
        results.append(_test_accuracy(card, f"{shown.capitalize()}-class accuracy (%), {checkpoint}",
                                      group_accuracy(evaluation, rule, group), group_rule_text(card),
                                      {**args, "group": shown}))
    return [result for result in results if result is not None]


def _test_accuracy(card: ModelCard, name: str, value, config: str | None, args: dict) -> EvalResult | None:
    if value is None:  # e.g. a group without classes, or a foreign model's unknown groups
        return None
    dataset = card.dataset or "unknown"
    if card.imbalance_factor:
        dataset += f" (imbalance factor {card.imbalance_factor:g} in training)"
    # Two decimals, as in the body's table: the card's floats carry noise such as 90.40000000000002.
    return EvalResult(task_type="image-classification", task_name="Long-tailed image classification",
                      dataset_type=HUB_DATASETS.get(card.dataset, card.dataset or "unknown"), dataset_name=dataset,
                      dataset_split="test", metric_type="accuracy", metric_value=round(value, 2), metric_name=name,
                      metric_config=config, metric_args=args)


# ------------------------------------------------------------------------------------- a generator's Hub card


@dataclass(frozen=True)
class ClassRecognition:
    images: int
    recognised: float  # % of the class's samples whose top class is that class
    mean_confidence: float  # mean probability the classifier gives the intended class


@dataclass(frozen=True)
class RecognitionReport:
    """A `python -m training check-synthetic --output` file (training/synthesize.py `recognition_report`),
    read back and checked against the generator's classes."""

    model: str  # the judging classifier's file name
    images: int
    recognised: float  # % of all samples recognised as their intended class
    per_class: dict[str, ClassRecognition]  # the classes with samples, in the generator's class order


def read_recognition_report(path: Path, class_names: list[str]) -> RecognitionReport:
    raw = _read_report_json(path)
    if raw.get("images") == 0:
        raise PushError(f"--recognition-report {path} scores no images: there is nothing to put on the card")
    try:
        rows = {name: ClassRecognition(images=int(row["images"]), recognised=float(row["recognised"]),
                                       mean_confidence=float(row["mean_confidence"]))
                for name, row in raw["per_class"].items()}
        report = RecognitionReport(model=str(raw["model"]), images=int(raw["images"]),
                                   recognised=float(raw["recognised"]), per_class=rows)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PushError(f"--recognition-report {path} is not a check-synthetic report ({type(error).__name__}: "
                        f"{error}); write one with `python -m training check-synthetic ... --output FILE.json`") from error
    unknown = sorted(set(rows) - set(class_names))
    if unknown:
        raise PushError(f"--recognition-report {path} scores classes this generator does not make: {unknown} "
                        f"(its classes: {class_names})")
    ordered = {name: rows[name] for name in class_names if name in rows}
    return replace(report, per_class=ordered)


def _read_report_json(path: Path) -> dict:
    if not path.is_file():
        raise PushError(f"--recognition-report {path} does not exist (write it with `python -m training "
                        "check-synthetic ... --output FILE.json`)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PushError(f"--recognition-report {path} cannot be read as JSON: {error}") from error
    if not isinstance(raw, dict):
        raise PushError(f"--recognition-report {path} must hold a JSON object, not {type(raw).__name__}")
    return raw


def generator_card(info: GeneratorInfo, readme: str, report: RecognitionReport | None,
                   library_name: str | None = None) -> HubModelCard:
    """A generator repo's README.md: the folder's card with a recognition section as the body, and the Hub's
    metadata from generator.json (a model-index of the recognition scores when there is a report). Metadata the
    folder's card already has (say a base_model someone added) is kept, except what we derive here."""
    existing = HubModelCard(readme) if _has_metadata(readme) else None
    body = existing.text if existing else readme
    body = body.split(RECOGNITION_HEADING)[0].strip() + "\n\n" + recognition_section(info, report)  # a re-push
    results = recognition_eval_results(info, report) if report else []
    data = ModelCardData(
        model_name=info.name if results else None, eval_results=results or None, license=LICENSE,
        library_name=library_name, pipeline_tag=GENERATOR_TASK, datasets=_hub_datasets(info.dataset),
        metrics=["accuracy"] if results else None,
        tags=["long-tail", "longtail-studio", "diffusion", "class-conditional"])
    return _hub_card(_with_other_metadata(data, existing.data) if existing else data, body)


def recognition_eval_results(info: GeneratorInfo, report: RecognitionReport) -> list[EvalResult]:
    """Overall and per-class share (%) of the samples that the report's classifier recognises as their class."""
    judge = (f"judged by {report.model}: recognised = the classifier's top class is the class the image was "
             "generated for")

    def recognition(name: str, value: float, args: dict) -> EvalResult:
        return EvalResult(task_type=GENERATOR_TASK, task_name="Class-conditional image generation",
                          dataset_type=HUB_DATASETS.get(info.dataset, info.dataset or info.name),
                          dataset_name=f"{report.images} generated images of the {info.dataset or info.name} classes",
                          metric_type="accuracy", metric_value=value, metric_name=name, metric_config=judge,
                          metric_args={"judge": report.model, **args})

    results = [recognition("Samples recognised as their class (%)", report.recognised, {"images": report.images})]
    for name, row in report.per_class.items():
        results.append(recognition(f"{name} samples recognised as {name} (%)", row.recognised,
                                   {"class": name, "images": row.images}))
    return results


def recognition_section(info: GeneratorInfo, report: RecognitionReport | None) -> str:
    if report is None:
        return (f"{RECOGNITION_HEADING}\n\nNot measured: this generator was pushed without a recognition report. "
                "`python -m training check-synthetic --synthetic DIR --model MODEL.onnx --output report.json` "
                "measures how often a classifier recognises synthetic images as their class, and "
                "`python -m training push ... --recognition-report report.json` puts the scores here.\n")
    summary = (f"{report.images} generated images, classified by `{report.model}`: **{report.recognised:.2f} %** "
               "recognised as the class they were generated for (its top class; chance is "
               f"{100 / len(info.class_names):.1f} %). Measured with `python -m training check-synthetic`; the "
               "same figures are in this card's model-index.")
    lines = [RECOGNITION_HEADING, "", summary, "",
             "| class | images | recognised (%) | mean p(intended class) |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {row.images} | {row.recognised:.2f} | {row.mean_confidence:.3f} |"
              for name, row in report.per_class.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- both cards


def _hub_card(data: ModelCardData, body: str) -> HubModelCard:
    """The README: huggingface_hub writes the YAML, and reading it back into a ModelCard parses the
    model-index again, so a malformed one fails here rather than on the Hub."""
    return HubModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _hub_datasets(dataset: str) -> list[str] | None:
    return [HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else None


def _has_metadata(readme: str) -> bool:
    # Checked first because ModelCard logs a warning for a card without a YAML block.
    return readme.lstrip().startswith("---")


def _with_other_metadata(ours: ModelCardData, theirs: ModelCardData) -> ModelCardData:
    """Our metadata plus the keys only `theirs` has; their model-index is dropped, so the card's scores are
    always the ones in its body, and their tags are added to ours."""
    derived = ours.to_dict()
    kept = {key: value for key, value in theirs.to_dict().items()
            if key not in derived and key not in ("model-index", "model_name", "tags")}
    return ModelCardData(**kept, **{**derived, "tags": ours.tags + list(theirs.tags or [])})

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
