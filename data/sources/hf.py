"""The paper's datasets through Hugging Face `datasets`, streamed so only what is used is read.

Each category is a `HubSource`: a dataset (hub id, or a packaged builder such as `parquet` or
`json` with `data_files`), the text column, and optional column filters. The recipes name
their sources through `SOURCES`, so pointing an entry at local files (as the tests do, or at a
mirror) runs the very code the real recipe runs.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..errors import SourceUnavailableError

AG_NEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
SHUFFLE_BUFFER = 5_000  # documents: a streamed dataset is shuffled within a window this large
LOCAL_BUILDERS = {"json", "parquet", "csv", "text", "arrow"}


@dataclass(frozen=True)
class HubSource:
    """One category's documents in a Hugging Face dataset."""

    path: str  # hub id ("wikimedia/wikipedia") or packaged builder ("parquet") with data_files
    text_field: str
    name: str | None = None  # the dataset's configuration
    data_files: str | list[str] | None = None
    split: str = "train"
    where: dict[str, Any] = field(default_factory=dict)  # keep rows whose columns equal these values


_WIKI = "wikimedia/wikipedia"
_GITHUB_JAVA = HubSource(
    "parquet",
    "code",
    where={"language": "Java"},
    data_files="hf://datasets/codeparrot/github-code-clean/data/train-*.parquet",
)
SOURCES: dict[str, dict[str, HubSource]] = {
    "agnews": {
        label: HubSource("fancyzhx/ag_news", "text", where={"label": i}) for i, label in enumerate(AG_NEWS_LABELS)
    },
    "three_multi": {
        lang: HubSource(_WIKI, "text", name=f"20231101.{code}")
        for lang, code in (("french", "fr"), ("italian", "it"), ("german", "de"))
    },
    "github_wiki": {"java": _GITHUB_JAVA, "wikipedia": HubSource(_WIKI, "text", name="20231101.en")},
}
# The held-out documents of a collection that has them (its dataset's test split): what the reference
# code validates AG News on (`--data.volumes reference`).
HELD_OUT: dict[str, dict[str, HubSource]] = {
    "agnews": {
        label: HubSource("fancyzhx/ag_news", "text", split="test", where={"label": i})
        for i, label in enumerate(AG_NEWS_LABELS)
    },
}


def _needs_hub(source: HubSource) -> bool:
    files = [source.data_files] if isinstance(source.data_files, str) else list(source.data_files or ())
    return source.path not in LOCAL_BUILDERS or any(str(f).startswith("hf://") for f in files)


def check_hub() -> None:
    """Fail fast (instead of after minutes of retries) when the hub cannot be reached."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as err:
        raise SourceUnavailableError(
            f"the Hugging Face hub ({host}) cannot be reached ({err}); the paper's recipes stream their "
            "text from it. Fix: run where the hub is reachable (or set HF_ENDPOINT to a mirror), or use an "
            "offline recipe such as offline_multi_specific (`python -m data.prepare --list`)."
        ) from err


def _datasets_module():
    try:
        import datasets
    except ImportError as err:
        raise SourceUnavailableError(
            "the paper's recipes need Hugging Face `datasets`: `pip install datasets`; "
            "or use an offline recipe such as offline_multi_specific."
        ) from err
    return datasets


def stream_texts(source: HubSource, seed: int) -> Iterator[str]:
    """The texts of `source` in a seed-dependent order, read lazily."""
    datasets = _datasets_module()
    label = f"{source.path}{f' ({source.name})' if source.name else ''}"
    try:
        stream = datasets.load_dataset(
            source.path, source.name, split=source.split, streaming=True, data_files=source.data_files
        )
        if source.where:  # before the shuffle, so its buffer holds only rows that are kept
            stream = stream.filter(lambda row: all(row[k] == v for k, v in source.where.items()))
        stream = stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    except Exception as err:  # the hub client raises many kinds of errors
        raise SourceUnavailableError(
            f"could not open the dataset {label}: {type(err).__name__}: {str(err)[:300]}\n"
            "Fix: check the dataset id and your network, or use an offline recipe."
        ) from err
    return _rows(stream, source, label)


def _rows(stream, source: HubSource, label: str) -> Iterator[str]:
    try:
        for row in stream:
            if row[source.text_field]:
                yield row[source.text_field]
    except KeyError as err:
        raise SourceUnavailableError(f"the dataset {label} has no column {err}; fix its HubSource.") from err
    except OSError as err:  # the network clients' errors (connection, HTTP) derive from it
        raise SourceUnavailableError(
            f"reading the dataset {label} failed: {err}. Fix: retry where the hub is "
            "reachable, or use an offline recipe."
        ) from err


def load(collection: str, seed: int, held_out: bool = False) -> dict[str, Iterator[str]]:
    """Documents by category for one of `SOURCES`' collections (`held_out`: of `HELD_OUT`'s), each
    stream read lazily."""
    sources = (HELD_OUT if held_out else SOURCES)[collection]
    _datasets_module()
    if any(_needs_hub(s) for s in sources.values()):
        check_hub()
    return {category: stream_texts(source, seed) for category, source in sources.items()}
