"""Command line for exported models.

    python -m inference predict --model model_zoo/cifar10_lt_ce_resnet32.onnx cat.png dog.jpg --top-k 3
    python -m inference card --model model_zoo/cifar10_lt_ce_resnet32.onnx
    python -m inference serve --models-dir model_zoo --port 8000   # HTTP API, docs at /docs

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

from inference.card import markdown_document
from inference.classifier import MODEL_ERRORS, OnnxClassifier, record
from inference.service import GeneratorService, Limits, ModelCatalog, Studio

DEFAULT_GENERATOR = "model_zoo/cifar10_lt_generator"


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

    limits = Limits()
    serve = commands.add_parser("serve", help="serve the models over HTTP (JSON API, docs at /docs)")
    serve.add_argument("--models-dir", type=Path, default=Path("model_zoo"),
                       help="the folder whose .onnx files are on offer (default model_zoo)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--hub-model", action="append", default=[], metavar="REF",
                       help="a model on the Hugging Face Hub, hf://owner/name@<commit>/file.onnx (repeatable)")
    serve.add_argument("--generator", default=DEFAULT_GENERATOR if Path(DEFAULT_GENERATOR).is_dir() else None,
                       help=f"generator folder, diffusers model id or hf:// reference (default {DEFAULT_GENERATOR} "
                            "when that folder exists; '' for none)")
    serve.add_argument("--generator-revision", help="the revision of a Hub generator")
    serve.add_argument("--max-upload-mb", type=float, default=limits.max_upload_bytes / 2**20,
                       help="largest image file accepted, in MB (default %(default)g)")
    serve.add_argument("--max-batch", type=int, default=limits.max_batch,
                       help="most images per classification request (default %(default)d)")
    serve.add_argument("--max-generate", type=int, default=limits.max_generate,
                       help="most images per generation request (default %(default)d)")
    serve.add_argument("--max-pixels", type=int, default=limits.max_pixels,
                       help="most pixels per image, checked before decoding (default %(default)d)")
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

    results = classifier.classify_files(args.images, top_k=args.top_k)
    records = [record(str(path), result) for path, result in zip(args.images, results)]
    json.dump(records, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 1 if any("error" in record for record in records) else 0


def card(args: argparse.Namespace) -> int:
    classifier = open_model(args.model)
    if classifier is None:
        return 2
    sys.stdout.write(markdown_document(classifier.card, args.model.stem))
    return 0


def serve(args: argparse.Namespace) -> int:
    from inference.server import serve as run_server  # FastAPI and uvicorn only for this command

    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    max_batch=args.max_batch, max_generate=args.max_generate)
    try:
        catalog = ModelCatalog(args.models_dir, hub_refs=args.hub_model)
    except ValueError as error:  # HubError or RequestError: a Hub model not fetched, or two with one name
        print(f"error: {error}", file=sys.stderr)
        return 2
    studio = Studio(catalog, GeneratorService(args.generator or None, revision=args.generator_revision), limits)
    run_server(studio, host=args.host, port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    commands = {"predict": predict, "card": card, "serve": serve}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
