"""Serve an exported TensorRT engine to the decode loop: numpy, tensorrt and libcudart only.

`TensorRTBackend(dir)` implements faircalib_runtime's Backend protocol over
`dir/model.engine` (written by `export_tensorrt` / `build_engine`): it loads the plugin
library into TensorRT's registry, deserializes the engine, and runs one execution context
on its own stream. Device buffers grow to the largest shape seen and are reused. With
want="summary" only the four (B, S) summary outputs (float32: the model's dtype) are
copied to the host; the engine still computes the logits on the device (TensorRT computes
every network output). want="summary64" copies the logits and summarizes them on the host.

Nothing here imports torch; `tensorrt` is imported when a backend is constructed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import TensorRTError, TensorRTUnavailableError
from .export import (
    ENGINE_FILE,
    VARIANT,
    find_plugin_library,
    import_tensorrt,
    load_plugins,
    read_export_config,
)


def read_engine_config(directory: str | Path) -> dict:
    directory = Path(directory)
    config = read_export_config(directory, TensorRTError)
    engine = (config.get("engine") or {}).get("file")
    if not engine or not (directory / engine).is_file():
        raise TensorRTError(f"{directory} has the TensorRT graph but no engine; build it with "
                            f"faircalib_export.trt.export.build_engine on a machine with "
                            f"TensorRT and a GPU")
    return config


class TensorRTBackend:
    """Runtime backend over a TensorRT engine: the W4A4 plugin graph's (int) or the native
    NVFP4 graph's.

    Uncached only: an engine whose graph has the KV-cache input is fed an empty past.
    """

    supports_cache = False

    def __init__(self, directory: str | Path, plugin_library: str | Path | None = None,
                 device: int = 0):
        from .cuda import CudaRuntime

        self.directory = Path(directory)
        self.config = read_engine_config(self.directory)
        trt = import_tensorrt()
        self.cuda = CudaRuntime()
        if self.cuda.device_count() == 0:
            raise TensorRTUnavailableError("no CUDA device is visible")
        self.cuda.set_device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        if self.config["variant"] == VARIANT:  # the native FP4 graph has no plugins
            load_plugins(trt, find_plugin_library(plugin_library))
        runtime = trt.Runtime(self._logger)
        data = (self.directory / self.config["engine"].get("file", ENGINE_FILE)).read_bytes()
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise TensorRTError(f"{self.directory}: TensorRT could not deserialize the engine "
                                f"(built for another GPU or TensorRT version? see engine.json)")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        self._trt = trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.summary_names = list(self.config["outputs"]["summary"])
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self.calls = {"logits": 0, "summary": 0, "summary64": 0}
        self.limits = (self.config["engine"].get("max_batch"), self.config["engine"].get("max_seq"))

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if nbytes > size:
            self.cuda.free(ptr)
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self._buffers[name] = (ptr, size)
        return ptr

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None,
                position_ids: np.ndarray | None, want: str):
        from faircalib_runtime.backend import StepOutput, Summary, step_output

        b, s = input_ids.shape
        max_batch, max_seq = self.limits
        if (max_batch and b > max_batch) or (max_seq and s > max_seq):
            raise TensorRTError(f"input ({b}, {s}) exceeds the engine's profile "
                                f"({max_batch}, {max_seq}); rebuild with larger limits")
        if attention_mask is not None and attention_mask.ndim != 2:
            raise TensorRTError("the engine takes a (batch, seq) padding mask")
        feeds = {
            "input_ids": input_ids,
            "attention_mask": np.ones((b, s)) if attention_mask is None else attention_mask,
            "position_ids": (np.broadcast_to(np.arange(s), (b, s)) if position_ids is None
                             else position_ids),
        }
        cache = self.config.get("cache")
        if cache is not None:  # the graph's past: empty (L, 2, B, G, 0, D)
            layers, two, _, kv_heads, _, head_dim = cache["shape"]
            feeds[cache["input"]] = np.zeros((layers, two, b, kv_heads, 0, head_dim))
        host = {}
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            host[name] = array  # kept alive until the stream is synchronized
            ptr = self._buffer(name, max(array.nbytes, 1))  # an empty past needs an address
            self.cuda.copy(ptr, array.ctypes.data, array.nbytes, 1, self.stream)
            self.context.set_input_shape(name, array.shape)
            self.context.set_tensor_address(name, ptr)
        shapes = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            shapes[name] = shape
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            self.context.set_tensor_address(name, self._buffer(name, nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise TensorRTError("TensorRT execution failed (see the TensorRT log)")
        wanted = self.summary_names if want == "summary" else [self.config["outputs"]["logits"]]
        result = {}
        for name in wanted:
            out = np.empty(shapes[name], dtype=self.dtypes[name])
            self.cuda.copy(out.ctypes.data, self._buffers[name][0], out.nbytes, 2, self.stream)
            result[name] = out
        self.cuda.synchronize(self.stream)
        self.calls[want] += 1
        if want == "summary":
            token, prob, margin, neg_entropy = (result[n] for n in self.summary_names)
            return StepOutput(summary=Summary(token.astype(np.int64), prob, margin,
                                              neg_entropy))
        return step_output(result[wanted[0]].astype(np.float32, copy=False), want)

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA library may be gone already
            pass

    def describe(self) -> dict:
        metadata = self.directory / self.config["engine"].get("metadata", "engine.json")
        return json.loads(metadata.read_text()) if metadata.is_file() else {}


def open_tensorrt(directory: str | Path, plugin_library: str | Path | None = None,
                  chat: bool = True):
    """Like `faircalib_runtime.onnx.open_exported`, over the TensorRT engine: backend,
    tokenizer adapter and decoding defaults from the export's runtime.json."""
    from faircalib_runtime.onnx import Exported, ExportedTokenizer

    backend = TensorRTBackend(directory, plugin_library)
    return Exported(backend, ExportedTokenizer(Path(directory), backend.config, chat),
                    backend.config, kind="tensorrt", path=Path(directory))
