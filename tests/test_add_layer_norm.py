"""add_layer_norm (residual add + LayerNorm) on every backend that runs it, against the float64
composition of addcmul and layer_norm; its gradients, determinism and input checks."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from nnformer_fast.ops import add_layer_norm
from nnformer_fast.ops.backends import ENV_VAR, _REGISTRY

BACKENDS = [name for name, b in _REGISTRY.items() if b.load_error is None and "add_layer_norm" in b.ops]
LOW = (torch.bfloat16, torch.float16)
# row widths: whole 16-lane blocks (128: one 8-vector block), a partial tail (72), none whole (8)
WIDTHS = (128, 72, 8)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv(ENV_VAR, request.param)
    return request.param


def _skip_unsupported(backend, *tensors):
    reasons = _REGISTRY[backend].reasons("add_layer_norm", *tensors)
    if reasons:
        pytest.skip(f"{backend} cannot run add_layer_norm: {'; '.join(reasons)}")


def _inputs(n, d, low, x_dtype, residual, seed=0):
    """x (n, d) in x_dtype; y (n, d) in low; scale, weight, bias (d,) in float32 (float64 for
    float64 low), scale and weight away from 0; all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    acc = torch.float64 if low == torch.float64 else torch.float32

    def make(*shape, dtype=acc, shift=0.0):
        return (torch.randn(*shape, generator=gen) + shift).to(dtype).requires_grad_()

    x = make(n, d, dtype=x_dtype, shift=0.3)  # a row mean away from 0
    y, scale = (make(n, d, dtype=low), make(d, shift=2.0)) if residual else (None, None)
    return x, y, scale, make(d, shift=2.0), make(d)


def _oracle(x, y, scale, weight, bias, eps):
    s = x.double() if y is None else x.double() + y.double() * scale.double()
    return s, F.layer_norm(s, s.shape[-1:], weight.double(), bias.double(), eps)


def _cases():
    """(low, x dtype, out dtype, residual): x, y and out each in the low dtype or float32
    (float64 for float64 low)."""
    for low in (torch.float32, torch.float64, *LOW):
        acc = torch.float64 if low == torch.float64 else torch.float32
        for x_dtype, out_dtype, residual in itertools.product(*[dict.fromkeys((low, acc))] * 2, (True, False)):
            yield low, x_dtype, out_dtype, residual


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("low, x_dtype, out_dtype, residual", list(_cases()), ids=str)
def test_matches_float64_oracle(backend, width, low, x_dtype, out_dtype, residual):
    x, y, scale, weight, bias = _inputs(37, width, low, x_dtype, residual)
    _skip_unsupported(backend, x, *((y, scale) if residual else ()))
    s, out = add_layer_norm(x, y, scale, weight, bias, eps=1e-5, out_dtype=out_dtype)
    assert out.dtype == out_dtype and s.dtype == (torch.promote_types(x_dtype, scale.dtype) if residual else x_dtype)
    s64, out64 = _oracle(x, y, scale, weight, bias, 1e-5)
    rounded = 2.0 ** -7 if out_dtype in LOW else 1e-5  # bf16 keeps 8 significant bits
    torch.testing.assert_close(s.double(), s64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.double(), out64, rtol=rounded, atol=rounded * 4)

    inputs = [t for t in (x, y, scale, weight, bias) if t is not None]
    gen = torch.Generator().manual_seed(1)
    dout, ds = (torch.randn(37, width, generator=gen) for _ in range(2))
    loss = (out * dout.to(out.dtype)).sum() + ((s * ds.to(s.dtype)).sum() if residual else 0)
    grads = torch.autograd.grad(loss, inputs)
    exact = [t.detach().double().requires_grad_() for t in inputs]
    s64, out64 = _oracle(*exact[:1], *(exact[1:3] if residual else (None, None)), *exact[-2:], 1e-5)
    loss64 = (out64 * dout.to(out_dtype).double()).sum() + ((s64 * ds.to(s.dtype).double()).sum() if residual else 0)
    for name, ours, want in zip(("x", "y", "scale", "weight", "bias") if residual else ("x", "weight", "bias"),
                                grads, torch.autograd.grad(loss64, exact)):
        assert ours.dtype == dict(zip(("x", "y", "scale", "weight", "bias"), (x, y, scale, weight, bias)))[name].dtype
        tol = 2.0 ** -6 if ours.dtype in LOW or out_dtype in LOW else 1e-5
        torch.testing.assert_close(ours.double(), want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()),
                                   msg=lambda m: f"d{name}: {m}")


def test_gradcheck_float64(backend):
    for residual in (True, False):
        inputs = [t for t in _inputs(6, 20, torch.float64, torch.float64, residual) if t is not None]
        _skip_unsupported(backend, *inputs[:3 if residual else 1])

        def f(*args):
            x, *rest = args
            y, scale = rest[:2] if residual else (None, None)
            return add_layer_norm(x, y, scale, *rest[-2:], eps=1e-5)

        assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.skipif("native" not in BACKENDS, reason="native extension not loaded")
def test_native_bits_do_not_depend_on_the_thread_count(monkeypatch):
    """The weight, bias and scale gradients are sums over rows: fixed blocks, then block order."""
    monkeypatch.setenv(ENV_VAR, "native")
    x, y, scale, weight, bias = _inputs(3000, 72, torch.bfloat16, torch.float32, True)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            s, out = add_layer_norm(x, y, scale, weight, bias, out_dtype=torch.bfloat16)
            loss = out.float().square().sum() + s.sum()
            runs.append([s, out, *torch.autograd.grad(loss, (x, y, scale, weight, bias))])
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.mark.skipif("native" not in BACKENDS, reason="native extension not loaded")
def test_native_op_passes_opcheck():
    x, y, scale, weight, bias = (t.detach() for t in _inputs(9, 24, torch.bfloat16, torch.float32, True))
    ops = torch.ops.nnformer_fast
    for args in ((x.requires_grad_(), y.requires_grad_(), scale.requires_grad_(), weight.requires_grad_(),
                  bias.requires_grad_(), 1e-5, torch.bfloat16),
                 (x, None, None, weight, bias, 1e-5, torch.float32),
                 (x.detach().bfloat16().requires_grad_(), None, None, weight, bias, 1e-5, torch.bfloat16)):
        torch.library.opcheck(ops.add_layer_norm_fwd, args)


@pytest.mark.parametrize("call, error, message", [
    (lambda x, y, s, w, b: add_layer_norm(x, y, None, w, b), ValueError, "pass y and scale together"),
    (lambda x, y, s, w, b: add_layer_norm(x[0], None, None, w, b), ValueError, "x must be (N, D)"),
    (lambda x, y, s, w, b: add_layer_norm(x, y[:, :4], s, w, b), ValueError, "y must have the shape of x"),
    (lambda x, y, s, w, b: add_layer_norm(x, y, s, w[:3], b), ValueError, "weight must have shape (8,)"),
    (lambda x, y, s, w, b: add_layer_norm(x, y, s, w, b.long()), TypeError, "bias must be float16/bfloat16"),
    (lambda x, y, s, w, b: add_layer_norm(x, y, s, w, b, eps=-1.0), ValueError, "eps must be a finite number"),
    (lambda x, y, s, w, b: add_layer_norm(x, y, s, w, b, eps=float("nan")), ValueError, "eps must be a finite"),
    (lambda x, y, s, w, b: add_layer_norm(x, y, s, w, b, out_dtype=torch.int32), TypeError, "out_dtype must be"),
    (lambda x, y, s, w, b: add_layer_norm(x, y, s, w, b.to("meta")), ValueError, "bias is on meta but x is on cpu"),
])
def test_bad_inputs_raise(call, error, message):
    x, y, scale, weight, bias = _inputs(5, 8, torch.float32, torch.float32, True)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(x, y, scale, weight, bias)


@pytest.mark.skipif("native" not in BACKENDS, reason="native extension not loaded")
def test_native_op_checks_its_dtypes():
    ops = torch.ops.nnformer_fast
    x, y, scale, weight, bias = (t.detach() for t in _inputs(5, 8, torch.bfloat16, torch.float32, True))
    with pytest.raises(RuntimeError, match="scale must be a contiguous \\(8,\\) Float"):
        ops.add_layer_norm_fwd(x, y, scale.double(), weight, bias, 1e-5, torch.float32)
    with pytest.raises(RuntimeError, match="x must be BFloat16 or Float, got Half"):
        ops.add_layer_norm_fwd(x.half(), y, scale, weight, bias, 1e-5, torch.float32)
    with pytest.raises(RuntimeError, match="x must be BFloat16 or Float, got Half"):
        ops.add_layer_norm_fwd(x.half(), None, None, weight, bias, 1e-5, torch.bfloat16)
    with pytest.raises(RuntimeError, match="s must be BFloat16, got Float"):  # without y, s is x
        ops.add_layer_norm_bwd(None, x.bfloat16(), x.float(), None, None, weight, weight, weight, torch.bfloat16)
    with pytest.raises(RuntimeError, match="y must be a contiguous"):
        ops.add_layer_norm_fwd(x, y.t().contiguous().t(), scale, weight, bias, 1e-5, torch.float32)


def test_forcing_a_backend_without_the_op_chooses_automatically(monkeypatch):
    """NNFORMER_FAST_BACKEND forces the ops its backend implements (Triton: not add_layer_norm,
    which then takes the automatic choice, so the models run under any forced backend); an op
    it implements but cannot run still raises."""
    from nnformer_fast.ops.backends import Backend, select

    monkeypatch.setitem(_REGISTRY, "partial", Backend("partial", ops={"bigin": None},
                                                       unsupported=lambda op, *tensors: ["never runs"]))
    monkeypatch.setenv(ENV_VAR, "partial")
    x = torch.randn(4, 8)
    assert select("add_layer_norm", x).name == ("native" if "native" in BACKENDS else "torch")
    with pytest.raises(RuntimeError, match="'partial' cannot run bigin"):
        select("bigin", x)
