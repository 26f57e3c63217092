"""What bench_roundtrip.py and load_test.py share: the app (Gradio) and the HTTP service started in this
process on free loopback ports over one Studio, the clients that call /classify and /generate on either,
latency percentiles and a timing loop (also used by bench_inference.py and bench_quantized.py). Not a
benchmark itself."""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

from inference.service import DEFAULT_MODEL  # noqa: F401  (the scripts' --model default: the app's)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT / "examples" / "cifar10_test_0001_ship.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_servers(models_dir: Path | None = None):
    """(gradio_url, http_url, studio, close): the real app (app.build_app) and the HTTP service
    (inference.server.create_app) over one Studio, the app's (app.build_studio: same models, generator and
    limits for both), each on its own free loopback port."""
    import importlib.util

    import uvicorn

    # app.py is a script at the repository root, not part of the installed package: loaded from its file
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    from inference.server import create_app

    studio = app.build_studio(models_dir or ROOT / "model_zoo")
    demo = app.build_app(studio=studio)
    gradio_port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=gradio_port, quiet=True,
                max_file_size=app.MAX_UPLOAD_SIZE)
    server = uvicorn.Server(uvicorn.Config(create_app(studio), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the HTTP service did not start")
        time.sleep(0.05)
    http_port = server.servers[0].sockets[0].getsockname()[1]

    def close() -> None:
        server.should_exit = True
        thread.join(10)
        demo.close()

    return f"http://127.0.0.1:{gradio_port}/", f"http://127.0.0.1:{http_port}", studio, close


class HttpClassifier:
    """POST /v1/classify with one image, as `curl -F files=@image.png` does; raises unless the answer is 200."""

    def __init__(self, url: str, image: Path, model: str = DEFAULT_MODEL):
        import httpx

        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=120)
        self.files = [("files", (image.name, image.read_bytes(), "image/png"))]
        self.data = {"model": model, "top_k": "5"}

    def __call__(self) -> str:
        response = self.client.post("/v1/classify", files=self.files, data=self.data)
        response.raise_for_status()
        return response.json()["results"][0]["prediction"]

    def generate(self, class_name: str = "truck", count: int = 4) -> int:
        response = self.client.post("/v1/generate", json={"class_name": class_name, "count": count, "seed": 0})
        response.raise_for_status()
        return len(response.json()["images"])


class GradioClassifier:
    """/classify through gradio_client, as the README shows (the file is uploaded on every call)."""

    def __init__(self, url: str, image: Path, model: str = DEFAULT_MODEL):
        from gradio_client import Client

        self.client = Client(url, verbose=False)
        self.image, self.model = str(image), model

    def __call__(self) -> str:
        from gradio_client import handle_file

        records = self.client.predict(self.model, [handle_file(self.image)], 5, api_name="/classify")[5]
        return records[0]["prediction"]

    def generate(self, class_name: str = "truck", count: int = 4) -> int:
        # model, class, count, steps, seed, guidance: the shipped generator's defaults (10 steps, guidance 3)
        records = self.client.predict(self.model, class_name, count, 10, 0, 3.0, api_name="/generate")[3]
        return len(records["images"])


class GradioHttpClassifier:
    """/classify (and /generate) through Gradio's own HTTP API, without gradio_client (whose result loop polls
    every 50 ms and which downloads every output file): POST /gradio_api/upload, POST /gradio_api/call/<api>,
    then read the event stream to `complete`."""

    def __init__(self, url: str, image: Path, model: str = DEFAULT_MODEL):
        import httpx

        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=120)
        self.files = [("files", (image.name, image.read_bytes(), "image/png"))]
        self.model = model

    def __call__(self) -> str:
        upload = self.client.post("/gradio_api/upload", files=self.files)
        upload.raise_for_status()
        file = {"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}
        return self.call("classify", [self.model, [file], 5, 0.0])[5][0]["prediction"]  # top_k 5, tau 0

    def generate(self, class_name: str = "truck", count: int = 4) -> int:
        # steps 10, seed 0, guidance 3, every sample kept (not only the recognised ones)
        return len(self.call("generate", [self.model, class_name, count, 10, 0, 3.0, False])[3]["images"])

    def call(self, api_name: str, data: list) -> list:
        call = self.client.post(f"/gradio_api/call/{api_name}", json={"data": data})
        call.raise_for_status()
        event = None
        with self.client.stream("GET", f"/gradio_api/call/{api_name}/{call.json()['event_id']}") as stream:
            stream.raise_for_status()
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = json.loads(line.removeprefix("data:"))
                    if event == "error":
                        raise RuntimeError(f"/{api_name} failed: {data}")
                    return data
        raise RuntimeError(f"/{api_name}: the event stream ended without a result")


def block_seconds(call, min_time: float) -> float:
    """Seconds per call: repeat `call` until `min_time` has passed."""
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): the value q % of the samples are at or below."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def latency_summary(seconds: list[float]) -> dict:
    return {"n": len(seconds), "p50": percentile(seconds, 50) * 1000, "p99": percentile(seconds, 99) * 1000,
            "mean": statistics.fmean(seconds) * 1000, "max": max(seconds) * 1000}


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"
