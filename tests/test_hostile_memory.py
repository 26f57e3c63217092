"""Hostile uploads cost no memory: real processes (`python -m inference serve`, `python app.py`, `python -m inference
predict`) measured from /proc/<pid>/status, as bench/bench_memory.py measures them, with fewer files.

The files are 40-megapixel palette PNGs of about 40 kB each, inside every documented limit. Before images were
decoded one at a time and reduced while decoding, 8 of them in one request drove the HTTP server to 2.0 GB resident
(1.2 GB afterwards), the app to 2.1 GB (and it stayed there) and the CLI on 4 of them to 1.4 GB; now each stays
within a few hundred MB of its idle size (docs/benchmarks.md, "Memory under hostile uploads").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.bench_memory import app_server, http_server, measure_cli, memory_mb, post_files, write_files, write_model

PEAK_LIMIT_MB = 1536  # the most any accepted request may make a server (or the CLI) resident
AFTER_LIMIT_MB = 1024  # what a server may keep once the answers are out
FILES = 8  # 320 megapixels in one request: within the default 400 per request


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_memory")
    model = write_model(folder / "models")
    return model, write_files(folder / "files", FILES, megapixels=40, kind="palette")


def settled_rss_mb(pid: int, limit_mb: float, seconds: float = 5.0) -> float:
    """Resident memory once it is back under `limit_mb`, or after `seconds` (the caller checks which)."""
    import time

    deadline = time.monotonic() + seconds
    while (now := memory_mb(pid)["now"]) > limit_mb and time.monotonic() < deadline:
        time.sleep(0.2)
    return now


def test_the_http_server_stays_small_under_a_batch_and_concurrent_requests(hostile):
    model, files = hostile
    with http_server(model.parent) as (url, process):
        status, unreadable = post_files(url, files)
        assert (status, unreadable) == (200, 0)  # every file decoded: the peak is about decoding
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda group: post_files(url, group), [files[:4], files[4:]]))
        assert answers == [(200, 0), (200, 0)]
        peak = memory_mb(process.pid)["peak"]
        after = settled_rss_mb(process.pid, AFTER_LIMIT_MB)
    assert peak <= PEAK_LIMIT_MB, f"the server peaked at {peak:,.0f} MB"
    assert after <= AFTER_LIMIT_MB, f"the server kept {after:,.0f} MB"


def test_the_app_stays_small_under_a_batch(hostile):
    from gradio_client import Client, handle_file

    model, files = hostile
    with app_server(model.parent) as (url, process):
        *_, records = Client(url, verbose=False).predict(model.name, [handle_file(str(p)) for p in files], 3,
                                                          api_name="/classify")
        assert len(records) == FILES and not any("error" in record for record in records)
        peak = memory_mb(process.pid)["peak"]
        after = settled_rss_mb(process.pid, AFTER_LIMIT_MB)
    assert peak <= PEAK_LIMIT_MB, f"the app peaked at {peak:,.0f} MB"
    assert after <= AFTER_LIMIT_MB, f"the app kept {after:,.0f} MB"


def test_the_cli_decodes_one_file_at_a_time(hostile):
    model, files = hostile
    measurement = measure_cli(model, files[:4])
    assert measurement.statuses == [0] and measurement.unreadable == 0
    assert measurement.peak <= AFTER_LIMIT_MB, f"the CLI peaked at {measurement.peak:,.0f} MB"
