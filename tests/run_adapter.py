"""How the tests run our model with one adapter: the one place to change if adapter selection changes."""
import torch

from lora_gpt import use_adapters


def run_client(model, idx, n):
    """Our model's logits for token ids `idx` `[b, T]` with adapter n alone, without gradients."""
    with torch.no_grad(), use_adapters(model, slice(n, n + 1)):
        return model(idx)
