"""Find external-data references in an ONNX file without the ``onnx`` package.

An ONNX tensor may say "my bytes are in file X" (data_location = EXTERNAL).
A downloaded model must be self-contained: the signed sha256 covers only the
one file, so a reference to any other file (or to ``../../etc/...``) is
refused before onnxruntime opens the model. This walks the protobuf wire
format along the few message types that can hold tensors.
"""

from __future__ import annotations

# field numbers from onnx.proto3
MODEL_GRAPH, MODEL_FUNCTIONS = 7, 25
FUNCTION_NODE = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
EXTERNAL = 1
MAX_DEPTH = 64


class OnnxFormatError(ValueError):
    pass


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise OnnxFormatError("truncated varint")
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(data: memoryview):
    """Yield (field number, wire type, value) where value is an int or a memoryview."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            value, i = _varint(data, i)
        elif wt == 1:
            value, i = int.from_bytes(data[i:i + 8], "little"), i + 8
        elif wt == 5:
            value, i = int.from_bytes(data[i:i + 4], "little"), i + 4
        elif wt == 2:
            n, i = _varint(data, i)
            if i + n > len(data):
                raise OnnxFormatError("length-delimited field runs past the end")
            value, i = data[i:i + n], i + n
        else:
            raise OnnxFormatError(f"unsupported wire type {wt}")
        if i > len(data):
            raise OnnxFormatError("field runs past the end")
        yield num, wt, value


def _tensor(data: memoryview, found: list[str]) -> None:
    name, external = "", False
    for num, wt, value in fields(data):
        if num == TENSOR_NAME and wt == 2:
            name = bytes(value).decode("utf-8", "replace")
        elif num == TENSOR_DATA_LOCATION and wt == 0 and value == EXTERNAL:
            external = True
        elif num == TENSOR_EXTERNAL_DATA and wt == 2:
            external = True
    if external:
        found.append(name or "(unnamed tensor)")


def _sparse(data: memoryview, found: list[str]) -> None:
    for num, wt, value in fields(data):
        if num in (SPARSE_VALUES, SPARSE_INDICES) and wt == 2:
            _tensor(value, found)


def _node(data: memoryview, found: list[str], depth: int) -> None:
    for num, wt, value in fields(data):
        if num != NODE_ATTRIBUTE or wt != 2:
            continue
        for anum, awt, avalue in fields(value):
            if awt != 2:
                continue
            if anum in (ATTR_T, ATTR_TENSORS):
                _tensor(avalue, found)
            elif anum in (ATTR_G, ATTR_GRAPHS):
                _graph(avalue, found, depth + 1)
            elif anum in (ATTR_SPARSE, ATTR_SPARSES):
                _sparse(avalue, found)


def _graph(data: memoryview, found: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise OnnxFormatError("subgraphs nested too deep")
    for num, wt, value in fields(data):
        if wt != 2:
            continue
        if num == GRAPH_INITIALIZER:
            _tensor(value, found)
        elif num == GRAPH_SPARSE_INITIALIZER:
            _sparse(value, found)
        elif num == GRAPH_NODE:
            _node(value, found, depth)


def external_data_tensors(model: bytes) -> list[str]:
    """Names of tensors whose data lives outside the file; OnnxFormatError if not an ONNX protobuf."""
    found: list[str] = []
    saw_graph = False
    for num, wt, value in fields(memoryview(model)):
        if num == MODEL_GRAPH and wt == 2:
            saw_graph = True
            _graph(value, found, 0)
        elif num == MODEL_FUNCTIONS and wt == 2:
            for fnum, fwt, fvalue in fields(value):
                if fnum == FUNCTION_NODE and fwt == 2:
                    _node(fvalue, found, 0)
    if not saw_graph:
        raise OnnxFormatError("no graph: not an ONNX model")
    return found
