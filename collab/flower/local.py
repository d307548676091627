"""One federated client's own work, without Flower: train its adapter, score peers' adapters on its
own `trust` split, predict on the shared reference text, evaluate.

Client n trains with `collab.fit`'s module and loss at N=1 (`CollabLoRAModule(first_client=n)`:
client n's dropout streams) on its own view of the prepared dataset (`ClientDataModule(client=n)`:
its own files, the same windows as slice n of the batched run), through Lightning as `collab.fit`
does. Its training state between rounds is a Lightning checkpoint (adapter, AdamW moments, schedule
position, step): `fit` resumes it exactly, so a run of rounds is the batched run's local steps.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import torch

from data import ClientDataModule
from lora_gpt import inject_lora, is_lora_name, lora_parameters
from lora_gpt.console import quiet_third_party
from lora_gpt.errors import ConfigError
from lora_gpt.precision import resolve_precision

from ..attacks import AttackedDataModule
from ..config import FitConfig
from ..evaluation import mean_losses
from ..fit import device_type, load_base
from ..module import CollabLoRAModule
from ..trust import TokenMeasure
from ..trust.protocols import Part, batches_of

Adapter = dict[str, torch.Tensor]  # one client's adapter: parameter name -> tensor without the client dim


class StartFrom(L.Callback):
    """Before the first local step: the adapter the server sent replaces the checkpoint's, and a client
    the server left out as broken (`reset`) loses its optimizer moments, as in `collab.fit`."""

    def __init__(self, adapter: Mapping[str, torch.Tensor] | None, reset: bool) -> None:
        self.adapter, self.reset = adapter, reset

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, CollabLoRAModule)  # the module LocalClient trains
        if self.adapter is not None or self.reset:
            adapters = pl_module.adapters() if self.adapter is None else {k: v[None] for k, v in self.adapter.items()}
            pl_module.replace_adapters(adapters, reset=torch.tensor([self.reset]))


def checkpoint_step(state: bytes) -> int:
    """The optimizer step a client's training state is at."""
    return int(_load(state)["global_step"])


def checkpoint_adapter(state: bytes) -> Adapter:
    """The client's adapter in its training state."""
    weights = _load(state)["state_dict"]
    return {k.removeprefix("model."): v[0] for k, v in weights.items() if is_lora_name(k)}


def with_adapter(state: bytes, adapter: Mapping[str, torch.Tensor]) -> bytes:
    """The training state with `adapter` in place of the client's own (optimizer state kept)."""
    checkpoint = _load(state)
    weights = checkpoint["state_dict"]
    for name, tensor in adapter.items():
        weights[f"model.{name}"] = tensor[None].to(weights[f"model.{name}"].dtype).clone()
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def _load(state: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(state), map_location="cpu", weights_only=False)  # our own checkpoint


def check_federated(config: FitConfig) -> None:
    """Refuse, before anything starts, options a federated client cannot run with."""
    if config.lora.init == "reference":
        raise ConfigError(
            "--lora_init reference draws every client's A from one stacked stream, which one "
            "client alone cannot reproduce. Fix: --lora_init peft (the default) for Flower runs."
        )
    if config.trust.token_source != "reported":
        raise ConfigError(
            "--trust.token_source sent computes every client's reference predictions from the adapter it sent, "
            "while a Flower client reports its own. Fix: --trust.token_source reported for Flower runs (or run "
            "in-process: python -m collab.fit)."
        )


@dataclass
class LocalClient:
    """Client `client` of a run configured by `config` (its `data.data_dir` prepared, as the Flower
    launchers leave it)."""

    config: FitConfig
    client: int

    def __post_init__(self) -> None:
        check_federated(self.config)
        if self.config.data.data_dir is None:
            raise ConfigError(
                "a federated client reads a prepared dataset: the run's config needs data.data_dir "
                "(python -m collab.flower.simulate and .deploy set it)."
            )

    @cached_property
    def view(self) -> ClientDataModule:
        """This client's view of the prepared dataset, its files not read yet."""
        c = self.config
        assert c.data.data_dir is not None  # __post_init__ refuses a config without it
        if c.attack.active:  # honest or bad, a client of an attacked run reads its view of the attacked data
            return AttackedDataModule(
                folder=c.data.data_dir,
                config=c.data,
                attack=c.attack,
                seed=c.run.seed,
                accumulate=c.optim.acc_steps,
                client=self.client,
            )
        return ClientDataModule(
            folder=c.data.data_dir, config=c.data, seed=c.run.seed, accumulate=c.optim.acc_steps, client=self.client
        )

    @property
    def bad(self) -> bool:
        """Whether this client is one of the bad clients an attack adds after the honest ones."""
        return self.config.attack.active and self.client >= self.config.data.prepared_clients

    @cached_property
    def data(self) -> ClientDataModule:
        """The view with its files checked against the manifest, ready to read."""
        self.view.setup()
        return self.view

    def module(self, adapter: Mapping[str, torch.Tensor] | None = None) -> CollabLoRAModule:
        """A fresh N=1 module over the base, holding `adapter` if given (else the initial one)."""
        c = self.config
        module = CollabLoRAModule(
            base=load_base(c.run, c.data.sequence_length),
            lora=c.lora,
            optim=c.optim,
            num_clients=1,
            seed=c.run.seed,
            memory=c.memory,
            first_client=self.client,
        )
        if adapter is not None:
            module.replace_adapters({k: v[None] for k, v in adapter.items()}, reset=torch.zeros(1, dtype=torch.bool))
        return module

    def initial_adapter(self) -> Adapter:
        """The adapter this client starts from (every client's A drawn from the run's seed; B zero)."""
        return {name: p.detach()[0].clone() for name, p in self.module().adapters().items()}

    def trainer(self, max_steps: int = -1, callbacks: Sequence[L.Callback] = (), validate: bool = False) -> L.Trainer:
        """Lightning as `collab.fit` runs it, without loggers, checkpoints or validation in training."""
        run = self.config.run
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        quiet_third_party()
        return L.Trainer(
            max_steps=max_steps,
            accelerator=run.accelerator,
            devices=1,
            precision=resolve_precision(run.precision, device_type(run.accelerator)),
            logger=False,
            callbacks=list(callbacks),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=None if validate else 0,
            num_sanity_val_steps=0,
            inference_mode=False,
        )

    def fit(
        self, state: bytes | None, until: int, adapter: Mapping[str, torch.Tensor] | None = None, reset: bool = False
    ) -> tuple[bytes, int, list[float]]:
        """Train from `state` (None: the initial adapter at step 0) up to optimizer step `until`,
        starting from `adapter` where the server sent one; returns the new state, the step training
        started from, and the losses of the steps taken."""
        start = checkpoint_step(state) if state is not None else 0
        module = self.module()
        trainer = self.trainer(until, [StartFrom(adapter, reset)])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.ckpt"
            if state is not None:
                path.write_bytes(state)
            trainer.fit(module, datamodule=self.data, ckpt_path=path if state is not None else None)
            trainer.save_checkpoint(path, weights_only=False)  # the whole state: the next round resumes it
            return path.read_bytes(), start, [row["loss"][0] for row in module.train_curve if row["step"] > start]

    def peer_losses(
        self,
        own: Mapping[str, torch.Tensor],
        peers: Mapping[int, Mapping[str, torch.Tensor]],
        order: Sequence[int],
        part: Part | None = None,
    ) -> torch.Tensor:
        """`[len(order)]`: the mean loss of every listed client's model (this client's `own`, the others
        from `peers`) on this client's `trust` split (its `part` of the batches; None: all): its row of
        `dynamic-ref`'s peer losses."""
        c = self.config
        model = inject_lora(load_base(c.run, c.data.sequence_length), c.lora, num_adapters=len(order))
        with torch.no_grad():
            for name, p in lora_parameters(model).items():
                p.copy_(torch.stack([(own if n == self.client else peers[n])[name] for n in order]))
        batches = [b[0] for b in batches_of(self.data.trust_batches(), part)]
        return mean_losses(model, len(order), batches, c.trust.eval_chunk or c.memory.client_chunk or len(order))

    def ref_outputs(
        self,
        adapter: Mapping[str, torch.Tensor],
        measure: TokenMeasure,
        keep: Callable[[int, torch.Tensor], torch.Tensor],
    ) -> list[torch.Tensor]:
        """`keep(s, outputs)` for every shared reference sequence s, in the order the batched run's
        `token_distances` visits them, where `outputs` `[T', V]` is `measure.predict` of this client's model at
        `measure.positions`: what is kept of each (a few tokens per position) is what is sent."""
        module = self.module(adapter)
        sequences = [s for batch in self.data.ref_batches(measure.num_batches) for s in batch]
        return [
            keep(
                s,
                torch.cat(
                    [
                        measure.predict(logits)[0, 0]
                        for logits in module.client_logits(seq[None, :-1], measure.positions)
                    ]
                ),
            )
            for s, seq in enumerate(sequences)
        ]

    def evaluate(self, adapter: Mapping[str, torch.Tensor] | None) -> dict[str, float]:
        """Validation loss, perplexity and accuracy of this client's model (`adapter`, or the initial one)
        on its `val` split, as `collab.fit` reports them."""
        module = self.module(adapter)
        self.trainer(validate=True).validate(module, dataloaders=self.data.val_dataloader(), verbose=False)
        return module.curves[-1]["clients"][0]
