"""collab: personalized collaborative LoRA fine-tuning of many simulated clients.

    from collab import client_model, generate_text
    model = client_model("runs/offline_multi_specific-n8/dynamic/seed0", 2)  # client 2's model of that run
    print(generate_text(model, "Le paquet", max_new_tokens=40))

A run itself: `collab.fit.run(collab.config.FitConfig(...))`, or `python -m collab.fit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .export import client_model
    from .generate import generate_text

__all__ = ["client_model", "generate_text"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `python -m collab.fit` (or .export, .generate) does not find
    # its own module already imported by the package, and `import collab.trust` stays light.
    if name == "client_model":
        from .export import client_model

        return client_model
    if name == "generate_text":
        from .generate import generate_text

        return generate_text
    raise AttributeError(f"module 'collab' has no attribute {name!r}")
