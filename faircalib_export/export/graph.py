"""A small helper for writing ONNX graphs node by node with readable code."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..fold.pack import pack_int4

OPSET = 21
IR_VERSION = 10  # ONNX Runtime 1.31 runs int4 Q/DQ at IR 10 and refuses IR 14
MS_DOMAIN = "com.microsoft"


def int_tensor(name: str, codes: np.ndarray, bits: int) -> onnx.TensorProto:
    """An INT4 (packed, row-major flat order, low nibble first) or INT8 initializer."""
    codes = np.ascontiguousarray(codes, dtype=np.int8)
    if bits <= 4:
        packed = pack_int4(codes.reshape(1, -1))[0]
        return helper.make_tensor(name, TensorProto.INT4, codes.shape, packed.tobytes(), raw=True)
    return numpy_helper.from_array(codes, name)


class GraphBuilder:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def init(self, name: str, value: np.ndarray | onnx.TensorProto) -> str:
        tensor = value if isinstance(value, onnx.TensorProto) else numpy_helper.from_array(
            np.ascontiguousarray(value), name)
        tensor.name = name
        self.initializers.append(tensor)
        return name

    def const(self, value, dtype=np.float32) -> str:
        """A small shared constant (scalars, shapes, axes)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.fresh("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1,
           domain: str = "", **attrs) -> str | list[str]:
        names = ([self.fresh(op_type.lower()) for _ in range(outputs)]
                 if isinstance(outputs, int) else outputs)
        self.nodes.append(helper.make_node(op_type, inputs, names, domain=domain or None,
                                           **attrs))
        return names[0] if len(names) == 1 else names

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, source: str, name: str, elem_type: int, shape: list) -> None:
        self.op("Identity", [source], [name])
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def model(self, extra_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  self.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        opsets += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
        return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION,
                                 producer_name="faircalib-export")
