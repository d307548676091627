"""The families that choose rows by the client's own held-out loss (`learned`, `apfl`) and FedFomo's
rule: the measurement they add against a hand-built average scored in plain PyTorch, FedFomo's
weights against their closed form, the choice of the best candidate, and both runtimes alike."""

import copy

import pytest
import torch
from run_adapter import run_client
from synthetic import SyntheticClients
from test_bounded_trust import N, scoring_module
from test_flower import argv, assert_same_run, flower_run, in_process, inputs  # noqa: F401 (a fixture)

from collab import fit
from collab import trust as T
from collab.trust.adaptive import best_rows, fedfomo_rows, peer_loss_rows
from collab.trust.protocols import batches_of
from lora_gpt import lora_parameters
from lora_gpt.cross_entropy import token_cross_entropy


@pytest.mark.parametrize("part", [None, (1, 2)])
def test_mixture_losses_are_hand_built_averages_scored_on_each_clients_own_data(part):
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    before = {k: v.detach().clone() for k, v in module.adapters().items()}
    rows = torch.rand(2, N, N, generator=torch.Generator().manual_seed(5))
    rows = rows / rows.sum(-1, keepdim=True)
    got = T.BatchedMeasurements(module, dm, chunk=4).mixture_losses(rows, part)
    batches = dm.trust_batches() if part is None else dm.trust_batches()[part[0] :: part[1]]
    assert got.shape == (2, N)
    for name, value in module.adapters().items():  # the clients' own adapters are back in place
        assert torch.equal(value, before[name])
    for k in range(2):
        for i in range(N):
            single = copy.deepcopy(module.model).eval()
            with torch.no_grad():  # client i's slot holds sum_j rows[k, i, j] * adapter_j, by hand
                for name, p in lora_parameters(single).items():
                    p[i] = sum(rows[k, i, j] * before[name][j] for j in range(N))
            losses = [token_cross_entropy(run_client(single, b[i, :, :-1], i), b[i, :, 1:]) for b in batches]
            assert got[k, i].item() == pytest.approx(torch.cat(losses).mean().item(), rel=1e-5)


def test_fedfomo_weights_are_loss_gains_per_distance_normalised():
    losses = torch.tensor([[2.0, 1.5, 3.0], [1.0, 1.2, 0.2], [1.0, 2.0, 0.5]])
    distances = torch.tensor([[0.0, 2.0, 1.0], [2.0, 0.0, 4.0], [1.0, 4.0, 0.0]])
    got = fedfomo_rows(losses, distances)
    # row 0: only client 1 helps (0.5 nats at distance 2); row 1: only client 2 (1.0 at 4 -> 0.25, and
    # client 0's 0.2 at 2 -> 0.1); row 2: nobody helps, so it keeps its own adapter
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.1 / 0.35, 0.0, 0.25 / 0.35], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(got, expected)


def test_learned_candidates_and_the_choice_of_the_lowest_loss():
    losses = torch.tensor([[1.0, 1.1, 3.0], [2.0, 1.0, float("nan")], [0.5, 0.6, 0.7]])
    rows = peer_loss_rows(losses, (0.1, 1.0))
    assert rows.shape == (4, 3, 3)
    torch.testing.assert_close(rows.sum(-1), torch.ones(4, 3))
    assert torch.equal(rows[0], torch.eye(3))
    assert rows[:, 1, 2].eq(0).all()  # an unscored peer is in no candidate
    torch.testing.assert_close(rows[1, 0], torch.softmax(-losses[0] / 0.1, 0))
    torch.testing.assert_close(rows[3, 1], torch.tensor([0.5, 0.5, 0.0]))
    candidate_losses = torch.tensor([[1.0, 2.0, 0.5], [0.9, float("nan"), 0.5], [1.2, 1.0, 0.4], [0.9, 3.0, 0.4]])
    chosen = best_rows(rows, candidate_losses)
    torch.testing.assert_close(chosen, torch.stack([rows[1, 0], rows[2, 1], rows[2, 2]]))


def test_parts_of_the_trust_split_interleave_and_never_come_out_empty():
    batches = [torch.tensor(b) for b in range(5)]
    assert [int(b) for b in batches_of(batches, (1, 2))] == [1, 3]
    assert [int(b) for b in batches_of(batches, (0, 2))] == [0, 2, 4]
    assert [int(b) for b in batches_of(batches[:2], (3, 4))] == [1]  # more parts than batches: wraps
    assert batches_of(batches, None) == batches


def test_pair_losses_on_a_part_are_those_on_its_batches_alone():
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    on_part = T.BatchedMeasurements(module, dm).pair_losses(part=(1, 2))
    whole = [module.pair_losses([b]) for b in dm.trust_batches()]
    torch.testing.assert_close(on_part, whole[1])
    assert not torch.allclose(on_part, whole[0])


@pytest.mark.parametrize("strategy", ["learned", "apfl", "fedfomo"])
def test_a_round_gives_row_stochastic_trust_that_lowers_or_keeps_the_chosen_loss(strategy):
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    measured = T.BatchedMeasurements(module, dm)
    outcome = T.TrustRounds(T.TrustSettings(strategy=strategy, parts=2), N).run(2, measured)
    torch.testing.assert_close(outcome.trust.sum(1), torch.ones(N))
    assert outcome.record["part"] == [0, 2]
    if strategy != "fedfomo":  # on the part it chose on, the row predicts each client's data as well as its own
        own = measured.mixture_losses(torch.eye(N)[None], (0, 2))[0]
        chosen = measured.mixture_losses(outcome.trust[None], (0, 2))[0]
        assert (chosen <= own + 1e-6).all()


def test_rounds_measure_a_different_part_each_time_and_learned_an_eighth_by_default():
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    rounds = T.TrustRounds(T.TrustSettings(strategy="learned", parts=3), N)
    parts = [rounds.run(step, T.BatchedMeasurements(module, dm)).record["part"] for step in (2, 4, 6, 8)]
    assert parts == [[0, 3], [1, 3], [2, 3], [0, 3]]
    default = T.TrustRounds(T.TrustSettings(strategy="learned"), N).run(2, T.BatchedMeasurements(module, dm))
    assert default.record["part"] == [0, 8]
    whole = T.TrustRounds(T.TrustSettings(strategy="dynamic-ref"), N).run(2, T.BatchedMeasurements(module, dm))
    assert "part" not in whole.record


@pytest.mark.parametrize("strategy", ["learned", "apfl", "fedfomo"])
def test_flower_ends_where_the_batched_run_ends(strategy, inputs):  # noqa: F811 (the fixture)
    batched_folder = inputs / "fit" / f"adaptive-{strategy}"
    assert fit.main(argv(inputs, batched_folder, strategy)) == 0
    run = flower_run(inputs, f"adaptive-{strategy}", strategy)
    in_process(run)
    assert_same_run(run.folder.path, batched_folder)


def test_help_lists_the_new_strategies(capsys):
    with pytest.raises(SystemExit):
        fit.main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("learned", "apfl", "fedfomo"))
