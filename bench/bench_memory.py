"""Peak resident memory of the real servers and the CLI under hostile uploads that every documented limit allows.

    python bench/bench_memory.py                                  # every scenario below, 40-megapixel palette PNGs
    python bench/bench_memory.py --scenarios http-batch app-batch --kind rgba
    python bench/bench_memory.py --input-size 224                 # a model with ImageNet-sized input

Each scenario starts a fresh process the way people start it and sends it files of `--megapixels` each (palette
PNGs by default: about 40 kB a file, so a whole batch is a small body):

- `http-batch`: `python -m inference serve`, one POST /v1/classify with `--files` files (default: the server's
  max_batch, 32);
- `http-concurrent`: the same server, `--clients` requests at once of `--files-per-client` files each;
- `app-batch`: `python app.py`, one /classify call through gradio_client with `--app-files` files (the app's
  max_batch, the same as the server's: `Limits().max_batch`, 32);
- `cli`: `python -m inference predict` on `--cli-files` files.

`unreadable` counts the records that are errors: a peak says something about decoding only when they are few.

For a server, `peak` is VmHWM of /proc/<pid>/status after the last answer (the most resident memory the process
ever had, start-up included) and `after` is VmRSS `--settle` seconds later; for the CLI, `peak` is its VmHWM as it
exits. `idle` is VmRSS before the first request. The answers' HTTP status (or the CLI's exit status) is printed
too: a request refused with 413 costs little, so a peak only says something about requests that were accepted.

The model is a tiny ONNX graph (average pool + linear layer, no torch) with a model card whose preprocessing is
`--input-size` (32: CIFAR, resize to 37; 224: resize to 256): the memory measured is the images', not a network's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.limits import Limits

ROOT = Path(__file__).resolve().parents[1]
MODEL = "memory_bench.onnx"
CLASS_NAMES = ["cat", "dog", "bird"]
SCENARIOS = ("http-batch", "http-concurrent", "app-batch", "cli")


# --- The model and the files ------------------------------------------------------------------------


def write_model(folder: Path, input_size: int = 32) -> Path:
    """A 3×input×input → 3 class ONNX file with our model card: mean colour, then a fixed linear layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from inference.card import ModelCard, Preprocessing, embed_card

    weights = numpy_helper.from_array(np.array([[4, -2, -2], [-2, 4, -2], [-2, -2, 4]], np.float32), "weights")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weights"], ["logits"])],
        "mean_colour",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, input_size, input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(class_names=CLASS_NAMES, class_counts=[500, 60, 7], class_groups=["many", "medium", "few"],
                     group_rule={"rule": "count", "many_above": 100, "few_below": 20},
                     preprocessing=Preprocessing(input_size=[3, input_size, input_size], mean=[0.5] * 3,
                                                 std=[0.25] * 3, crop_pct=0.875),
                     model_name="mean-colour", method="ce", dataset="memory-bench")
    embed_card(model, card)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL
    onnx.save(model, str(path))
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# colour type, bytes per pixel, palette: what each kind of file holds
PNG_KINDS = {"palette": (3, 1, b"\x20\x80\x40"), "grey": (0, 1, None), "rgb": (2, 3, None), "rgba": (6, 4, None)}


def hostile_png(width: int, height: int, kind: str = "palette", seed: int = 0) -> bytes:
    """A real, complete PNG of width×height: one row with a little colour, repeated, so it compresses ~1000:1."""
    colour_type, channels, palette = PNG_KINDS[kind]
    rng = np.random.default_rng(seed)
    row = bytes(rng.integers(0, 2 if palette else 256, 64, dtype=np.uint8).tobytes()) + bytes(width * channels - 64)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\0" + row) for _ in range(height)) + compressor.flush()
    chunks = [png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))]
    if palette:
        chunks.append(png_chunk(b"PLTE", palette + b"\xff\xff\xff"))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks + [png_chunk(b"IDAT", data), png_chunk(b"IEND", b"")])


# Pillow format, image mode, save options: the kinds made by Pillow itself
PILLOW_KINDS = {"jpeg": ("JPEG", "RGB", {"quality": 80}), "webp": ("WEBP", "RGBA", {"quality": 50, "method": 0}),
                "tiff": ("TIFF", "RGBA", {"compression": "tiff_deflate"})}


def hostile_pillow_file(width: int, height: int, kind: str, seed: int = 0) -> bytes:
    """A real, complete file of width×height in one of PILLOW_KINDS: flat grey but for a patch of noise."""
    import io

    from PIL import Image

    image_format, mode, options = PILLOW_KINDS[kind]
    image = Image.new(mode, (width, height), (128,) * len(mode))
    patch = np.random.default_rng(seed).integers(0, 256, (64, 64, len(mode)), dtype=np.uint8)
    image.paste(Image.fromarray(patch, mode), (0, 0))
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """An RGB PNG of random pixels, which no compressor shrinks: the most bytes per pixel a legal upload carries
    (8 megapixels is about 24 MB, just inside the 25 MB per-file limit), so a whole batch is a body of ~770 MB."""
    rng = np.random.default_rng(seed)
    compressor = zlib.compressobj(1)
    rows = (compressor.compress(b"\0" + rng.integers(0, 256, width * 3, dtype=np.uint8).tobytes())
            for _ in range(height))
    data = b"".join(rows) + compressor.flush()
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def write_files(folder: Path, count: int, megapixels: float, kind: str) -> list[Path]:
    """`count` files of about `megapixels` each (4:3), all different bytes."""
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(megapixels * 1e6 // width)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if kind in PILLOW_KINDS:
            path, data = folder / f"hostile_{i:02d}.{kind}", hostile_pillow_file(width, height, kind, i)
        elif kind == "noise":
            path, data = folder / f"hostile_{i:02d}.png", noise_png(width, height, i)
        else:
            path, data = folder / f"hostile_{i:02d}.png", hostile_png(width, height, kind, i)
        path.write_bytes(data)
        paths.append(path)
    return paths


# --- Processes and their memory ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident) and VmRSS (resident now) of a process, in MB (2**20 bytes)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return {"peak": fields["VmHWM"], "now": fields["VmRSS"]}


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} within {timeout:g} s")


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "LONGTAIL_GENERATOR": ""}


@contextmanager
def http_server(models_dir: Path, extra_args: list[str] = ()):
    """`python -m inference serve` on a free port: yields (base url, process)."""
    port = free_port()
    command = [sys.executable, "-m", "inference", "serve", "--models-dir", str(models_dir), "--port", str(port),
               "--generator", "", *extra_args]
    with subprocess.Popen(command, cwd=ROOT, env=environment()) as process:
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(f"{url}/healthz", process)
            yield url, process
        finally:
            process.terminate()
            process.wait(10)


@contextmanager
def app_server(models_dir: Path):
    """`python app.py` on a free port: yields (base url, process)."""
    port = free_port()
    env = {**environment(), "LONGTAIL_MODELS_DIR": str(models_dir), "GRADIO_SERVER_PORT": str(port)}
    with subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env) as process:
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_up(url, process)
            yield url, process
        finally:
            process.terminate()
            process.wait(10)


def post_files(url: str, paths: list[Path]) -> tuple[int, int]:
    """(HTTP status, how many records are errors) of one classification request."""
    import httpx

    files = [("files", (path.name, path.read_bytes(), "application/octet-stream")) for path in paths]
    response = httpx.post(f"{url}/v1/classify", files=files, data={"model": MODEL, "top_k": "3"}, timeout=600)
    records = response.json().get("results") or []
    return response.status_code, sum("error" in record for record in records)


@dataclass
class Measurement:
    scenario: str
    files: int
    statuses: list[int]
    unreadable: int  # records that are errors (in answers that have records)
    seconds: float
    idle: float | None  # MB resident before the first request (servers)
    peak: float  # MB, the most resident memory the process ever had
    after: float | None  # MB resident `settle` seconds after the last answer (servers)

    def row(self) -> str:
        idle = "–" if self.idle is None else f"{self.idle:,.0f}"
        after = "–" if self.after is None else f"{self.after:,.0f}"
        statuses = ",".join(str(s) for s in sorted(set(self.statuses)))
        return (f"| {self.scenario} | {self.files} | {statuses} | {self.unreadable} | {self.seconds:.1f} | {idle} | "
                f"{self.peak:,.0f} | {after} |")


def measure_http(models_dir: Path, groups: list[list[Path]], name: str, settle: float,
                 extra_args: list[str] = ()) -> Measurement:
    """Send each group of files as one request, all groups at once, to a fresh HTTP server."""
    with http_server(models_dir, extra_args) as (url, process):
        idle = memory_mb(process.pid)["now"]
        start = time.monotonic()
        with ThreadPoolExecutor(len(groups)) as pool:
            answers = list(pool.map(lambda group: post_files(url, group), groups))
        seconds = time.monotonic() - start
        peak = memory_mb(process.pid)["peak"]
        time.sleep(settle)
        after = memory_mb(process.pid)["now"]
    return Measurement(name, sum(len(g) for g in groups), [status for status, _ in answers],
                       sum(unreadable for _, unreadable in answers), seconds, idle, peak, after)


def measure_app(models_dir: Path, paths: list[Path], settle: float) -> Measurement:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    with app_server(models_dir) as (url, process):
        client = Client(url, verbose=False)
        idle = memory_mb(process.pid)["now"]
        start = time.monotonic()
        try:
            *_, records = client.predict(MODEL, [handle_file(str(p)) for p in paths], 3, api_name="/classify")
            status, unreadable = 200, sum("error" in record for record in records)
        except AppError as error:  # a gr.Error: the request was refused (the pixel budget, too many files)
            print(f"app-batch: the app refused the request: {error}", file=sys.stderr)
            status, unreadable = 413, 0
        seconds = time.monotonic() - start
        peak = memory_mb(process.pid)["peak"]
        time.sleep(settle)
        after = memory_mb(process.pid)["now"]
    return Measurement("app-batch", len(paths), [status], unreadable, seconds, idle, peak, after)


# Runs `python -m inference ...` and writes its own VmHWM (kB) to the file $BENCH_MEMORY_REPORT as it exits. The
# child's ru_maxrss would not do: Linux counts the memory of the process that forked it, up to the exec, in it.
CLI_WRAPPER = """
import os, runpy, sys
sys.argv = ["inference", *sys.argv[1:]]
try:
    runpy.run_module("inference", run_name="__main__", alter_sys=True)
finally:
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    open(os.environ["BENCH_MEMORY_REPORT"], "w").write(peak.split()[1])
"""


def measure_cli(model: Path, paths: list[Path]) -> Measurement:
    arguments = ["predict", "--model", str(model), "--top-k", "3", *map(str, paths)]
    with tempfile.TemporaryDirectory() as folder:
        report, output = Path(folder) / "peak_kb", Path(folder) / "records.json"
        env = {**environment(), "BENCH_MEMORY_REPORT": str(report)}
        start = time.monotonic()
        with output.open("wb") as stdout:
            status = subprocess.run([sys.executable, "-c", CLI_WRAPPER, *arguments], cwd=ROOT, env=env,
                                    stdout=stdout, check=False).returncode
        seconds = time.monotonic() - start
        unreadable = sum("error" in record for record in json.loads(output.read_bytes() or b"[]"))
        peak = int(report.read_text()) / 1024
    return Measurement("cli", len(paths), [status], unreadable, seconds, None, peak, None)


# --- Main -------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--kind", choices=[*PNG_KINDS, *PILLOW_KINDS, "noise"], default="palette",
                        help="what the files are (noise: incompressible RGB, the largest body; use --megapixels 8)")
    parser.add_argument("--megapixels", type=float, default=40.0, help="per file (default 40: the per-image limit)")
    parser.add_argument("--files", type=int, default=32, help="files in the http-batch request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent requests in http-concurrent")
    parser.add_argument("--files-per-client", type=int, default=4)
    parser.add_argument("--app-files", type=int, default=Limits().max_batch, help="files in the app-batch call")
    parser.add_argument("--cli-files", type=int, default=10)
    parser.add_argument("--input-size", type=int, default=32, choices=[32, 224], help="the model's input size")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading `after`")
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                        help="extra arguments for `python -m inference serve` (last)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    return parser


def run(args: argparse.Namespace) -> list[Measurement]:
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as temp:
        folder = Path(temp)
        model = write_model(folder / "models", args.input_size)
        most = max(args.files, args.clients * args.files_per_client, args.app_files, args.cli_files)
        paths = write_files(folder / "files", most, args.megapixels, args.kind)
        total = sum(p.stat().st_size for p in paths) / 2**20
        print(f"{most} {args.kind} files of {args.megapixels:g} megapixels, {total:.2f} MB in all; "
              f"model input {args.input_size}", file=sys.stderr)
        results = []
        for scenario in args.scenarios:
            if scenario == "http-batch":
                results.append(measure_http(folder / "models", [paths[:args.files]], scenario, args.settle,
                                            args.serve_args))
            elif scenario == "http-concurrent":
                groups = [paths[i * args.files_per_client:(i + 1) * args.files_per_client] for i in range(args.clients)]
                results.append(measure_http(folder / "models", groups, scenario, args.settle, args.serve_args))
            elif scenario == "app-batch":
                results.append(measure_app(folder / "models", paths[:args.app_files], args.settle))
            else:
                results.append(measure_cli(model, paths[:args.cli_files]))
            print(results[-1].row(), file=sys.stderr, flush=True)
    return results


def main() -> None:
    args = get_args_parser().parse_args()
    results = run(args)
    print(f"\n{args.kind} files of {args.megapixels:g} megapixels, model input {args.input_size}\n")
    print("| scenario | files | status | unreadable | seconds | idle MB | peak MB | after MB |")
    print("|---|---|---|---|---|---|---|---|")
    for measurement in results:
        print(measurement.row())
    if args.json:
        args.json.write_text(json.dumps([m.__dict__ for m in results], indent=2))
    # Peak of this process too, to show the bench itself stays small (it never decodes a file).
    print(f"\n(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB peak)")


if __name__ == "__main__":
    main()
