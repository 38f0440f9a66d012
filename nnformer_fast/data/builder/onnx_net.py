"""A small network builder on top of ``onnx.helper``: layers that track shapes and add
random float32 weights, so the families in :mod:`.families` read like model code.

Tensors are NCHW with a symbolic batch dim ``batch``; ``Net.shape(t)`` is the (C, H, W) or
(F,) shape of a tensor without the batch dim. Conv layers are exported unfused (Conv,
BatchNormalization, activation), as PyTorch's exporter writes them in training-mode-free
eval graphs before any optimisation.
"""
from __future__ import annotations

import contextvars
import math

import numpy as np

__all__ = ["Net", "make_divisible", "strip_weights", "OPSET", "IR_VERSION", "TooManyFlops", "flop_cap"]

#: FLOPs-per-image cap checked by ``Net.model`` before any weight is drawn (None: no cap)
flop_cap: contextvars.ContextVar = contextvars.ContextVar("flop_cap", default=None)


class TooManyFlops(Exception):
    """Raised by ``Net.model`` when the network exceeds ``flop_cap``."""

OPSET = 13
IR_VERSION = 8


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (MobileNet rule: never below 90%)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


class Net:
    """Builds one ONNX graph. ``x = net.input`` then layer calls return output tensor names."""

    def __init__(self, name: str, channels: int, resolution: int, rng: np.random.Generator):
        self.name, self.rng = name, rng
        self.nodes, self.inits, self._shapes = [], [], {}
        self._count = 0
        self.flops = 0.0  # per image: 2 * multiply-adds of Conv and Gemm
        self.input = "input"
        self._shapes[self.input] = (channels, resolution, resolution)

    # ------------------------------------------------------------------ plumbing
    def shape(self, t: str) -> tuple:
        return self._shapes[t]

    def _new(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def _node(self, op: str, inputs, shape, **attrs) -> str:
        from onnx import helper

        out = self._new(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out + "_n", **attrs))
        self._shapes[out] = tuple(int(s) for s in shape)
        return out

    def _weight(self, shape, scale: float | None = None) -> str:

        name = self._new("w")
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = scale if scale is not None else 1.0 / math.sqrt(max(fan_in, 1))
        self.inits.append((name, tuple(shape), scale))  # drawn in model(), after the FLOPs check
        return name

    def _const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self._new("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    # ------------------------------------------------------------------ layers
    def conv(self, x: str, cout: int, k: int = 3, stride: int = 1, groups: int = 1, bias: bool = False,
             pad: int | None = None, dilation: int = 1) -> str:
        c, h, w = self.shape(x)
        pad = (dilation * (k - 1)) // 2 if pad is None else pad
        if c % groups or cout % groups:
            raise ValueError(f"conv: channels {c}->{cout} not divisible by groups {groups}")
        inputs = [x, self._weight((cout, c // groups, k, k))]
        if bias:
            inputs.append(self._weight((cout,), 0.01))
        ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"conv: input {h}x{w} too small for kernel {k} stride {stride}")
        self.flops += 2.0 * cout * ho * wo * (c // groups) * k * k
        return self._node("Conv", inputs, (cout, ho, wo), kernel_shape=[k, k], strides=[stride, stride],
                          pads=[pad] * 4, dilations=[dilation, dilation], group=groups)

    def bn(self, x: str) -> str:
        c = self.shape(x)[0]
        ins = [x, self._const(1.0 + 0.1 * self.rng.standard_normal(c)), self._const(0.1 * self.rng.standard_normal(c)),
               self._const(0.1 * self.rng.standard_normal(c)), self._const(1.0 + 0.1 * self.rng.random(c))]
        return self._node("BatchNormalization", ins, self.shape(x), epsilon=1e-5)

    def act(self, x: str, kind: str = "relu") -> str:
        s = self.shape(x)
        if kind == "relu":
            return self._node("Relu", [x], s)
        if kind == "relu6":
            return self._node("Clip", [x, self._const(0.0), self._const(6.0)], s)
        if kind == "sigmoid":
            return self._node("Sigmoid", [x], s)
        if kind == "hsigmoid":
            return self._node("HardSigmoid", [x], s, alpha=1.0 / 6, beta=0.5)
        if kind == "hswish":
            return self._node("Mul", [x, self._node("HardSigmoid", [x], s, alpha=1.0 / 6, beta=0.5)], s)
        if kind == "swish":
            return self._node("Mul", [x, self._node("Sigmoid", [x], s)], s)
        if kind == "none":
            return x
        raise ValueError(f"unknown activation {kind!r}")

    def conv_bn_act(self, x, cout, k=3, stride=1, groups=1, act="relu", bn=True, bias=False):
        y = self.conv(x, cout, k, stride, groups, bias=bias or not bn)
        if bn:
            y = self.bn(y)
        return self.act(y, act)

    def add(self, a: str, b: str) -> str:
        return self._node("Add", [a, b], self.shape(a))

    def mul(self, a: str, b: str) -> str:
        sa, sb = self.shape(a), self.shape(b)
        return self._node("Mul", [a, b], sa if np.prod(sa) >= np.prod(sb) else sb)

    def _pool_out(self, h, k, s, p, ceil=False):
        r = (h + 2 * p - k) / s
        return int(math.ceil(r) if ceil else math.floor(r)) + 1

    def maxpool(self, x: str, k: int = 3, stride: int = 2, pad: int = 1) -> str:
        c, h, w = self.shape(x)
        return self._node("MaxPool", [x], (c, self._pool_out(h, k, stride, pad), self._pool_out(w, k, stride, pad)),
                          kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def avgpool(self, x: str, k: int = 3, stride: int = 1, pad: int = 1) -> str:
        c, h, w = self.shape(x)
        return self._node("AveragePool", [x], (c, self._pool_out(h, k, stride, pad), self._pool_out(w, k, stride, pad)),
                          kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, count_include_pad=0)

    def gap(self, x: str) -> str:
        return self._node("GlobalAveragePool", [x], (self.shape(x)[0], 1, 1))

    def flatten(self, x: str) -> str:
        return self._node("Flatten", [x], (int(np.prod(self.shape(x))),), axis=1)

    def gemm(self, x: str, out: int) -> str:
        f = self.shape(x)[0]
        self.flops += 2.0 * f * out
        return self._node("Gemm", [x, self._weight((out, f)), self._weight((out,), 0.01)], (out,), transB=1)

    def concat(self, xs) -> str:
        s = self.shape(xs[0])
        return self._node("Concat", xs, (sum(self.shape(t)[0] for t in xs),) + tuple(s[1:]), axis=1)

    def se(self, x: str, reduced: int, gate: str = "sigmoid", inner: str = "relu") -> str:
        """Squeeze-and-excitation: GAP -> 1x1 conv -> act -> 1x1 conv -> gate -> Mul."""
        c = self.shape(x)[0]
        s = self.gap(x)
        s = self.act(self.conv(s, max(1, reduced), 1, bias=True, pad=0), inner)
        s = self.act(self.conv(s, c, 1, bias=True, pad=0), gate)
        return self.mul(x, s)

    def classifier(self, x: str, hidden=(), classes: int = 1000, act: str = "relu") -> str:
        for h in hidden:
            x = self.act(self.gemm(x, h), act)
        return self.gemm(x, classes)

    # ------------------------------------------------------------------ export
    def model(self, output: str):
        """The ``onnx.ModelProto`` with random weights, batch dim symbolic."""
        from onnx import TensorProto, helper, numpy_helper

        cap = flop_cap.get()
        if cap is not None and self.flops > cap:
            raise TooManyFlops(self.flops)
        inits = []
        for t in self.inits:
            if isinstance(t, tuple):
                name, shape, scale = t
                arr = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
                t = numpy_helper.from_array(arr, name)
            inits.append(t)
        c, h, w = self.shape(self.input)
        inp = helper.make_tensor_value_info(self.input, TensorProto.FLOAT, ["batch", c, h, w])
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch"] + list(self.shape(output)))
        graph = helper.make_graph(self.nodes, self.name, [inp], [out], initializer=inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nnformer_fast")
        m.ir_version = IR_VERSION
        helper.set_model_props(m, {"flops_per_image": str(self.flops)})
        return m


def strip_weights(model):
    """A copy without weight data: float initializers with more than one element keep their
    name, type and dims (as NNLQP's ``*_noweight.onnx`` files do); scalars stay."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) > 1:
            t.ClearField("raw_data")
            t.ClearField("float_data")
    return m


def with_random_weights(model, rng: np.random.Generator):
    """Refill the stripped float initializers of ``model`` with random data (for measuring
    files written by :func:`strip_weights`)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and not t.raw_data and not t.float_data:
            arr = (rng.standard_normal(tuple(t.dims)) * 0.05).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return m
