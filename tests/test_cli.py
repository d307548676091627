"""Every entry point's command line comes from the one mechanism (`lora_gpt.cli`): each field of its
config groups is an option named as YAML names it (`--lora.rank`, `lora: {rank: ...}`) with the
paper's code's flag as an alias, `--print_config` round-trips through `--config`, profiles are YAML
files that explicit options override, and a config file with an unknown key is refused naming the
known ones."""

import dataclasses
import importlib
import importlib.util
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml

from collab import cli, fit
from collab.config import FitConfig
from lora_gpt import LoRAConfig
from lora_gpt.cli import Command
from lora_gpt.errors import ConfigError
from lora_gpt.options import help_text, short_name

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = [
    "collab.fit",
    "data.prepare",
    "lora_gpt.pretrain",
    "data.offline_base",
    "collab.flower.simulate",
    "collab.flower.deploy",
    "collab.flower.traffic",
    "collab.export",
    "scripts/reproduce.py",
    "scripts/demo.py",
    "collab.report",
    "collab.generate",
]
# Options each entry point needs (to print its configuration), and one it is given in a round trip.
NEEDS = {
    "lora_gpt.pretrain": ["--corpus", "some/folder"],
    "collab.export": ["some/run", "--client", "0", "--format", "peft"],
    "collab.report": ["some/runs"],
    "collab.generate": ["some/run", "--client", "0"],
}
CHANGE = {
    "collab.fit": (["--lora_rank", "8"], ("lora", "rank", 8)),
    "data.prepare": (["--num_clients", "3"], ("data", "num_clients", 3)),
    "lora_gpt.pretrain": (["--steps", "5"], ("pretrain", "steps", 5)),
    "data.offline_base": (["--pretrain.steps", "5"], ("pretrain", "steps", 5)),
    "collab.flower.simulate": (["--round_timeout", "5"], ("flower", "round_timeout", 5.0)),
    "collab.flower.deploy": (["--time_limit", "9"], ("flower", "time_limit", 9.0)),
    "collab.flower.traffic": (["--model", "gpt2-tiny"], ("traffic", "model", "gpt2-tiny")),
    "scripts/reproduce.py": (["--seeds", "3", "4"], ("grid", "seeds", [3, 4])),
    "scripts/demo.py": (["--runs", "none"], ("demo", "runs", ["none"])),
    "collab.export": (["--out", "elsewhere"], ("export", "out", "elsewhere")),
    "collab.report": (["--strategies", "none", "naive"], ("report", "strategies", ["none", "naive"])),
    "collab.generate": (["--top_k", "5"], ("generate", "top_k", 5)),
}
# Fields an entry point leaves out on purpose: data.prepare takes only the data options that decide
# what is prepared (its --seed is the split's); the simulation has no time limit of its own.
HIDDEN = {
    "data.prepare": {
        "data": {
            *("data_dir", "batch_size", "sequence_length", "eval_batches", "eval_overlap", "trust_split", "split_seed")
        }
    },
}


def script(name):
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def entry(name):
    """`(main, command)` of an entry point."""
    if name == "collab.fit":
        return fit.main, cli.fit_command()
    if name == "data.prepare":
        from data import prepare

        return prepare.main, prepare.command()
    if name == "lora_gpt.pretrain":
        from lora_gpt import pretrain

        return pretrain.main, pretrain.command()
    if name == "data.offline_base":
        from data import offline_base

        return offline_base.main, offline_base.command()
    if name.startswith("collab.flower"):
        pytest.importorskip("flwr")
        from collab.flower import deploy, launch, simulate, traffic

        if name.endswith("traffic"):
            return traffic.main, traffic.command()
        if name.endswith("deploy"):
            return deploy.main, launch.command("", None)
        return simulate.main, launch.command("", None)
    if name in ("collab.export", "collab.report", "collab.generate"):
        module = importlib.import_module(name)
        return module.main, module.command()
    module = script(Path(name).stem)
    return module.main, module.command()


def run_main(main, argv, capsys):
    """`main(argv)`'s exit status and output (the entry points that print and exit raise SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def sample(field, tp):
    """Command-line words of a value the field takes (types only: no check runs on them)."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if base is bool:
        return []
    if field.metadata.get("choices"):
        return [str(field.metadata["choices"][-1])]
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        word = {int: "1", float: "0.5", str: "x"}[args[0]]
        return [word] * (1 if args[-1] is Ellipsis else len(args))
    return [{int: "1", float: "0.5"}.get(base, "x")]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_field_is_an_option_named_as_yaml_names_it(name, capsys):
    main, command = entry(name)
    code, text, _ = run_main(main, ["--help"], capsys)
    assert code == 0
    for group, cls in command.groups.items():
        shown = {f.name for f, _ in command.options[group]}
        assert {f.name for f in dataclasses.fields(cls)} - shown == HIDDEN.get(name, {}).get(group, set())
        for f, _ in command.options[group]:
            assert f"--{group}.{f.name}, --{short_name(f)}" in text, f"{group}.{f.name}"
            assert help_text(f).split()[0] in text


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_print_config_round_trips_through_config(name, tmp_path, capsys):
    main, command = entry(name)
    given, (group, key, value) = CHANGE[name]
    code, printed, err = run_main(main, [*NEEDS.get(name, []), *given, "--print_config"], capsys)
    assert code == 0, err
    values = yaml.safe_load(printed)
    assert {g: list(items) for g, items in values.items()} == {
        g: [f.name for f, _ in fields] for g, fields in command.options.items()
    }
    assert values[group][key] == value
    (tmp_path / "saved.yaml").write_text(printed)
    code, again, err = run_main(main, ["--config", str(tmp_path / "saved.yaml"), "--print_config"], capsys)
    assert (code, again) == (0, printed), err


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_the_short_names_are_aliases_of_the_canonical_ones(name):
    _, command = entry(name)
    parser = command.parser()
    for group, fields in command.options.items():
        for f, tp in fields:
            words = sample(f, tp)
            canonical = vars(parser.parse_args([f"--{group}.{f.name}", *words]))
            assert list(canonical) == [f"{group}.{f.name}"]
            assert vars(parser.parse_args([f"--{short_name(f)}", *words])) == canonical
            if not words:  # a switch: its --no- forms too
                assert vars(parser.parse_args([f"--no-{short_name(f)}"])) == {f"{group}.{f.name}": False}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_a_config_file_with_an_unknown_key_is_refused_naming_the_known_ones(name, tmp_path, capsys):
    main, command = entry(name)
    group, fields = next(iter(command.options.items()))
    (tmp_path / "bad.yaml").write_text(f"{group}: {{no_such_option: 1}}\n")
    code, _, err = run_main(main, ["--config", str(tmp_path / "bad.yaml")], capsys)
    known = ", ".join(f.name for f, _ in fields)
    assert (
        code == 2
        and err
        == f"error: --config {tmp_path / 'bad.yaml'}: unknown option {group}.no_such_option; {group} has {known}.\n"
    )
    (tmp_path / "bad.yaml").write_text("no_such_group: {}\n")
    code, _, err = run_main(main, ["--config", str(tmp_path / "bad.yaml")], capsys)
    assert code == 2 and f"unknown group 'no_such_group'; the groups are {', '.join(command.groups)}." in err


def test_the_paper_codes_flags_set_what_the_canonical_names_set():
    """The flags users know from the reference code's README and scripts."""
    paper = [
        "--trust", "dynamic-top-k", "--num_clients", "4", "--k", "2", "--thresh", "0.5",
        "--trust_temperature", "0.5", "--lora_rank", "8", "--lora_alpha", "16", "--lora_dropout", "0.2",
        "--no-lora_mlp", "--lora_causal_self_attention", "--eval_freq", "5", "--pretraining_rounds", "10",
        "--iterations", "50", "--trust_freq", "5", "--dataset", "offline_multi_mixed", "--lora_init", "reference",
        "--init", "gpt2", "--dropout", "0.1", "--lr", "1e-3", "--acc_steps", "2", "--batch_size", "8",
    ]  # fmt: skip
    canonical = [
        "--trust.strategy", "dynamic-top-k", "--data.num_clients", "4", "--trust.k", "2", "--trust.threshold", "0.5",
        "--trust.temperature", "0.5", "--lora.rank", "8", "--lora.alpha", "16", "--lora.dropout", "0.2",
        "--lora.targets", "attn.c_attn", "attn.c_proj", "--run.eval_freq", "5", "--trust.pretraining_rounds", "10",
        "--optim.iterations", "50", "--trust.trust_freq", "5", "--data.dataset", "offline_multi_mixed",
        "--lora.init", "reference", "--run.init", "gpt2", "--run.dropout", "0.1", "--optim.lr", "1e-3",
        "--optim.acc_steps", "2", "--data.batch_size", "8",
    ]  # fmt: skip
    config = cli.parse(paper)
    assert config == cli.parse(canonical) != FitConfig()
    assert (config.lora.dropout, config.run.dropout, config.lora.init, config.run.init) == (
        0.2,
        0.1,
        "reference",
        "gpt2",
    )


def test_errors_name_the_canonical_flag():
    with pytest.raises(ConfigError, match=r"^--lora\.rank must be >= 1, got 0\.$"):
        LoRAConfig(rank=0)
    for group, cls in FitConfig.groups().items():
        assert cls.GROUP == group  # the group a class names in its errors is the one YAML names


def test_each_profile_file_holds_only_what_differs_from_the_defaults():
    command = cli.fit_command()
    defaults = FitConfig().to_dict()
    assert {"cpu", "demo", "paper"} <= set(cli.profile_names())
    for profile in cli.profile_names():
        for group, items in command.profile_values(profile).items():
            for key, value in items.items():
                plain = list(value) if isinstance(value, tuple) else value
                assert plain != defaults[group][key], (profile, group, key)


def test_a_profile_is_applied_then_overridden_by_a_config_file_and_the_command_line(tmp_path):
    assert cli.parse(["--profile", "demo"]).data.num_clients == 6
    assert cli.parse(["--profile", "demo", "--num_clients", "3"]).data.num_clients == 3
    (tmp_path / "run.yaml").write_text("data: {num_clients: 4}\noptim: {lr: 0.5}\n")
    from_file = cli.parse(["--profile", "demo", "--config", str(tmp_path / "run.yaml"), "--data.num_clients", "5"])
    assert (from_file.data.num_clients, from_file.optim.lr, from_file.data.train_tokens) == (5, 0.5, 4000)


def test_adding_a_profile_is_adding_one_file(tmp_path, monkeypatch, capsys):
    for path in cli.PROFILES.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "tiny.yaml").write_text("# A tiny run.\noptim: {iterations: 3}\nlora: {rank: 2}\n")
    monkeypatch.setattr(cli, "PROFILES", tmp_path)
    code, printed, _ = run_main(fit.main, ["--profile", "tiny", "--print_config"], capsys)
    assert code == 0 and yaml.safe_load(printed)["optim"]["iterations"] == 3
    code, text, _ = run_main(fit.main, ["--help"], capsys)
    assert "tiny: A tiny run. Sets --lora.rank 2 --optim.iterations 3." in " ".join(text.split())
    assert "(default 4; tiny: 2)" in " ".join(text.split())  # beside the option it sets
    (tmp_path / "broken.yaml").write_text("optim: {iteration: 3}\n")
    with pytest.raises(ConfigError, match=r"--profile broken \(.*broken.yaml\): unknown option optim.iteration"):
        cli.parse(["--profile", "broken"])


def test_help_and_readme_say_exactly_what_each_profile_sets(capsys):
    command = cli.fit_command()
    code, text, _ = run_main(fit.main, ["--help"], capsys)
    readme = (ROOT / "docs" / "guide.md").read_text()
    for profile in cli.profile_names():
        settings = command.profile_settings(profile)
        said = f"Sets {settings or 'nothing'}."
        assert said in " ".join(text.split()), profile
        assert f"| `{profile}` |" in readme and (f"`{settings}`" in readme if settings else True), profile
    assert "--optim.iterations, --iterations ITERATIONS" in text
    assert "(default 100; paper: 500; reference: 500)" in " ".join(text.split())


def test_a_config_yaml_written_before_newer_options_still_loads(tmp_path):
    """A run folder's config.yaml keeps its keys; options added since take their defaults."""
    (tmp_path / "config.yaml").write_text(
        """trust:
  strategy: dynamic-ref
  trust_freq: 10
  pretraining_rounds: 20
  k: 3
  threshold: null
  temperature: 1.0
  similarity: peft-rows
  ref_score: perplexity
  token_distance: top-probs
  token_top_k: null
  static_rule: overlap
data:
  dataset: offline_multi_specific
  data_dir: /somewhere/datasets/offline_multi_specific-n8-s0-0123456789
  num_clients: 8
  pairing: null
  train_tokens: null
  val_tokens: null
  trust_tokens: null
  ref_tokens: null
  batch_size: 4
  sequence_length: 128
  eval_batches: 4
lora:
  rank: 4
  alpha: 32.0
  dropout: 0.1
  targets: [attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj]
  kernel: auto
  init_seed: null
  init: peft
optim: {iterations: 100, acc_steps: 1, lr: 0.002, betas: [0.9, 0.95], weight_decay: 0.001, warmup_percent: 0.02}
memory: {client_chunk: null}
run: {seed: 0, init: offline, dropout: 0.0, eval_freq: 20, ckpt_freq: null, out: runs/x, accelerator: auto}
"""
    )
    config = cli.load_config(tmp_path / "config.yaml")
    assert (config.trust.strategy, config.data.num_clients, config.trust.peers, config.memory.loss_chunk) == (
        "dynamic-ref",
        8,
        0,
        None,
    )


def test_a_command_refuses_two_options_of_one_short_name():
    @dataclasses.dataclass(frozen=True)
    class A:
        GROUP: typing.ClassVar[str] = "a"
        seed: int = 0

    @dataclasses.dataclass(frozen=True)
    class B:
        GROUP: typing.ClassVar[str] = "b"
        seed: int = 0

    with pytest.raises(ValueError, match=r"share the short names \['seed'\]"):
        Command("x", None, [A, B], dict)


def test_narrow_help_keeps_every_word_whole(capsys, monkeypatch):
    """A word longer than the help's column (a path, a strategy name) is kept whole, not cut."""
    monkeypatch.setenv("COLUMNS", "40")
    code, text, _ = run_main(fit.main, ["--help"], capsys)
    assert code == 0 and "collab/configs/NAME.yaml" in text.split()
    assert {"dynamic-token-thresh,", "dynamic-thresh-token=dynamic-token-thresh,"} <= set(text.split())


def test_a_config_file_that_is_not_utf8_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "latin1.yaml").write_bytes("run: {out: caf\xe9}\n".encode("latin-1"))
    code, _, err = run_main(fit.main, ["--config", str(tmp_path / "latin1.yaml")], capsys)
    assert code == 2 and err.startswith(f"error: --config {tmp_path / 'latin1.yaml'}: line 1 is not UTF-8 text")
