"""DLSA's training entry (docs/methods.md §2.4): base run → cached features → stage 1 … max_depth → regular
classifier → `best` / `last` checkpoints and summary.json in the trainer's format.

Files in the output directory: config.yaml (written first; `--resume` reads it), features.safetensors (the
base run's features, reused on resume), stage<d> and regular (one checkpoint per fitted piece, holding the
remaining-sample masks and the last / test-selected classifier states as extra tensors), metrics.jsonl
(one record per piece), then best / last / summary.json as any other run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.checkpoint import CheckpointError, load_checkpoint, restore_model, save_checkpoint
from training.config import ConfigError
from training.data.lt_data import build_datasets
from training.features import (
    backbone_of,
    bundle_features,
    check_same_training_set,
    feature_metadata,
    load_features,
    save_features,
)
from training.groups import shot_accuracy
from training.methods.dlsa_model import (
    DlsaStage,
    StageClassifier,
    cluster_priors,
    init_from_linear,
    quantile_threshold,
    route,
    stage_seed,
    train_classifier,
)
from training.methods.flow_training import fit_flow, score
from training.run import describe_training, format_metrics_table, start_run
from training.run_dir import RunDir
from training.trained import load_trained

SPLITS = ("train", "val", "test")
VARIANTS = ("selected", "last", "oracle")  # val-selected, last epoch, test-selected classifier states


def fit_dlsa(method_cls, config, output_dir: Path, resume: bool) -> dict:
    options = config.method_options
    if not options.base_checkpoint:
        raise ConfigError("DLSA needs method_options.base_checkpoint: the trained run whose features it uses")
    run = RunDir(output_dir)
    run.prepare(resume, marker=RunDir.CONFIG)  # DLSA's progress lives in stage checkpoints; config.yaml comes first
    base = _base_run(options, config)
    device = start_run(config.run)
    bundle = build_datasets(config.data)
    check_same_training_set(bundle, base.info)  # DLSA must see the base run's training set
    if bundle.val is None:
        raise ConfigError("DLSA selects classifier epochs on the validation split; set data.val_per_class > 0")

    method = method_cls(config, bundle.train_counts)
    model = method.build_model()
    base_backbone = backbone_of(base.method, base.model)
    model.backbone.load_state_dict({k: v for k, v in base_backbone.state_dict().items() if not k.startswith("fc.")})
    linear = base_backbone.fc if options.init_from_backbone and isinstance(base_backbone.fc, nn.Linear) else None
    card = dict(describe_training(config, bundle, model).to_checkpoint_info(),
                base_checkpoint={"path": base.info["path"], "save_id": base.info["save_id"]})
    run.save_config(config)
    features = _features(output_dir / "features.safetensors", base_backbone, bundle, config, device, base.info,
                         options.base_which)
    sizes = ", ".join(f"{split} {len(features[split + '_labels'])}" for split in SPLITS)
    print(f"{config.data.dataset}: DLSA on the features of {base.info['path']} ({sizes}), "
          f"{options.max_depth} stage(s)")

    pieces = fit_pieces(model, features, options, config.run.seed, output_dir, linear, {"config": config.to_dict()})
    return _finish(config, run, model, pieces, features, card, bundle.train_counts)


def _base_run(options, config):
    """The trained run DLSA builds on, which must have the same backbone."""
    try:
        base = load_trained(options.base_checkpoint, options.base_which)
    except CheckpointError as error:
        raise CheckpointError(f"method_options.base_checkpoint={options.base_checkpoint}: {error} "
                              "(train the base run first, or point this at it)") from error
    for key in ("name", "input_size", "crop_pct"):  # the backbone, and the preprocessing its card will state
        theirs, ours = getattr(base.config.model, key), getattr(config.model, key)
        if theirs != ours:
            raise ConfigError(f"model.{key} is {ours}, but the base run {base.info['path']} has {theirs}; set "
                              f"model.{key} to match it")
    return base


def fit_pieces(model, features: dict, options, seed: int, output_dir: Path, linear: nn.Linear | None = None,
               info: dict | None = None) -> list:
    """Fit (or, on resume, restore) every stage of `model` and its regular classifier on `features`
    (`<split>_features` / `<split>_labels` for train, val and test, on the device to use).

    Each piece is saved to `output_dir` as soon as it is fitted, with `info`. Returns the pieces as
    (name, classifier module, {variant: classifier state}, record); the model holds the val-selected states."""
    device = features["train_features"].device
    model.to(device)
    num_classes = model.regular.x_branch.out_features
    open_masks = {split: torch.ones(len(features[f"{split}_labels"]), dtype=torch.bool, device=device)
                  for split in SPLITS}
    pieces = []
    fitter = _StageFitter(seed, options, features, linear, num_classes, device)
    for depth in range(options.max_depth):
        name = f"stage{depth + 1}"
        model.stages[depth] = fitter.fresh_stage(depth, model.backbone.num_features)
        variants, record, open_masks = _restore_or_fit(output_dir / name, model.stages[depth],
                                                       lambda s: fitter.stage(depth, s, open_masks), info, device)
        pieces.append((name, model.stages[depth].classifier, variants, record))
    model.regular = fitter.fresh_regular(model.backbone.num_features)
    last_stage = model.stages[-1] if len(model.stages) else None  # its flow gives z when latent_z
    variants, record, _ = _restore_or_fit(output_dir / "regular", model.regular,
                                          lambda r: fitter.regular(r, last_stage, open_masks), info, device)
    pieces.append(("regular", model.regular, variants, record))
    RunDir(output_dir).write_history([record for *_, record in pieces])
    return pieces


def _features(path: Path, backbone, bundle, config, device, base_info: dict, which: str) -> dict:
    """The base run's features, from the cache when it comes from the same save of the same checkpoint."""
    metadata = feature_metadata(base_info, which)
    if path.is_file():
        tensors, cached = load_features(path)
        if cached.get("save_id") == metadata["save_id"] and cached.get("class_counts") == metadata["class_counts"]:
            return {key: value.to(device) for key, value in tensors.items()}
        print(f"{path} comes from another base checkpoint; extracting again")
    tensors = bundle_features(backbone, bundle, config, device)
    save_features(path, tensors, metadata)
    return {key: value.to(device) for key, value in tensors.items()}


def _restore_or_fit(stem: Path, module: nn.Module, fit, info: dict | None, device):
    """A piece's checkpoint if it exists (resume), else fit it and save it before going on."""
    module.to(device)
    if stem.with_suffix(".json").is_file():
        tensors, saved = load_checkpoint(stem.with_suffix(".json"))
        restore_model(module, tensors, saved)
        extras = {name[len("extra."):]: value for name, value in tensors.items() if name.startswith("extra.")}
        print(f"{stem.name}: restored from {stem}.json")
        return _unpack(module, extras, saved["record"])
    variants, record, open_masks = fit(module)
    extras = {f"open_{split}": mask for split, mask in open_masks.items()}
    for variant in ("last", "oracle"):
        extras.update({f"{variant}.{key}": value for key, value in variants[variant].items()})
    save_checkpoint(stem, module, dict(info or {}, record=record), extra_tensors=extras)
    return variants, record, open_masks


def _unpack(module: nn.Module, extras: dict, record: dict):
    classifier = module.classifier if isinstance(module, DlsaStage) else module
    variants = {"selected": {k: v.clone() for k, v in classifier.state_dict().items()}}
    for variant in ("last", "oracle"):
        variants[variant] = {k[len(variant) + 1:]: v for k, v in extras.items() if k.startswith(variant + ".")}
    device = next(module.parameters()).device
    open_masks = {split: extras[f"open_{split}"].to(device) for split in SPLITS}
    return variants, record, open_masks


class _StageFitter:
    """Fits one stage or the regular classifier on the cached features; returns (variants, record, masks)."""

    def __init__(self, seed: int, options, features: dict, linear, num_classes: int, device):
        self.seed, self.options, self.features = seed, options, features
        self.linear, self.num_classes, self.device = linear, num_classes, device

    def fresh_stage(self, depth: int, num_features: int) -> DlsaStage:
        seed = stage_seed(self.seed, depth)
        torch.manual_seed(seed)  # the same initial flow whether the run is straight or resumed
        return DlsaStage(num_features, self.num_classes, self.options, torch.Generator().manual_seed(seed))

    def fresh_regular(self, num_features: int) -> StageClassifier:
        torch.manual_seed(stage_seed(self.seed, self.options.max_depth))
        return StageClassifier(num_features, num_features, self.num_classes)

    def stage(self, depth: int, stage: DlsaStage, open_masks: dict):
        options, f, seed = self.options, self.features, stage_seed(self.seed, depth)
        stage.to(self.device)
        members = open_masks["train"]
        print(f"stage {depth + 1}: fitting the flow on {int(members.sum())} training samples")
        if options.feature_norm:
            stage.flow.standardise_inputs(f["train_features"][members])
        flow_record = fit_flow(stage.flow, f["train_features"][members], f["train_labels"][members],
                               options.flow_settings(), seed)
        scores = {split: score(stage.flow, f[f"{split}_features"], latent=options.latent_z) for split in SPLITS}
        with torch.no_grad():
            stage.threshold.fill_(quantile_threshold(scores["train"][0][members], options.llh_proportion))
            stage.cluster_priors.copy_(cluster_priors(scores["train"][1], f["train_labels"], options.num_clusters,
                                                      self.num_classes))
        claimed = {split: route(scores[split][0], open_masks[split], stage.threshold) for split in SPLITS}

        def inputs(split):
            log_prob, clusters, latent = scores[split]
            mask, x = claimed[split], f[f"{split}_features"]
            z = (latent if options.latent_z else x)[mask]
            return x[mask], torch.cat([z, stage.cluster_priors[clusters[mask]]], dim=1), f[f"{split}_labels"][mask]

        subset = inputs("train")
        counts = torch.bincount(subset[2], minlength=self.num_classes).tolist()  # BSM on the subset's counts
        init_from_linear(stage.classifier, self.linear)
        result = train_classifier(stage.classifier, subset, counts, {s: inputs(s) for s in ("val", "test")},
                                  options, seed)
        stage.classifier.load_state_dict(result["selected"]["state"])
        record = {"piece": f"stage{depth + 1}", "threshold": float(stage.threshold),
                  "claimed": {split: int(claimed[split].sum()) for split in SPLITS},
                  "flow": flow_record, **_classifier_record(result)}
        print(f"stage {depth + 1}: flow epoch {flow_record['selected_epoch']} selected; log p >= "
              f"{record['threshold']:.3f} claims " + ", ".join(f"{s} {n}" for s, n in record["claimed"].items())
              + f"; classifier epoch {record['selected_epoch']} (val)")
        remaining = {split: open_masks[split] & ~claimed[split] for split in SPLITS}
        return _variants(result), record, remaining

    def regular(self, classifier: nn.Module, last_stage: DlsaStage, open_masks: dict):
        options, f = self.options, self.features
        classifier.to(self.device)

        def inputs(split):
            mask, x = open_masks[split], f[f"{split}_features"]
            z = score(last_stage.flow, x[mask], latent=True)[2] if options.latent_z else x[mask]
            return x[mask], z, f[f"{split}_labels"][mask]

        full_counts = torch.bincount(f["train_labels"], minlength=self.num_classes).tolist()  # whole set [code]
        init_from_linear(classifier, self.linear)
        result = train_classifier(classifier, inputs("train"), full_counts, {s: inputs(s) for s in ("val", "test")},
                                  options, stage_seed(self.seed, options.max_depth))
        classifier.load_state_dict(result["selected"]["state"])
        record = {"piece": "regular", "claimed": {split: int(open_masks[split].sum()) for split in SPLITS},
                  **_classifier_record(result)}
        print("regular classifier: " + ", ".join(f"{s} {n}" for s, n in record["claimed"].items())
              + f"; classifier epoch {record['selected_epoch']} (val)")
        return _variants(result), record, {split: torch.zeros_like(m) for split, m in open_masks.items()}


def _variants(result: dict) -> dict:
    return {variant: result[variant]["state"] for variant in VARIANTS}


def _classifier_record(result: dict) -> dict:
    return {"selected_epoch": result["selected"]["epoch"], "oracle_epoch": result["oracle"]["epoch"],
            "classifier_history": result["history"]}


@torch.no_grad()
def _predict(model, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    return torch.cat([model.head(chunk).argmax(dim=1) for chunk in features.split(batch_size)]).cpu()


def _finish(config, run: RunDir, model, pieces: list, features: dict, card: dict, counts) -> dict:
    """Assemble the val-selected, last-epoch and test-selected models, evaluate them on the features through
    the exported model's own head, and write best / last / summary.json in the trainer's format."""
    model.eval()

    def use(variant: str, splits=("test",)) -> dict:
        for _, classifier, variants, _ in pieces:
            classifier.load_state_dict(variants[variant])
        return {split: shot_accuracy(_predict(model, features[f"{split}_features"]).numpy(),
                                     features[f"{split}_labels"].cpu().numpy(), counts, config.groups)
                for split in splits}

    def epochs(key: str) -> str:  # one classifier epoch per piece, e.g. "45/150"
        return "/".join(str(record[key]) for *_, record in pieces)

    last_epoch = pieces[0][3]["classifier_history"][-1]["epoch"]  # the same for every classifier
    oracle = use("oracle")
    metrics = {"last_epoch": {"epoch": last_epoch, "test": use("last")["test"]}}
    last_state = {k: v.clone() for k, v in model.state_dict().items()}
    selected = use("selected", ("val", "test"))
    metrics["val_selected"] = {"epoch": epochs("selected_epoch"), "val": selected["val"], "test": selected["test"]}
    metrics["test_oracle_best"] = {"epoch": epochs("oracle_epoch"), "test": oracle["test"],
                                   "note": "classifier epochs selected on the test set, as the DLSA code does; "
                                           "not a fair estimate"}
    summary = [_brief(record) for *_, record in pieces]
    run.save("best", model, dict(card, epoch=epochs("selected_epoch"), metrics=metrics, dlsa=summary))
    model.load_state_dict(last_state)
    run.save("last", model, dict(card, epoch=last_epoch, metrics=metrics, dlsa=summary))
    run.write_summary(metrics)
    print(format_metrics_table(metrics, config.groups.rule))
    return metrics


def _brief(record: dict) -> dict:
    """A piece's record without its per-epoch histories (those stay in metrics.jsonl)."""
    brief = {key: value for key, value in record.items() if key not in ("flow", "classifier_history")}
    if "flow" in record:
        brief["flow_selected_epoch"] = record["flow"]["selected_epoch"]
    return brief
