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
def onnx_dir(tmp_path_factory):
    from faircalib_export.calibrate.config import CalibConfig
    from faircalib_export.calibrate.entry import calibrate_checkpoint
    from faircalib_export.export.onnx_export import ExportOptions, export_onnx
    from faircalib_export.fold.fold import fold_artifact

    root = tmp_path_factory.mktemp("serve")
    calibrated = calibrate_checkpoint("llada-chain", root / "cal", CalibConfig("rtn"),
                                      samples=4, seq_len=32)
    deploy = fold_artifact(calibrated, root / "deploy")
    return export_onnx(deploy, root / "chain-w4a4", ExportOptions(variant="w4a4-int"))


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


def serve(path, **options) -> Running:
    from faircalib_export.serve import create_app

    return Running(create_app(path, name="chain", **options))


@pytest.fixture(scope="session")
def server(onnx_dir):
    with serve(onnx_dir, max_batch=16, max_tokens=64) as running:
        yield running
