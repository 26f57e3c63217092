"""Command line:

    python -m training train --config configs/cifar10_lt/ce.yaml [--set key=value ...] --output-dir DIR
    python -m training train --output-dir DIR --resume
    python -m training evaluate --checkpoint DIR [--which best|last] [--split test|val]
    python -m training export --checkpoint DIR --output model.onnx
    python -m training extract-features --checkpoint DIR --output features.safetensors
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
    export.add_argument("--checkpoint", required=True, help="a run directory or a .safetensors file")
    export.add_argument("--which", choices=("best", "last"), default="best")
    export.add_argument("--output", required=True, help="the .onnx file to write")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override data settings used for the parity check on real images")
    export.add_argument("--tolerance", type=float, default=1e-4, help="allowed |ONNX - torch| per logit (plus 1e-6 x |logit|)")
    features = commands.add_parser("extract-features",
                                   help="frozen backbone features and labels of train / val / test, to one file")
    features.add_argument("--checkpoint", required=True, help="a run directory or a .safetensors file")
    features.add_argument("--which", choices=("best", "last"), default="best")
    features.add_argument("--output", required=True, help="the .safetensors file to write")
    features.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override data settings, e.g. --set data.root=/data/cifar10.npz")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "train" and not args.config and not args.resume:
        parser.error("train needs --config (or --resume to continue a run)")
    from inference.images import ImageLoadError
    from training.checkpoint import CheckpointError
    from training.config import ConfigError
    from training.export import ExportError

    try:
        if args.command == "train":
            from training.config import load_config
            from training.train import resume_config, train

            if args.resume:
                config = resume_config(args.output_dir, args.config, args.overrides)
            else:
                config = load_config(args.config, args.overrides)
            train(config, args.output_dir, resume=args.resume)
        elif args.command == "evaluate":
            from training.evaluate import evaluate_checkpoint

            evaluate_checkpoint(args.checkpoint, args.which, args.split, args.overrides)
        elif args.command == "export":
            from training.export import export_checkpoint

            export_checkpoint(args.checkpoint, args.output, args.which, args.overrides, args.tolerance)
        elif args.command == "extract-features":
            from training.features import extract_features

            extract_features(args.checkpoint, args.which, args.overrides, args.output)
    except KeyboardInterrupt:
        if args.command != "train":
            raise
        print(f"\ninterrupted; the last completed epoch (DLSA: stage) is saved. Continue with:\n"
              f"  python -m training train --output-dir {args.output_dir} --resume", file=sys.stderr)
        return 130
    except (ConfigError, CheckpointError, ExportError, ImageLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
