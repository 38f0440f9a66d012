"""Randomised generators of real CNN families, NNLQP style (random widths, depths, kernel
sizes and input resolutions around each family's published design).

Every generator is ``fn(rng, tiny=False) -> onnx.ModelProto`` (random float32 weights, batch
dim symbolic). ``tiny=True`` draws the smallest variants (for tests). Resolutions are kept
small (32-128) so measuring a network takes milliseconds.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .onnx_net import Net, TooManyFlops, flop_cap, make_divisible

__all__ = ["FAMILIES", "generate"]


def _res(rng, tiny, choices=(32, 48, 64, 80, 96, 112, 128)):
    return 32 if tiny else int(rng.choice(choices))


def _classes(rng, tiny):
    return 10 if tiny else int(rng.choice([10, 100, 1000]))


def resnet(rng: np.random.Generator, tiny: bool = False):
    bottleneck = bool(rng.random() < 0.5)
    if tiny:
        depths = [1, 1]
    else:
        n_stages = int(rng.choice([3, 4], p=[0.25, 0.75]))
        big = rng.random() < 0.3  # ResNet-101/152-like stage 3
        depths = [int(rng.integers(1, 4)) for _ in range(n_stages)]
        depths[min(2, n_stages - 1)] = int(rng.integers(6, 37 if bottleneck else 24)) if big else int(rng.integers(1, 7))
    base = 8 if tiny else int(rng.choice([16, 24, 32, 48, 64]))
    net = Net("resnet", 3, _res(rng, tiny), rng)
    stem_k = int(rng.choice([3, 5, 7]))
    x = net.conv_bn_act(net.input, base, stem_k, stride=1 if tiny else int(rng.choice([1, 2])))
    if not tiny and rng.random() < 0.6:
        x = net.maxpool(x)
    c = base
    for s, d in enumerate(depths):
        width = base * 2 ** s
        for b in range(d):
            stride = 2 if (b == 0 and s > 0) else 1
            out_c = width * (4 if bottleneck else 1)
            if bottleneck:
                y = net.conv_bn_act(x, width, 1)
                y = net.conv_bn_act(y, width, 3, stride)
                y = net.bn(net.conv(y, out_c, 1))
            else:
                y = net.conv_bn_act(x, width, 3, stride)
                y = net.bn(net.conv(y, out_c, 3))
            sc = x if (stride == 1 and c == out_c) else net.bn(net.conv(x, out_c, 1, stride, pad=0))
            x = net.act(net.add(y, sc))
            c = out_c
    x = net.flatten(net.gap(x))
    return net.model(net.classifier(x, (), _classes(rng, tiny)))


def vgg(rng, tiny=False):
    net = Net("vgg", 3, _res(rng, tiny), rng)
    depths = [1, 1] if tiny else [int(rng.integers(1, 5)) for _ in range(5)]
    base = 8 if tiny else int(rng.choice([16, 32, 48, 64]))
    use_bn = bool(rng.random() < 0.5)
    k = 3 if tiny else int(rng.choice([3, 3, 5]))
    x = net.input
    for s, d in enumerate(depths):
        for _ in range(d):
            x = net.conv_bn_act(x, min(base * 2 ** s, 512), k, bn=use_bn)
        if net.shape(x)[1] >= 2:
            x = net.maxpool(x, 2, 2, 0)
    x = net.flatten(x)
    hidden = () if tiny else tuple([int(rng.choice([256, 512, 1024]))] * int(rng.integers(1, 3)))
    return net.model(net.classifier(x, hidden, _classes(rng, tiny)))


def _mbconv(net, x, cout, k, stride, expand, act="relu6", se_ratio=0.0, se_gate="sigmoid", se_inner="relu",
            se_on_expanded=True):
    c = net.shape(x)[0]
    hidden = make_divisible(c * expand) if expand != 1 else c
    y = x
    if expand != 1:
        y = net.conv_bn_act(y, hidden, 1, act=act)
    y = net.conv_bn_act(y, hidden, k, stride, groups=hidden, act=act)
    if se_ratio > 0:
        base = hidden if not se_on_expanded else c
        y = net.se(y, make_divisible(base * se_ratio, 8), se_gate, se_inner)
    y = net.bn(net.conv(y, cout, 1, pad=0))
    if stride == 1 and c == cout:
        y = net.add(y, x)
    return y


def _mobile_body(net, rng, tiny, stages, act, se_prob, se_gate, se_inner, kernels, expands, width, se_ratio=0.25):
    x = net.conv_bn_act(net.input, make_divisible(16 * width), 3, 1 if tiny else 2, act=act)
    for (c, n, s) in stages:
        cout = make_divisible(c * width)
        k = int(rng.choice(kernels))
        e = int(rng.choice(expands))
        use_se = rng.random() < se_prob
        for i in range(n):
            x = _mbconv(net, x, cout, k, s if i == 0 else 1, e, act, se_ratio if use_se else 0.0, se_gate, se_inner)
    return x


def _stage_table(rng, tiny, table, depth_mult=1.0):
    if tiny:
        return [(c, 1, s) for (c, _, s) in table[:3]]
    return [(c, max(1, int(round(n * depth_mult * rng.uniform(0.6, 1.4)))), s) for (c, n, s) in table]


_MBV2 = [(16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)]


def mobilenetv2(rng, tiny=False):
    net = Net("mobilenetv2", 3, _res(rng, tiny), rng)
    width = 0.35 if tiny else float(rng.choice([0.35, 0.5, 0.75, 1.0, 1.4]))
    x = _mobile_body(net, rng, tiny, _stage_table(rng, tiny, _MBV2), "relu6", 0.0, "", "", [3] if tiny else [3, 3, 5, 7],
                     [1] if tiny else [3, 4, 6], width)
    x = net.conv_bn_act(x, make_divisible(1280 * max(1.0, width)) if not tiny else 32, 1, act="relu6")
    x = net.flatten(net.gap(x))
    return net.model(net.classifier(x, (), _classes(rng, tiny)))


_MBV3 = [(16, 1, 1), (24, 2, 2), (40, 3, 2), (80, 4, 2), (112, 2, 1), (160, 3, 2)]


def mobilenetv3(rng, tiny=False):
    net = Net("mobilenetv3", 3, _res(rng, tiny), rng)
    width = 0.5 if tiny else float(rng.choice([0.5, 0.75, 1.0, 1.25]))
    stages = _stage_table(rng, tiny, _MBV3)
    x = net.conv_bn_act(net.input, make_divisible(16 * width), 3, 1 if tiny else 2, act="hswish")
    for si, (c, n, s) in enumerate(stages):
        act = "relu" if si < 2 else "hswish"
        k = int(rng.choice([3, 5])) if not tiny else 3
        e = int(rng.choice([3, 4, 6])) if not tiny else 3
        use_se = tiny or rng.random() < 0.6
        for i in range(n):
            x = _mbconv(net, x, make_divisible(c * width), k, s if i == 0 else 1, e, act, 0.25 if use_se else 0.0,
                        "hsigmoid", "relu", se_on_expanded=False)
    x = net.conv_bn_act(x, make_divisible(6 * 160 * width) if not tiny else 32, 1, act="hswish")
    x = net.flatten(net.gap(x))
    return net.model(net.classifier(x, (int(rng.choice([1024, 1280])) if not tiny else 32,), _classes(rng, tiny),
                                    act="hswish"))


_MNAS = [(16, 1, 1), (24, 2, 2), (40, 3, 2), (80, 4, 2), (112, 2, 1), (160, 3, 2), (320, 1, 1)]


def mnasnet(rng, tiny=False):
    net = Net("mnasnet", 3, _res(rng, tiny), rng)
    width = 0.5 if tiny else float(rng.choice([0.5, 0.75, 1.0, 1.3]))
    x = _mobile_body(net, rng, tiny, _stage_table(rng, tiny, _MNAS), "relu", 0.0 if tiny else 0.4, "sigmoid", "relu",
                     [3] if tiny else [3, 5], [3] if tiny else [3, 6], width)
    x = net.conv_bn_act(x, 1280 if not tiny else 32, 1)
    x = net.flatten(net.gap(x))
    return net.model(net.classifier(x, (), _classes(rng, tiny)))


_EFF = [(16, 1, 1, 3, 1), (24, 2, 2, 3, 6), (40, 2, 2, 5, 6), (80, 3, 2, 3, 6), (112, 3, 1, 5, 6),
        (192, 4, 2, 5, 6), (320, 1, 1, 3, 6)]


def efficientnet(rng, tiny=False):
    net = Net("efficientnet", 3, _res(rng, tiny), rng)
    width = 0.5 if tiny else float(rng.choice([0.5, 0.75, 1.0, 1.1, 1.2]))
    depth = 0.3 if tiny else float(rng.choice([0.6, 1.0, 1.2, 1.4, 1.8, 2.2, 2.6, 3.1]))
    x = net.conv_bn_act(net.input, make_divisible(32 * width), 3, 1 if tiny else 2, act="swish")
    table = _EFF[:3] if tiny else _EFF
    for (c, n, s, k, e) in table:
        reps = max(1, int(np.ceil(n * depth))) if not tiny else 1
        if not tiny:
            k = int(rng.choice([k, k, 3, 5]))
        for i in range(reps):
            x = _mbconv(net, x, make_divisible(c * width), k, s if i == 0 else 1, e, "swish", 0.25, "sigmoid",
                        "swish", se_on_expanded=False)
    x = net.conv_bn_act(x, make_divisible(1280 * width) if not tiny else 32, 1, act="swish")
    x = net.flatten(net.gap(x))
    return net.model(net.classifier(x, (), _classes(rng, tiny)))


def squeezenet(rng, tiny=False):
    net = Net("squeezenet", 3, _res(rng, tiny), rng)
    base = 8 if tiny else int(rng.choice([8, 16, 24, 32]))
    n_fire = 2 if tiny else int(rng.integers(4, 11))
    pool_after = set() if tiny else set(rng.choice(np.arange(n_fire), size=min(2, n_fire), replace=False).tolist())
    x = net.conv_bn_act(net.input, base * 4 if not tiny else 16, 3 if tiny else int(rng.choice([3, 7])),
                        1 if tiny else 2, bn=False)
    x = net.maxpool(x, 3, 2, 1)
    k3 = 3
    for i in range(n_fire):
        sq = base * (1 + i // 2)
        s = net.conv_bn_act(x, sq, 1, bn=False)
        e1 = net.conv_bn_act(s, sq * 4, 1, bn=False)
        e3 = net.conv_bn_act(s, sq * 4, k3, bn=False)
        x = net.concat([e1, e3])
        if i in pool_after and net.shape(x)[1] >= 4:
            x = net.maxpool(x, 3, 2, 1)
    x = net.conv_bn_act(x, _classes(rng, tiny), 1, bn=False)
    return net.model(net.flatten(net.gap(x)))


def googlenet(rng, tiny=False):
    net = Net("googlenet", 3, _res(rng, tiny), rng)
    use_bn = bool(rng.random() < 0.7)
    base = 8 if tiny else int(rng.choice([16, 32, 48, 64]))
    x = net.conv_bn_act(net.input, base, 3 if tiny else int(rng.choice([3, 5, 7])), 1 if tiny else 2, bn=use_bn)
    if not tiny:
        x = net.maxpool(x)
        x = net.conv_bn_act(x, base * 3, 3, bn=use_bn)
    stages = [1] if tiny else [int(rng.integers(1, 3)), int(rng.integers(2, 6)), int(rng.integers(1, 3))]
    for si, n in enumerate(stages):
        for _ in range(n):
            w = base * (si + 1)
            b1 = net.conv_bn_act(x, w, 1, bn=use_bn)
            b2 = net.conv_bn_act(net.conv_bn_act(x, w, 1, bn=use_bn), w * 2, 3, bn=use_bn)
            k5 = 3 if tiny else int(rng.choice([3, 5]))
            b3 = net.conv_bn_act(net.conv_bn_act(x, max(8, w // 2), 1, bn=use_bn), w // 2 if w >= 16 else 8, k5, bn=use_bn)
            b4 = net.conv_bn_act(net.maxpool(x, 3, 1, 1), w // 2 if w >= 16 else 8, 1, bn=use_bn)
            x = net.concat([b1, b2, b3, b4])
        if si < len(stages) - 1 and net.shape(x)[1] >= 4:
            x = net.maxpool(x, 3, 2, 1)
    x = net.flatten(net.gap(x))
    return net.model(net.classifier(x, (), _classes(rng, tiny)))


def alexnet(rng, tiny=False):
    res = 32 if tiny else int(rng.choice([64, 80, 96, 112, 128]))
    net = Net("alexnet", 3, res, rng)
    base = 16 if tiny else int(rng.choice([32, 48, 64, 96]))
    k1 = 3 if tiny else int(rng.choice([5, 7, 11]))
    x = net.conv_bn_act(net.input, base, k1, 1 if tiny else int(rng.choice([2, 4])), bn=False)
    x = net.maxpool(x, 3, 2, 0) if net.shape(x)[1] >= 7 else x
    x = net.conv_bn_act(x, base * 3, 5 if not tiny else 3, bn=False)
    x = net.maxpool(x, 3, 2, 0) if net.shape(x)[1] >= 7 else x
    for c in (base * 6, base * 4, base * 4):
        x = net.conv_bn_act(x, c, 3, bn=False)
    x = net.maxpool(x, 3, 2, 0) if net.shape(x)[1] >= 7 else x
    x = net.flatten(x)
    h = 64 if tiny else int(rng.choice([512, 1024, 2048]))
    return net.model(net.classifier(x, (h, h), _classes(rng, tiny)))


_NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# the 6 edges (from, to) of the NAS-Bench-201 cell in arch-string order
_NB201_EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


def nb201_random_ops(rng) -> list[str]:
    """6 edge ops (arch-string order) of a random NAS-Bench-201 cell whose output is live."""
    while True:
        ops = [str(o) for o in rng.choice(_NB201_OPS, size=6)]
        live = [True, False, False, False]
        for (a, b), op in zip(_NB201_EDGES, ops):
            if op != "none" and live[a]:
                live[b] = True
        if live[3]:
            return ops


def _nb201_cell(net, x, ops):
    c = net.shape(x)[0]
    nodes = [x, None, None, None]
    for j in (1, 2, 3):
        terms = []
        for (a, b), op in zip(_NB201_EDGES, ops):
            if b != j or op == "none" or nodes[a] is None:
                continue
            t = nodes[a]
            if op == "nor_conv_1x1":
                t = net.bn(net.conv(net.act(t), c, 1, pad=0))
            elif op == "nor_conv_3x3":
                t = net.bn(net.conv(net.act(t), c, 3))
            elif op == "avg_pool_3x3":
                t = net.avgpool(t, 3, 1, 1)
            terms.append(t)
        if terms:
            y = terms[0]
            for t in terms[1:]:
                y = net.add(y, t)
            nodes[j] = y
    return nodes[3]


def nasbench201(rng, tiny=False, ops: list[str] | None = None):
    """The NAS-Bench-201 network (stem, 3 stages of N cells, 2 residual reductions) with a
    random cell (or ``ops``), random C and N."""
    ops = ops or nb201_random_ops(rng)
    c = 8 if tiny else int(rng.choice([8, 16, 24, 32]))
    n = 1 if tiny else int(rng.integers(1, 6))
    net = Net("nasbench201", 3, 32 if tiny else int(rng.choice([32, 32, 48, 64])), rng)
    x = net.bn(net.conv(net.input, c, 3))
    for s in range(3):
        if s > 0:
            c *= 2
            y = net.bn(net.conv(net.act(x), c, 3, 2))
            y = net.bn(net.conv(net.act(y), c, 3))
            sc = net.conv(net.avgpool(x, 2, 2, 0), c, 1, pad=0)
            x = net.add(y, sc)
        for _ in range(n):
            x = _nb201_cell(net, x, ops)
    x = net.flatten(net.gap(net.act(net.bn(x))))
    return net.model(net.classifier(x, (), _classes(rng, tiny)))


FAMILIES: dict[str, Callable] = {
    "resnet": resnet,
    "vgg": vgg,
    "mobilenetv2": mobilenetv2,
    "mobilenetv3": mobilenetv3,
    "mnasnet": mnasnet,
    "efficientnet": efficientnet,
    "squeezenet": squeezenet,
    "googlenet": googlenet,
    "alexnet": alexnet,
    "nasbench201": nasbench201,
}


#: default cap on the Conv/Gemm FLOPs of one image, so measuring stays fast on one thread
MAX_GFLOPS = 0.3


def model_flops(model) -> float:
    """FLOPs per image recorded by :class:`Net` in the model's metadata (0 if absent)."""
    for p in model.metadata_props:
        if p.key == "flops_per_image":
            return float(p.value)
    return 0.0


def generate(family: str, rng: np.random.Generator, tiny: bool = False, max_gflops: float | None = MAX_GFLOPS):
    """One random network of ``family`` as an ``onnx.ModelProto`` with random weights.

    Draws again (from the same ``rng``, so the result stays deterministic) while the
    network needs more than ``max_gflops`` GFLOPs per image (None: no cap; after 100 draws
    the cheapest one is kept)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if max_gflops is None:
        return FAMILIES[family](rng, tiny)
    token = flop_cap.set(max_gflops * 1e9)
    try:
        for _ in range(200):
            try:
                return FAMILIES[family](rng, tiny)
            except TooManyFlops:
                continue
    finally:
        flop_cap.reset(token)
    return FAMILIES[family](rng, True)  # a tiny variant always fits
