"""Real text from Debian's archive, for machines that reach only the package registries.

Packages are fetched without root (`apt-get download`), unpacked with `dpkg-deb -x` into the
cache, and cleaned to plain-text documents: the Debian Reference manual in four languages,
English fortune files by category, and Java source files from OpenJDK's `src.zip`.
"""
from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from lora_gpt.tokenizer import cache_dir

JAVA_FILES = 1500  # Java sources read from src.zip: plenty of tokens, bounded time
PARAGRAPHS_PER_DOC = 6


class DebianSourceError(RuntimeError):
    """A Debian package could not be fetched or unpacked."""


def package_root(package: str) -> Path:
    """Unpack `package` into the cache (once) and return the folder."""
    root = cache_dir() / "debian" / package
    if (root / ".complete").exists():
        return root
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DebianSourceError(f"{tool} not found: the offline recipes need Debian's package tools "
                                    "(a Debian or Ubuntu machine), or use a recipe of your own data.")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if result.returncode != 0 or not debs:
            raise DebianSourceError(
                f"`apt-get download {package}` failed: {result.stderr.strip()[-300:]}\n"
                "Fix: run `apt-get update` once (as root) so apt knows the package lists, check that "
                "the Debian archive is reachable, or use a recipe of your own data.")
        staging = root.with_name(root.name + ".tmp")
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(staging)], check=True)
        (staging / ".complete").touch()
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    return root


def _paragraph_docs(text: str) -> list[str]:
    """Group blank-line-separated paragraphs into documents of a few paragraphs each."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 40]
    return ["\n\n".join(paragraphs[i:i + PARAGRAPHS_PER_DOC])
            for i in range(0, len(paragraphs), PARAGRAPHS_PER_DOC)]


def debian_reference(language: str) -> list[str]:
    """The Debian Reference manual in `language` (en, fr, de, it) as documents."""
    root = package_root(f"debian-reference-{language}")
    path = root / "usr/share/debian-reference" / f"debian-reference.{language}.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return _paragraph_docs(f.read())


def fortunes(category: str) -> list[str]:
    """One English fortune file (a category such as `computers`), one fortune per document."""
    root = package_root("fortunes")
    text = (root / "usr/share/games/fortunes" / category).read_text(encoding="utf-8", errors="replace")
    return [f.strip() for f in text.split("\n%\n") if len(f.strip()) > 20]


def _strip_license_header(source: str) -> str:
    # every OpenJDK file opens with the same license comment: boilerplate, not code
    return re.sub(r"\A\s*/\*.*?\*/\s*", "", source, count=1, flags=re.S)


def java_sources(limit: int = JAVA_FILES) -> list[str]:
    """Java files from OpenJDK's `src.zip` (java.base first), license headers removed."""
    root = package_root("openjdk-17-source")
    with zipfile.ZipFile(next(root.glob("usr/lib/jvm/openjdk-*/lib/src.zip"))) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".java") and n.startswith("java.base/java/"))
        return [_strip_license_header(z.read(n).decode("utf-8", errors="replace")) for n in names[:limit]]
