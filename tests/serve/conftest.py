"""A tiny dates run, trained once for the serve tests, and a live server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="heedful[serve] is not installed")
pytest.importorskip("httpx", reason="the serve tests need httpx (heedful[test])")

from heedful.runs import load_config, load_run
from heedful.train import fit
from tests.conftest import tiny_dates_overrides


@pytest.fixture(scope="session")
def dates_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("serve") / "dates"
    fit(load_config("configs/dates.yaml", tiny_dates_overrides(run_dir, **{"train.epochs": 1})))
    return load_run(run_dir, "cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread, for as long as the ``with`` block."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
