"""GPT-2's byte-pair encoding through tiktoken, online and offline.

`tiktoken.get_encoding("gpt2")` downloads its vocabulary on first use. The same ranks also ship
inside the `openai-whisper` source package on PyPI (`whisper/assets/gpt2.tiktoken`), so a machine
that reaches only the package index can still tokenize. The first successful build writes the
ranks to a local cache file; every later call reads that file and needs no network at all.

Look-up order: ``$LORA_GPT_TOKENIZER`` (a ``gpt2.tiktoken`` file) -> the local cache ->
an installed ``whisper`` package -> tiktoken's own download -> the `openai-whisper` sdist via pip.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from .cache import cache_dir
from .config import GPT2_VOCAB_SIZE as VOCAB_SIZE
from .errors import FixableError

EOT_TOKEN = 50256
# GPT-2's pre-tokenisation pattern (tiktoken's r50k/gpt2 pattern).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
RANKS_FILENAME = "gpt2.tiktoken"


class TokenizerUnavailableError(FixableError, RuntimeError):
    """No source of GPT-2's vocabulary could be reached."""


def _encoding_from_ranks(path: Path) -> tiktoken.Encoding:
    ranks = load_tiktoken_bpe(str(path))
    if len(ranks) != EOT_TOKEN:
        raise TokenizerUnavailableError(
            f"{path} holds {len(ranks)} BPE ranks, GPT-2 has {EOT_TOKEN}; delete it and retry."
        )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_TOKEN},
        explicit_n_vocab=VOCAB_SIZE,
    )


def _save_ranks(enc: tiktoken.Encoding, dest: Path) -> None:
    """Write an encoding's ranks in tiktoken's file format, atomically."""
    import base64

    dest.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{base64.b64encode(token).decode()} {rank}"
        for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1])
    ]
    tmp = dest.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(dest)


def _ranks_from_installed_whisper() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("whisper")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "assets" / RANKS_FILENAME
    return path if path.is_file() else None


def _ranks_from_pypi(dest: Path) -> Path | None:
    """Fetch the `openai-whisper` sdist with pip (no install) and extract GPT-2's ranks."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "-d",
            tmp,
            "openai-whisper",
        ]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError):
            return None
        for archive in Path(tmp).glob("openai*whisper*.tar.gz"):
            with tarfile.open(archive) as tar:
                member = next(
                    (m for m in tar.getmembers() if m.name.endswith(f"whisper/assets/{RANKS_FILENAME}")), None
                )
                if member is None:
                    continue
                src = tar.extractfile(member)
                assert src is not None
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp_dest = dest.with_suffix(".tmp")
                with open(tmp_dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                tmp_dest.replace(dest)
                return dest
    return None


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """Return tiktoken's GPT-2 encoding, building and caching it on first use."""
    override = os.environ.get("LORA_GPT_TOKENIZER")
    if override:
        if not Path(override).is_file():
            raise TokenizerUnavailableError(
                f"LORA_GPT_TOKENIZER={override} is not a file; point it at a gpt2.tiktoken file or unset it."
            )
        return _encoding_from_ranks(Path(override))

    cached = cache_dir() / RANKS_FILENAME
    if cached.is_file():
        return _encoding_from_ranks(cached)

    whisper_ranks = _ranks_from_installed_whisper()
    if whisper_ranks is not None:
        enc = _encoding_from_ranks(whisper_ranks)
        _save_ranks(enc, cached)
        return enc

    try:
        enc = tiktoken.get_encoding("gpt2")
        _save_ranks(enc, cached)
        return enc
    except Exception:  # tiktoken raises whatever its HTTP client raises offline
        pass

    if _ranks_from_pypi(cached) is not None:
        return _encoding_from_ranks(cached)

    raise TokenizerUnavailableError(
        "GPT-2's BPE vocabulary could not be found or fetched. Any one of these fixes it:\n"
        "  * connect to the internet once (tiktoken downloads it), or\n"
        "  * `pip install openai-whisper` (ships whisper/assets/gpt2.tiktoken), or\n"
        "  * `pip download --no-deps --no-binary :all: openai-whisper`, extract "
        f"whisper/assets/gpt2.tiktoken and copy it to {cached} "
        "(or set LORA_GPT_TOKENIZER to its path)."
    )
