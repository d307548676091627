"""Packages from Debian's archive, fetched without root: `apt-get download` puts the `.deb` in a
cache folder, `dpkg-deb -x` unpacks it into a temporary folder while its text is read.

This is what makes the offline recipes work on a machine that reaches only the package
registries. The `.deb` files are kept (`$LORA_GPT_DEBS`, default `cache_dir()/debian`), so a
package is downloaded once; the tests point several temporary caches at one download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_gpt.cache import cache_dir

from ..errors import SourceUnavailableError

DEBS_ENV = "LORA_GPT_DEBS"


def debs_dir() -> Path:
    """Where downloaded `.deb` files are kept."""
    return Path(os.environ.get(DEBS_ENV) or cache_dir() / "debs")


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        raise SourceUnavailableError(
            f"`{tool}` was not found: the offline recipes fetch their text from Debian's archive with "
            "`apt-get download` and `dpkg-deb -x` (no root needed), which exist on Debian and Ubuntu. "
            "Fix: run on a Debian/Ubuntu machine (or container), copy the needed .deb files into "
            f"{debs_dir()} (${DEBS_ENV}), or use a recipe of your own data (a folder, .csv or .jsonl)."
        )


def _download_failure(package: str, stderr: str) -> str:
    if "Unable to locate package" in stderr or "no installation candidate" in stderr:
        return (
            f"`apt-get download {package}` failed: apt does not know the package, so its package lists "
            "are missing or out of date (some container images ship without them). Fix: run "
            "`sudo apt-get update` once, then retry; or use a recipe of your own data."
        )
    if any(s in stderr for s in ("Could not resolve", "Failed to fetch", "Temporary failure", "Connection")):
        return (
            f"`apt-get download {package}` could not reach the Debian archive. Fix: allow access to your "
            "apt mirror (e.g. deb.debian.org), or use a recipe of your own data."
        )
    return f"`apt-get download {package}` failed: {stderr.strip()[-400:]}"


def fetch(package: str) -> Path:
    """The `.deb` of `package`, downloaded on first use."""
    folder = debs_dir()
    found = sorted(folder.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    _require("apt-get")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:  # same file system: the move below is atomic
        result = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if result.returncode != 0 or not debs:
            raise SourceUnavailableError(_download_failure(package, result.stderr))
        os.replace(debs[0], folder / debs[0].name)
    return folder / debs[0].name


def fetch_first(packages: tuple[str, ...]) -> Path:
    """The first of several alternative packages that the archive has (releases differ)."""
    errors = []
    for package in packages:
        try:
            return fetch(package)
        except SourceUnavailableError as err:
            errors.append(str(err))
    raise SourceUnavailableError(f"none of {', '.join(packages)} could be fetched:\n" + "\n".join(errors))


@contextmanager
def unpacked(deb: Path) -> Iterator[Path]:
    """The files of a `.deb`, unpacked into a temporary folder that is removed afterwards."""
    _require("dpkg-deb")
    with tempfile.TemporaryDirectory(prefix="lora_gpt-deb-") as tmp:
        result = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True)
        if result.returncode != 0:
            raise SourceUnavailableError(
                f"`dpkg-deb -x {deb}` failed: {result.stderr.strip()[-300:]}\n"
                f"Fix: delete {deb} (it may be truncated) and retry."
            )
        yield Path(tmp)
