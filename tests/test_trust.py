"""Trust strategies against hand computations and explicit loops."""
import pytest
import torch
import torch.nn.functional as F

from collab import trust as T
from collab.aggregation import aggregate


def random_adapters(n=4, seed=0, layers=2, d_in=12, d_out=10, r=3):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(layers):
        out[f"h.{layer}.lora_A"] = torch.randn(n, d_in, r, generator=g)
        out[f"h.{layer}.lora_B"] = torch.randn(n, r, d_out, generator=g)
    return out


def test_strategy_names_and_aliases():
    assert T.Strategy.parse("ref") == T.Strategy("dynamic-ref", "")
    assert T.Strategy.parse("dynamic-token-top-k") == T.Strategy("dynamic-token", "top-k")
    assert T.Strategy.parse("dynamic-thresh").name == "dynamic-thresh"
    with pytest.raises(ValueError, match="dynamic-ref"):
        T.Strategy.parse("dynamik")


def test_naive_aggregation_makes_all_adapters_identical():
    adapters = random_adapters()
    new = aggregate(adapters, T.uniform_trust(4))
    for name, a in new.items():
        torch.testing.assert_close(a, adapters[name].mean(0, keepdim=True).expand_as(a))


def test_none_aggregation_is_identity():
    adapters = random_adapters()
    for name, a in aggregate(adapters, T.identity_trust(4)).items():
        torch.testing.assert_close(a, adapters[name])


def test_static_reproduces_hand_computed_matrix():
    # clients 0,1: 3/4 cat 0 + 1/4 cat 1; client 2: pure cat 1
    P = torch.tensor([[0.75, 0.25], [0.75, 0.25], [0.0, 1.0]])
    # P P^T = [[.625, .625, .25], [.625, .625, .25], [.25, .25, 1]] -> rows normalised
    expected = torch.tensor([[0.625 / 1.5, 0.625 / 1.5, 0.25 / 1.5],
                             [0.625 / 1.5, 0.625 / 1.5, 0.25 / 1.5],
                             [0.25 / 1.5, 0.25 / 1.5, 1 / 1.5]])
    torch.testing.assert_close(T.static_trust(P), expected)


def test_weight_similarity_matches_paper_formula():
    adapters = random_adapters(n=3)
    got = T.adapter_similarity(adapters, "weights")
    # the paper: F.cosine_similarity row-wise on PEFT-layout matrices, pooled over all rows
    for i in range(3):
        for j in range(3):
            total, rows = 0.0, 0
            for name, a in adapters.items():
                wi, wj = a[i].T, a[j].T  # A: [r, d_in], B: [d_out, r]
                sim = F.cosine_similarity(wi, wj)
                total += sim.sum().item()
                rows += sim.numel()
            assert got[i, j].item() == pytest.approx(total / rows, abs=1e-6)


def test_update_similarity_matches_explicit_products():
    adapters = random_adapters(n=3)
    got = T.adapter_similarity(adapters, "update")
    for i in range(3):
        for j in range(3):
            sims = []
            for layer in range(2):
                ui = (adapters[f"h.{layer}.lora_A"][i] @ adapters[f"h.{layer}.lora_B"][i]).flatten()
                uj = (adapters[f"h.{layer}.lora_A"][j] @ adapters[f"h.{layer}.lora_B"][j]).flatten()
                sims.append(F.cosine_similarity(ui, uj, dim=0).item())
            assert got[i, j].item() == pytest.approx(sum(sims) / 2, abs=1e-6)


@pytest.mark.parametrize("measure", ["weights", "update"])
def test_dynamic_of_identical_adapters_is_uniform(measure):
    one = random_adapters(n=1)
    same = {k: v.expand(5, *v.shape[1:]).clone() for k, v in one.items()}
    trust = T.trust_from_scores(T.adapter_similarity(same, measure))
    torch.testing.assert_close(trust, torch.full((5, 5), 0.2))


def test_top_k_keeps_exactly_k_weights_per_row():
    scores = torch.randn(6, 6)
    trust = T.trust_from_scores(scores, "top-k", k=3)
    assert ((trust > 0).sum(1) == 3).all()
    kept = trust > 0
    assert torch.equal(kept, torch.zeros_like(kept).scatter_(1, scores.topk(3, dim=1).indices, True))
    torch.testing.assert_close(trust.sum(1), torch.ones(6))


def test_thresh_keeps_scores_above_threshold_and_always_the_best_two():
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.8], [0.1, 0.2, 0.0, 0.3], [0.6, 0.7, 0.9, 0.55]])
    trust = T.trust_from_scores(scores, "thresh", threshold=0.5)
    assert torch.equal(trust > 0, torch.tensor([[True, False, False, True],
                                                [False, True, False, True],  # none > .5: best two kept
                                                [True, True, True, True]]))
    expected_row0 = torch.softmax(torch.tensor([0.9, 0.8]), 0)
    torch.testing.assert_close(trust[0, [0, 3]], expected_row0)


def test_nonfinite_clients_are_excluded_and_reset():
    adapters = random_adapters(n=4)
    adapters["h.0.lora_A"][2, 0, 0] = float("nan")
    from collab.aggregation import finite_clients

    healthy = finite_clients(adapters)
    assert healthy.tolist() == [True, True, False, True]
    trust = T.exclude_nonfinite(T.uniform_trust(4), healthy)
    assert (trust[:, 2] == 0).all()
    torch.testing.assert_close(trust.sum(1), torch.ones(4))
    clean = {k: torch.where(healthy.view(-1, 1, 1), v, torch.zeros_like(v)) for k, v in adapters.items()}
    for a in aggregate(clean, trust).values():
        assert a.isfinite().all()
    with pytest.raises(FloatingPointError, match="every client"):
        T.exclude_nonfinite(T.uniform_trust(2), torch.tensor([False, False]))


def test_trust_quality():
    P = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    perfect = T.trust_quality(T.static_trust(P), P)
    assert perfect["same_category"] == pytest.approx(1.0) and perfect["static_corr"] == pytest.approx(1.0)
    naive = T.trust_quality(T.uniform_trust(4), P)
    assert naive["same_category"] == pytest.approx(0.5) and naive["static_corr"] is None


def test_top_k_below_one_is_refused_where_the_strategy_is_built():
    """Bug 10.3: k=0 gave an all-NaN trust matrix that passed through."""
    from collab.aggregation import TrustAggregation

    with pytest.raises(ValueError, match="k must be >= 1"):
        TrustAggregation("dynamic-top-k", k=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        T.trust_from_scores(torch.randn(3, 3), "top-k", k=0)
