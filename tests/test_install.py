"""The project as a user installs it, `pip install -e .` (what scripts/setup.sh runs) or `pip install .`,
used from a working directory that holds a `data/` folder of its own, as ML projects do.

Issue 20.9: the editable install was an import hook, which Python consults only after every path
entry, the working directory included; a bare `data/` folder there became the `data` package, and
`python -m collab.fit` failed with `cannot import name 'ClientDataModule' from 'data'`.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
from tiny_run import TINY_RUN

from lora_gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("setup.cfg", "pyproject.toml", "README.md", "lora_gpt", "collab", "data")  # what a build reads


def install(tmp: Path, hook: str) -> Path:
    """The python of a fresh virtual environment that holds the project as pip installs it, built
    from a copy of this checkout by setuptools' hook `hook` (`build_editable`: `pip install -e .`,
    `build_wheel`: `pip install .`); the dependencies are this environment's."""
    source = tmp / "source"
    source.mkdir()
    for name in PROJECT:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    build = f"from setuptools import build_meta; print(build_meta.{hook}({str(tmp / 'wheel')!r}))"
    built = subprocess.run([sys.executable, "-c", build], cwd=source, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp / "venv"], check=True)
    python = tmp / "venv" / "bin" / "python"
    paths = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([python, "-c", paths], capture_output=True, text=True, check=True).stdout.strip())
    zipfile.ZipFile(tmp / "wheel" / built.stdout.split()[-1]).extractall(site)  # a pure wheel installs by unpacking
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after the project's .pth
    return python


@pytest.mark.parametrize("hook", ["build_editable", "build_wheel"])
def test_a_data_folder_in_the_working_directory_breaks_nothing(tmp_path, hook):
    python = install(tmp_path, hook)
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)  # the user's own data folder, no __init__.py
    torch.manual_seed(0)
    GPT(GPTConfig.from_name("gpt2-tiny")).save_pretrained(tmp_path / "base")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed project, not this checkout
    env["LORA_GPT_CACHE"] = str(tmp_path / "cache")
    where = subprocess.run(
        [python, "-c", "import data; print(data.__file__)"], cwd=work, env=env, capture_output=True, text=True
    )
    assert Path(where.stdout.strip()).is_relative_to(tmp_path), where.stderr[-3000:]  # the install's own package
    fit = [python, "-m", "collab.fit", "--dataset", "data/own.csv", "--init", tmp_path / "base", *TINY_RUN]
    result = subprocess.run(fit, cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: data/own.csv does not exist. Fix: give an existing folder")
