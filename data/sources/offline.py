"""The offline corpora: real text that Debian's archive carries, cleaned once and cached.

| corpus | Debian packages | one document is |
| --- | --- | --- |
| `french`, `german`, `italian` | `debian-reference-XX`, `manpages-XX` | consecutive paragraphs, ~2,000 characters |
| `english_manual` | `debian-reference-en` | the same, in English |
| `french_manual`, `german_manual`, `italian_manual` | `debian-reference-XX` | the same, the manual alone |
| `english_manpages` | `manpages`, `manpages-dev` | the same, from man pages (commands, files, syscalls, C library) |
| `java` | `openjdk-17-source` (or a newer JDK's) | one source file of `src.zip`, licence header removed |
| `fortunes_<topic>` | `fortunes` | one fortune, from the files listed in `FORTUNE_TOPICS` |
| `fortunes_de`, `fortunes_it` | `fortunes-de`, `fortunes-it` | one fortune in that language (pretraining only) |

Each corpus is cached as JSON lines under `cache_dir()/corpora/`. A fixed share of every
corpus is reserved for pretraining the offline base model: a document belongs to it when its
sha1 falls in the first `PRETRAIN_PERMILLE` / 1000 of the hash range, so the rule needs no
state, holds across recipes and machines, and keeps duplicates on one side. The corpora in
`PRETRAINING_ONLY` are used by no recipe, so all of their documents are pretraining text.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from lora_gpt.cache import cache_dir

from .debian import fetch, fetch_first, unpacked
from .text import documents, language_of, paragraphs, reflow, roff_to_text

CORPUS_VERSION = 1  # bump when cleaning changes: cached corpora and prepared datasets are rebuilt
PRETRAIN_PERMILLE = 200  # 20% of every corpus is for base pretraining only, never for a client
PRETRAIN_VAL_PERMILLE = 10  # of which these (1% of the corpus) are the pretraining validation set
JAVA_PACKAGES = ("openjdk-17-source", "openjdk-21-source", "openjdk-25-source", "openjdk-11-source")
JAVA_CHARS = 12_000_000  # about 3.5M tokens of Java: ample, and read in seconds
FORTUNE_TOPICS = {
    "computers": ("computers", "linux", "linuxcookie", "perl", "debian", "science", "medicine", "goedel"),
    "literature": ("songs-poems", "art", "love", "tao", "pratchett", "paradoxum"),
    "society": ("politics", "law", "work", "men-women", "education", "people"),
    "wisdom": ("cookie", "wisdom", "platitudes", "miscellaneous", "definitions"),
}
LANGUAGES = {"french": "fr", "german": "de", "italian": "it"}
# Debian has German and Italian fortunes but no French ones: in the language recipes they would
# give two of the three languages a genre of their own, so they only feed the base model.
PRETRAINING_ONLY = frozenset({"fortunes_de", "fortunes_it"})


def hash_permille(doc: str) -> int:
    """A document's fixed place in [0, 1000), from its content."""
    return int.from_bytes(hashlib.sha1(doc.encode("utf-8")).digest()[:4], "big") % 1000


def for_pretraining(doc: str) -> bool:
    """Whether a document is reserved for base pretraining (and so never given to a client)."""
    return hash_permille(doc) < PRETRAIN_PERMILLE


def _debian_reference(language: str, seen: set[str]) -> list[str]:
    with unpacked(fetch(f"debian-reference-{language}")) as root:
        path = next(root.rglob(f"debian-reference.{language}.txt*"))
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            return documents(paragraphs(f.read()), language, seen)


def _manpages(folder: str, language: str, package: str, seen: set[str]) -> list[str]:
    """Man pages of `package` under `usr/share/man/<folder>` (English pages sit at its top)."""
    docs = []
    with unpacked(fetch(package)) as root:
        for page in sorted((root / "usr/share/man" / folder).glob("man*/*.gz")):
            with gzip.open(page, "rt", encoding="utf-8", errors="replace") as f:
                docs += documents(paragraphs(roff_to_text(f.read())), language, seen)
    return docs


def _english_manpages() -> list[str]:
    seen: set[str] = set()
    return _manpages("", "en", "manpages", seen) + _manpages("", "en", "manpages-dev", seen)


def _language(name: str) -> list[str]:
    code, seen = LANGUAGES[name], set[str]()
    return _debian_reference(code, seen) + _manpages(code, code, f"manpages-{code}", seen)


def _fortune_file(path: Path) -> list[str]:
    """The fortunes of one `%`-separated file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    text = re.sub(r".\x08", "", text)  # old terminals' overstrike (bold as "x\bx")
    return [d.strip() for d in re.split(r"\n%\n", text) if len(d.strip()) >= 20]


def _fortunes(files: tuple[str, ...]) -> list[str]:
    with unpacked(fetch("fortunes")) as root:
        return [d for name in files for d in _fortune_file(root / "usr/share/games/fortunes" / name)]


def _foreign_fortunes(code: str) -> list[str]:
    """Every fortune of `fortunes-<code>` in that language (quotes in English and the like dropped)."""
    with unpacked(fetch(f"fortunes-{code}")) as root:
        files = sorted(
            p
            for p in (root / "usr/share/games/fortunes" / code).iterdir()
            if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
        )
        return [d for path in files for d in _fortune_file(path) if language_of(reflow(d)) == code]


def _strip_licence(source: str) -> str:
    # every OpenJDK file opens with the same licence comment: boilerplate, not code
    head = re.match(r"\s*/\*.*?\*/\s*", source, flags=re.S)
    return source[head.end() :] if head and "Copyright" in head.group() else source


def _java() -> list[str]:
    with unpacked(fetch_first(JAVA_PACKAGES)) as root:
        with zipfile.ZipFile(next(root.glob("usr/lib/jvm/*/lib/src.zip"))) as z:
            # ordinary source files of every module except locale tables, in a fixed
            # pseudo-random order so the selection spans the whole JDK
            infos = [
                i
                for i in z.infolist()
                if i.filename.endswith(".java")
                and 1_000 <= i.file_size <= 64_000
                and not i.filename.startswith("jdk.localedata/")
                and not i.filename.endswith(("module-info.java", "package-info.java"))
            ]
            infos.sort(key=lambda i: hashlib.sha1(i.filename.encode()).digest())
            docs, chars = [], 0
            for info in infos:
                if chars >= JAVA_CHARS:
                    break
                docs.append(_strip_licence(z.read(info).decode("utf-8", errors="replace")))
                chars += len(docs[-1])
    return docs


CORPORA: dict[str, Callable[[], list[str]]] = {
    **{name: partial(_language, name) for name in LANGUAGES},
    "english_manual": lambda: _debian_reference("en", set()),
    **{f"{name}_manual": partial(_debian_reference, code, set()) for name, code in LANGUAGES.items()},
    "english_manpages": _english_manpages,
    "java": _java,
    **{f"fortunes_{topic}": partial(_fortunes, files) for topic, files in FORTUNE_TOPICS.items()},
    **{f"fortunes_{code}": partial(_foreign_fortunes, code) for code in ("de", "it")},
}


def corpus(name: str) -> list[str]:
    """All documents of an offline corpus, built from its Debian packages on first use."""
    path = cache_dir() / "corpora" / f"{name}-v{CORPUS_VERSION}.jsonl"
    if not path.exists():
        print(f"building the offline corpus {name!r} from Debian packages (first use only) ...", file=sys.stderr)
        docs = CORPORA[name]()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        os.replace(tmp, path)
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def client_documents(names: tuple[str, ...]) -> list[str]:
    """The distinct documents of one or more corpora that clients may get (the pretraining share
    left out). Duplicates go: a fortune filed under two topics must not land in two splits."""
    return list(dict.fromkeys(d for name in names for d in corpus(name) if not for_pretraining(d)))
