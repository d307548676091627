"""Bad clients and robust rules against plain tensor computations and flwr's own functions, and
an attacked run whose honest clients are checked against the clean run."""

import json

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg
from test_trust import Given, family, random_adapters
from tiny_run import TINY_DATA, tiny_inputs

from collab import fit
from collab.attacks import AttackConfig, AttackedDataModule, attack_generator, sent_adapter, trust_shares
from collab.cli import parse
from collab.trust import TrustRounds, TrustSettings
from collab.trust.robust import KRUM_MALICIOUS, TRIM_PROPORTION
from lora_gpt.errors import ConfigError
from lora_gpt.training import random_windows


def one_client(adapters, i):
    return {name: t[i] for name, t in adapters.items()}


def test_noise_has_scale_times_the_trained_norm_per_tensor():
    trained, received = one_client(random_adapters(), 0), one_client(random_adapters(seed=1), 0)
    sent = sent_adapter(AttackConfig(kind="noise", scale=3.0), trained, received, attack_generator(0, 6, 10))
    for name, t in trained.items():
        assert float(sent[name].norm()) == pytest.approx(3.0 * float(t.norm()), rel=1e-5)
        assert abs(float(torch.nn.functional.cosine_similarity(sent[name].flatten(), t.flatten(), 0))) < 0.5
    again = sent_adapter(AttackConfig(kind="noise", scale=3.0), trained, received, attack_generator(0, 6, 10))
    assert all(torch.equal(sent[n], again[n]) for n in sent)  # the same draw in every runtime


def test_scaled_sign_flip_free_rider_and_zero():
    trained, received = one_client(random_adapters(), 0), one_client(random_adapters(seed=1), 0)
    g = attack_generator(0, 6, 10)
    scaled = sent_adapter(AttackConfig(kind="scaled", scale=4.0), trained, received, g)
    flipped = sent_adapter(AttackConfig(kind="sign-flip"), trained, received, g)
    rider = sent_adapter(AttackConfig(kind="free-rider"), trained, received, g)
    zero = sent_adapter(AttackConfig(kind="zero"), trained, received, g)
    for layer in range(2):
        a, b = f"h.{layer}.lora_A", f"h.{layer}.lora_B"
        update = trained[a] @ trained[b]  # this fixture's layout: A [d_in, r], B [r, d_out]
        assert torch.allclose(scaled[a] @ scaled[b], 4.0 * update)
        assert torch.allclose(flipped[a] @ flipped[b], -update)
        assert torch.equal(rider[a], received[a]) and torch.equal(rider[b], received[b])
        assert not zero[a].any() and not zero[b].any()
    for kind in ("shuffled", "mislabel"):  # data attacks send what they trained
        sent = sent_adapter(AttackConfig(kind=kind), trained, received, g)
        assert all(torch.equal(sent[n], trained[n]) for n in trained)


def test_trust_share_is_the_honest_rows_mass_on_bad_columns(tmp_path):
    """Among the round's clients (here 0, 1 honest; 3 bad; 2 absent), from the recorded trust."""
    trust = [[0.5, 0.3, 0.2], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]]
    (tmp_path / "step_000010.json").write_text(json.dumps({"step": 10, "clients": [0, 1, 3], "trust": trust}))
    assert trust_shares(tmp_path, 3) == [{"step": 10, "honest_trust_on_bad": pytest.approx((0.2 + 0.0) / 2)}]


def test_bad_attack_options_name_the_fix():
    with pytest.raises(SystemExit):  # argparse refuses a kind outside the choices
        parse(["--attack.kind", "bribery"])
    with pytest.raises(ConfigError, match="ids below 6"):
        AttackConfig(kind="noise", bad=2, poses_as=(0, 9)).sources(6)
    with pytest.raises(ConfigError, match="one id per bad client"):
        AttackConfig(kind="noise", bad=2, poses_as=(0,))
    with pytest.raises(ConfigError, match="--attack.bad"):
        AttackConfig(kind="noise", bad=0)
    assert AttackConfig(kind="noise", bad=2).sources(6) == [0, 3]


@pytest.mark.parametrize("rule", ["fedmedian", "fedtrimmedavg", "krum"])
def test_robust_rules_give_flwrs_aggregate_to_every_client(rule):
    adapters = random_adapters(n=7, seed=3)
    adapters["h.0.lora_B"][6] *= 100  # one far-off client
    rounds = TrustRounds(TrustSettings(strategy=rule), 7)
    outcome = rounds.run(10, Given(mixture=torch.eye(7), adapters=adapters))
    results = [([adapters[n][i].numpy() for n in adapters], 1) for i in range(7)]
    expected = {
        "fedmedian": lambda: aggregate_median(results),
        "fedtrimmedavg": lambda: aggregate_trimmed_avg(results, TRIM_PROPORTION),
        "krum": lambda: aggregate_krum(results, KRUM_MALICIOUS, 0),
    }[rule]()
    for name, want in zip(adapters, expected, strict=True):
        for i in range(7):
            np.testing.assert_allclose(outcome.adapters[name][i].numpy(), want, rtol=1e-6, atol=1e-7)
    if rule == "krum":
        picked = outcome.trust.argmax(1)
        assert (picked == picked[0]).all() and picked[0] != 6 and torch.equal(outcome.trust.sum(1), torch.ones(7))


def test_robust_family_scores_only_adapters():
    assert family("krum").needs == ("adapters",) and family("fedmedian").fixed


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    tiny_inputs(tmp)
    return tmp


def tiny(inputs, out, *extra):
    return [
        "--dataset", str(inputs / "corpus"), "--num_clients", "4", "--init", str(inputs / "base"),
        "--out", str(out), *TINY_DATA, "--iterations", "4", "--pretraining_rounds", "2", "--trust_freq", "2",
        "--eval_freq", "4", *extra,
    ]  # fmt: skip


def test_attacked_data_module_copies_the_posed_clients_data(inputs, monkeypatch):
    monkeypatch.setenv("LORA_GPT_CACHE", str(inputs / "cache"))
    config = parse(tiny(inputs, inputs / "unused", "--attack.kind", "shuffled", "--attack.bad", "2"))
    datamodule, _ = fit.prepare_data(config)
    assert isinstance(datamodule, AttackedDataModule) and datamodule.num_clients == 6 and datamodule.honest == 4
    np.testing.assert_array_equal(datamodule.mixture[4:], datamodule.mixture[[0, 2]])
    batch = datamodule.train_batch(0)
    clean, _ = fit.prepare_data(parse(tiny(inputs, inputs / "unused")))
    assert torch.equal(batch[:4], clean.train_batch(0))  # the honest clients' batches are the clean run's
    span = datamodule.sequence_length + 1
    plain = random_windows(datamodule.tokens(0, "train"), datamodule.batch_size, span, (datamodule.seed, 4, 0))
    assert not np.array_equal(batch[4].numpy(), plain)  # bad client 4 poses as 0: its windows, shuffled
    np.testing.assert_array_equal(np.sort(batch[4].numpy(), axis=1), np.sort(plain, axis=1))


def test_local_training_is_untouched_and_honest_trust_recorded(inputs, monkeypatch, tmp_path):
    """`none` under attack: the honest clients end exactly as in the clean run; the summary says
    the honest clients' metrics and their trust on the bad clients (none: zero)."""
    monkeypatch.setenv("LORA_GPT_CACHE", str(inputs / "cache"))
    fit.run(parse(tiny(inputs, tmp_path / "clean", "--trust", "none")))
    fit.run(parse(tiny(inputs, tmp_path / "noise", "--trust", "none", "--attack.kind", "noise")))
    clean = json.loads((tmp_path / "clean" / "summary.json").read_text())
    noise = json.loads((tmp_path / "noise" / "summary.json").read_text())
    assert noise["final"]["clients"][:4] == clean["final"]["clients"]
    assert noise["attack"]["honest_final"]["ppl"] == pytest.approx(clean["final"]["mean"]["ppl"])
    assert noise["attack"]["bad"] == [4] and [r["honest_trust_on_bad"] for r in noise["attack"]["rounds"]] == [0, 0]


def test_flower_refuses_to_score_sent_predictions_it_cannot_compute():
    from collab.flower.local import check_federated

    with pytest.raises(ConfigError, match="--trust.token_source reported for Flower runs"):
        check_federated(parse(["--trust", "dynamic-token", "--trust.token_source", "sent"]))


def test_norm_bound_scales_oversized_tensors_to_the_bound():
    """--trust.norm_bound 2: a tensor above twice the median norm of its peers' is scaled to exactly
    that, the others are untouched; the round averages the bounded adapters."""
    adapters = random_adapters(n=5, seed=4)
    adapters["h.1.lora_B"][4] *= 50
    norms = adapters["h.1.lora_B"].flatten(1).norm(dim=1)
    limit = 2 * norms.median()  # five clients: the median is one of them, the others' untouched
    outcome = TrustRounds(TrustSettings(strategy="naive", norm_bound=2.0), 5).run(
        10, Given(mixture=torch.eye(5), adapters=adapters)
    )
    bounded = adapters["h.1.lora_B"].clone()
    bounded[4] *= limit / norms[4]
    assert all(n <= limit for n in norms[:4])
    torch.testing.assert_close(outcome.adapters["h.1.lora_B"][0], bounded.mean(0))
    torch.testing.assert_close(outcome.adapters["h.0.lora_A"][0], adapters["h.0.lora_A"].mean(0))
    with pytest.raises(ConfigError, match="--trust.norm_bound"):
        TrustSettings(norm_bound=0.0)
