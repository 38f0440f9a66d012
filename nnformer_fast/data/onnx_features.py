"""ONNX graph -> NN-Former latency-model inputs (docs/DATA.md).

One graph node per ONNX node, except ``Constant`` nodes, which are folded away (their
outputs behave like initializers). Nodes are numbered in topological order (ties keep the
file's order), so every edge ``(src, dst)`` of ``edge_index`` has ``src < dst``. An edge
``i -> j`` exists when an output of node i is an input of node j.

Node features, 192 wide (float32)::

    [0, 32)     op-type one-hot over OP_TYPES (unknown op types: all zero, one warning)
    [32, 112)   8 attribute values, each embedded to 10 dims (ATTR_NAMES order):
                kernel    kernel_shape[0]            (Conv, ConvTranspose, MaxPool, AveragePool)
                stride    strides[0]
                pad       pads[0]                     (Pad: max of its pads)
                dilation  dilations[0]
                group     group                       (Conv, ConvTranspose)
                bias      1 when Conv/ConvTranspose/Gemm has a bias input, else 0
                perm      Transpose perm as base-10 digits, e.g. (0, 2, 3, 1) -> 231
                output_padding  output_padding[0]     (ConvTranspose)
                Attributes an op does not have are 0.
    [112, 192)  the node's first output shape (N, C, H, W), each dim embedded to 20 dims.
                Rank < 4 pads with 0 at the end ((N, C) -> (N, C, 0, 0)), rank > 4 keeps the
                first 4 dims, unknown (symbolic) dims are 0. The batch dim is ``batch_size``.

Static features, 40 wide: batch size, FLOPs / 1e9, params / 1e7, MACs / 1e7, each
embedded to 10 dims. Counted per node from the inferred shapes (``numel`` = elements of a
tensor, ``out`` = the first output)::

    Conv / ConvTranspose  MACs_mul = numel(out) * (C_in / group) * prod(kernel)
                          FLOPs = 2 * MACs_mul (+ numel(out) with a bias)
    Gemm / MatMul         FLOPs = 2 * numel(out) * K (+ numel(out) with a bias), K the
                          reduced dim
    BatchNormalization    FLOPs = 2 * numel(out) (scale and shift)
    MaxPool/AveragePool   FLOPs = numel(out) * prod(kernel)
    GlobalAveragePool, ReduceMean  FLOPs = numel(input)
    Softmax               FLOPs = 3 * numel(out)
    elementwise ops       FLOPs = numel(out) (Relu, Add, Mul, Sigmoid, Clip, HardSwish, ...)
    data movement         FLOPs = 0 (Reshape, Flatten, Concat, Transpose, Split, Slice, ...)
    params                elements of the float initializers a node reads (stripped weights
                          keep their dims, so they still count)
    MACs                  memory access cost: elements read (all inputs, weights included)
                          plus elements written (all outputs), summed over the nodes

The embedding of a scalar ``x`` into ``2n`` dims is
``[sin(x f_1), cos(x f_1), ..., sin(x f_n), cos(x f_n)]`` with ``f_j = 10000^(-(j-1)/n)``.
"""
from __future__ import annotations

import heapq
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "OP_TYPES",
    "ATTR_NAMES",
    "NODE_FEATURES",
    "STATIC_FEATURES",
    "OnnxGraph",
    "embed_scalar",
    "node_features",
    "NodeFeatureTable",
    "static_features",
    "describe_onnx",
    "load_onnx_graph",
]

#: The op-type vocabulary of the one-hot (index = position). Unknown op types get no bit.
OP_TYPES: tuple[str, ...] = (
    "Conv", "Relu", "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "MatMul",
    "BatchNormalization", "Concat", "Flatten", "Reshape", "Transpose", "Clip", "Sigmoid",
    "HardSigmoid", "HardSwish", "Mul", "Split", "Slice", "Pad", "Softmax", "Dropout",
    "Identity", "ReduceMean", "Squeeze", "Unsqueeze", "Resize", "LeakyRelu", "Sub", "Div",
    "Tanh",
)
OP_INDEX = {op: i for i, op in enumerate(OP_TYPES)}
ATTR_NAMES: tuple[str, ...] = ("kernel", "stride", "pad", "dilation", "group", "bias", "perm",
                               "output_padding")
NUM_OPS, NUM_ATTRS, ATTR_DIM, SHAPE_DIMS, SHAPE_DIM = 32, 8, 10, 4, 20
NODE_FEATURES = NUM_OPS + NUM_ATTRS * ATTR_DIM + SHAPE_DIMS * SHAPE_DIM  # 192
STATIC_SCALARS, STATIC_DIM = 4, 10
STATIC_FEATURES = STATIC_SCALARS * STATIC_DIM  # 40
#: version of the feature layout; part of every cache key.
FEATURE_VERSION = 1
#: more elements than a tensor of any real network holds (256 Ti): a larger or negative shape
#: draws a warning (its features and FLOPs are meaningless)
MAX_PLAUSIBLE_ELEMENTS = 2 ** 48
#: ONNX dims are int64
MAX_DIM = 2 ** 63 - 1

_ELEMENTWISE = {
    "Relu", "Add", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Mul", "LeakyRelu", "Sub",
    "Div", "Tanh", "Dropout", "Sum", "Max", "Min", "Exp", "Log", "Sqrt", "Pow", "Neg", "Abs",
    "Erf", "PRelu", "Elu", "Selu", "Softplus", "Mish", "Gelu",
}
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def embed_scalar(x, n: int) -> np.ndarray:
    """Embed scalars into ``2n`` dims: (...,) -> (..., 2n) float32, docs/DATA.md order.

    Network attributes and shapes repeat a lot (a batch of 2,000 nodes holds ~100 distinct
    values), so each distinct value is embedded once and the rows are gathered.
    """
    x = np.asarray(x, dtype=np.float64)
    values = np.unique(x)
    inverse = np.searchsorted(values, x)  # cheaper than unique(return_inverse=True)
    freq = 10000.0 ** (-np.arange(n, dtype=np.float64) / n)
    ang = values[:, None] * freq
    table = np.empty((values.shape[0], 2 * n), dtype=np.float32)
    table[:, 0::2] = np.sin(ang)
    table[:, 1::2] = np.cos(ang)
    return table[inverse]


def node_features(op_ids, attrs, shapes) -> np.ndarray:
    """(N, 192) float32 node features from raw per-node values.

    op_ids: (N,) int, index into OP_TYPES or -1 for an unknown op (zero one-hot).
    attrs: (N, 8) attribute scalars (ATTR_NAMES order). shapes: (N, 4) output dims.
    """
    op_ids = np.asarray(op_ids, dtype=np.int64).reshape(-1)
    n = op_ids.shape[0]
    attrs = np.asarray(attrs, dtype=np.float64).reshape(n, NUM_ATTRS)
    shapes = np.asarray(shapes, dtype=np.float64).reshape(n, SHAPE_DIMS)
    x = np.zeros((n, NODE_FEATURES), dtype=np.float32)
    known = (op_ids >= 0) & (op_ids < NUM_OPS)
    x[np.nonzero(known)[0], op_ids[known]] = 1.0
    x[:, NUM_OPS:NUM_OPS + NUM_ATTRS * ATTR_DIM] = embed_scalar(attrs, ATTR_DIM // 2).reshape(n, -1)
    x[:, NUM_OPS + NUM_ATTRS * ATTR_DIM:] = embed_scalar(shapes, SHAPE_DIM // 2).reshape(n, -1)
    return x


class NodeFeatureTable:
    """The node features of a whole store, each distinct (op, attributes, shape) row embedded
    once: networks repeat their layers (the embedded default set's 320k nodes hold 12k
    distinct rows), so a batch gathers its rows instead of embedding them again.

    ``table[nodes]``: (len(nodes),) node ids → (len(nodes), 192) float32, equal to
    :func:`node_features` of those nodes' raw values. Memory: 768 bytes per distinct row.
    """

    def __init__(self, op_ids, attrs, shapes):
        raw = np.concatenate([np.asarray(op_ids, dtype=np.float64).reshape(-1, 1),
                              np.asarray(attrs, dtype=np.float64).reshape(-1, NUM_ATTRS),
                              np.asarray(shapes, dtype=np.float64).reshape(-1, SHAPE_DIMS)], 1)
        rows = np.ascontiguousarray(raw).view(np.dtype((np.void, raw.shape[1] * raw.itemsize))).ravel()
        _, first, self._row = np.unique(rows, return_index=True, return_inverse=True)
        self._features = node_features(raw[first, 0].astype(np.int64), raw[first, 1:1 + NUM_ATTRS],
                                       raw[first, 1 + NUM_ATTRS:])

    @property
    def num_distinct(self) -> int:
        return int(self._features.shape[0])

    def __getitem__(self, nodes) -> np.ndarray:
        return self._features[self._row[nodes]]


def static_features(batch_size, flops, params, macs) -> np.ndarray:
    """(40,) float32 (or (G, 40) for arrays) from batch size, FLOPs, params and MACs (raw
    counts; scaled here by 1e9, 1e7, 1e7)."""
    s = np.stack(np.broadcast_arrays(np.asarray(batch_size, dtype=np.float64),
                                     np.asarray(flops, dtype=np.float64) / 1e9,
                                     np.asarray(params, dtype=np.float64) / 1e7,
                                     np.asarray(macs, dtype=np.float64) / 1e7), axis=-1)
    return embed_scalar(s, STATIC_DIM // 2).reshape(s.shape[:-1] + (STATIC_FEATURES,))


@dataclass
class OnnxGraph:
    """One network as the latency model reads it.

    Raw per-node values (what the compact default set stores) and the features built from
    them: ``x`` (N, 192) float32, ``edge_index`` (2, E) int64 with src < dst, ``static``
    (40,) float32, ``op_types`` (N,) op-type strings.
    """

    op_types: list[str]
    op_ids: np.ndarray       # (N,) int64, -1 = unknown
    attrs: np.ndarray        # (N, 8) float64
    shapes: np.ndarray       # (N, 4) int64
    edge_index: np.ndarray   # (2, E) int64
    batch_size: int
    flops: float
    params: float
    macs: float
    source: str = ""
    _x: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_nodes(self) -> int:
        return len(self.op_types)

    @property
    def x(self) -> np.ndarray:
        if self._x is None:
            self._x = node_features(self.op_ids, self.attrs, self.shapes)
        return self._x

    @property
    def static(self) -> np.ndarray:
        return static_features(self.batch_size, self.flops, self.params, self.macs)


# ---------------------------------------------------------------------------- parsing
def _import_onnx():
    try:
        import onnx
    except ImportError:  # ModuleNotFoundError: the CLIs print it as one line, exit 2
        raise ModuleNotFoundError("parsing ONNX files needs the onnx package: pip install 'nnformer_fast[data]' "
                                  "(or pip install onnx)") from None
    return onnx


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _first(v, default=0):
    if v is None:
        return default
    if isinstance(v, (list, tuple)):
        return v[0] if len(v) else default
    return v


def _node_attrs(node) -> np.ndarray:
    a = np.zeros(NUM_ATTRS, dtype=np.float64)
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"):
        a[0] = _first(_attr(node, "kernel_shape"))
        a[1] = _first(_attr(node, "strides"), 1)
        a[2] = _first(_attr(node, "pads"), 0)
        a[3] = _first(_attr(node, "dilations"), 1)
    if op in ("Conv", "ConvTranspose"):
        a[4] = _attr(node, "group", 1)
        a[5] = float(len(node.input) > 2 and node.input[2] != "")
        a[7] = _first(_attr(node, "output_padding"), 0)
    elif op == "Gemm":
        a[5] = float(len(node.input) > 2 and node.input[2] != "")
    elif op == "Pad":
        pads = _attr(node, "pads")
        a[2] = max(pads) if pads else 0
    elif op == "Transpose":
        perm = _attr(node, "perm") or []
        a[6] = float("".join(str(int(p)) for p in perm) or 0)
    return a


def _numel(shape) -> float:
    if shape is None:
        return 0.0
    return float(np.prod([max(int(d), 0) for d in shape], dtype=np.float64)) if len(shape) else 1.0


def _count(node, in_shapes, out_shapes, attrs) -> float:
    """FLOPs of one node (module docstring formulas)."""
    op = node.op_type
    out = out_shapes[0] if out_shapes else None
    n_out = _numel(out)
    if op in ("Conv", "ConvTranspose"):
        w = in_shapes[1] if len(in_shapes) > 1 else None
        if w is None or len(w) < 2:
            return 0.0
        if op == "Conv":
            mul = n_out * w[1] * _numel(w[2:])
        else:  # weight (C_in, C_out/g, k...): every input element meets C_out/g * prod(k)
            mul = _numel(in_shapes[0]) * w[1] * _numel(w[2:])
        return 2.0 * mul + (n_out if attrs[5] else 0.0)
    if op in ("Gemm", "MatMul"):
        a = in_shapes[0] if in_shapes else None
        if a is None or not len(a):
            return 0.0
        k = a[-1]
        if op == "Gemm" and _attr(node, "transA", 0) and len(a) >= 2:
            k = a[-2]
        bias = n_out if (op == "Gemm" and attrs[5]) else 0.0
        return 2.0 * n_out * max(int(k), 0) + bias
    if op == "BatchNormalization":
        return 2.0 * n_out
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return n_out * _numel(_attr(node, "kernel_shape") or [])
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax"):
        return _numel(in_shapes[0]) if in_shapes else 0.0
    if op == "Softmax":
        return 3.0 * n_out
    if op in _ELEMENTWISE:
        return n_out
    return 0.0


def _shape_of(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]


def _warn_impossible_shapes(shapes: dict[str, list[int] | None], name: str) -> None:
    """One warning naming the first tensor with a negative dim or more than
    ``MAX_PLAUSIBLE_ELEMENTS`` elements (e.g. a corrupt file or an absurd batch size)."""
    bad = [(t, d) for t, d in shapes.items()
           if d and (min(d) < 0 or math.prod(d) > MAX_PLAUSIBLE_ELEMENTS)]
    if bad:
        tensor, dims = bad[0]
        warnings.warn(f"{name}: {len(bad)} tensor(s) of physically impossible shape (a negative dim or more than "
                      f"2**48 elements), e.g. {tensor[:60]!r} {dims[:8]}; its features and FLOPs are meaningless",
                      stacklevel=3)


def describe_onnx(model_or_path, batch_size: int = 1, *, name: str | None = None) -> OnnxGraph:
    """Parse an ONNX model (a path or a ``onnx.ModelProto``) into an :class:`OnnxGraph`.

    The first dim of every data input (graph inputs that are not initializers) is set to
    ``batch_size`` before shape inference. Raises FileNotFoundError for a missing file and
    ValueError naming the file for a malformed or cyclic model.
    """
    onnx = _import_onnx()

    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        name = name or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf DecodeError and friends
            raise ValueError(f"{name}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    else:
        model = model_or_path
        name = name or (model.graph.name or "<ModelProto>")
    if not 1 <= int(batch_size) <= MAX_DIM:
        raise ValueError(f"{name}: batch_size must lie in [1, 2**63 - 1] (ONNX dims are int64), got {batch_size}")
    batch_size = int(batch_size)
    graph = model.graph
    if len(graph.node) == 0:
        raise ValueError(f"{name}: malformed ONNX model: the graph has no nodes")

    # Work on a copy: the batch dim is rewritten and shape inference adds value_info.
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    init_names = {t.name for t in g.initializer}
    for inp in g.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch_size
    # Initializer data is not needed and stripped weights may confuse inference: keep dims.
    stripped = onnx.ModelProto()
    stripped.CopyFrom(m)
    for t in stripped.graph.initializer:
        if t.data_type in _FLOAT_TYPES:
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.ClearField("double_data")
            t.ClearField("int32_data")
    # Declared output / intermediate shapes carry the file's batch size: re-infer them.
    del stripped.graph.value_info[:]
    for out in stripped.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "batch"
    declared = {i.name for i in stripped.graph.input}
    for t in stripped.graph.initializer:  # declare every initializer as typed input
        if t.name not in declared and t.data_type in _FLOAT_TYPES:
            stripped.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))

    # --- structure: producers, Constant folding, undefined inputs, cycles
    nodes = list(g.node)
    const_outputs = set()
    producer: dict[str, int] = {}
    kept: list[int] = []
    for i, node in enumerate(nodes):
        if node.op_type == "Constant":
            const_outputs.update(node.output)
            continue
        kept.append(i)
        for o in node.output:
            if not o:
                continue
            if o in producer:
                raise ValueError(f"{name}: malformed ONNX model: tensor {o!r} is produced twice")
            producer[o] = i
    if not kept:
        raise ValueError(f"{name}: malformed ONNX model: only Constant nodes")
    known = {i.name for i in g.input} | init_names | const_outputs | set(producer)
    new_id = {old: k for k, old in enumerate(kept)}
    parents: list[set[int]] = [set() for _ in kept]
    for k, i in enumerate(kept):
        for inp in nodes[i].input:
            if not inp:
                continue
            if inp not in known:
                raise ValueError(f"{name}: malformed ONNX model: node {nodes[i].name or nodes[i].op_type!r} "
                                 f"reads undefined tensor {inp!r}")
            if inp in producer:
                p = new_id[producer[inp]]
                if p == k:
                    raise ValueError(f"{name}: cyclic ONNX graph: node {nodes[i].name!r} reads its own output")
                parents[k].add(p)
    children: list[list[int]] = [[] for _ in kept]
    indeg = np.zeros(len(kept), dtype=np.int64)
    for k, ps in enumerate(parents):
        indeg[k] = len(ps)
        for p in ps:
            children[p].append(k)
    heap = [k for k in range(len(kept)) if indeg[k] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        k = heapq.heappop(heap)
        order.append(k)
        for c in children[k]:
            indeg[c] -= 1
            if indeg[c] == 0:
                heapq.heappush(heap, c)
    if len(order) != len(kept):
        stuck = [nodes[kept[k]].name or nodes[kept[k]].op_type for k in range(len(kept)) if indeg[k] > 0]
        raise ValueError(f"{name}: cyclic ONNX graph: {len(stuck)} nodes on or after a cycle, e.g. {stuck[:5]}")
    topo = np.empty(len(kept), dtype=np.int64)
    topo[np.asarray(order)] = np.arange(len(kept))

    # --- shapes (inference walks the nodes in file order: give it a topological one)
    consts = [nodes[i] for i in range(len(nodes)) if nodes[i].op_type == "Constant"]
    del stripped.graph.node[:]
    stripped.graph.node.extend(consts + [nodes[kept[k]] for k in order])
    try:
        inferred = onnx.shape_inference.infer_shapes(stripped, strict_mode=False)
    except Exception as e:
        raise ValueError(f"{name}: malformed ONNX model: shape inference failed ({type(e).__name__}: {e})") from None
    shapes: dict[str, list[int] | None] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
        shape = _shape_of(vi)
        if shape is not None or vi.name not in shapes:  # a declared-but-shapeless output keeps the inferred one
            shapes[vi.name] = shape
    init_dims = {t.name: list(t.dims) for t in g.initializer}
    float_inits = {t.name for t in g.initializer if t.data_type in _FLOAT_TYPES}
    shapes.update(init_dims)
    for node in nodes:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(a.t.dims)
    _warn_impossible_shapes(shapes, name)

    # --- per node values, in topological order
    n = len(kept)
    op_types = [""] * n
    op_ids = np.full(n, -1, dtype=np.int64)
    attrs = np.zeros((n, NUM_ATTRS), dtype=np.float64)
    out_dims = np.zeros((n, SHAPE_DIMS), dtype=np.int64)
    flops = params = macs = 0.0
    unknown: dict[str, int] = {}
    for k, i in enumerate(kept):
        node, t = nodes[i], topo[k]
        op_types[t] = node.op_type
        op_ids[t] = OP_INDEX.get(node.op_type, -1)
        if op_ids[t] < 0:
            unknown[node.op_type] = unknown.get(node.op_type, 0) + 1
        attrs[t] = _node_attrs(node)
        in_shapes = [shapes.get(x) for x in node.input if x]
        outs = [shapes.get(x) for x in node.output if x]
        first = outs[0] if outs else None
        if first:
            d = [max(int(v), 0) for v in first[:SHAPE_DIMS]]
            out_dims[t, :len(d)] = d
        flops += _count(node, in_shapes, outs, attrs[t])
        params += sum(_numel(shapes.get(x)) for x in node.input if x in float_inits)
        macs += sum(_numel(s) for s in in_shapes) + sum(_numel(s) for s in outs)
    if unknown:
        warnings.warn(f"{name}: {sum(unknown.values())} nodes of op types outside OP_TYPES get a zero "
                      f"one-hot: {dict(sorted(unknown.items()))}", stacklevel=2)
    edges = [(topo[p], topo[k]) for k in range(n) for p in parents[k]]
    edge_index = np.asarray(sorted(edges), dtype=np.int64).reshape(-1, 2).T.copy()
    return OnnxGraph(op_types, op_ids, attrs, out_dims, edge_index, batch_size, flops, params, macs, name)


def load_onnx_graph(path, batch_size: int = 1) -> OnnxGraph:
    """Read an ONNX file into an :class:`OnnxGraph` with ``x`` (N, 192) float32,
    ``edge_index`` (2, E) int64 (src < dst), ``static`` (40,) float32 and ``op_types``.

    Raises FileNotFoundError (missing file) or ValueError naming the file (malformed or
    cyclic model).
    """
    return describe_onnx(path, batch_size)
