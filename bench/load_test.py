"""A bounded load test on loopback: concurrent clients classifying through the HTTP service and the app's
Gradio API, then the same while one client keeps generating.

    python bench/load_test.py [--clients 8] [--duration 20] [--targets http gradio]
                              [--phase-seconds 10] [--phase-rounds 2] [--no-generation] [--images A.png B.png ...]
    python bench/load_test.py --http-url http://127.0.0.1:8000 --gradio-url http://127.0.0.1:7860/

Without URLs the app (app.build_app on model_zoo/) and the HTTP service (inference.server.create_app under
uvicorn) are started in this process, over one Studio, on free loopback ports; the client threads then
share this process (and its GIL) with the servers, as they share the 2 cores with them either way. Start
`python app.py` and `python -m inference serve` yourself and pass the URLs to keep them apart.

1. Throughput: per target, `--clients` threads (each with its own client: httpx POST /v1/classify, or
   gradio_client /classify with one uploaded image; by default every client sends the same image,
   `--images` gives each its own) call back to back for `--duration` seconds. `--targets gradio-http`
   adds Gradio's own HTTP API without gradio_client (as in bench_roundtrip.py). Reported:
   requests, errors, requests/s, p50 / p99 / max latency. The targets run one after the other.
2. Classification under generation (unless --no-generation): per target, `--clients - 1` threads classify
   while one thread keeps generating 4 images (POST /v1/generate, or Gradio /generate; the shipped
   generator's defaults: 10 steps, guidance 3), in phases without and with the generator that alternate
   (`--phase-rounds` x `--phase-seconds` each), so other load hits both alike. A request counts for a phase
   only if it started and ended in it; after a "with" phase the next waits for the running generation to
   finish. Reported: classification p50 / p99 and requests/s without vs with generation.

Any failed request is printed, and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from servers import (
    DEFAULT_IMAGE,
    DEFAULT_MODEL,
    GradioClassifier,
    GradioHttpClassifier,
    HttpClassifier,
    latency_summary,
    load_average,
    start_servers,
)

CLIENTS = {"http": HttpClassifier, "gradio": GradioClassifier, "gradio-http": GradioHttpClassifier}


class Recorder:
    """Latencies by label and the errors, from many threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []

    def call(self, call, label_at_start, label_at_end=None) -> None:
        """Time `call()`; keep the latency under the label if `label_at_end()` (if given) still agrees."""
        label = label_at_start() if callable(label_at_start) else label_at_start
        start = time.perf_counter()
        try:
            call()
        except Exception as error:  # noqa: BLE001  (every failure is an error of the load test, reported below)
            with self.lock:
                self.errors.append(f"{label}: {type(error).__name__}: {error}")
            return
        elapsed = time.perf_counter() - start
        if label_at_end is not None and label_at_end() != label:
            return
        with self.lock:
            self.latencies[label].append(elapsed)


def throughput(target: str, url: str, clients: int, duration: float, images: list[Path], model: str) -> Recorder:
    recorder = Recorder()
    callers = [CLIENTS[target](url, images[i % len(images)], model) for i in range(clients)]
    for caller in callers:  # warm-up: connections, the model session
        caller()
    stop = time.monotonic() + duration

    def worker(caller):
        while time.monotonic() < stop:
            recorder.call(caller, target)

    threads = [threading.Thread(target=worker, args=(caller,)) for caller in callers]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    s = latency_summary(recorder.latencies[target]) if recorder.latencies[target] else None
    if s:
        print(f"  {target:11s} {clients} clients x {wall:.1f} s: {s['n']:5d} requests, {len(recorder.errors)} errors, "
              f"{s['n'] / wall:6.1f} req/s   p50 {s['p50']:7.1f} ms   p99 {s['p99']:7.1f} ms   max {s['max']:7.1f} ms")
    else:
        print(f"  {target:11s} no request succeeded, {len(recorder.errors)} errors")
    return recorder


def under_generation(target: str, url: str, clients: int, phase_seconds: float, rounds: int, images: list[Path],
                     model: str) -> Recorder:
    recorder = Recorder()
    callers = [CLIENTS[target](url, images[i % len(images)], model) for i in range(clients - 1)]
    generator = CLIENTS[target](url, images[0], model)
    for caller in callers:
        caller()
    generator.generate()  # warm-up: opens the generator
    start = time.perf_counter()
    generator.generate()
    alone = time.perf_counter() - start
    lock = threading.Lock()
    state = {"phase": "switch", "generating": False, "stop": False}
    phase_wall: dict[str, float] = defaultdict(float)

    def phase() -> str:
        return state["phase"]

    def classify(caller):
        while not state["stop"]:
            recorder.call(caller, phase, phase)

    def generate():
        while not state["stop"]:
            with lock:
                go = state["phase"] == "with"
                state["generating"] = go
            if go:
                recorder.call(generator.generate, "generation")
                state["generating"] = False
            else:
                time.sleep(0.01)

    threads = [threading.Thread(target=classify, args=(caller,)) for caller in callers]
    threads.append(threading.Thread(target=generate))
    for thread in threads:
        thread.start()
    for _ in range(rounds):
        for name in ("without", "with"):
            start = time.monotonic()
            state["phase"] = name
            time.sleep(phase_seconds)
            with lock:
                state["phase"] = "switch"
            phase_wall[name] += time.monotonic() - start
            while state["generating"]:  # the next phase starts once the running generation is done
                time.sleep(0.01)
    state["stop"] = True
    for thread in threads:
        thread.join()

    summaries = {name: latency_summary(recorder.latencies[name]) for name in ("without", "with")
                 if recorder.latencies[name]}
    print(f"  {target}: {clients - 1} clients classifying, {rounds} x {phase_seconds:g} s per phase, "
          f"{len(recorder.errors)} errors")
    for name, s in summaries.items():
        print(f"    {name:7s} generation: {s['n']:5d} requests, {s['n'] / phase_wall[name]:6.1f} req/s   "
              f"p50 {s['p50']:7.1f} ms   p99 {s['p99']:7.1f} ms   max {s['max']:7.1f} ms")
    if recorder.latencies["generation"]:
        g = latency_summary(recorder.latencies["generation"])
        print(f"    generations of 4 images meanwhile: {g['n']}, p50 {g['p50'] / 1000:.2f} s, max {g['max'] / 1000:.2f} s "
              f"(alone, before the phases: {alone:.2f} s)")
    if len(summaries) == 2:
        with_, without = summaries["with"], summaries["without"]
        print(f"    with / without generation: p50 {with_['p50'] / without['p50']:.2f}x   "
              f"p99 {with_['p99'] / without['p99']:.2f}x   "
              f"req/s {with_['n'] / phase_wall['with'] / (without['n'] / phase_wall['without']):.2f}x")
    return recorder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the throughput run per target")
    parser.add_argument("--targets", nargs="+", choices=sorted(CLIENTS), default=["http", "gradio"])
    parser.add_argument("--phase-seconds", type=float, default=10.0)
    parser.add_argument("--phase-rounds", type=int, default=2)
    parser.add_argument("--no-generation", action="store_true", help="skip the run under generation")
    parser.add_argument("--images", type=Path, nargs="+", default=[DEFAULT_IMAGE],
                        help="client i sends image i modulo their number (default: all send the same one)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--http-url")
    parser.add_argument("--gradio-url")
    args = parser.parse_args()
    if args.clients < 2 and not args.no_generation:
        parser.error("the run under generation needs --clients 2 or more")

    close = None
    urls = {"http": args.http_url, "gradio": args.gradio_url}
    urls["gradio-http"] = args.gradio_url
    if not all(urls[target] for target in args.targets):
        gradio_url, http_url, _, close = start_servers()
        urls = {"http": args.http_url or http_url, "gradio": args.gradio_url or gradio_url,
                "gradio-http": args.gradio_url or gradio_url}

    recorders = []
    print(f"throughput, {', '.join(image.name for image in args.images)} with {args.model} ({load_average()}):")
    for target in args.targets:
        recorders.append(throughput(target, urls[target], args.clients, args.duration, args.images, args.model))
    if not args.no_generation:
        print(f"classification while one client generates ({load_average()}):")
        for target in args.targets:
            recorders.append(under_generation(target, urls[target], args.clients, args.phase_seconds,
                                              args.phase_rounds, args.images, args.model))
    print(f"done ({load_average()})")
    if close is not None:
        close()

    errors = [error for recorder in recorders for error in recorder.errors]
    if errors:
        print(f"{len(errors)} failed requests:", file=sys.stderr)
        for error in errors[:50]:
            print(f"  {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
