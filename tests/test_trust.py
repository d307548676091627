"""Trust families against hand computations and explicit loops: scores, selection, trust, and the
reference code's variants."""

import math

import pytest
import torch
import torch.nn.functional as F

from collab import trust as T


def random_adapters(n=4, seed=0, layers=2, d_in=12, d_out=10, r=3):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(layers):
        out[f"h.{layer}.lora_A"] = torch.randn(n, d_in, r, generator=g)
        out[f"h.{layer}.lora_B"] = torch.randn(n, r, d_out, generator=g)
    return out


class Given:
    """`Measurements` answered from given tensors, so a family's scores can be checked by hand."""

    def __init__(self, num_clients=None, mixture=None, adapters=None, losses=None):
        self._mixture, self._adapters, self._losses = mixture, adapters, losses
        given = [t for t in (mixture, losses, *(adapters or {}).values()) if t is not None]
        self.num_clients = num_clients or given[0].shape[0]

    def mixture(self):
        return self._mixture

    def adapters(self):
        return self._adapters

    def pair_losses(self, pairs=None):
        return self._losses


def family(strategy, **options):
    return T.build_family(T.TrustSettings(strategy=strategy, **options))


# AG News mixed as the reference code splits it: clients (0, 1) share categories 0 and 1, (2, 3) share 2 and 3
AG_NEWS_MIXED = torch.tensor(
    [[0.75, 0.25, 0.0, 0.0], [0.25, 0.75, 0.0, 0.0], [0.0, 0.0, 0.75, 0.25], [0.0, 0.0, 0.25, 0.75]]
)


def test_strategy_names_and_aliases():
    assert T.Strategy.parse("ref") == T.Strategy("dynamic-ref", "")
    assert T.Strategy.parse("dynamic-token-top-k") == T.Strategy("dynamic-token", "top-k")
    assert T.Strategy.parse("dynamic-thresh-ref").name == "dynamic-ref-thresh"  # the reference code's spelling
    assert T.TrustSettings(strategy="fedavg").strategy == "naive"
    assert "static-thresh" not in T.strategy_names() and "dynamic-ref-top-k" in T.strategy_names()
    with pytest.raises(ValueError, match="dynamic-ref"):
        T.Strategy.parse("dynamik")


def test_every_family_is_registered_and_built_from_settings():
    built_in = {"none", "naive", "static", "dynamic", "dynamic-ref", "dynamic-token"}
    assert built_in <= set(T.FAMILIES)  # with any a test registered from a plugin file
    for name in (n for n in T.strategy_names() if T.Strategy.parse(n).base in built_in):
        built = family(name)
        assert built.name == T.Strategy.parse(name).base
        if isinstance(built, T.ScoredTrust):
            assert built.selection.variant == T.Strategy.parse(name).variant


def test_naive_aggregation_makes_all_adapters_identical():
    adapters = random_adapters()
    new = T.aggregate(adapters, T.FedAvg().to_trust(T.FedAvg().scores(Given(4))))
    for name, a in new.items():
        torch.testing.assert_close(a, adapters[name].mean(0, keepdim=True).expand_as(a))


def test_none_aggregation_is_identity():
    adapters = random_adapters()
    for name, a in T.aggregate(adapters, T.Local().to_trust(T.Local().scores(Given(4)))).items():
        torch.testing.assert_close(a, adapters[name])


def test_static_overlap_reproduces_hand_computed_matrix():
    # clients 0,1: 3/4 cat 0 + 1/4 cat 1; client 2: pure cat 1
    P = torch.tensor([[0.75, 0.25], [0.75, 0.25], [0.0, 1.0]])
    # P P^T = [[.625, .625, .25], [.625, .625, .25], [.25, .25, 1]] -> rows normalised
    expected = torch.tensor(
        [
            [0.625 / 1.5, 0.625 / 1.5, 0.25 / 1.5],
            [0.625 / 1.5, 0.625 / 1.5, 0.25 / 1.5],
            [0.25 / 1.5, 0.25 / 1.5, 1 / 1.5],
        ]
    )
    static = T.StaticMixture("overlap")
    torch.testing.assert_close(static.to_trust(static.scores(Given(mixture=P))), expected)
    # the same clients as the reference's AG News mixed: 0.625 self, 0.375 partner
    torch.testing.assert_close(
        static.to_trust(static.scores(Given(mixture=AG_NEWS_MIXED)))[0], torch.tensor([0.625, 0.375, 0.0, 0.0])
    )


def test_static_own_mixture_gives_the_reference_matrices():
    static = T.StaticMixture("own-mixture")
    # the reference's hand-set AG News mixed matrix: 3/4 self, 1/4 partner
    torch.testing.assert_close(static.to_trust(static.scores(Given(mixture=AG_NEWS_MIXED))), AG_NEWS_MIXED)
    # 8 clients, the pairing repeated: the reference tiles its matrix and divides by the repeat,
    # so client 0 gives 3/8 to clients 0 and 4 (category 0) and 1/8 to clients 1 and 5 (category 1)
    trust = static.to_trust(static.scores(Given(mixture=AG_NEWS_MIXED.repeat(2, 1))))
    torch.testing.assert_close(trust[0], torch.tensor([3 / 8, 1 / 8, 0, 0, 3 / 8, 1 / 8, 0, 0]))
    torch.testing.assert_close(trust, AG_NEWS_MIXED.repeat(2, 2) / 2)
    # our ring over 3 categories: client n is 3/4 category n, 1/4 category n+1
    ring = torch.tensor([[0.75, 0.25, 0.0], [0.0, 0.75, 0.25], [0.25, 0.0, 0.75]])
    torch.testing.assert_close(static.to_trust(static.scores(Given(mixture=ring))), ring)


def test_similarity_of_peft_rows_matches_cosine_of_peft_layout_rows():
    adapters = random_adapters(n=3)
    got = T.SIMILARITIES["peft-rows"].score(adapters)
    for i in range(3):
        for j in range(3):
            total, rows = 0.0, 0
            for a in adapters.values():
                sim = F.cosine_similarity(a[i].T, a[j].T)  # PEFT's layout: A [r, d_in], B [d_out, r]
                total += sim.sum().item()
                rows += sim.numel()
            assert got[i, j].item() == pytest.approx(total / rows, abs=1e-6)


def test_similarity_of_reference_rows_matches_the_reference_codes_call():
    adapters = random_adapters(n=3)
    got = T.SIMILARITIES["reference-rows"].score(adapters)
    for i in range(3):
        for j in range(3):
            # the reference: F.cosine_similarity(param1, param2) on A [d_in, r], B [r, d_out], rows pooled
            sims = [F.cosine_similarity(a[i], a[j]) for a in adapters.values()]
            expected = sum(s.sum().item() for s in sims) / sum(s.numel() for s in sims)
            assert got[i, j].item() == pytest.approx(expected, abs=1e-6)


def test_row_similarities_by_hand():
    # one layer, d_in = r = d_out = 2; client 0: A = B = I; client 1: A = [[1, 1], [0, 1]], B = [[1, 0], [1, 0]]
    adapters = {
        "l.lora_A": torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]]),
        "l.lora_B": torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]),
    }
    s = 1 / math.sqrt(2)
    # reference rows: A's rows cos (1,0)~(1,1) = s, (0,1)~(0,1) = 1; B's (1,0)~(1,0) = 1, (0,1)~(1,0) = 0
    reference = T.SIMILARITIES["reference-rows"].score(adapters)
    torch.testing.assert_close(reference, torch.tensor([[1.0, (s + 2) / 4], [(s + 2) / 4, 1.0]]))
    # PEFT rows (our columns): A's (1,0)~(1,0) = 1, (0,1)~(1,1) = s; B's (1,0)~(1,1) = s, (0,1)~(0,0) = 0;
    # client 1's own B column (0,0) is zero, so its self-similarity is 3/4
    peft = T.SIMILARITIES["peft-rows"].score(adapters)
    torch.testing.assert_close(peft, torch.tensor([[1.0, (1 + 2 * s) / 4], [(1 + 2 * s) / 4, 0.75]]))


def test_update_similarity_matches_explicit_products():
    adapters = random_adapters(n=3)
    got = T.SIMILARITIES["update"].score(adapters)
    for i in range(3):
        for j in range(3):
            sims = []
            for layer in range(2):
                ui = (adapters[f"h.{layer}.lora_A"][i] @ adapters[f"h.{layer}.lora_B"][i]).flatten()
                uj = (adapters[f"h.{layer}.lora_A"][j] @ adapters[f"h.{layer}.lora_B"][j]).flatten()
                sims.append(F.cosine_similarity(ui, uj, dim=0).item())
            assert got[i, j].item() == pytest.approx(sum(sims) / 2, abs=1e-6)


@pytest.mark.parametrize("similarity", list(T.SIMILARITIES))
def test_dynamic_of_identical_adapters_is_uniform(similarity):
    one = random_adapters(n=1)
    same = {k: v.expand(5, *v.shape[1:]).clone() for k, v in one.items()}
    dynamic = T.AdapterSimilarity(similarity=similarity)
    torch.testing.assert_close(dynamic.to_trust(dynamic.scores(Given(adapters=same))), torch.full((5, 5), 0.2))


def test_top_k_keeps_exactly_k_weights_per_row():
    scores = torch.randn(6, 6)
    trust = T.Selection("top-k", k=3)(scores)
    kept = trust > 0
    assert torch.equal(kept, torch.zeros_like(kept).scatter_(1, scores.topk(3, dim=1).indices, True))
    torch.testing.assert_close(trust.sum(1), torch.ones(6))


def test_thresh_keeps_scores_above_threshold_and_always_the_best_two():
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.8], [0.1, 0.2, 0.0, 0.3], [0.6, 0.7, 0.9, 0.55]])
    trust = T.Selection("thresh", threshold=0.5)(scores)
    assert torch.equal(
        trust > 0,
        torch.tensor(
            [
                [True, False, False, True],
                [False, True, False, True],  # none > .5: best two kept
                [True, True, True, True],
            ]
        ),
    )
    torch.testing.assert_close(trust[0, [0, 3]], torch.softmax(torch.tensor([0.9, 0.8]), 0))


def test_temperature_divides_the_scores_and_keeps_the_same_peers():
    scores = torch.tensor([[0.9, 0.1, 0.2, 0.8], [0.1, 0.2, 0.0, 0.3]])
    sharp = T.Selection("thresh", threshold=0.5, temperature=0.25)(scores)
    # row 0 keeps 0.9 and 0.8: e^(0.9/0.25) / (e^(0.9/0.25) + e^(0.8/0.25)) = 1 / (1 + e^-0.4)
    assert sharp[0, 0].item() == pytest.approx(1 / (1 + math.exp(-0.4)), rel=1e-6)
    assert torch.equal(sharp > 0, T.Selection("thresh", threshold=0.5)(scores) > 0)
    torch.testing.assert_close(T.Selection(temperature=2.0)(scores), torch.softmax(scores / 2, dim=1))
    square = scores[:, :2]
    torch.testing.assert_close(family("dynamic", temperature=0.25).to_trust(square), torch.softmax(square / 0.25, 1))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        T.TrustSettings(temperature=0.0)


def test_top_k_below_one_is_refused_where_the_strategy_is_built():
    """Bug 10.3: k=0 gave an all-NaN trust matrix that passed through."""
    from collab.aggregation import TrustAggregation

    with pytest.raises(ValueError, match="k must be >= 1"):
        T.TrustSettings(strategy="dynamic-top-k", k=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        T.Selection("top-k", k=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        TrustAggregation(T.TrustSettings(strategy="dynamic-ref-top-k", k=-1))


def test_peer_loss_scores_minus_perplexity_or_minus_loss():
    losses = torch.tensor([[math.log(10.0), math.log(20.0)], [math.log(40.0), math.log(5.0)]])
    by_ppl, by_loss = T.PeerLoss(score="perplexity"), T.PeerLoss(score="loss")
    torch.testing.assert_close(by_ppl.scores(Given(losses=losses)), torch.tensor([[-10.0, -20.0], [-40.0, -5.0]]))
    # softmax of minus the loss weighs peers by 1 / perplexity: row 0 (1/10, 1/20) -> (2/3, 1/3)
    torch.testing.assert_close(
        by_loss.to_trust(by_loss.scores(Given(losses=losses))), torch.tensor([[2 / 3, 1 / 3], [1 / 9, 8 / 9]])
    )
    # level-free: perplexities all 20x higher leave minus-loss trust as it was; minus perplexity's turns one-hot
    shifted = losses + math.log(20.0)
    torch.testing.assert_close(
        by_loss.to_trust(by_loss.scores(Given(losses=shifted))), by_loss.to_trust(by_loss.scores(Given(losses=losses)))
    )
    assert by_ppl.to_trust(by_ppl.scores(Given(losses=shifted)))[0, 0] > 0.999


def test_peer_loss_threshold_follows_the_score():
    assert family("dynamic-ref-thresh").selection.threshold == -30.0
    assert family("dynamic-ref-thresh", ref_score="loss").selection.threshold == pytest.approx(-math.log(30.0))
    assert family("dynamic-ref-thresh", ref_score="loss", threshold=-2.0).selection.threshold == -2.0
    # -ln 30 on the loss keeps exactly the peers -30 keeps on the perplexity
    losses = torch.log(torch.tensor([[5.0, 29.0, 31.0, 60.0, 12.0], [40.0, 8.0, 35.0, 25.0, 90.0]]))
    keep = [
        f.selection.keep(f.scores(Given(losses=losses)))
        for f in (family("dynamic-ref-thresh", ref_score=s) for s in ("perplexity", "loss"))
    ]
    assert torch.equal(keep[0], keep[1])
    assert keep[0].tolist() == [[True, True, False, False, True], [False, True, False, True, False]]


def test_reference_token_distance_by_hand():
    # V = 4, top 2, one position: client 0's logits (3, 1, 2, 0) -> (3, 0, 2, 0); client 1's (0, 5, 1, 4)
    # -> (0, 5, 0, 4)
    measure = T.TopLogits(top_k=2)
    outputs = measure.predict(torch.tensor([[[3.0, 1.0, 2.0, 0.0]], [[0.0, 5.0, 1.0, 4.0]]]))
    torch.testing.assert_close(outputs, torch.tensor([[[3.0, 0.0, 2.0, 0.0]], [[0.0, 5.0, 0.0, 4.0]]]))
    dist = measure.distance_sum(outputs)
    torch.testing.assert_close(dist, torch.tensor([[0.0, 14.0], [14.0, 0.0]], dtype=torch.float64))
    # rows scaled to sum to 10, as the reference scales them
    torch.testing.assert_close(T.token_scores(dist), torch.tensor([[0.0, -10.0], [-10.0, 0.0]]))


def test_top_probability_distance_by_hand_and_on_a_vocabulary_subset():
    # one position, top 2: client 0 (0.5, 0.3, 0.2, 0, 0) ranks tokens {0, 1}; client 1 (.1, .2, .3, .35, .05) {3, 2}
    probs = torch.tensor([[[0.5, 0.3, 0.2, 0.0, 0.0]], [[0.1, 0.2, 0.3, 0.35, 0.05]]])
    dist = T.TopProbabilities(top_k=2).distance_sum(probs)
    # d01 = (|0.1-0.5| + |0.2-0.3|) / 0.8 = 0.625; d10 = (|0-0.35| + |0.2-0.3|) / 0.65
    torch.testing.assert_close(dist, torch.tensor([[0.0, 0.625], [0.45 / 0.65, 0.0]], dtype=torch.float64))
    # a federated client may send only the tokens some client ranks top (not token 4): the same distances
    torch.testing.assert_close(T.TopProbabilities(top_k=2).distance_sum(probs[..., :4]), dist)


def test_token_threshold_and_top_k_follow_the_distance():
    ours, reference = family("dynamic-token-thresh"), family("dynamic-token-thresh", token_distance="reference-logits")
    assert (ours.selection.threshold, ours.measure.top_k, ours.measure.num_batches) == (-2.5, 10, None)
    assert (reference.selection.threshold, reference.measure.top_k, reference.measure.num_batches) == (-50.0, 100, 4)
    assert family("dynamic-token", token_distance="reference-logits", token_top_k=7).measure == T.TopLogits(7)
    # token scores lie in [-10, 0]: the reference's -50 keeps every peer
    scores = T.token_scores(torch.rand(5, 5))
    assert reference.selection.keep(scores).all()


def test_nonfinite_clients_are_excluded_and_reset():
    adapters = random_adapters(n=4)
    adapters["h.0.lora_A"][2, 0, 0] = float("nan")
    healthy = T.finite_clients(adapters)
    assert healthy.tolist() == [True, True, False, True]
    trust = T.FedAvg().to_trust(torch.ones(4, 4), healthy)
    torch.testing.assert_close(trust, torch.full((4, 4), 1 / 3) * healthy)
    for a in T.aggregate(adapters, trust, healthy).values():
        assert a.isfinite().all()
    # a client whose model scores NaN on a healthy client's data is left out too; its row restarts from the others
    scores = torch.randn(4, 4)
    scores[0, 1] = float("nan")
    assert T.usable_clients(scores, healthy).tolist() == [True, False, False, True]
    trust = family("dynamic-ref").to_trust(scores, healthy)
    assert (trust[:, 1:3] == 0).all() and torch.equal(trust[1], torch.tensor([0.5, 0.0, 0.0, 0.5]))
    torch.testing.assert_close(trust.sum(1), torch.ones(4))
    # a broken client's token distances leave the other clients' scores as they would be without it
    dist = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 2.0], [float("nan")] * 3])
    dist[:, 2] = float("nan")
    scores = T.token_scores(dist)
    torch.testing.assert_close(scores[:2, :2], torch.tensor([[0.0, -10.0], [-10.0, 0.0]]))
    assert T.usable_clients(scores).tolist() == [True, True, False]
    with pytest.raises(FloatingPointError, match="every client"):
        T.exclude_nonfinite(T.FedAvg().to_trust(torch.ones(2, 2)), torch.tensor([False, False]))


def test_trust_quality():
    P = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    static = T.StaticMixture()
    perfect = T.trust_quality(static.to_trust(static.scores(Given(mixture=P))), P)
    assert perfect["same_category"] == pytest.approx(1.0) and perfect["static_corr"] == pytest.approx(1.0)
    naive = T.trust_quality(T.FedAvg().to_trust(torch.ones(4, 4)), P)
    assert naive["same_category"] == pytest.approx(0.5) and naive["static_corr"] is None


def test_collapse_names_local_training_and_plain_averaging():
    assert T.collapse(torch.eye(3)) == "self"
    assert T.collapse(torch.full((3, 3), 1 / 3)) == "uniform"
    assert T.collapse(torch.tensor([[0.36, 0.32, 0.32], [0.32, 0.36, 0.32], [0.32, 0.32, 0.36]])) == "uniform"
    assert T.collapse(torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])) is None


def test_rounds_say_a_collapse_that_lasts():
    """Three rounds in a row one-hot on self (or every round of a shorter run): said, with what changes
    it; a collapse now and then is not; fixed strategies never are."""
    adapters = random_adapters(n=3)
    far = torch.tensor([[1.0, 9.0, 9.0], [9.0, 1.0, 9.0], [9.0, 9.0, 1.0]])  # minus perplexity: one-hot
    near = torch.tensor([[1.0, 1.1, 5.0], [1.1, 1.0, 5.0], [5.0, 1.1, 1.0]])
    rounds = T.TrustRounds(T.TrustSettings(strategy="dynamic-ref"), 3)
    for step, losses in enumerate((far, near, far, far), start=1):
        rounds.run(step, Given(mixture=torch.eye(3), adapters=adapters, losses=losses))
        assert rounds.warnings() == []
    assert [r["collapse"] for r in rounds.history] == ["self", None, "self", "self"]
    rounds.run(5, Given(mixture=torch.eye(3), adapters=adapters, losses=far))
    (said,) = rounds.warnings()
    assert "steps 1-5" in said
    assert "one-hot on itself" in said and "--trust_temperature" in said and "--ref_score loss" in said
    short = T.TrustRounds(T.TrustSettings(strategy="dynamic-ref"), 3)
    for step in (1, 2):
        short.run(step, Given(mixture=torch.eye(3), adapters=adapters, losses=far))
    assert len(short.warnings()) == 1
    local = T.TrustRounds(T.TrustSettings(strategy="none"), 3)
    for step in (1, 2, 3):
        local.run(step, Given(mixture=torch.eye(3), adapters=adapters))
    assert local.warnings() == [] and local.history[-1]["collapse"] is None


def test_a_round_averages_with_its_trust_and_records_it():
    adapters = random_adapters(n=3)
    rounds = T.TrustRounds(T.TrustSettings(strategy="naive"), 5)
    outcome = rounds.run(4, Given(mixture=torch.eye(3), adapters=adapters), clients=[0, 2, 4])
    for name, a in outcome.adapters.items():
        torch.testing.assert_close(a, adapters[name].mean(0, keepdim=True).expand_as(a))
    assert outcome.record["clients"] == [0, 2, 4] and outcome.record["step"] == 4
    assert rounds.prior[[0, 2, 4]][:, [0, 2, 4]].allclose(torch.full((3, 3), 1 / 3))
    assert rounds.prior[1].sum() == 0  # a client not in the round has no trust yet
