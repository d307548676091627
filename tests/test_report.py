"""`python -m collab.report`: a report for a run, for a folder of runs, and for folders holding a run
without per-client curves; file names stay readable whatever the dataset path."""

import json
import shutil

import pytest

from collab import report
from collab.run_folder import readable_name, run_dir


def summary_of(run):
    return json.loads((run / "summary.json").read_text())


def test_a_run_gets_curves_trust_rounds_and_before_after(finished_run, capsys):
    run = finished_run[0]
    assert report.main([str(run)]) == 0
    out = capsys.readouterr().out
    summary = summary_of(run)
    before, after = summary["curves"][0], summary["final"]
    assert before["step"] == 0 and after["step"] == 4
    for n, (b, a) in enumerate(zip(before["clients"], after["clients"], strict=True)):
        name = f"c{n} {summary['dataset']['categories'][summary['dataset']['client_categories'][n]]}"
        row = next(line for line in out.splitlines() if line.startswith(name))
        assert row.split()[2:] == [f"{b['ppl']:.2f}", f"{a['ppl']:.2f}", f"{a['ppl'] / b['ppl'] - 1:+.1%}"]
    mean = next(line for line in out.splitlines() if line.startswith("mean"))
    assert mean.split()[-1] == f"{after['mean']['ppl'] / before['mean']['ppl'] - 1:+.1%}"
    folder = run / "report"
    assert sorted(p.name for p in folder.iterdir()) == [
        "client_curves.png",
        "report.md",
        "same_category.png",
        "trust_rounds.png",
    ]
    assert "![trust_rounds](trust_rounds.png)" in (folder / "report.md").read_text()


def test_trust_rounds_shows_the_first_and_last_of_many(finished_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    record = json.loads(next((run / "trust").glob("step_*.json")).read_text())
    for step in range(2, 40, 2):
        (run / "trust" / f"step_{step:06d}.json").write_text(json.dumps({**record, "step": step}))
    drawn = []
    monkeypatch.setattr(report, "_heatmap_grid", lambda panels, path, heading: drawn.extend(panels) or path)
    report.plot_trust_rounds({**summary_of(run), "folder": str(run)}, tmp_path / "t.png")
    steps = [r["step"] for _, r, _ in drawn]
    assert len(steps) == report.MAX_ROUNDS_SHOWN and steps[0] == 2 and steps[-1] == 38


def test_a_folder_of_runs_gets_the_grid_report_and_skips_runs_without_curves(finished_run, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(finished_run[0], root / "a")
    shutil.copytree(finished_run[0], root / "b")
    summary = summary_of(root / "b")
    summary["config"]["run"]["seed"] = 1
    summary["config"]["data"]["dataset"] = "/home/u/my data/corpus.csv"
    (root / "b" / "summary.json").write_text(json.dumps(summary))
    flower = root / "flower" / "run"  # a Flower run's summary before the schemas were one: no curves
    flower.mkdir(parents=True)
    (flower / "summary.json").write_text(json.dumps({"config": summary["config"], "final": summary["final"]}))
    assert report.main([str(root)]) == 0
    out = capsys.readouterr().out
    assert f"note: {flower} skipped: its summary.json has no per-client curves" in out
    assert (root / "a" / "report" / "client_curves.png").is_file()
    assert (root / "b" / "report" / "client_curves.png").is_file()
    assert "| dynamic | " in (root / "report.md").read_text()
    corpus = readable_name(summary_of(root / "a")["config"]["data"]["dataset"])  # the tiny corpus: a temporary folder
    assert sorted(p.name for p in root.glob("*.png")) == sorted(["curves_corpus.csv.png", f"curves_{corpus}.png"])


def test_a_folder_without_runs_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path)])
    assert exit_info.value.code == 2 and "no finished run with per-client curves" in capsys.readouterr().err


@pytest.mark.parametrize(
    "dataset, name",
    [
        ("offline_multi_specific", "offline_multi_specific"),
        ("/home/u/my data/corpus.csv", "corpus.csv"),
        ("/home/u/my data/corpus.csv:mixed", "corpus.csv_mixed"),
        ("my docs/", "my_docs"),
        ("C:\\data\\été (2024)", "été_2024"),
    ],
)
def test_dataset_paths_give_readable_file_names(dataset, name, tmp_path):
    assert readable_name(dataset) == name
    assert run_dir(tmp_path, dataset, "none", 0, 4) == tmp_path / f"{name}-n4" / "none" / "seed0"


def test_the_demos_table_and_heatmaps_from_two_runs(finished_run, tmp_path):
    run = {**summary_of(finished_run[0]), "folder": str(finished_run[0])}
    lines = report.client_table([run, run], ["first", "second"]).splitlines()
    names = " | ".join(report.client_names(run))
    assert lines[0] == f"| run | {names} | mean |"
    base = run["curves"][0]
    assert (
        lines[2]
        == "| base (step 0) | "
        + " | ".join(f"{c['ppl']:.1f}" for c in base["clients"])
        + f" | {base['mean']['ppl']:.1f} |"
    )
    assert lines[3].startswith("| first | ") and lines[3].endswith(f"**{run['final']['mean']['ppl']:.1f}** |")
    assert report.plot_trust_heatmaps([run, run], tmp_path / "h.png", ["a", "b"]) == tmp_path / "h.png"
    assert (tmp_path / "h.png").stat().st_size > 0
    assert report.last_trust(run)["step"] == 4
