"""The TensorRT plugins, driven through TensorRT's plugin calls on the CPU emulator.

`runtimes/tensorrt/tests/plugin_driver.cpp` is built with the plugin sources, TensorRT's
public headers (no TensorRT library) and the emulated kernels. `plugin_ops(plugins)` gives
ONNX reference-evaluator ops that hand each plugin node's attributes to the plugin as fields,
as TensorRT's ONNX parser does (INT -> kINT32, FLOAT -> kFLOAT32, plugin_version and
plugin_namespace select the creator), so the exported graph runs through the plugins' own
field parsing, shape and type inference, serialization and enqueue.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
from emulated_kernels import EMULATOR_DIR
from onnx.reference.op_run import OpRun

from faircalib_export.trt import reference
from faircalib_export.trt.plugin_graph import PLUGIN_DOMAIN

LIBRARY = "libfaircalib_plugins_emu.so"
MAX_DIMS = 8
TRT_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int32): 3}


def build(build_dir: Path, include: Path) -> Path:
    result = subprocess.run(["make", "-C", str(EMULATOR_DIR), f"BUILD={build_dir}",
                             f"TENSORRT_INCLUDE_DIR={include}", "plugins"],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError("plugin emulator build failed:\n"
                           + result.stdout[-3000:] + result.stderr[-3000:])
    return build_dir / LIBRARY


class EmulatedPlugins:
    def __init__(self, library: Path) -> None:
        self.lib = ctypes.CDLL(str(library))
        self.lib.faircalib_plugin_run.restype = ctypes.c_int

    def run(self, op: str, fields: dict, inputs: list[np.ndarray],
            outputs: list[tuple[tuple, np.dtype]]) -> list[np.ndarray]:
        """One plugin call: creator op with these fields, on these inputs; the outputs must
        have the given shapes and dtypes (the plugin's own inference is checked against them)."""
        spec = ";".join(f"{k}={'f' if isinstance(v, float) else 'i'}:{v}"
                        for k, v in fields.items())
        inputs = [np.ascontiguousarray(x) for x in inputs]
        results = [np.empty(shape, dtype) for shape, dtype in outputs]

        def described(arrays):
            n = len(arrays)
            types = (ctypes.c_int * n)(*[TRT_TYPES[a.dtype] for a in arrays])
            ranks = (ctypes.c_int * n)(*[a.ndim for a in arrays])
            dims = (ctypes.c_int64 * (n * MAX_DIMS))()
            for i, a in enumerate(arrays):
                dims[i * MAX_DIMS:i * MAX_DIMS + a.ndim] = list(a.shape)
            return types, ranks, dims, (ctypes.c_void_p * n)(*[a.ctypes.data for a in arrays])

        log = ctypes.create_string_buffer(4096)
        code = self.lib.faircalib_plugin_run(op.encode(), spec.encode(), len(inputs),
                                             *described(inputs), len(results),
                                             *described(results), log, len(log))
        if code != 0:
            raise RuntimeError(f"{op} ({spec}): {log.value.decode()}")
        return results


def plugin_ops(plugins: EmulatedPlugins) -> list[type[OpRun]]:
    def call(op, attrs, inputs, outputs):
        # the parser's creator lookup: version "1", namespace ""
        assert attrs.pop("plugin_version") in (b"1", "1")
        assert attrs.pop("plugin_namespace") in (b"", "")
        fields = {k: v for k, v in attrs.items() if v is not None}
        return tuple(plugins.run(op, fields, [x for x in inputs if x is not None], outputs))

    class FaircalibW4A4Quantize(OpRun):
        op_domain = PLUGIN_DOMAIN

        def _run(self, x, p1=None, p2t=None, dim=None, n1=None, n2=None, has_transform=None,
                 act_clip=None, plugin_version=None, plugin_namespace=None):
            attrs = dict(dim=dim, n1=n1, n2=n2, has_transform=has_transform,
                         act_clip=float(act_clip), plugin_version=plugin_version,
                         plugin_namespace=plugin_namespace)
            lead = x.shape[:-1]
            return call(self.op_type, attrs, [x, p1, p2t],
                        [(lead + (reference.packed_words(dim),), np.int32),
                         (lead + (1,), np.float32)])

    class FaircalibW4A4Gemm(OpRun):
        op_domain = PLUGIN_DOMAIN

        def _run(self, codes, scales, weight, wscale, bias=None, in_features=None,
                 out_features=None, has_bias=None, out_dtype=None, plugin_version=None,
                 plugin_namespace=None):
            attrs = dict(in_features=in_features, out_features=out_features,
                         has_bias=has_bias, out_dtype=out_dtype,
                         plugin_version=plugin_version, plugin_namespace=plugin_namespace)
            return call(self.op_type, attrs, [codes, scales, weight, wscale, bias],
                        [(codes.shape[:-1] + (out_features,), np.float32)])

    return [FaircalibW4A4Quantize, FaircalibW4A4Gemm]
