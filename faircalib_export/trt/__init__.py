"""TensorRT export: plugin-node ONNX graph, engine build, targets, and the TensorRT backend.

W4A4 with per-token dynamic activation scales has no native TensorRT layer (INT4 is
weight-only there and Q/DQ scales are fixed at build time), so each transform site becomes
a `FaircalibW4A4Quantize` plugin node and each site's linears one fused `FaircalibW4A4Gemm`
node, implemented by `runtimes/tensorrt` (CUDA kernels + IPluginV3 library). `reference.py`
is the numpy statement of what those kernels compute. Heavy imports (onnx, tensorrt) stay
inside the functions that need them.
"""
