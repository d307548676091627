"""Collaborative training: exactness against independent runs, aggregation in the loop, chunking,
non-finite clients, evaluation scores, and exact resume."""

import copy

import lightning as L
import pytest
import torch
from run_adapter import run_client
from synthetic import VOCAB, SyntheticClients

from collab.aggregation import TrustAggregation
from collab.config import MemoryConfig, OptimConfig
from collab.module import CollabLoRAModule
from collab.run_folder import RunFolder
from collab.trust import BatchedMeasurements, PeerLoss, TokenAgreement, TopLogits, TopProbabilities, TrustSettings
from lora_gpt import GPT, GPTConfig, LoRAConfig, inject_lora, lora_parameters, mark_only_lora_as_trainable
from lora_gpt.cross_entropy import token_cross_entropy
from lora_gpt.training import adamw, one_cycle

CFG = GPTConfig.from_name("gpt2-tiny", vocab_size=VOCAB)
N = 4


def base_model(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG)


def lora_cfg(dropout=0.0):
    return LoRAConfig(
        rank=4, alpha=8, dropout=dropout, targets=("attn.c_attn", "mlp.c_fc"), kernel="torch", init_seed=1
    )


def collab(base=None, lora=None, num_clients=N, client_chunk=None, **optim):
    """The collaborative module as `collab.fit` builds it, from config groups."""
    return CollabLoRAModule(
        base=base or base_model(),
        lora=lora or lora_cfg(),
        optim=OptimConfig(**optim),
        num_clients=num_clients,
        memory=MemoryConfig(client_chunk=client_chunk),
    )


def aggregation(strategy, out_dir=None, **settings):
    folder = RunFolder(out_dir) if out_dir is not None else None
    return TrustAggregation(settings=TrustSettings(strategy=strategy, **settings), folder=folder)


def train(module, datamodule, steps, callbacks=(), ckpt_path=None, out=None, ckpt_every=None):
    cbs = list(callbacks)
    if out is not None:
        cbs.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=out, save_last=True, save_top_k=0, every_n_train_steps=ckpt_every
            )
        )
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=out is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=cbs,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer


def stacked(module):
    return {k: v.detach().clone() for k, v in lora_parameters(module.model).items()}


def test_none_equals_independent_single_client_runs():
    steps, lr = 6, 5e-3
    dm = SyntheticClients(num_clients=N)
    module = collab(lr=lr, iterations=steps, weight_decay=0.1)
    train(module, dm, steps, [aggregation("none", pretraining_rounds=0, trust_freq=1)])
    got = stacked(module)
    for n in range(N):
        single = mark_only_lora_as_trainable(inject_lora(base_model(), lora_cfg(), 1))
        opt = adamw(single.named_parameters(), lr, 0.1)
        sched = one_cycle(opt, lr, steps)
        for t in range(steps):
            batch = dm.train_batch(t)[n]
            loss = token_cross_entropy(single(batch[:, :-1]), batch[:, 1:]).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        for name, p in lora_parameters(single).items():
            torch.testing.assert_close(p[0], got[name][n], atol=1e-5, rtol=0, msg=f"client {n} {name}")
    assert any((got[k][0] - got[k][1]).abs().max() > 1e-4 for k in got)  # clients really differ


@pytest.mark.parametrize("base_dropout", [0.0, 0.2])
def test_client_chunks_and_client_count_leave_each_clients_step_unchanged(base_dropout):
    """With LoRA dropout (and base dropout) on, each client's masks come from its own stream:
    chunked == whole, and the first clients of a 4-client run == a 2-client run."""

    def run(num_clients, chunk=None):
        torch.manual_seed(0)
        base = GPT(CFG.replace(dropout=base_dropout))
        module = collab(base, lora_cfg(dropout=0.1), num_clients, chunk, iterations=4, grad_clip=0.5)
        train(module, SyntheticClients(num_clients=num_clients), 4)
        return stacked(module)

    whole, chunked, fewer = run(N), run(N, chunk=3), run(2)
    for k, v in whole.items():
        torch.testing.assert_close(chunked[k], v, atol=1e-6, rtol=0)
        torch.testing.assert_close(fewer[k], v[:2], atol=1e-6, rtol=0)
    assert any((v[0] - v[2]).abs().max() > 1e-4 for v in whole.values())  # same category, other masks and data


def test_accumulation_counts_optimizer_steps():
    dm2 = SyntheticClients(num_clients=N, batch_size=1, accumulate=2)
    acc = collab(iterations=3, acc_steps=2)
    train(acc, dm2, 3)
    assert acc.global_step == 3 and len(acc.train_curve) == 3


def test_chunked_validation_gives_the_same_per_client_metrics():
    """Validation on (as users run it): a chunked run reports what an unchunked one does."""

    def run(chunk):
        module = collab(client_chunk=chunk, iterations=2)
        trainer = L.Trainer(
            max_steps=2,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            val_check_interval=1,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=SyntheticClients(num_clients=N))
        return module.curves

    whole, chunked = run(None), run(3)
    assert [c["step"] for c in chunked] == [c["step"] for c in whole] == [1, 2]
    for a, b in zip(whole, chunked, strict=True):
        for n in range(N):
            for key in ("loss", "acc"):
                assert b["clients"][n][key] == pytest.approx(a["clients"][n][key], abs=1e-6)
    assert len({round(c["loss"], 6) for c in whole[-1]["clients"]}) > 1  # clients really differ


def test_per_client_clipping_leaves_small_gradients_alone():
    from collab.module import clip_per_client

    a = torch.nn.Parameter(torch.zeros(3, 2, 2))
    a.grad = torch.stack([torch.full((2, 2), 0.1), torch.full((2, 2), 10.0), torch.zeros(2, 2)])
    norms = clip_per_client([a], max_norm=1.0)
    torch.testing.assert_close(norms, torch.tensor([0.2, 20.0, 0.0]))
    torch.testing.assert_close(a.grad[0], torch.full((2, 2), 0.1))
    assert a.grad[1].norm().item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize(
    "strategy, options",
    [
        ("naive", {}),
        ("dynamic", {}),
        ("dynamic-ref", {}),
        ("dynamic-token-top-k", {}),
        ("static", {}),
        ("dynamic-thresh", {"similarity": "reference-rows", "temperature": 0.5}),
        ("dynamic-ref", {"ref_score": "loss"}),
        ("dynamic-token", {"token_distance": "reference-logits"}),
        ("static", {"static_rule": "own-mixture"}),
    ],
)
def test_aggregation_in_the_loop(strategy, options, tmp_path):
    dm = SyntheticClients(num_clients=N)
    module = collab(iterations=4)
    agg = aggregation(strategy, tmp_path, trust_freq=2, pretraining_rounds=2, k=2, **options)
    train(module, dm, 4, [agg])
    assert [r["step"] for r in agg.history] == [2, 4]
    files = sorted(p.name for p in (tmp_path / "trust").iterdir())
    assert files == ["step_000002.json", "step_000004.json"]
    trust = agg.rounds.prior
    torch.testing.assert_close(trust.sum(1), torch.ones(N))
    if strategy == "naive":
        for v in stacked(module).values():
            torch.testing.assert_close(v, v[:1].expand_as(v))
    if strategy.endswith("top-k"):
        assert ((trust > 0).sum(1) == 2).all()
    if strategy == "static":
        assert agg.history[-1]["quality"]["same_category"] == pytest.approx(1.0)


def test_a_module_without_the_protocol_is_refused_before_training():
    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return self.w.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="pair_losses"):
        train(Plain(), SyntheticClients(num_clients=N), 1, [aggregation("dynamic-ref")])


@pytest.mark.parametrize("strategy", ["dynamic", "dynamic-ref", "dynamic-token"])
def test_nan_client_does_not_poison_the_others(strategy):
    dm = SyntheticClients(num_clients=N)
    module = collab(iterations=2)
    agg = aggregation(strategy, trust_freq=2, pretraining_rounds=0)

    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1:
                with torch.no_grad():
                    next(iter(pl_module.adapters().values()))[1].fill_(float("nan"))

    with pytest.warns(UserWarning, match=r"clients \[1\]"):
        train(module, dm, 2, [Poison(), agg])
    assert agg.history[-1]["excluded"] == [1]
    for v in stacked(module).values():
        assert v.isfinite().all()  # the others stayed finite; client 1 restarted from its peers
    opt = module.trainer.optimizers[0]
    for p in module.adapters().values():  # and client 1's Adam moments were reset with it
        assert all(
            (value[1] == 0).all() and value[[0, 2, 3]].isfinite().all()
            for value in opt.state[p].values()
            if value.shape == p.shape
        )


def scoring_module():
    module = collab(lora=lora_cfg(dropout=0.1), client_chunk=3)
    with torch.no_grad():
        for p in module.adapters().values():
            p.normal_(0, 0.2)
    module.train()  # the scorers must switch every dropout off themselves
    return module


def client_logits(module, idx, j):
    single = copy.deepcopy(module.model).eval()
    return run_client(single, idx, j)


def test_peer_loss_scores_match_per_client_loops():
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    got = PeerLoss(score="loss").scores(BatchedMeasurements(module, dm))
    assert module.training
    batches = dm.trust_batches()
    for i in range(N):
        for j in range(N):
            losses = [token_cross_entropy(client_logits(module, b[i, :, :-1], j), b[i, :, 1:]) for b in batches]
            assert -got[i, j].item() == pytest.approx(torch.cat(losses).mean().item(), rel=1e-5)
    torch.testing.assert_close(PeerLoss(score="perplexity").scores(BatchedMeasurements(module, dm)), -(-got).exp())


def test_token_distances_match_per_client_loops():
    module, dm = scoring_module(), SyntheticClients(num_clients=N)
    ref = dm.ref_batches()
    logits = [torch.cat([client_logits(module, b[:, :-1], j) for b in ref]) for j in range(N)]  # [S, T, V] each

    ours = TokenAgreement(measure=TopProbabilities(top_k=5))
    probs = [lg.softmax(-1) for lg in logits]
    expected = torch.zeros(N, N)
    for i in range(N):
        top = probs[i].topk(5, dim=-1).indices
        for j in range(N):
            pi, pj = probs[i].gather(-1, top), probs[j].gather(-1, top)
            expected[i, j] = ((pj - pi).abs().sum(-1) / pi.sum(-1)).mean()
    torch.testing.assert_close(
        ours.scores(BatchedMeasurements(module, dm, chunk=2)),
        -10 * expected / expected.sum(1, keepdim=True),
        rtol=1e-4,
        atol=1e-6,
    )

    reference = TokenAgreement(measure=TopLogits(top_k=5))
    last = [lg[:, -1] for lg in logits]  # [S, V]: the last position of every reference sequence
    kept = [lg.masked_fill(lg < lg.topk(5, dim=-1).values[:, -1:], 0) for lg in last]
    expected = torch.tensor([[(kept[i] - kept[j]).abs().sum(-1).mean().item() for j in range(N)] for i in range(N)])
    assert torch.equal(expected, expected.T) and (expected.diagonal() == 0).all()
    torch.testing.assert_close(
        reference.scores(BatchedMeasurements(module, dm)),
        -10 * expected / expected.sum(1, keepdim=True),
        rtol=1e-4,
        atol=1e-6,
    )


def test_resume_equals_straight_run(tmp_path):
    """k steps, checkpoint, resume for k more == 2k straight steps (dropout on: RNG restored too)."""

    def fresh():
        return (
            collab(lora=lora_cfg(dropout=0.1), iterations=6),
            aggregation("dynamic", trust_freq=2, pretraining_rounds=1),
        )

    L.seed_everything(0)
    straight, agg = fresh()
    train(straight, SyntheticClients(num_clients=N), 6, [agg])

    L.seed_everything(0)
    first, agg1 = fresh()
    train(first, SyntheticClients(num_clients=N), 3, [agg1], out=tmp_path, ckpt_every=3)
    L.seed_everything(123)  # resuming must not depend on the seed the new process happens to have
    second, agg2 = fresh()
    train(second, SyntheticClients(num_clients=N), 6, [agg2], ckpt_path=tmp_path / "last.ckpt")
    assert [r["step"] for r in agg2.history] == [r["step"] for r in agg.history] == [2, 4, 6]
    for k, v in stacked(straight).items():
        torch.testing.assert_close(stacked(second)[k], v, atol=1e-6, rtol=0)


def test_checkpoint_from_another_base_is_refused(tmp_path):
    module = collab(iterations=2)
    train(module, SyntheticClients(num_clients=N), 2, out=tmp_path, ckpt_every=2)
    other = collab(base_model(seed=5), iterations=4)
    with pytest.raises(ValueError, match="another base"):
        train(other, SyntheticClients(num_clients=N), 4, ckpt_path=tmp_path / "last.ckpt")
