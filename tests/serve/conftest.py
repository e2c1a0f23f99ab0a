"""The shipped llada-chain, rtn-calibrated, folded and exported (w4a4-int) once, and
servers over it run by uvicorn in a background thread on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="session")
def chain_artifacts(tmp_path_factory):
    """(calibrated, folded, onnx) directories of llada-chain."""
    from helpers import chain_export

    return chain_export(tmp_path_factory.mktemp("serve"), "chain-w4a4")


@pytest.fixture(scope="session")
def onnx_dir(chain_artifacts):
    return chain_artifacts[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, app):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(20)


def serve(path, name: str = "chain", **options) -> Running:
    from faircalib_export.serve import create_app

    return Running(create_app(path, name=name, **options))


@pytest.fixture(scope="session")
def server(onnx_dir):
    with serve(onnx_dir, max_batch=16, max_tokens=64) as running:
        yield running


@pytest.fixture(scope="session")
def start_server():
    """`serve(path, **options)`: a context manager running a server of its own."""
    return serve


@pytest.fixture(scope="session")
def dream_onnx_dir(tmp_path_factory):
    from helpers import chain_export

    return chain_export(tmp_path_factory.mktemp("serve-dream"), "dream-w4a4",
                        model="dream-chain")[2]
