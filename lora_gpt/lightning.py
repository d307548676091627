"""A LightningModule for one model: pretraining from scratch or single-client LoRA fine-tuning."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from .config import GPTConfig
from .cross_entropy import fused_linear_cross_entropy, linear_predictions
from .lora import LoRAConfig, inject_lora, mark_only_lora_as_trainable
from .model import GPT
from .precision import flush_denormals
from .training import LanguageModelMetrics, adamw, one_cycle


class LitGPT(L.LightningModule):
    """Trains a `GPT` on batches `[b, T+1]` of token ids (inputs and targets shifted by one).

    With `lora=None` every weight trains (pretraining); with a `LoRAConfig` the base is frozen
    and only the adapter trains. The checkpoint stores both configs, so a resume rebuilds
    exactly the same model.
    """

    def __init__(
        self,
        config: GPTConfig | dict,
        lora: LoRAConfig | dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        max_steps: int = 1000,
        warmup: float = 0.02,
        model: GPT | None = None,
    ) -> None:
        super().__init__()
        config = GPTConfig(**config) if isinstance(config, dict) else config
        lora = LoRAConfig(**lora) if isinstance(lora, dict) else lora
        self.save_hyperparameters(
            {
                "config": config.to_dict(),
                "lora": lora.to_dict() if lora else None,
                "lr": lr,
                "weight_decay": weight_decay,
                "betas": list(betas),
                "max_steps": max_steps,
                "warmup": warmup,
            }
        )
        self.model = model if model is not None else GPT(config)
        if lora is not None:
            inject_lora(self.model, lora)
            mark_only_lora_as_trainable(self.model)
        self.val_metrics = LanguageModelMetrics()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def on_fit_start(self) -> None:
        flush_denormals()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x, y = batch[..., :-1], batch[..., 1:]
        # the mean token loss, through the (tied, trainable or frozen) head a chunk at a time
        loss, _ = fused_linear_cross_entropy(self.model.hidden_states(x), self.model.lm_head.weight, y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x, y = batch[..., :-1], batch[..., 1:]
        self.val_metrics.update(*linear_predictions(self.model.hidden_states(x), self.model.lm_head.weight, y))

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True)
        self.val_metrics.reset()

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        hp = self.hparams
        optimizer = adamw(self.model.named_parameters(), hp["lr"], hp["weight_decay"], tuple(hp["betas"]))
        scheduler = one_cycle(optimizer, hp["lr"], hp["max_steps"], hp["warmup"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
