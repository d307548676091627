"""collab.flower against `collab.fit`'s batched run, the independent reference: the same seed, data
windows and options give the same adapters and trust matrices, in-process (`flower_grid`), in Flower's
simulation runtime and in its deployment runtime; an absent client is left out and rejoins; a restarted
server goes on from its last saved round; dynamic-token's compact vocabulary gives the full one's
distances; what crosses the network is counted."""

import io
import json
import math
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_grid import InProcessGrid
from safetensors.torch import load_file
from tiny_run import TINY_DATA, tiny_inputs

from collab import fit, report
from collab.cli import load_config
from collab.flower import credentials, launch, traffic
from collab.flower.client_app import make_client_app
from collab.flower.launch import command, prepare, run_folder
from collab.flower.server_app import serve
from collab.flower.strategy import PersonalizedTrust
from collab.flower.token_union import mean_distances, on_union, top_ids, union_ids
from collab.run_folder import RunFolder
from collab.trust import FAMILIES, TopLogits, TopProbabilities
from collab.trust.registry import load_plugins
from lora_gpt import GPTConfig

N = 3
# 3 steps; aggregation after steps 2 and 3 (two rounds); LoRA dropout on (the default 0.1), so each
# client's dropout streams must be its own in both runs.
OPTIONS = [
    "--num_clients",
    str(N),
    "--precision",
    "32-true",
    "--iterations",
    "3",
    "--trust_freq",
    "1",
    "--pretraining_rounds",
    "2",
    "--k",
    "2",
    *TINY_DATA,
]
STRATEGIES = {
    "none": [],
    "naive": [],
    "static": [],
    "dynamic-thresh": ["--trust_temperature", "0.5"],
    "dynamic-ref": ["--ref_score", "loss"],
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flower")
    tiny_inputs(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_GPT_CACHE", str(tmp / "cache"))
        yield tmp


def argv(inputs, out, strategy):
    return [
        "--dataset",
        str(inputs / "corpus"),
        "--init",
        str(inputs / "base"),
        "--out",
        str(out),
        *OPTIONS,
        "--trust",
        strategy,
        *STRATEGIES.get(strategy, []),
    ]


@pytest.fixture(scope="module")
def batched(inputs):
    """`collab.fit`'s run folder for a strategy, run once per module."""
    done = {}

    def get(strategy):
        if strategy not in done:
            assert fit.main(argv(inputs, inputs / "fit" / strategy, strategy)) == 0
            done[strategy] = inputs / "fit" / strategy
        return done[strategy]

    return get


def flower_run(inputs, name, strategy, *extra):
    config, flower = command("test", None).parse([*argv(inputs, inputs / "flower" / name, strategy), *extra])
    return prepare(config, flower, run_folder(config))


def in_process(run, grid=None):
    grid = grid or InProcessGrid(make_client_app(run.run_config), run.num_clients)
    return serve(grid, run.run_config)


def adapters(folder):
    return [load_file(str(folder / "adapters" / f"client_{n:02d}" / "clients.safetensors")) for n in range(N)]


def max_adapter_difference(a, b):
    return max((x[k] - y[k]).abs().max().item() for x, y in zip(adapters(a), adapters(b), strict=True) for k in x)


def trust_matrices(folder):
    return {p.name: torch.tensor(json.loads(p.read_text())["trust"]) for p in sorted((folder / "trust").glob("*.json"))}


def assert_same_run(flower_folder, batched_folder):
    assert max_adapter_difference(flower_folder, batched_folder) <= 1e-5
    ours, theirs = trust_matrices(flower_folder), trust_matrices(batched_folder)
    assert list(ours) == list(theirs) == ["step_000002.json", "step_000003.json"]
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-6, rtol=0)
    final = [json.loads((f / "summary.json").read_text())["final"]["clients"] for f in (flower_folder, batched_folder)]
    for mine, reference in zip(*final, strict=True):
        assert mine["loss"] == pytest.approx(reference["loss"], abs=1e-5)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_flower_ends_where_the_batched_run_ends(strategy, inputs, batched):
    run = flower_run(inputs, strategy, strategy)
    summary = in_process(run)
    assert_same_run(run.folder.path, batched(strategy))
    ours = adapters(run.folder.path)
    assert all(ours[0][k].abs().max() > 0 for k in ours[0] if k.endswith("lora_B"))  # B left zero: trained
    if strategy == "none":  # alone, each client learns from its own data windows
        assert all((ours[0][k] - ours[1][k]).abs().max() > 1e-4 for k in ours[0] if k.endswith("lora_B"))
    last = trust_matrices(run.folder.path)["step_000003.json"]
    assert torch.equal(last, torch.eye(N)) == (strategy == "none")  # trust did something where it should
    assert [r["clients"] for r in summary["trust"]] == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("strategy", ["dynamic-ref", "dynamic-token"])
def test_bounded_scoring_picks_and_weighs_the_batched_runs_peers(strategy, inputs):
    """--trust_peers 1 of 3 clients: the server asks each client about itself and one candidate only
    (dynamic-ref: one peer's adapter down), ranked as `collab.fit` ranks them, with the same trust."""
    bounded = ["--trust_peers", "1", "--trust_explore", "0"]
    batched_folder = inputs / "fit" / f"{strategy}-peers"
    assert fit.main([*argv(inputs, batched_folder, strategy), *bounded]) == 0
    run = flower_run(inputs, f"{strategy}-peers", strategy, *bounded)
    summary = in_process(run)
    assert_same_run(run.folder.path, batched_folder)
    for trust in trust_matrices(run.folder.path).values():
        assert ((trust > 0).sum(1) <= 2).all()
    if strategy == "dynamic-ref":
        one = sum(npy_bytes(t[0]) + len(k) for k, t in adapters(run.folder.path)[0].items())
        peers = [r for r in summary["messages"] if r["message"] == "query.peer_losses"]
        assert len(peers) == 2 * N and all(0 <= r["down"] - one < 200 for r in peers)
        assert traffic.round_traffic(run.config, GPTConfig.from_name("gpt2-tiny"), N) == round_one(summary)


def npy_bytes(tensor):
    buffer = io.BytesIO()
    np.save(buffer, tensor.numpy())
    return len(buffer.getvalue())


def test_bytes_per_message_are_the_records_sent(inputs):
    """An adapter costs its arrays in numpy's format plus their names; the other records a few bytes."""
    naive, ref = (json.loads((inputs / "flower" / s / "summary.json").read_text()) for s in ("naive", "dynamic-ref"))
    one = sum(npy_bytes(t[0]) + len(k) for k, t in adapters(inputs / "flower" / "naive")[0].items())
    rows = {(r["round"], r["client"], r["message"]): r for r in naive["messages"]}
    assert rows[(1, 1, "train")]["down"] < 100  # round 1: every client starts from its own initial adapter
    assert 0 <= rows[(2, 1, "train")]["down"] - one < 100  # then its own average is sent down
    assert 0 <= rows[(2, 1, "train")]["up"] - one < 200  # and its trained adapter (and losses) up
    peers = [r for r in ref["messages"] if r["message"] == "query.peer_losses"]
    assert len(peers) == 2 * N  # one per client and aggregation
    assert all(0 <= r["down"] - (N - 1) * one < 200 and r["up"] < 200 for r in peers)
    for strategy, summary in (("naive", naive), ("dynamic-ref", ref)):  # docs/flower.md's table
        config = load_config(inputs / "flower" / strategy / "config.yaml")
        measured = round_one(summary)
        assert traffic.round_traffic(config, GPTConfig.from_name("gpt2-tiny"), N) == measured
    per = {(c["round"], c["client"]): c for c in ref["traffic"]["per_client_round"]}
    assert per[(2, 2)]["down"] == sum(r["down"] for r in ref["messages"] if (r["round"], r["client"]) == (2, 2))


def round_one(summary):
    """Client 1's messages of the second aggregation round (round 2: round 0 evaluates the base), by
    kind: (down, up) bytes; the evaluation of the last step aside."""
    return {
        r["message"]: (r["down"], r["up"])
        for r in summary["messages"]
        if (r["round"], r["client"]) == (2, 1) and r["message"] != "evaluate"
    }


class CrashAfterFirstRound(Exception):
    pass


def test_a_restarted_server_goes_on_from_its_last_saved_round(inputs, batched, monkeypatch):
    """The server dies after saving its first training round; a new run on the folder, with new client
    contexts (a new Flower run: the clients' states come from their folders), runs only the rounds left
    and ends exactly where an uninterrupted run ends."""
    run = flower_run(inputs, "restart", "naive")
    save = PersonalizedTrust.save

    def save_then_die(self):
        save(self)
        if self.rounds_done == 2:  # round 0 evaluated the base, round 1 trained
            raise CrashAfterFirstRound

    monkeypatch.setattr(PersonalizedTrust, "save", save_then_die)
    with pytest.raises(CrashAfterFirstRound):
        in_process(run, InProcessGrid(make_client_app(run.run_config), N))
    monkeypatch.setattr(PersonalizedTrust, "save", save)
    assert not (run.folder.summary).exists()
    summary = in_process(run, InProcessGrid(make_client_app(run.run_config), N))
    assert_same_run(run.folder.path, batched("naive"))
    trained = [(r["round"], r["client"]) for r in summary["messages"] if r["message"] == "train"]
    assert sorted(trained) == [(r, n) for r in (1, 2) for n in range(N)]  # no round ran twice
    assert [row["step"] for row in summary["train_loss"]] == [1, 2, 3]


class DropClient(InProcessGrid):
    """Client 2's node dies in the middle of its first train message and a new one starts for it."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        dropped = [
            m
            for m in messages
            if m.metadata.message_type == "train"
            and m.metadata.group_id == "1"
            and self.contexts[m.metadata.dst_node_id].node_config["partition-id"] == 2
        ]
        if dropped:
            self.start(2)
        return [r for r in super().send_and_receive([m for m in messages if m not in dropped])]


def test_a_client_that_dies_mid_round_is_left_out_and_rejoins(inputs):
    run = flower_run(inputs, "absent", "naive")
    summary = in_process(run, DropClient(make_client_app(run.run_config), N))
    assert [r["clients"] for r in summary["trust"]] == [[0, 1], [0, 1, 2]]
    dropped = [r for r in summary["messages"] if r["client"] == 2 and r["message"] == "train"]
    assert [r["up"] for r in dropped][0] == 0
    assert [row["loss"][2] is not None for row in summary["train_loss"]] == [True] * 3  # it caught up its steps
    assert all(c is not None for c in summary["final"]["clients"])


@pytest.mark.parametrize("measure", [TopProbabilities(top_k=3), TopLogits(top_k=3)])
def test_token_distances_on_the_union_equal_the_full_vocabulary(measure):
    torch.manual_seed(0)
    clients, sequences, length, vocab = 4, 3, 5, 50
    outputs = [[measure.predict(torch.randn(length, vocab) * 3) for _ in range(sequences)] for _ in range(clients)]
    full = sum(
        measure.distance_sum(torch.stack([outputs[c][s] for c in range(clients)])[:, None]) for s in range(sequences)
    ) / (sequences * length)
    union = [union_ids([top_ids(outputs[c][s], measure.top_k) for c in range(clients)]) for s in range(sequences)]
    compact = [[on_union(outputs[c][s], union[s]) for s in range(sequences)] for c in range(clients)]
    torch.testing.assert_close(mean_distances(measure, compact), full, atol=1e-6, rtol=0)
    assert union[0].shape[-1] < clients * measure.top_k + 1 and (union[0] == -1).any()  # padded, shared rows


def test_simulation_runtime_matches_the_batched_run(inputs, batched):
    """Flower's simulation runtime (Ray actors), as `python -m collab.flower.simulate` runs it, with the
    strategy whose clients measure most: dynamic-token (top ids, then predictions on their union)."""
    out = inputs / "flower" / "simulation"
    assert launch.main("test", None, simulation=True, argv=argv(inputs, out, "dynamic-token-top-k")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert_same_run(out, batched("dynamic-token-top-k"))
    measured = round_one(summary)
    expected = traffic.round_traffic(load_config(out / "config.yaml"), GPTConfig.from_name("gpt2-tiny"), N)
    assert measured.keys() == expected.keys() == {"train", "query.ref_top", "query.ref_values"}
    assert all(measured[k] == expected[k] for k in ("train", "query.ref_top"))
    assert measured["query.ref_values"] <= expected["query.ref_values"]  # the table's union is the widest


def test_deployment_runtime_tolerates_a_client_killed_mid_round(inputs, capsys):
    """`python -m collab.flower.deploy`'s federation: a SuperLink and a SuperNode per client, as processes.
    Client 2's SuperNode is killed (SIGKILL) while it trains and started again: the round goes on with the
    others after --round_timeout, client 2 rejoins on its new node (and is evaluated), and the run ends."""
    run = flower_run(inputs, "deployment", "naive", "--iterations", "2", "--round_timeout", "30")
    deadline = time.monotonic() + 240
    with launch.federation(run, simulation=False) as fed:
        run_id = fed.submit(deadline)
        log = fed.procs.logs / "supernode_02.log"
        while "Receiving: train" not in log.read_text():
            assert time.monotonic() < deadline, "client 2 never got its train message"
            time.sleep(0.2)
        fed.procs.stop("supernode_02", signal.SIGKILL)
        fed.procs.start("supernode_02", fed.supernode_argv(2))
        summary = fed.wait(run_id, deadline, say=False)
    assert "insecure mode: no TLS, and any SuperNode may join" in capsys.readouterr().out
    assert [r["clients"] for r in summary["trust"]] == [[0, 1]]  # the round went on without client 2
    client_2 = [(r["round"], r["message"], r["up"] > 0) for r in summary["messages"] if r["client"] == 2]
    assert client_2 == [
        (0, "query.hello", True),
        (0, "evaluate", True),
        (1, "train", False),
        (1, "query.hello", True),
        (1, "evaluate", True),
    ]
    assert not fed.procs.started  # every process the federation started was stopped


def with_option(argv, flag, value=None):
    """A SuperNode's command line with `flag`'s value replaced, or the flag dropped (`value` None)."""
    at = argv.index(flag)
    return [*argv[:at], flag, value, *argv[at + 2 :]] if value else [*argv[:at], *argv[at + 2 :]]


def test_a_secure_deployment_lets_in_only_its_own_nodes(inputs, batched, capsys):
    """`python -m collab.flower.deploy --secure`: the SuperLink serves TLS and lets in registered SuperNodes only.
    Beside the run's three SuperNodes, one with a key nobody registered and one with a registered key but without
    the CA certificate try to join: both are refused at once. A third registers a key of its own through the
    SuperLink's open API and joins with the CA certificate, claiming to be client 0: the ServerApp talks only to
    the nodes the launcher registered, so it is never asked anything. The run ends with its own three clients in
    every round, with the adapters of `collab.fit`'s batched run."""
    run = flower_run(inputs, "secure", "naive", "--secure")
    strangers = credentials.ensure(inputs / "strangers", 3)  # keys this run did not make
    deadline = time.monotonic() + 300
    with launch.federation(run, simulation=False) as fed:
        outsiders = launch.Processes(fed.procs.logs, fed.procs.env)  # not the federation's: it does not wait on them
        try:
            fed.register(strangers.node_public_key(1), deadline)
            key = "--auth-supernode-private-key"
            outsiders.start("unregistered", with_option(fed.supernode_argv(0), key, str(strangers.node_key(0))))
            without_ca = with_option(fed.supernode_argv(0), "--root-certificates")
            outsiders.start("without_ca", with_option(without_ca, key, str(strangers.node_key(1))))
            fed.register(strangers.node_public_key(2), deadline)
            outsiders.start("self_registered", with_option(fed.supernode_argv(0), key, str(strangers.node_key(2))))
            summary = fed.wait(fed.submit(deadline), deadline, say=False)
            nodes = fed.flwr(["supernode", "list", "local"], deadline)["nodes"]
            refused = {name: outsiders.started[name].wait(60) for name in ("unregistered", "without_ca")}
        finally:
            outsiders.stop_all()
    assert "TLS and SuperNode authentication" in capsys.readouterr().out
    assert "Uvicorn running on https://127.0.0.1" in (fed.procs.logs / "superlink.log").read_text()
    assert refused["unregistered"] != 0 and refused["without_ca"] != 0
    assert "Failed to activate SuperNode" in (fed.procs.logs / "unregistered.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in (fed.procs.logs / "without_ca.log").read_text()
    assert sorted(node["status"] for node in nodes) == ["online"] * (N + 1) + ["registered"]  # never online: no CA
    assert "Receiving" not in (fed.procs.logs / "self_registered.log").read_text()
    assert [r["clients"] for r in summary["trust"]] == [[0, 1, 2], [0, 1, 2]]
    assert_same_run(run.folder.path, batched("naive"))


def test_the_simulation_refuses_secure_before_anything_starts(inputs, capsys):
    out = inputs / "flower" / "secure-simulation"
    with pytest.raises(SystemExit) as stopped:
        launch.main("test", None, simulation=True, argv=[*argv(inputs, out, "naive"), "--secure"])
    assert stopped.value.code == 2 and "--flower.secure is for the deployment runtime" in capsys.readouterr().err
    assert not out.exists()


def test_a_clients_data_view_reads_only_its_own_files(inputs, tmp_path):
    """`ClientDataModule(client=1)` on a copy of the dataset without the other clients' files gives slice 1
    of every batch of the whole view (the same windows: the window counts come from the manifest)."""
    from data import ClientDataModule

    config = flower_run(inputs, "data_view", "naive").config
    whole = ClientDataModule(folder=config.data.data_dir, config=config.data, seed=3)
    mine = tmp_path / "client_1_only"
    shutil.copytree(config.data.data_dir, mine)
    for n in (0, 2):
        shutil.rmtree(mine / f"client_{n:02d}")
    view = ClientDataModule(folder=mine, config=config.data, seed=3, client=1)
    view.setup()  # checks the hashes of the files it reads, and only those
    assert view.num_clients == 1 and view.mixture.tolist() == whole.mixture[1:2].tolist()
    assert torch.equal(view.train_batch(5), whole.train_batch(5)[1:2])
    for split in ("val_batches", "trust_batches"):
        assert all(torch.equal(a, b[1:2]) for a, b in zip(getattr(view, split)(), getattr(whole, split)(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(view.ref_batches(), whole.ref_batches(), strict=True))


EXAMPLE = Path(__file__).parents[1] / "examples" / "better_than_self.py"


def test_a_strategy_of_your_own_runs_alike_in_both_runtimes(inputs):
    """The example strategy, registered from its file (`--trust_plugins`), in `collab.fit` and in Flower's
    simulation runtime, whose ServerApp loads the file in a process of its own: the same adapters and
    trust."""
    options = ["--trust_plugins", str(EXAMPLE), "--trust_temperature", "0.05"]
    batched_folder = inputs / "fit" / "better-than-self"
    assert fit.main([*argv(inputs, batched_folder, "better-than-self"), *options]) == 0
    out = inputs / "flower" / "better-than-self"
    assert launch.main("test", None, simulation=True, argv=[*argv(inputs, out, "better-than-self"), *options]) == 0
    assert_same_run(out, batched_folder)
    assert load_config(out / "config.yaml").trust.plugins == (str(EXAMPLE),)


def test_a_second_run_on_a_folder_in_use_stops_at_once(inputs):
    """Both launchers hold the run folder as collab.fit does: while a run holds it, a second one exits 2
    at once and writes nothing into it."""
    out = inputs / "flower" / "busy"
    with RunFolder(out).locked():
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        started = time.monotonic()
        with pytest.raises(SystemExit) as stopped:
            launch.main("test", None, simulation=True, argv=argv(inputs, out, "naive"))
        assert stopped.value.code == 2 and time.monotonic() - started < 10
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_options_a_client_refuses_stop_the_launcher_before_anything_starts(inputs, capsys):
    out = inputs / "flower" / "refused"
    started = time.monotonic()
    with pytest.raises(SystemExit) as stopped:
        launch.main("test", None, simulation=False, argv=[*argv(inputs, out, "naive"), "--lora_init", "reference"])
    assert stopped.value.code == 2 and time.monotonic() - started < 10
    assert "--lora_init reference" in capsys.readouterr().err
    assert not out.exists()


def test_a_client_error_stops_the_run_with_the_clients_message(inputs, tmp_path):
    """Client 1's token file is damaged after preparation: its app raises at its first message, and the
    simulation stops within seconds with client 1's error, not at the time limit."""
    run = flower_run(inputs, "client-error", "naive", "--seed", "7")
    damaged = run.config.data.data_dir / "client_01" / "train.bin"
    damaged.write_bytes(bytes(reversed(damaged.read_bytes())))
    started = time.monotonic()
    with pytest.raises(launch.FederationError, match=r"client 1 failed in \w+: \S+client_01/train\.bin does not match"):
        launch.launch(run, simulation=True)
    assert time.monotonic() - started < 120  # the time limit is an hour


def test_a_supernode_that_dies_at_start_is_noticed(inputs):
    run = flower_run(inputs, "dead-node", "naive")
    deadline = time.monotonic() + 120
    with launch.federation(run, simulation=False) as fed:
        fed.procs.started["supernode_01"].kill()
        with pytest.raises(launch.FederationError, match="supernode_01"):
            fed.wait(fed.submit(deadline), deadline, say=False)


def test_the_report_reads_a_flower_run(inputs, batched):
    """A Flower run folder has the summary schema of collab.fit's (curves included), so the report reads it."""
    run = flower_run(inputs, "report", "naive")
    in_process(run)
    flower_folder = run.folder.path
    assert report.main([str(flower_folder)]) == 0
    assert (flower_folder / "report").is_dir()
    summary = json.loads((flower_folder / "summary.json").read_text())
    reference = json.loads((batched("naive") / "summary.json").read_text())
    assert summary.keys() - {"traffic", "messages"} == reference.keys()
    assert [c["step"] for c in summary["curves"]] == [c["step"] for c in reference["curves"]] == [0, 3]
    for ours, theirs in zip(summary["curves"], reference["curves"], strict=True):
        assert ours["mean"]["loss"] == pytest.approx(theirs["mean"]["loss"], abs=1e-5)


def test_the_example_strategy_by_hand():
    """`better-than-self` on given losses: only peers whose model beats the client's own get weight, by a
    softmax of the nats they win."""
    load_plugins([str(EXAMPLE)])
    losses = torch.tensor([[2.0, 1.5, 3.0], [1.0, 2.0, 1.0], [4.0, 4.0, 4.0]])

    class Given:
        num_clients = 3

        def pair_losses(self, pairs=None):
            return losses

    family = FAMILIES["better-than-self"](temperature=0.5)
    trust = family.to_trust(family.scores(Given()))
    gains = torch.tensor([0.0, 0.5]) / 0.5
    torch.testing.assert_close(trust[0], torch.cat([gains.softmax(0), torch.zeros(1)]))
    e2 = math.exp(2.0)  # row 1 wins 1 nat from peers 0 and 2, at temperature 0.5
    torch.testing.assert_close(trust[1], torch.tensor([e2, 1.0, e2]) / (2 * e2 + 1))
    torch.testing.assert_close(trust[2], torch.full((3,), 1 / 3))  # ties with its own loss are kept


@pytest.mark.parametrize(
    ("strategy", "attack"), [("dynamic-ref", "noise"), ("dynamic-token", "mimicry"), ("naive", "free-rider")]
)
def test_bad_client_apps_attack_as_the_batched_run_does(strategy, attack, inputs):
    """A bad client as a ClientApp (client N, after the honest ones) sends what the batched run's bad
    row sends: both runs end with the same adapters, trust and honest clients' trust on it."""
    extra = ["--attack.kind", attack, "--attack.bad", "1"]
    out = inputs / "fit" / f"{strategy}-{attack}"
    assert fit.main([*argv(inputs, out, strategy), *extra]) == 0
    run = flower_run(inputs, f"{strategy}-{attack}", strategy, *extra)
    assert run.num_clients == N + 1
    summary = in_process(run)
    theirs = [load_file(str(out / "adapters" / f"client_{n:02d}" / "clients.safetensors")) for n in range(N + 1)]
    ours = [
        load_file(str(run.folder.path / "adapters" / f"client_{n:02d}" / "clients.safetensors")) for n in range(N + 1)
    ]
    assert max((x[k] - y[k]).abs().max().item() for x, y in zip(ours, theirs, strict=True) for k in x) <= 1e-5
    for name, trust in trust_matrices(out).items():
        torch.testing.assert_close(trust_matrices(run.folder.path)[name], trust, atol=1e-6, rtol=0)
    batched_attack = json.loads((out / "summary.json").read_text())["attack"]
    assert [r["step"] for r in summary["attack"]["rounds"]] == [2, 3]
    assert [r["honest_trust_on_bad"] for r in summary["attack"]["rounds"]] == pytest.approx(
        [r["honest_trust_on_bad"] for r in batched_attack["rounds"]], abs=1e-6
    )
    assert summary["attack"]["bad"] == [N]
