"""What `python -m collab.fit` shows on the console: a step counter with loss and perplexity, and none of
the third-party tips, notes and deprecations that say nothing about the user's run."""

import os
import subprocess
import sys
from pathlib import Path

from tiny_run import TINY_DATA, tiny_inputs

from lora_gpt.cache import cache_dir
from lora_gpt.tokenizer import RANKS_FILENAME

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Tip:", "litlogger", "deprecated", "weights_only", "TPU available", "val_check_interval", "max_steps=")


def test_a_run_shows_steps_and_none_of_the_third_party_noise(tokenizer, tmp_path):
    corpus, base = tiny_inputs(tmp_path)
    options = [*TINY_DATA[: TINY_DATA.index("--no-progress")], "--iterations", "3", "--eval_freq", "1"]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LORA_GPT_CACHE": str(tmp_path / "cache"),
        "LORA_GPT_TOKENIZER": str(cache_dir() / RANKS_FILENAME),  # the ranks the session already holds
    }
    done = subprocess.run(
        [sys.executable, "-m", "collab.fit", "--dataset", str(corpus), "--init", str(base), "--out", "run", *options],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [word for word in NOISE if word in done.stderr + done.stdout] == [], done.stderr
    assert "GPU available" in done.stderr  # Lightning's device and precision lines stay
    assert "step 3/3 |" in done.stdout and "Epoch" not in done.stdout
    assert "loss=" in done.stdout and "val ppl=" in done.stdout
