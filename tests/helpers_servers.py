"""Real servers for tests, in this process on free local ports: the HTTP service under uvicorn in a thread,
and a Gradio app through its own `launch`."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def uvicorn_in_thread(app, timeout: float = 30, config=None) -> Iterator[str]:
    """Serve an ASGI app (or, with `config`, a uvicorn.Config whose port is 0) on a port the system picks; yields
    its base URL, stops the server on exit."""
    import uvicorn

    server = uvicorn.Server(config or uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]  # port 0: the system picked a free one
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def gradio_launched(demo) -> Iterator[str]:
    """Launch a built Gradio app without blocking; yields its URL, closes it on exit."""
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
