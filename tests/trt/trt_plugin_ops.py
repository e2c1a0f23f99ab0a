"""The two plugin ops as ONNX reference-evaluator kernels.

They compute with `trt.reference` (the numpy contract) by default, or with any object of the
same `quantize` / `gemm` signatures: the CUDA kernels on the CPU emulator
(emulated_kernels.py). Running the plugin-node graph with these checks everything around the
kernels (packing, padding, q|k|v and gate|up fusion, splits, biases, transposed factors, the
head) on the CPU, against the folded PyTorch model.
"""

from __future__ import annotations

import numpy as np
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from faircalib_export.export.onnx_export import CACHE_INPUT
from faircalib_export.trt import reference
from faircalib_export.trt.plugin_graph import PLUGIN_DOMAIN


def plugin_ops(impl=reference) -> list[type[OpRun]]:
    """The ops FaircalibW4A4Quantize and FaircalibW4A4Gemm, computed by impl."""

    class FaircalibW4A4Quantize(OpRun):
        op_domain = PLUGIN_DOMAIN

        def _run(self, x, p1=None, p2t=None, dim=None, n1=None, n2=None, has_transform=None,
                 act_clip=None, plugin_version=None, plugin_namespace=None):
            assert x.shape[-1] == dim and has_transform == int(p1 is not None)
            lead = x.shape[:-1]
            words, scales = impl.quantize(x.reshape(-1, dim), act_clip, p1,
                                          None if p2t is None else p2t.T)
            return words.reshape(*lead, -1), scales.reshape(*lead, 1)

    class FaircalibW4A4Gemm(OpRun):
        op_domain = PLUGIN_DOMAIN

        def _run(self, codes, scales, weight, wscale, bias=None, in_features=None,
                 out_features=None, has_bias=None, out_dtype=None, plugin_version=None,
                 plugin_namespace=None):
            assert weight.shape == (out_features, reference.packed_words(in_features))
            assert has_bias == int(bias is not None) and out_dtype == 0
            lead = codes.shape[:-1]
            y = impl.gemm(codes.reshape(-1, codes.shape[-1]), scales.reshape(-1), weight,
                          wscale, in_features, bias)
            return (y.reshape(*lead, out_features).astype(np.float32),)

    return [FaircalibW4A4Quantize, FaircalibW4A4Gemm]


def evaluator(model, impl=reference) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=plugin_ops(impl))


def graph_feeds(model, ids, mask, pos, past=None) -> dict[str, np.ndarray]:
    """The graph's inputs from torch tensors; `past` (numpy) defaults to an empty one."""
    if past is None:
        graph_input = next(i for i in model.graph.input if i.name == CACHE_INPUT)
        layers, two, _, kv_heads, _, head_dim = (
            d.dim_value for d in graph_input.type.tensor_type.shape.dim)
        past = np.zeros((layers, two, ids.shape[0], kv_heads, 0, head_dim), np.float32)
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
            "position_ids": pos.numpy(), CACHE_INPUT: past}
