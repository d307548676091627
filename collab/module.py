"""The collaborative LightningModule: one frozen base, N stacked client adapters, one batched pass.

A training step takes `[N, b, T+1]` (b windows of each client's own data) and back-propagates
the **sum** over clients of each client's mean loss, so every adapter gets exactly the gradient
it would get alone; AdamW is element-wise, so one optimizer over the stack is N optimizers.
Clients go through the model in chunks of `client_chunk` with gradients accumulated across
chunks: still exact, with peak activation memory set by the chunk, not by N. Every client draws
its dropout masks from its own stream (seeded by run seed, client and micro-step), so chunking
and resuming leave each client's step unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.optim.lr_scheduler import LRScheduler

from lora_gpt import (
    GPT,
    ClientSlice,
    LoRAConfig,
    client_slices,
    inject_lora,
    is_lora_name,
    lora_parameters,
    mark_only_lora_as_trainable,
)
from lora_gpt.cross_entropy import fused_linear_cross_entropy, linear_predictions
from lora_gpt.errors import ConfigError
from lora_gpt.precision import flush_denormals
from lora_gpt.training import adamw, one_cycle

from . import evaluation
from .config import MemoryConfig, OptimConfig
from .metrics import ClientMetrics


def base_fingerprint(model: GPT) -> str:
    """A short hash of the frozen base's weights: a checkpoint's adapters only mean something
    on the base they were trained on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not is_lora_name(name):
            digest.update(name.encode())
            digest.update(tensor.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def clip_per_client(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip each client's gradient (its slice of every stacked tensor) to `max_norm` on its own;
    returns the per-client norms before clipping. A global clip would let one client's large
    gradient shrink every other client's step. Parameters without a gradient are left out."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = torch.zeros(grads[0].shape[0], dtype=torch.float64, device=grads[0].device)
    for g in grads:
        sq += g.flatten(1).double().pow(2).sum(1)
    norms = sq.sqrt()
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0).to(grads[0].dtype)
    for g in grads:
        g.mul_(factor.view(-1, *[1] * (g.dim() - 1)))
    return norms.float()


class CollabLoRAModule(L.LightningModule):
    """N clients' adapters over one frozen base: the training step, per-client evaluation, checkpoints.

    `lora.init_seed` None starts every adapter from the A that `seed` draws. `first_client` is the
    run's id of adapter 0: a federated client's module (N=1) trains client n with client n's own
    dropout streams (`lora_gpt.client_slices`). Metrics go to the
    loggers with the optimizer step they belong to (`log_metrics`), 0 being the base before
    training, so a resumed run's history continues where its checkpoint left it.
    """

    def __init__(
        self,
        *,
        base: GPT,
        lora: LoRAConfig,
        optim: OptimConfig,
        num_clients: int,
        seed: int = 0,
        memory: MemoryConfig = MemoryConfig(),
        first_client: int = 0,
    ) -> None:
        super().__init__()
        if num_clients < 1:
            raise ConfigError(f"--num_clients must be >= 1, got {num_clients}.")
        lora = lora if lora.init_seed is not None else replace(lora, init_seed=seed)
        self.save_hyperparameters(
            {
                "model": base.config.to_dict(),
                "lora": lora.to_dict(),
                "optim": asdict(optim),
                "memory": asdict(memory),
                "num_clients": num_clients,
                "seed": seed,
            },
            logger=False,
        )  # the run folder's config.yaml holds the options
        self.model = mark_only_lora_as_trainable(inject_lora(base, lora, num_adapters=num_clients))
        self.optim, self.seed, self.num_clients, self.first_client = optim, seed, num_clients, first_client
        self.client_chunk = memory.client_chunk or num_clients
        self.loss_chunk = memory.loss_chunk
        self.automatic_optimization = False  # per-client clipping and chunked backward
        self.strict_loading = False  # checkpoints hold adapters only; the base comes from --init
        self.base_fingerprint = base_fingerprint(self.model)
        self.val_metrics = ClientMetrics(num_clients)
        self.curves: list[dict[str, Any]] = []  # per-client validation metrics at every eval
        self.train_curve: list[dict[str, Any]] = []  # per-client train loss at every step
        self._step_losses = torch.zeros(num_clients)
        self._micro_in_step = 0  # micro-batches since the last optimizer step

    def adapters(self) -> dict[str, torch.nn.Parameter]:
        """The stacked adapter tensors (leading dim = client), by parameter name."""
        return lora_parameters(self.model)

    def pair_losses(
        self, batches: Sequence[torch.Tensor], pairs: torch.Tensor | None = None, chunk: int | None = None
    ) -> torch.Tensor:
        """`[N, N]`: client j's model's mean next-token loss on client i's slices of the `[N, b, T+1]`
        batches at the pairs set in `pairs` (None: all), NaN elsewhere; dropout off."""
        with self.precision_context():
            return evaluation.pair_losses(
                self.model, [b.to(self.device) for b in batches], pairs, chunk or self.client_chunk
            )

    def client_logits(
        self, idx: torch.Tensor, positions: slice = slice(None), chunk: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Every client's logits `[N, b, t, V]` on the same token ids `[b, T]` at `positions`, a block
        of positions at a time (`evaluation.position_blocks`), dropout off: the bodies run once."""
        with self.precision_context():
            hidden = evaluation.client_hidden(
                self.model, self.num_clients, idx.to(self.device), positions, chunk or self.client_chunk
            )
        for block in evaluation.position_blocks(hidden, self.model.config.vocab_size):
            with self.precision_context(), torch.no_grad():
                logits = self.model.lm_head(hidden[:, :, block])
            yield logits

    def precision_context(self) -> contextlib.AbstractContextManager:
        """The trainer's precision (e.g. bf16 autocast) for work outside its steps: trust scoring is
        called from a callback, where Lightning applies none, and would otherwise run in float32."""
        trainer = self._trainer
        return trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()

    @torch.no_grad()
    def replace_adapters(self, adapters: Mapping[str, torch.Tensor], reset: torch.Tensor) -> None:
        """Copy in new stacked adapters; clients where `reset` is set also get zeroed optimizer
        moments, as broken as the adapter they came from. Adam's step count is one per tensor."""
        params = self.adapters()
        if set(adapters) != set(params):
            missing, unexpected = sorted(set(params) - set(adapters)), sorted(set(adapters) - set(params))
            raise ValueError(
                f"new adapters do not match the model's: missing {missing[:3]}, unexpected {unexpected[:3]}."
            )
        for name, p in params.items():
            p.copy_(adapters[name])
        if not reset.any() or self._trainer is None:
            return
        mask = reset.to(self.device)
        for opt in self.trainer.optimizers:
            for p in params.values():
                for value in opt.state.get(p, {}).values():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        value[mask] = 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Send `metrics` to every logger as measured after optimizer step `step`."""
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def client_losses(
        self, batch: torch.Tensor, clients: ClientSlice, scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(objective, losses)` for `clients` on their slices of `batch`: `losses` is each client's
        mean next-token loss (detached), `objective` their sum times `scale`, to back-propagate.
        Dropout draws from the clients' own streams where `clients` carries them. The head's
        logits are formed a chunk of tokens at a time, never all at once."""
        x, y = batch[clients.adapters, ..., :-1], batch[clients.adapters, ..., 1:]
        hidden = self.model.hidden_states(x, clients)
        per_token = scale / y[0].numel()  # the sum over clients of each client's mean
        objective, token_losses = fused_linear_cross_entropy(
            hidden, self.model.lm_head.weight, y, torch.full(y.shape, per_token, device=y.device), self.loss_chunk
        )
        return objective, token_losses.mean(dim=(1, 2))

    def on_fit_start(self) -> None:
        flush_denormals()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        if batch.shape[0] != self.num_clients:
            raise ValueError(f"batch has {batch.shape[0]} clients, the model {self.num_clients}.")
        acc = self.optim.acc_steps
        micro_step = self.global_step * acc + self._micro_in_step
        losses = []
        for clients in client_slices(
            self.num_clients, self.client_chunk, seed=self.seed, step=micro_step, first_id=self.first_client
        ):
            objective, loss = self.client_losses(batch, clients, scale=1.0 / acc)
            self.manual_backward(objective)
            losses.append(loss)
        self._step_losses += torch.cat(losses).float().cpu() / acc
        self._micro_in_step += 1
        if self._micro_in_step == acc:
            self._micro_in_step = 0
            self._take_step()

    def _take_step(self) -> None:
        """One AdamW step of every client (each clipped on its own), then its metrics."""
        step_losses, self._step_losses = self._step_losses, torch.zeros(self.num_clients)
        opt, sched = self.optimizers(), self.lr_schedulers()
        # configure_optimizers gives one optimizer and one scheduler
        assert isinstance(opt, LightningOptimizer) and isinstance(sched, LRScheduler)
        metrics = {
            "train/loss": float(step_losses.mean()),
            "train/lr": float(sched.get_last_lr()[0]),
            **{f"train/loss_client_{n}": float(v) for n, v in enumerate(step_losses)},
        }
        if self.optim.grad_clip > 0:
            norms = clip_per_client([p for p in self.adapters().values() if p.grad is not None], self.optim.grad_clip)
            metrics["train/grad_norm_max"] = float(norms.max())
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        self.log("train/loss", metrics["train/loss"], prog_bar=True, logger=False)
        self.log_metrics(metrics, self.global_step)
        self.train_curve.append({"step": self.global_step, "loss": step_losses.tolist()})

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        for clients in client_slices(self.num_clients, self.client_chunk):
            x, y = batch[clients.adapters, ..., :-1], batch[clients.adapters, ..., 1:]
            hidden = self.model.hidden_states(x, clients)
            losses, correct = linear_predictions(hidden, self.model.lm_head.weight, y, self.loss_chunk)
            self.val_metrics.update(clients, losses, correct)

    def on_validation_epoch_end(self) -> None:
        columns = {k: v.reshape(-1).tolist() for k, v in self.val_metrics.compute().items()}  # N=1 comes squeezed
        self.val_metrics.reset()
        per_client = [{k: values[n] for k, values in columns.items()} for n in range(self.num_clients)]
        if self.trainer.sanity_checking:
            return
        mean = {k: sum(row[k] for row in per_client) / len(per_client) for k in per_client[0]}
        metrics = {f"val/{k}_client_{n}": v for n, row in enumerate(per_client) for k, v in row.items()}
        metrics.update({f"val/{k}": v for k, v in mean.items()})
        self.log("val/ppl", mean["ppl"], prog_bar=True, logger=False)
        self.log_metrics(metrics, self.global_step)
        self.curves.append({"step": self.global_step, "clients": per_client, "mean": mean})

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        o = self.optim
        optimizer = adamw(self.adapters().items(), o.lr, o.weight_decay, o.betas)
        scheduler = one_cycle(optimizer, o.lr, o.iterations, o.warmup_percent, o.final_div)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only the adapters change; the frozen base is rebuilt from --init on resume.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if is_lora_name(k)}
        checkpoint["base_fingerprint"] = self.base_fingerprint
        checkpoint["curves"] = self.curves
        checkpoint["train_curve"] = self.train_curve

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("base_fingerprint")
        if saved != self.base_fingerprint:
            raise ConfigError(
                f"this checkpoint's adapters were trained on another base model (fingerprint {saved}, "
                f"this base {self.base_fingerprint}); resume with the same --init, or start afresh "
                "in a new --out folder."
            )
        ours = {k: tuple(v.shape) for k, v in self.state_dict().items() if is_lora_name(k)}
        theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if is_lora_name(k)}
        if ours != theirs:
            diff = sorted(set(ours.items()) ^ set(theirs.items()))[:3]
            raise ConfigError(
                f"checkpoint adapters do not match this configuration (e.g. {diff}); "
                "resume with the options the run started with."
            )
        self.curves = checkpoint.get("curves", [])
        self.train_curve = checkpoint.get("train_curve", [])
