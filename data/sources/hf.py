"""The paper's datasets through Hugging Face `datasets` (needs the network on first use)."""
from __future__ import annotations

from typing import Any

AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


class HubUnavailableError(RuntimeError):
    """A Hugging Face dataset could not be loaded."""


def load_texts(path: str, text_field: str, max_docs: int, name: str | None = None, split: str = "train",
               **filters: Any) -> list[str]:
    """Up to `max_docs` texts of a dataset, streamed so only what is used is downloaded.

    `path` is a hub id or a local builder/file path (`json`, `parquet` with `data_files`), the
    same call either way: tests point it at local files.
    """
    try:
        import datasets
    except ImportError as err:
        raise HubUnavailableError("the paper's recipes need `pip install datasets`; or use an offline recipe.") from err
    data_files = filters.pop("data_files", None)
    try:
        stream = datasets.load_dataset(path, name, split=split, streaming=True, data_files=data_files)
        texts = []
        for row in stream:
            if all(row.get(k) == v for k, v in filters.items()):
                texts.append(row[text_field])
                if len(texts) >= max_docs:
                    break
    except Exception as err:  # the hub client raises many kinds of errors offline
        raise HubUnavailableError(
            f"could not load the Hugging Face dataset {path!r}{f' ({name})' if name else ''}: "
            f"{type(err).__name__}: {str(err)[:200]}\nFix: connect to the internet once (the data is "
            "then cached), or use an offline recipe such as offline_multi_specific.") from err
    return texts


def ag_news(max_docs: int, path: str = "fancyzhx/ag_news", **kw: Any) -> dict[str, list[str]]:
    return {label: load_texts(path, "text", max_docs, label=i, **kw) for i, label in enumerate(AG_NEWS_LABELS)}


def wikipedia(languages: list[str], max_docs: int, path: str = "wikimedia/wikipedia", **kw: Any) -> dict[str, list[str]]:
    return {lang: load_texts(path, "text", max_docs, name=f"20231101.{lang}", **kw) for lang in languages}


def github_wiki(max_docs: int, code_path: str = "codeparrot/github-code-clean",
                wiki_path: str = "wikimedia/wikipedia", **kw: Any) -> dict[str, list[str]]:
    return {"java": load_texts(code_path, "code", max_docs, name="Java-all", **kw),
            "wikipedia": load_texts(wiki_path, "text", max_docs, name="20231101.en", **kw)}
