"""`faircalib-export serve`: an OpenAI-compatible HTTP server over the decoding runtime.

`create_app` (app.py) builds the FastAPI app; `Engine` (engine.py) batches requests.
The app imports fastapi, never torch (torch only for PyTorch artifacts); this package
imports it on first use, so the CLI can read the serving defaults without it.
"""

from .engine import MAX_BATCH, Engine, Job

__all__ = ["MAX_BATCH", "Engine", "Job", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
