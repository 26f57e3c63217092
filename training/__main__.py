"""Command line:

    python -m training analyze FOLDER [--json]   (an image folder before training: counts, imbalance, bad files)
    python -m training train --config configs/cifar10_lt/ce.yaml [--set key=value ...] --output-dir DIR
    python -m training train --output-dir DIR --resume
    torchrun --standalone --nproc_per_node=N -m training train ... (DDP: CPU gloo, or one GPU per process)
    python -m training evaluate --checkpoint DIR [--which best|last] [--split test|val]
    python -m training export --checkpoint DIR --output model.onnx
    python -m training export --checkpoint DIR_OR_ONNX --quantize int8 --output model_int8.onnx [--max-group-drop 1.0]
    python -m training annotate model.onnx --data data/cifar10.npz   (τ curve + long-tail report into its card)
    python -m training extract-features --checkpoint DIR --output features.safetensors
    python -m training train-generator --config configs/generator/cifar10_lt.yaml --output-dir DIR [--resume]
    python -m training export-unet GENERATOR_DIR   (its UNet as unet/model.onnx: faster fp32 sampling on CPU)
    python -m training synthesize --generator DIR_OR_HUB_ID --config configs/cifar10_lt/ce.yaml --output DIR
    torchrun --standalone --nproc_per_node=N -m training synthesize ... (the same files as one process)
    python -m training check-synthetic --synthetic DIR --model model.onnx [--sample-per-class N]
    python -m training push --checkpoint DIR_OR_ONNX_OR_GENERATOR --repo-id owner/name [--dry-run DIR]
                            [--recognition-report FILE.json]   (a generator's check-synthetic report, for its card)
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("--config", help="YAML file, e.g. configs/cifar10_lt/ce.yaml (optional with --resume)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set optim.epochs=10 (repeatable)")
    train.add_argument("--output-dir", required=True, help="where checkpoints, config and metrics go")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir from `last` with its saved config")

    evaluate = commands.add_parser("evaluate", help="print overall / many / medium / few accuracy")
    evaluate.add_argument("--checkpoint", required=True, help="a run directory or a .safetensors file")
    evaluate.add_argument("--which", choices=("best", "last"), default="best",
                          help="for a run directory: the val-selected (default) or the last checkpoint")
    evaluate.add_argument("--split", choices=("test", "val"), default="test")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override data settings, e.g. --set data.root=/data/cifar10.npz")

    export = commands.add_parser("export", help="export to ONNX with the model card in its metadata")
    export.add_argument("--checkpoint", required=True,
                        help="a run directory or a .safetensors file (with --quantize also an exported .onnx file)")
    export.add_argument("--which", choices=("best", "last"), default="best")
    export.add_argument("--output", required=True, help="the .onnx file to write")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override data settings used for the parity check on real images (and, with "
                             "--quantize, for calibration and the test set), e.g. --set data.root=data/cifar10.npz")
    export.add_argument("--tolerance", type=float, default=1e-4, help="allowed |ONNX - torch| per logit (plus 1e-6 x |logit|)")
    export.add_argument("--quantize", choices=("int8",),
                        help="write a static int8 model instead, calibrated on training images; refused (nothing "
                             "written) if a head / medium / tail group loses more than --max-group-drop on the test set")
    export.add_argument("--max-group-drop", type=float, default=1.0,
                        help="with --quantize: most accuracy points fp32 → int8 any group may lose (default 1.0)")
    annotate = commands.add_parser("annotate", help="measure an exported model's τ curve and long-tail report on its "
                                                    "test set and store them in its card (weights untouched)")
    annotate.add_argument("model", help="an exported .onnx file (rewritten in place, metadata only)")
    annotate.add_argument("--data", help="where the card's data file is on this machine (sets data.root), e.g. "
                                         "data/cifar10.npz")
    annotate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override other data settings of the card's config, e.g. --set data.num_workers=0")
    features = commands.add_parser("extract-features",
                                   help="frozen backbone features and labels of train / val / test, to one file")
    features.add_argument("--checkpoint", required=True, help="a run directory or a .safetensors file")
    features.add_argument("--which", choices=("best", "last"), default="best")
    features.add_argument("--output", required=True, help="the .safetensors file to write")
    features.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override data settings, e.g. --set data.root=/data/cifar10.npz")

    generator = commands.add_parser("train-generator", help="train the class-conditional diffusion generator")
    generator.add_argument("--config", help="YAML file, e.g. configs/generator/cifar10_lt.yaml (optional with --resume)")
    generator.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    generator.add_argument("--output-dir", required=True, help="checkpoints; the finished generator goes to DIR/generator")
    generator.add_argument("--resume", action="store_true", help="continue the run in --output-dir")

    export_unet = commands.add_parser("export-unet", help="write a generator folder's UNet as unet/model.onnx, which "
                                                          "fp32 sampling on CPU then runs with ONNX Runtime")
    export_unet.add_argument("folder", help="a generator folder (generator.json, unet/, scheduler/)")

    synthesize = commands.add_parser("synthesize", help="top up every class with generated images (resumable)")
    synthesize.add_argument("--generator", required=True,
                            help="a trained generator folder (generator.json), a local diffusers pipeline folder, "
                                 "or a Hub model id of a text-to-image model")
    synthesize.add_argument("--revision", help="Hub revision (commit, branch or tag) of a text-to-image model")
    synthesize.add_argument("--config", required=True,
                            help="the training config whose data are topped up, e.g. configs/cifar10_lt/ce.yaml")
    synthesize.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override data settings, e.g. --set data.root=/data/cifar10.npz")
    synthesize.add_argument("--output", required=True, help="the folder of images + manifest (resumes if it exists)")
    synthesize.add_argument("--per-class", type=int,
                            help="top every class up to this total (real + synthetic); default: the largest class")
    synthesize.add_argument("--classes", help="comma-separated class names to generate (default: all)")
    synthesize.add_argument("--steps", type=int, help="denoising steps (default: the generator's)")
    synthesize.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the generator's)")
    synthesize.add_argument("--seed", type=int, default=0)
    synthesize.add_argument("--batch-size", type=int, default=64)
    synthesize.add_argument("--prompt-template", default="A photo of a {class}.", help="text-to-image only")
    synthesize.add_argument("--prompts-file", help="text-to-image only: JSON {class name: [prompts]}")
    synthesize.add_argument("--generation-size", type=int,
                            help="text-to-image only: the pipeline's resolution (outputs are resized to the dataset's)")
    synthesize.add_argument("--filter-model", help="an exported .onnx classifier: keep an image only if it gives "
                                                   "the image's class at least --filter-threshold")
    synthesize.add_argument("--filter-threshold", type=float, default=0.5)
    synthesize.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    synthesize.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                            help="our generators only: auto = fp32 through the UNet's ONNX export on CPU (any CPU can "
                                 "resume the set); else bf16 autocast where the device has bf16 kernels, else fp32; the "
                                 "manifest records it, so a resumed set keeps its first run's precision")

    check = commands.add_parser("check-synthetic",
                                help="per-class share of synthetic images an exported classifier recognises")
    check.add_argument("--synthetic", required=True, help="a folder written by synthesize")
    check.add_argument("--model", required=True, help="an exported .onnx classifier with the same classes")
    check.add_argument("--sample-per-class", type=int, help="check only the first N images of every class")
    check.add_argument("--output", help="also write the report as JSON here")

    push = commands.add_parser("push", help="publish a classifier or generator on the Hugging Face Hub and print "
                                            "its pinned hf:// reference")
    push.add_argument("--checkpoint", required=True,
                      help="a run directory (exported to ONNX first), an exported .onnx file, or a generator folder")
    push.add_argument("--repo-id", required=True, help="owner/name on the Hub (created if it does not exist)")
    push.add_argument("--which", choices=("best", "last"), default="best", help="for a run directory")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--branch", help="push to this branch (created if needed) instead of main")
    push.add_argument("--commit-message")
    push.add_argument("--dry-run", metavar="OUT_DIR", help="write the repo content to OUT_DIR and upload nothing")
    push.add_argument("--recognition-report", metavar="FILE.json",
                      help="for a generator: the JSON that `check-synthetic --output` wrote, put into its card")
    analyze = commands.add_parser(
        "analyze", help="report on an image folder before training on it: images per class, imbalance factor, "
                        "Gini, head/medium/tail, unreadable and duplicate files, image sizes, a suggested command",
        description="Report on FOLDER (one sub-folder per class) as `dataset: imagefolder` reads it. Exit status: 0 "
                    "the folder was analysed (problem files are listed in the report), 2 FOLDER is missing or holds "
                    "no class sub-folders with images.")
    analyze.add_argument("folder", help="a folder with one sub-folder of images per class")
    analyze.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def _config(args, load, resume):
    """A new run's config from --config + --set, or with --resume the run's saved one (checked against them)."""
    if args.resume:
        return resume(args.output_dir, args.config, args.overrides)
    return load(args.config, args.overrides)


# One function per command. Each imports what it needs, so `--help` and the light commands start quickly.


def _train(args) -> None:
    from training.config import load_config
    from training.distributed import close_distributed
    from training.run import resume_config
    from training.train import train

    train(_config(args, load_config, resume_config), args.output_dir, resume=args.resume)
    close_distributed()


def _evaluate(args) -> None:
    from training.evaluate import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, args.which, args.split, args.overrides)


def _export(args) -> None:
    if args.quantize == "int8":
        from training.quantize import quantize_export

        quantize_export(args.checkpoint, args.output, args.which, args.overrides, args.tolerance, args.max_group_drop)
        return
    from training.export import export_checkpoint

    export_checkpoint(args.checkpoint, args.output, args.which, args.overrides, args.tolerance)


def _annotate(args) -> None:
    from training.export import annotate_file

    annotate_file(args.model, args.data, args.overrides)


def _extract_features(args) -> None:
    from training.features import extract_features

    extract_features(args.checkpoint, args.which, args.overrides, args.output)


def _train_generator(args) -> None:
    from training.generator_training import load_generator_config, resume_generator_config, train_generator

    train_generator(_config(args, load_generator_config, resume_generator_config), args.output_dir, resume=args.resume)


def _export_unet(args) -> None:
    from training.unet_export import export_generator_unet

    export_generator_unet(args.folder)


def _synthesize(args) -> None:
    from training.synthesize import synthesize_from_args

    synthesize_from_args(args)


def _check_synthetic(args) -> None:
    from training.synthesize import check_synthetic_from_args

    check_synthetic_from_args(args)


def _analyze(args) -> None:
    from training.analyze import analyze_command

    analyze_command(args.folder, args.json)


def _push(args) -> None:
    from training.push import push

    push(args.checkpoint, args.repo_id, args.which, args.private, args.branch, args.commit_message, args.dry_run,
         args.recognition_report)


COMMANDS = {"train": _train, "evaluate": _evaluate, "export": _export, "annotate": _annotate,
            "extract-features": _extract_features,
            "train-generator": _train_generator, "export-unet": _export_unet, "synthesize": _synthesize, "check-synthetic": _check_synthetic,
            "push": _push, "analyze": _analyze}


def _interrupted(args) -> int | None:
    """Ctrl-C: what is kept and how to continue, for the commands that keep their progress (None for the others)."""
    if args.command == "synthesize":
        print(f"\ninterrupted; every finished batch is kept. Run the same command again (with any number of "
              f"processes) to continue into {args.output}", file=sys.stderr)
        return 130
    if args.command not in ("train", "train-generator"):
        return None
    print(f"\ninterrupted; the last completed epoch (DLSA: stage; generator: chunk of steps) is saved. "
          f"Continue with:\n  python -m training {args.command} --output-dir {args.output_dir} --resume",
          file=sys.stderr)
    return 130


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "train-generator") and not args.config and not args.resume:
        parser.error(f"{args.command} needs --config (or --resume to continue a run)")
    from training.distributed import launched_world_size

    if args.command not in ("train", "synthesize") and launched_world_size() > 1:
        parser.error(f"only `train` and `synthesize` run in several processes; start `{args.command}` without "
                     "torchrun")
    from inference.generators import GeneratorError
    from inference.images import ImageLoadError
    from training.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.export import ExportError
    from training.push import PushError
    from training.unet_export import UNetExportError

    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        code = _interrupted(args)
        if code is None:
            raise
        return code
    except (ConfigError, CheckpointError, ExportError, ImageLoadError, GeneratorError, PushError,
            UNetExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
