"""How the tests run our model with one adapter: the one place to change if adapter selection changes."""

import torch

from lora_gpt import ClientSlice


def run_client(model, idx, n):
    """Our model's logits for token ids `idx` `[b, T]` with adapter n alone, without gradients."""
    with torch.no_grad():
        return model(idx, ClientSlice(n, n + 1))
