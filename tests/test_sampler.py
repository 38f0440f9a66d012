"""Token-budget bucketing samplers: budget, coverage, determinism, position, distribution."""
import numpy as np
import pytest

from nnformer_fast.train.sampler import DistributedTokenBudgetBatchSampler, TokenBudgetBatchSampler, pack_sorted


@pytest.fixture
def sizes():
    return np.random.default_rng(0).integers(3, 200, 500)


def test_budget_and_coverage(sizes):
    s = TokenBudgetBatchSampler(sizes, 1000, seed=1)
    batches = list(s)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(sizes)))
    for b in batches:
        assert sizes[b].sum() <= 1000 or len(b) == 1
    assert len(batches) == len(s)


def test_oversize_graph_alone_and_max_graphs():
    sizes = np.array([5, 5000, 5, 5, 5, 5])
    s = TokenBudgetBatchSampler(sizes, 100, max_graphs=2, shuffle=False)
    batches = list(s)
    assert [1] in batches
    assert all(len(b) <= 2 for b in batches)
    np.testing.assert_array_equal(pack_sorted(np.array([3, 3, 3, 10]), 6), [0, 2, 3, 4])


def test_similar_sizes_little_padding(sizes):
    st = TokenBudgetBatchSampler(sizes, 1000, seed=0).stats()
    assert st["padding"] < 0.15, st  # random batching pads ~50 % here
    assert st["fill"] > 0.8, st


def test_deterministic_per_seed_and_epoch(sizes):
    a = TokenBudgetBatchSampler(sizes, 800, seed=3)
    b = TokenBudgetBatchSampler(sizes, 800, seed=3)
    assert list(a) == list(b)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0
    c = TokenBudgetBatchSampler(sizes, 800, seed=4)
    assert list(c) != e0


def test_position_resume(sizes):
    a = TokenBudgetBatchSampler(sizes, 800, seed=3)
    a.set_epoch(2)
    full = list(a)
    it = iter(a)
    first = [next(it) for _ in range(5)]
    state = a.state_dict()
    assert state["epoch"] == 2 and state["position"] == 5
    b = TokenBudgetBatchSampler(sizes, 800, seed=3)
    b.load_state_dict(state)
    assert first + list(b) == full
    assert b.state_dict(consumed=3)["position"] == 3
    with pytest.raises(ValueError, match="seed"):
        TokenBudgetBatchSampler(sizes, 800, seed=9).load_state_dict(state)


def test_distributed_split(sizes):
    glob = TokenBudgetBatchSampler(sizes, 1200, seed=5)
    ranks = [DistributedTokenBudgetBatchSampler(sizes, 1200, num_replicas=2, rank=r, seed=5) for r in range(2)]
    g, r0, r1 = list(glob), list(ranks[0]), list(ranks[1])
    assert len(g) == len(r0) == len(r1)
    for gb, a, b in zip(g, r0, r1):
        if len(gb) >= 2:
            assert sorted(a + b) == sorted(gb)
            assert abs(sizes[a].sum() - sizes[b].sum()) <= sizes[gb].max()
        assert len(a) >= 1 and len(b) >= 1


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        TokenBudgetBatchSampler([], 100)
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        TokenBudgetBatchSampler([3, 0], 100)
    with pytest.raises(ValueError, match="rank"):
        DistributedTokenBudgetBatchSampler([3], 100, num_replicas=2, rank=2)


def test_state_refuses_another_max_graphs(sizes):
    """max_graphs changes the batches: a position saved under one cap is refused under another
    (states saved before max_graphs was recorded still load)."""
    a = TokenBudgetBatchSampler(sizes, 1000, seed=3, max_graphs=4)
    it = iter(a)
    [next(it) for _ in range(3)]
    state = a.state_dict(consumed=3)
    with pytest.raises(ValueError, match="max_graphs=4, this sampler has max_graphs=None"):
        TokenBudgetBatchSampler(sizes, 1000, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="max_graphs=None, this sampler has max_graphs=4"):
        a.load_state_dict(TokenBudgetBatchSampler(sizes, 1000, seed=3).state_dict())
    b = TokenBudgetBatchSampler(sizes, 1000, seed=3, max_graphs=4)
    b.load_state_dict(state)
    a.set_epoch(0)
    a.position = 0
    assert list(b) == list(a)[3:]
    old = {k: v for k, v in state.items() if k != "max_graphs"}
    TokenBudgetBatchSampler(sizes, 1000, seed=3).load_state_dict(old)
