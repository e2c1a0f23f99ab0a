"""A small helper for writing ONNX graphs node by node with readable code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..fold.pack import pack_fp4, pack_int4

OPSET = 21
IR_VERSION = 10  # ONNX Runtime 1.31 runs int4 Q/DQ at IR 10 and refuses IR 14
FP4_OPSET, FP4_IR_VERSION = 23, 11  # FLOAT4E2M1 arrived with opset 23 (onnx 1.18), IR 11
MS_DOMAIN = "com.microsoft"
# with a data file: tensors from this size go there; smaller ones (shapes, axes, scalars)
# stay inline, where shape inference can read them
EXTERNAL_MIN_BYTES = 1024
EXTERNAL_ALIGN = 4096  # the page size: a runtime may map each tensor in place


def int_tensor(name: str, codes: np.ndarray, bits: int) -> onnx.TensorProto:
    """An INT4 (packed, row-major flat order, low nibble first) or INT8 initializer."""
    codes = np.ascontiguousarray(codes, dtype=np.int8)
    if bits <= 4:
        packed = pack_int4(codes.reshape(1, -1))[0]
        return helper.make_tensor(name, TensorProto.INT4, codes.shape, packed.tobytes(), raw=True)
    return numpy_helper.from_array(codes, name)


def fp4_tensor(name: str, values: np.ndarray) -> onnx.TensorProto:
    """A FLOAT4E2M1 initializer from E2M1 values (packed like INT4: row-major, low nibble
    first)."""
    if not hasattr(TensorProto, "FLOAT4E2M1"):
        raise RuntimeError("FP4 graphs need onnx >= 1.18 (FLOAT4E2M1)")
    values = np.ascontiguousarray(values, dtype=np.float32)
    packed = pack_fp4(values.reshape(1, -1))[0]
    return helper.make_tensor(name, TensorProto.FLOAT4E2M1, values.shape, packed.tobytes(),
                              raw=True)


def e4m3_tensor(name: str, codes: np.ndarray) -> onnx.TensorProto:
    """A FLOAT8E4M3FN initializer from its uint8 codes."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, codes.shape, codes.tobytes(),
                              raw=True)


class GraphBuilder:
    """Nodes, initializers and I/O of one graph.

    With `data_file`, every initializer of at least EXTERNAL_MIN_BYTES is written to that
    file as it is added and only its reference stays in memory (ONNX external data under
    the name `location`, where the file will sit beside the model), so building an 8B
    graph holds one weight at a time.
    """

    def __init__(self, name: str, data_file: Path | None = None, location: str | None = None):
        self.name = name
        self.data_file = data_file
        self.location = location or (data_file.name if data_file is not None else None)
        self._data = open(data_file, "wb") if data_file is not None else None
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
        spill = self._data is not None
        if isinstance(value, onnx.TensorProto):
            tensor = value
            tensor.name = name
            if spill:
                raw = tensor.raw_data  # protobuf hands out a copy on every access
                if len(raw) >= EXTERNAL_MIN_BYTES:
                    # a fresh message: clearing the bytes would not free them (protobuf
                    # keeps a message's memory until the message itself is freed)
                    tensor = onnx.TensorProto(name=name, dims=value.dims,
                                              data_type=value.data_type)
                    self._spill(tensor, raw)
        elif spill and value.nbytes >= EXTERNAL_MIN_BYTES:
            # straight from the array to the file: no protobuf copy of the bytes
            array = np.ascontiguousarray(value)
            tensor = onnx.TensorProto(name=name, dims=array.shape,
                                      data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
            self._spill(tensor, memoryview(array.reshape(-1)).cast("B"))
        else:
            tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.initializers.append(tensor)
        return name

    def _spill(self, tensor: onnx.TensorProto, data) -> None:
        """Write the tensor's bytes to the data file (at an aligned offset, so a runtime
        may map them) and leave an external-data reference in the tensor."""
        f = self._data
        offset = -f.tell() % EXTERNAL_ALIGN + f.tell()
        f.seek(offset)
        f.write(data)
        for key, value in (("location", self.location), ("offset", str(offset)),
                           ("length", str(f.tell() - offset))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")

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

    def model(self, extra_opsets: dict[str, int] | None = None, *, opset: int = OPSET,
              ir_version: int = IR_VERSION) -> onnx.ModelProto:
        if self._data is not None:
            self._data.close()
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  self.initializers)
        opsets = [helper.make_opsetid("", opset)]
        opsets += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version,
                                 producer_name="faircalib-export")
