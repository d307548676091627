"""Bounded-cost trust scoring (`--trust_peers m`): which pairs are scored, that scored pairs measure
what full scoring measures (against per-client loops and closed forms), that unscored peers get no
weight, and that m >= N-1 is full scoring."""

import copy

import pytest
import torch
from run_adapter import run_client
from synthetic import VOCAB, SyntheticClients

from collab import evaluation
from collab import trust as T
from collab.config import MemoryConfig, OptimConfig
from collab.metrics import ClientMetrics
from collab.module import CollabLoRAModule
from lora_gpt import GPT, ClientSlice, GPTConfig, LoRAConfig
from lora_gpt.cross_entropy import token_cross_entropy
from lora_gpt.errors import ConfigError

N = 6


def scoring_module(num_clients=N, chunk=4):
    torch.manual_seed(0)
    lora = LoRAConfig(rank=4, alpha=8, dropout=0.1, targets=("attn.c_attn", "mlp.c_fc"), kernel="torch", init_seed=1)
    module = CollabLoRAModule(
        base=GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=VOCAB)),
        lora=lora,
        optim=OptimConfig(),
        num_clients=num_clients,
        memory=MemoryConfig(client_chunk=chunk),
    )
    with torch.no_grad():
        for p in module.adapters().values():
            p.normal_(0, 0.2)
    return module.train()  # the scorers must switch dropout off themselves


def settings(strategy="dynamic-ref", **options):
    return T.TrustSettings(strategy=strategy, **options)


def test_options_are_checked_with_clear_errors():
    with pytest.raises(ConfigError, match="--trust_peers must be >= 0"):
        settings(peers=-1)
    with pytest.raises(ConfigError, match="--trust_explore must be >= 0"):
        settings(peers=4, explore=-1)
    with pytest.raises(ConfigError, match="--trust_explore 5 exceeds --trust_peers 4"):
        settings(peers=4, explore=5)
    with pytest.raises(ConfigError, match="dynamic scores no pairs"):
        settings("dynamic", peers=4)
    with pytest.raises(ConfigError, match="--k 6 exceeds the 5 clients"):
        settings("dynamic-ref-top-k", peers=4, k=6)
    assert settings(peers=4, explore=4).sampling() == T.PeerSampling(4, 4)


def test_candidates_are_self_the_best_of_the_prior_and_random_others():
    n, m, e = 10, 5, 2
    prior = torch.rand(n, n, generator=torch.Generator().manual_seed(3))
    chosen = T.PeerSampling(m, e).choose(prior, (0, 7))
    assert chosen.dtype == torch.bool and chosen.diagonal().all()
    assert (chosen.sum(1) == m + 1).all()
    for i in range(n):
        others = [j for j in range(n) if j != i]
        best = sorted(others, key=lambda j: -prior[i, j].item())[: m - e]
        assert chosen[i, best].all()
    assert torch.equal(T.PeerSampling(m, e).choose(prior, (0, 7)), chosen)  # a function of (prior, seed)
    draws = {tuple(T.PeerSampling(m, e).choose(prior, (0, step)).flatten().tolist()) for step in range(8)}
    assert len(draws) > 1  # the random peers change from one aggregation to the next
    greedy = T.PeerSampling(m, 0).choose(prior, (0, 7))
    for i in range(n):
        top = (prior[i] - 10 * torch.eye(n)[i]).topk(m).indices
        assert set(greedy[i].nonzero().flatten().tolist()) == {i, *top.tolist()}


@pytest.mark.parametrize("m", [0, N - 1, N + 3])
def test_m_of_n_minus_one_or_more_or_zero_is_every_pair(m):
    assert T.PeerSampling(m).choose(torch.rand(N, N), (0, 1)) is None
    family = T.build_family(settings(peers=m, explore=0))
    assert family.candidates(None, scoring_module().adapters(), (0, 1)) is None


def test_bounded_peer_losses_equal_per_client_loops_at_the_scored_pairs():
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    family = T.build_family(settings(peers=2, explore=1, ref_score="loss"))
    pairs = family.candidates(None, module.adapters(), (0, 4))
    assert pairs is not None and (pairs.sum(1) == 3).all()
    scores = family.scores(T.BatchedMeasurements(module, dm), pairs)
    assert module.training
    assert scores[~pairs].isnan().all() and scores[pairs].isfinite().all()
    single = copy.deepcopy(module.model).eval()
    for i, j in pairs.nonzero().tolist():
        losses = [token_cross_entropy(run_client(single, b[i, :, :-1], j), b[i, :, 1:]) for b in dm.trust_batches()]
        assert -scores[i, j].item() == pytest.approx(torch.cat(losses).mean().item(), rel=1e-5)


def test_pair_losses_of_every_pair_are_the_full_rows():
    """Every pair through `pair_losses` == each client's data under every adapter (`mean_losses`)."""
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    batches = dm.trust_batches()
    rows = torch.stack([evaluation.mean_losses(module.model, N, [b[i] for b in batches], chunk=5) for i in range(N)])
    torch.testing.assert_close(evaluation.pair_losses(module.model, batches, None, chunk=4), rows, atol=1e-6, rtol=0)


@pytest.mark.parametrize("measure", [T.TopProbabilities(top_k=5), T.TopLogits(top_k=5)])
def test_bounded_token_scores_are_full_distances_scaled_from_the_scored_peers(measure, monkeypatch):
    monkeypatch.setattr(evaluation, "LOGIT_ELEMENTS", 3 * N * VOCAB)  # blocks of 3 positions
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    full = T.TokenAgreement(measure=measure)
    bounded = T.TokenAgreement(measure=measure, sampling=T.PeerSampling(3, 1))
    pairs = bounded.candidates(torch.rand(N, N), module.adapters(), (1, 2))
    measured = T.BatchedMeasurements(module, dm, chunk=4)
    distances = -full.scores(measured)  # rows scaled to sum to 10: distances up to a factor per row
    got = bounded.scores(measured, pairs)
    assert got[~pairs].isnan().all()
    # closed form: each row divided by N times the mean of its scored distances, times 10
    counted = distances * pairs
    expected = -10 * distances / (counted.sum(1, keepdim=True) * N / pairs.sum(1, keepdim=True))
    torch.testing.assert_close(got[pairs], expected[pairs], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("strategy", ["dynamic-ref", "dynamic-token"])
def test_bounded_aggregation_weighs_only_scored_peers(strategy):
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    m = 2
    rounds = T.TrustRounds(settings(strategy, peers=m, explore=1), N, seed=3)
    for step in (2, 4):  # the second round ranks candidates by the first round's trust
        prior = None if rounds.prior is None else rounds.prior.clone()
        outcome = rounds.run(step, T.BatchedMeasurements(module, dm))
        module.replace_adapters(outcome.adapters, reset=~outcome.usable)
        record = outcome.record
        trust = torch.tensor(record["trust"])
        torch.testing.assert_close(trust.sum(1), torch.ones(N))
        assert ((trust > 0).sum(1) <= m + 1).all() and record["scored"] == N * (m + 1)
        scored = ~torch.tensor(record["scores"]).isnan()
        assert (trust[~scored] == 0).all()
        if prior is not None:  # the best peer of the previous round is scored again (m - explore = 1)
            best = (prior - 2 * torch.eye(N)).argmax(1)
            assert scored[torch.arange(N), best].all()


@pytest.mark.parametrize("strategy", ["dynamic-ref", "dynamic-token"])
def test_m_of_n_minus_one_aggregates_as_full_scoring(strategy):
    records = []
    for peers in (0, N - 1):
        module, dm = scoring_module(), SyntheticClients(num_clients=N)
        rounds = T.TrustRounds(settings(strategy, peers=peers), N, seed=3)
        records.append(rounds.run(2, T.BatchedMeasurements(module, dm)).record)
    assert records[0]["trust"] == records[1]["trust"] and "scored" not in records[1]


def test_token_scores_with_scored_pairs_by_hand():
    d = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 2.0], [1.0, 1.0, 0.0]])
    scored = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])
    got = T.token_scores(d, scored)
    # row 0: scored mean (0 + 1) / 2, times 3 clients = 1.5; row 1 (all): 4; row 2: 1.5
    expected = torch.tensor([[0.0, -10 / 1.5, float("nan")], [-5.0, 0.0, -5.0], [float("nan"), -10 / 1.5, 0.0]])
    torch.testing.assert_close(got, expected, equal_nan=True)
    torch.testing.assert_close(T.token_scores(d, torch.ones(3, 3, dtype=torch.bool)), T.token_scores(d))


def test_unscored_pairs_do_not_make_a_client_unusable_but_scored_nonfinite_ones_do():
    scores = torch.tensor([[0.0, float("nan"), -1.0], [-1.0, 0.0, float("nan")], [-2.0, -1.0, 0.0]])
    scored = torch.tensor([[True, False, True], [True, True, False], [True, True, True]])
    assert T.usable_clients(scores, scored=scored).all()
    assert T.usable_clients(scores).tolist() == [True, False, False]
    family = T.build_family(settings(peers=1, explore=0))
    trust = family.to_trust(scores, scored=scored)
    assert (trust[~scored] == 0).all()
    torch.testing.assert_close(trust[0, [0, 2]], torch.softmax(torch.tensor([0.0, -1.0]), 0))


def test_client_metrics_are_token_weighted_means_per_client():
    metrics = ClientMetrics(4)
    losses = torch.tensor([[[1.0, 2.0]], [[3.0, 5.0]]])  # clients 1 and 2, one sequence of 2 tokens
    metrics.update(ClientSlice(1, 3), losses, torch.tensor([[[True, False]], [[True, True]]]))
    metrics.update(ClientSlice(2, 3), torch.tensor([[[7.0, 7.0, 7.0, 7.0]]]), torch.zeros(1, 1, 4, dtype=torch.bool))
    got = metrics.compute()
    torch.testing.assert_close(got["loss"][1:3], torch.tensor([1.5, (3 + 5 + 4 * 7) / 6]))
    torch.testing.assert_close(got["ppl"][1:3], got["loss"][1:3].exp())
    torch.testing.assert_close(got["acc"][1:3], torch.tensor([0.5, 2 / 6]))
    assert got["loss"][0].isnan()  # a client never updated has no metric
