"""`python -m data.offline_base`: the embedded default's base model, pretrained on offline text.

Builds the pretraining corpus from the offline corpora (`data.pretraining`: documents that no
client ever gets) and pretrains `lora_gpt.pretrain`'s small GPT-2-shaped model on it; both are
cached, so `collab.fit --init offline` builds them on first use and reuses them after.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_gpt.cli import Command, fail
from lora_gpt.errors import FixableError
from lora_gpt.pretrain import REPORT_NAME, PretrainConfig, ensure_base, format_report

from .pretraining import pretraining_corpus


def offline_base(config: PretrainConfig | None = None, progress: bool = True) -> Path:
    """The folder of the offline base (config.json + model.safetensors), built on first use."""
    return ensure_base(config or PretrainConfig(), pretraining_corpus(progress=progress), progress)


def command() -> Command[PretrainConfig]:
    """`python -m data.offline_base`'s command: the pretraining options (the corpus is the offline one)."""
    return Command("python -m data.offline_base", __doc__, [PretrainConfig], lambda groups: groups["pretrain"])


def main(argv: Sequence[str] | None = None) -> int:
    try:
        folder = offline_base(command().parse(argv))
    except FixableError as err:
        fail(err)
    print(format_report(json.loads((folder / REPORT_NAME).read_text())))
    print(f"base model: {folder}  (collab.fit uses it with --init offline, the default)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
