"""`faircalib-export serve`: an OpenAI-compatible HTTP server over the decoding runtime.

`create_app` (app.py) builds the FastAPI app; `Engine` (engine.py) batches requests.
Importing this package imports fastapi, never torch (torch only for PyTorch artifacts).
"""

from .app import create_app
from .engine import Engine, Job

__all__ = ["Engine", "Job", "create_app"]
