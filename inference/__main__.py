"""Command line for exported models.

    python -m inference predict --model model_zoo/cifar10_lt_ce_resnet32.onnx cat.png dog.jpg --top-k 3
    python -m inference predict --model model_zoo/cifar10_lt_ce_resnet32.onnx cat.png --tau 1   # favour the tail
    python -m inference card --model model_zoo/cifar10_lt_ce_resnet32.onnx
    python -m inference serve --models-dir model_zoo --port 8000   # HTTP API, docs at /docs

prints a JSON list with one object per image. Exit status: 0 when every image was classified,
1 when some image could not be read (it gets {"image": ..., "error": ...}; the others are still
predicted), 2 for a usage error (an unknown option, a value outside the limits) or a model that cannot
be used (no metadata, wrong shape, missing file).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import stat
import sys
from pathlib import Path

from inference.card import markdown_document, quantization_text
from inference.classifier import MODEL_ERRORS, OnnxClassifier, Prediction, record
from inference.images import ImageLoadError
from inference.limits import ParameterError, check_text, number_from_text
from inference.service import GeneratorService, Limits, ModelCatalog, Studio

DEFAULT_GENERATOR = "model_zoo/cifar10_lt_generator"
PREDICT_EXIT_STATUS = """exit status:
  0  every image was classified
  1  some input could not be read: its record is {"image", "error"}, the others are still classified
  2  a usage error (an unknown option, a value outside the limits, e.g. --top-k 0) or a model that
     cannot be used (no metadata, wrong shape, missing file; no training counts for a --tau other
     than 0); nothing is printed on stdout"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="classify image files and print JSON", epilog=PREDICT_EXIT_STATUS,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("--model", required=True, type=Path, help="an exported .onnx file")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--top-k", type=parameter_argument("top_k"), default=5,
                         help="how many classes to list per image, 1 to 20 (default 5)")
    predict.add_argument("--tau", type=parameter_argument("tau"), default=0.0,
                         help="post-hoc logit adjustment, logits − τ·log(training prior), -5 to 5: 0 (default) is the "
                              "model as trained, above 0 favours the tail, below 0 the head; `card` shows what each τ "
                              "does on the test set")
    predict.add_argument("--max-file-mb", type=positive_number, default=Limits().max_upload_bytes / 2**20,
                         help="larger files are refused without being read (default %(default)g, as the server's "
                              "--max-upload-mb)")
    predict.add_argument(
        "--class-names", type=class_names_argument,
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
    serve.add_argument("--max-batch", type=positive_integer, default=limits.max_batch,
                       help="most images per classification request (default %(default)d)")
    serve.add_argument("--max-generate", type=positive_integer, default=limits.max_generate,
                       help="most images per generation request (default %(default)d)")
    serve.add_argument("--max-pixels", type=positive_integer, default=limits.max_pixels,
                       help="most pixels per image, checked before decoding (default %(default)d)")
    serve.add_argument("--max-request-pixels", type=positive_integer, default=limits.max_request_pixels,
                       help="most pixels over all the images of one classification request, checked before any is "
                            "decoded (default %(default)d)")
    serve.add_argument("--max-parallel-decodes", type=positive_integer, default=limits.max_parallel_decodes,
                       help="most images decoded at the same time over all requests; each holds its pixels while "
                            "it decodes (default %(default)d)")
    # inference.server.DEFAULT_{BODY,HEADER,WRITE}_TIMEOUT, not imported: FastAPI loads for `serve` only.
    serve.add_argument("--body-timeout", type=positive_number, default=30.0,
                       help="seconds a request body may take to arrive whole; a slower one gets 408 (default %(default)g)")
    serve.add_argument("--header-timeout", type=positive_number, default=10.0,
                       help="seconds a request's line and headers may take to arrive; the connection of a slower one "
                            "is closed (default %(default)g)")
    serve.add_argument("--write-timeout", type=positive_number, default=60.0,
                       help="seconds an answer may wait for a client that has stopped reading it; then its "
                            "connection is closed (default %(default)g)")
    return parser


# --- Arguments: argparse turns an ArgumentTypeError into a usage error (exit 2) with its message --------------


def parameter_argument(name: str):
    """The argparse type of a request parameter: checked by the one table, so `--top-k 0` gets the sentence the
    HTTP API and the app give for top_k 0."""

    def checked(text: str):
        try:
            return check_text(name, text)
        except ParameterError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    checked.__name__ = name  # argparse names the type in some messages
    return checked


def positive_number(text: str) -> float:
    value = number_from_text(text)
    if isinstance(value, str) or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text!r}")
    return float(value)


def positive_integer(text: str) -> int:
    value = number_from_text(text)
    if not isinstance(value, int) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def class_names_argument(value: str) -> list[str]:
    """Comma-separated names, or a file with one name per line."""
    path = Path(value)
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a list of names longer than a file name may be
        is_file = False
    if not is_file:
        return [name.strip() for name in value.split(",") if name.strip()]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path} ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"{path} is not a UTF-8 text file of class names") from None
    return [name.strip() for name in lines if name.strip()]


# --- Commands -------------------------------------------------------------------------------------------------


def open_model(path: Path, **kwargs) -> OnnxClassifier | None:
    try:
        return OnnxClassifier(path, **kwargs)
    except MODEL_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
    except OSError as error:  # e.g. a name too long for the file system
        print(f"error: cannot open model {str(path)[:80]!r}: {error.strerror or error}", file=sys.stderr)
    return None


def refused_unread(path: Path, limits: Limits) -> ImageLoadError | None:
    """Why `path` is refused before a byte of it is read, from its stat alone: a FIFO would hang the read, a device
    or a huge sparse file would be read whole. None when the loader may read it (a missing file or a folder too:
    the loader says what it is)."""
    try:
        info = path.stat()
    except OSError:
        return None  # missing, not allowed, a name too long: the loader names the problem
    if stat.S_ISREG(info.st_mode):
        too_large = limits.file_too_large(str(path), info.st_size)
        return ImageLoadError(f"{too_large}; nothing of it was read.") if too_large else None
    if stat.S_ISDIR(info.st_mode):
        return None
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket"}
    kind = next((name for test, name in kinds.items() if test(info.st_mode)), "not a regular file")
    return ImageLoadError(f"{path} is {kind}, not an image file; only regular files are read.")


def classify_paths(classifier: OnnxClassifier, paths: list[Path], top_k: int, limits: Limits, tau: float = 0.0,
                   ) -> list[Prediction | ImageLoadError]:
    """One result per path, in order: files refused from their stat keep their reason, the others are classified."""
    refusals = [refused_unread(path, limits) for path in paths]
    results = iter(classifier.classify_files([p for p, refusal in zip(paths, refusals) if refusal is None], top_k,
                                             tau))
    return [next(results) if refusal is None else refusal for refusal in refusals]


def predict(args: argparse.Namespace) -> int:
    classifier = open_model(args.model, threads=args.threads, class_names=args.class_names)
    if classifier is None:
        return 2

    refusal = classifier.tau_refusal(args.tau)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if classifier.card.quantization:  # on stderr: stdout stays the JSON records
        print(f"{args.model.name}: {quantization_text(classifier.card)}", file=sys.stderr)
    limits = Limits(max_upload_bytes=int(args.max_file_mb * 2**20))
    results = classify_paths(classifier, args.images, args.top_k, limits, args.tau)
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

    limits = serve_limits(args)
    try:
        catalog = ModelCatalog(args.models_dir, hub_refs=args.hub_model)
    except ValueError as error:  # HubError or RequestError: a Hub model not fetched, or two with one name
        print(f"error: {error}", file=sys.stderr)
        return 2
    studio = Studio(catalog, GeneratorService(args.generator or None, revision=args.generator_revision), limits)
    run_server(studio, host=args.host, port=args.port, body_timeout=args.body_timeout,
               header_timeout=args.header_timeout, write_timeout=args.write_timeout)
    return 0


def serve_limits(args: argparse.Namespace) -> Limits:
    """The operator's limits, from `serve`'s options (README "Limits")."""
    return Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                  max_batch=args.max_batch, max_generate=args.max_generate,
                  max_request_pixels=args.max_request_pixels, max_parallel_decodes=args.max_parallel_decodes)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    commands = {"predict": predict, "card": card, "serve": serve}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
