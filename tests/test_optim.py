"""FlatAdamW against its oracle, torch.optim.AdamW(fused=True): the same parameters and state bit
for bit, state dicts that load into each other, and the per-parameter step where the buffers
cannot serve."""
import copy
import io

import pytest
import torch
from torch import nn

from nnformer_fast import NNFormerLatency
from nnformer_fast.train import optim
from nnformer_fast.train.optim import FlatAdamW, decays, make_optimizer

LR, WD = 1e-2, 0.05


def _model():
    torch.manual_seed(0)
    return NNFormerLatency(dim=32, n_layers=1, n_head=4)


def _torch_adamw(model):
    named = list(model.named_parameters())
    return torch.optim.AdamW([{"params": [p for n, p in named if decays(n, p)], "weight_decay": WD},
                              {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}],
                             lr=LR, fused=True)


def _set_grads(model, seed, missing=()):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        p.grad = None if name in missing else torch.randn(p.shape, generator=g)


def _assert_same(a, b):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name


def _assert_same_state(sa, sb):
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i, state in sa["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][i][key])), (i, key)


def _roundtrip(state_dict):
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_make_optimizer_groups_and_kind():
    model = _model()
    opt = make_optimizer(model, lr=LR, weight_decay=WD)
    assert isinstance(opt, FlatAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [WD, 0.0]
    assert decay and all(not n.endswith((".bias", ".scale")) for n in decay)
    assert "gnn_layers.0.layer_scale.scale" in no_decay and "embedding.bias" in no_decay
    assert "embedding.weight" in decay and len(decay) + len(no_decay) == len(names)


def test_small_parameters_become_views_of_one_buffer_per_group(flat_max_numel):
    model = _model()
    before = copy.deepcopy(model.state_dict())
    opt = make_optimizer(model, lr=LR, weight_decay=WD)
    for group, layout in zip(opt.param_groups, opt._layouts):
        small = [p for p in group["params"] if p.numel() <= flat_max_numel]
        assert [id(p) for p in layout.small] == [id(p) for p in small]
        storages = {p.untyped_storage().data_ptr() for p in group["params"]}
        assert len(storages) == len(group["params"]) - len(small) + bool(small)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # loading weights copies into the views, which stay views of the buffers
    model.load_state_dict(before)
    for layout in opt._layouts:
        if layout.small:
            assert {p.untyped_storage().data_ptr() for p in layout.small} == {layout.params.untyped_storage().data_ptr()}


@pytest.fixture(params=["all small", "mixed", "all large"])
def flat_max_numel(request, monkeypatch):
    """Every parameter of the test model in the buffers, those of up to 1,000 elements
    (biases, norms; the weights keep their own tensors), or none."""
    limit = {"all small": optim.FLAT_MAX_NUMEL, "mixed": 1000, "all large": 0}[request.param]
    monkeypatch.setattr(optim, "FLAT_MAX_NUMEL", limit)
    return limit


def test_the_test_model_has_small_and_large_parameters():
    sizes = [p.numel() for p in _model().parameters()]
    assert max(sizes) <= optim.FLAT_MAX_NUMEL and min(sizes) <= 1000 < max(sizes)


def test_steps_bit_identical_to_torch_fused_adamw(flat_max_numel):
    a, b = _model(), _model()
    ta, fb = _torch_adamw(a), make_optimizer(b, lr=LR, weight_decay=WD)
    for step in range(6):
        for opt in (ta, fb):
            opt.param_groups[0]["lr"] = LR * (1 + step) / 6  # as the warm-up schedule changes it
        _set_grads(a, step)
        _set_grads(b, step)
        ta.step()
        fb.step()
        _assert_same(a, b)
    assert fb._steps_even
    _assert_same_state(ta.state_dict(), fb.state_dict())


def test_a_parameter_without_gradient_takes_the_per_parameter_step(flat_max_numel):
    """Its step count falls behind the others', so the group stays on torch's step, still
    bit-identical to the oracle."""
    a, b = _model(), _model()
    ta, fb = _torch_adamw(a), make_optimizer(b, lr=LR, weight_decay=WD)
    for step in range(5):
        missing = ("predictor.3.bias",) if step == 1 else ()
        _set_grads(a, step, missing)
        _set_grads(b, step, missing)
        ta.step()
        fb.step()
        _assert_same(a, b)
    assert not fb._steps_even
    _assert_same_state(ta.state_dict(), fb.state_dict())


def test_grad_scaler_attributes_take_torchs_step():
    a, b = _model(), _model()
    ta, fb = _torch_adamw(a), make_optimizer(b, lr=LR, weight_decay=WD)
    for opt in (ta, fb):
        opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(0.0)
    _set_grads(a, 0)
    _set_grads(b, 0)
    ta.step()
    fb.step()
    _assert_same(a, b)


@pytest.mark.parametrize("direction", ["flat to torch", "torch to flat"])
def test_state_dicts_load_into_each_other(direction, flat_max_numel):
    """A checkpoint of either optimizer resumes in the other (saved and loaded as fit does),
    bit-identical to the run that never stopped."""
    ref, src, dst = _model(), _model(), _model()
    make_src, make_dst = ((lambda m: make_optimizer(m, lr=LR, weight_decay=WD)), _torch_adamw)
    if direction == "torch to flat":
        make_src, make_dst = make_dst, make_src
    o_ref, o_src = _torch_adamw(ref), make_src(src)
    for step in range(3):
        for m, o in ((ref, o_ref), (src, o_src)):
            _set_grads(m, step)
            o.step()
    dst.load_state_dict(_roundtrip(src.state_dict()))
    o_dst = make_dst(dst)
    o_dst.load_state_dict(_roundtrip(o_src.state_dict()))
    for step in range(3, 6):
        for m, o in ((ref, o_ref), (dst, o_dst)):
            _set_grads(m, step)
            o.step()
        _assert_same(ref, dst)
    _assert_same_state(o_ref.state_dict(), o_dst.state_dict())


def test_loaded_state_lands_in_the_buffers():
    model = _model()
    opt = make_optimizer(model, lr=LR, weight_decay=WD)
    _set_grads(model, 0)
    opt.step()
    saved = _roundtrip(opt.state_dict())
    fresh = make_optimizer(_model(), lr=LR, weight_decay=WD)
    fresh.load_state_dict(saved)
    for group, layout in zip(fresh.param_groups, fresh._layouts):
        p = layout.small[0]
        assert fresh.state[p]["exp_avg"].untyped_storage().data_ptr() == layout.exp_avg.untyped_storage().data_ptr()
        assert layout.exp_avg.abs().sum() > 0 and bool((layout.steps == 1).all())


def test_zero_grad():
    model = _model()
    opt = make_optimizer(model, lr=LR, weight_decay=WD)
    _set_grads(model, 0)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_a_group_of_mixed_dtypes_is_refused():
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    with pytest.raises(ValueError, match="share dtype and device"):
        FlatAdamW(params)
