"""Seed-repeat reproduction: every run of a grid gets its own folder, and the results table keeps
runs of different client counts apart."""

import importlib.util
import sys
from pathlib import Path

from collab.report import SUMMARY_FILE, seed_table
from collab.run_folder import run_dir

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `import` would: its dataclasses look their types up there
    spec.loader.exec_module(module)
    return module


def test_grid_runs_of_one_recipe_at_two_client_counts_get_two_folders(tmp_path, capsys):
    reproduce = script("reproduce")
    finished = run_dir(tmp_path, "offline_multi_specific", "none", 0, 4)
    assert finished == tmp_path / "offline_multi_specific-n4" / "none" / "seed0"
    finished.mkdir(parents=True)
    (finished / SUMMARY_FILE).write_text("{}")
    argv = [
        "--recipes",
        "offline_multi_specific:4",
        "offline_multi_specific:8",
        "offline_multi_mixed",
        "--strategies",
        "none",
        "--seeds",
        "0",
        "--out",
        str(tmp_path),
        "--dry_run",
    ]
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert "3 runs in the grid, 1 already finished, 2 to run." in out
    assert out.count("collab.fit --profile paper --trust none") == 2  # the paper's settings unless asked otherwise
    assert f"--out {tmp_path / 'offline_multi_specific-n8' / 'none' / 'seed0'} --no-progress --num_clients 8" in out
    assert f"--out {tmp_path / 'offline_multi_mixed' / 'none' / 'seed0'} --no-progress\n" in out
    assert not any(p.name != "offline_multi_specific-n4" for p in tmp_path.iterdir())  # a dry run writes nothing


def test_seed_table_keeps_client_counts_apart():
    def run(clients, ppl):
        return {
            "config": {"trust": {"strategy": "none"}, "data": {"dataset": "offline_multi_specific"}},
            "final": {"clients": [{"ppl": ppl}] * clients, "mean": {"ppl": ppl}},
        }

    table = seed_table([run(4, 10.0), run(4, 12.0), run(8, 20.0)])
    head = "| strategy | offline_multi_specific, 4 clients | offline_multi_specific, 8 clients |"
    assert table.splitlines()[0] == head
    assert table.splitlines()[2] == "| none | **11.00 ± 1.41 (n=2)** | **20.00 ± 0.00 (n=1)** |"


def test_paired_table_compares_each_seed_with_none_and_naive(tmp_path):
    import json

    from collab.report import paired_table

    def run(strategy, seed, ppl, same=None):
        folder = tmp_path / f"{strategy}{seed}"
        (folder / "trust").mkdir(parents=True)
        if same is not None:
            (folder / "trust" / "step_000010.json").write_text(json.dumps({"quality": {"same_category": same}}))
        return {
            "config": {"trust": {"strategy": strategy}, "data": {"dataset": "d"}, "run": {"seed": seed}},
            "final": {"clients": [{"ppl": ppl}] * 2, "mean": {"ppl": ppl}},
            "folder": str(folder),
        }

    runs = [
        run("none", 0, 100.0),
        run("none", 1, 200.0),
        run("naive", 0, 120.0),
        run("naive", 1, 150.0),
        run("static", 0, 90.0, 1.0),
        run("static", 1, 210.0, 0.5),
    ]
    lines = paired_table(runs, ["none", "naive", "static"]).splitlines()
    assert lines[0] == "**d, 2 clients**"
    # static: (90/100 - 1 + 210/200 - 1) / 2 = -2.5%, lower on seed 0 only; vs naive (90/120 + 210/150) / 2 - 1 = +7.5%
    assert lines[6] == "| static | 150.0 ± 84.9 (n=2) | -2.5% (1/2) | +7.5% (1/2) | 0.75 |"
    # none vs naive: (100/120 - 1 + 200/150 - 1) / 2 = +8.3%
    assert lines[4] == "| none | 150.0 ± 70.7 (n=2) |  | +8.3% (1/2) |  |"
