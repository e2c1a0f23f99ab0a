"""One torch thread per test, as each torchrun rank here (the shared autouse fixture)."""

from helpers import one_torch_thread  # noqa: F401  (autouse fixture, registered here)
