"""The classify round trip of one image through the app's Gradio API vs the HTTP service, in one process.

    python bench/bench_roundtrip.py [--calls 200] [--warmup 10] [--image examples/cifar10_test_0001_ship.png]
    python bench/bench_roundtrip.py --gradio-url http://127.0.0.1:7860/ --http-url http://127.0.0.1:8000

Without URLs the script starts the real app (app.build_app on model_zoo/) and the HTTP service
(inference.server.create_app under uvicorn) in this process, on free loopback ports, over the same Studio.
One client each, called alternately (Gradio, HTTP, Gradio, ...), so other load on the machine hits both
alike:

- Gradio: `gradio_client.Client.predict(model, [handle_file(image)], 5, api_name="/classify")`: upload the
  file, join the queue, stream the result (what the README shows);
- Gradio HTTP: the same call through Gradio's own HTTP API without gradio_client (POST
  /gradio_api/upload, POST /gradio_api/call/classify, read the event stream), which separates Gradio's
  server-side cost from gradio_client's (its result loop polls every 50 ms);
- HTTP: `httpx` POST /v1/classify with the file as multipart (what `curl -F files=@...` does);
- in-process (no URLs given): `Studio.classify` on the same bytes, no network or framework at all, the
  floor both round trips stand on.

Warm-up calls are excluded. Prints p50 / p99 / mean / max latency per path and the Gradio / HTTP ratios.
"""

from __future__ import annotations

import argparse
import io
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="measured calls per path")
    parser.add_argument("--warmup", type=int, default=10, help="calls per path before measuring")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--gradio-url", help="an app already running (else one is started in-process)")
    parser.add_argument("--http-url", help="an HTTP service already running (else one is started in-process)")
    args = parser.parse_args()

    close, studio = None, None
    if not (args.gradio_url and args.http_url):
        gradio_url, http_url, studio, close = start_servers()
        args.gradio_url, args.http_url = args.gradio_url or gradio_url, args.http_url or http_url
    paths = {"gradio": GradioClassifier(args.gradio_url, args.image, args.model),
             "gradio-http": GradioHttpClassifier(args.gradio_url, args.image, args.model),
             "http": HttpClassifier(args.http_url, args.image, args.model)}
    if studio is not None:
        data = args.image.read_bytes()

        def in_process() -> str:
            return studio.classify(args.model, [io.BytesIO(data)], top_k=5)[0].top[0].name

        paths["in-process"] = in_process

    answers = {name: call() for name, call in paths.items()}
    if len(set(answers.values())) != 1:
        raise SystemExit(f"the paths disagree: {answers}")
    for _ in range(args.warmup - 1):
        for call in paths.values():
            call()
    latencies = {name: [] for name in paths}
    for _ in range(args.calls):
        for name, call in paths.items():
            start = time.perf_counter()
            call()
            latencies[name].append(time.perf_counter() - start)
    if close is not None:
        close()

    print(f"classify {args.image.name} ({answers['http']}) with {args.model}: {args.calls} calls per path after "
          f"{args.warmup} warm-up, alternating; {load_average()} at the end")
    summaries = {name: latency_summary(values) for name, values in latencies.items()}
    for name, s in summaries.items():
        print(f"  {name:11s} p50 {s['p50']:7.2f} ms   p99 {s['p99']:7.2f} ms   mean {s['mean']:7.2f} ms   "
              f"max {s['max']:7.2f} ms")
    http = summaries["http"]
    for name in ("gradio", "gradio-http"):
        s = summaries[name]
        print(f"  {name} / http: p50 {s['p50'] / http['p50']:.2f}x   p99 {s['p99'] / http['p99']:.2f}x   "
              f"mean {s['mean'] / http['mean']:.2f}x")


if __name__ == "__main__":
    main()
