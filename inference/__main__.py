"""Command line for exported models.

    python -m inference predict --model model_zoo/cifar10_lt_ce_resnet32.onnx cat.png dog.jpg --top-k 3
    python -m inference card --model model_zoo/cifar10_lt_ce_resnet32.onnx

prints a JSON list with one object per image. Exit status: 0 when every image was classified,
1 when some image could not be read (it gets {"image": ..., "error": ...}; the others are still
predicted), 2 when the model itself cannot be used (no metadata, wrong shape, missing file).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from inference.classifier import MODEL_ERRORS, OnnxClassifier
from inference.images import ImageLoadError
from inference.model_card import markdown_document


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="classify image files and print JSON")
    predict.add_argument("--model", required=True, type=Path, help="an exported .onnx file")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--top-k", type=int, default=5, help="how many classes to list per image (default 5)")
    predict.add_argument(
        "--class-names",
        help="for models without LongTail metadata: comma-separated names, or a file with one name per line",
    )
    predict.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")

    card = commands.add_parser("card", help="print an exported model's card as Markdown")
    card.add_argument("--model", required=True, type=Path, help="an exported .onnx file")
    return parser


def parse_class_names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    path = Path(value)
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else value.split(",")
    return [name.strip() for name in lines if name.strip()]


def open_model(path: Path, **kwargs) -> OnnxClassifier | None:
    try:
        return OnnxClassifier(path, **kwargs)
    except MODEL_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def predict(args: argparse.Namespace) -> int:
    classifier = open_model(args.model, threads=args.threads, class_names=parse_class_names(args.class_names))
    if classifier is None:
        return 2

    records = []
    for path, result in zip(args.images, classifier.classify_files(args.images, top_k=args.top_k)):
        if isinstance(result, ImageLoadError):
            records.append({"image": str(path), "error": str(result)})
        else:
            records.append({"image": str(path), **result.to_dict()})
    json.dump(records, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 1 if any("error" in record for record in records) else 0


def card(args: argparse.Namespace) -> int:
    classifier = open_model(args.model)
    if classifier is None:
        return 2
    sys.stdout.write(markdown_document(classifier.card, args.model.stem))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    commands = {"predict": predict, "card": card}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
