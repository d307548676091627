"""`python -m collab.generate` and `collab.client_model`: text from one client's model of a finished run,
checked against `transformers`' own greedy generation on the client's merged export."""

import pytest
import torch

import collab
from collab import export, generate
from lora_gpt import get_tokenizer

transformers = pytest.importorskip("transformers")

PROMPT = "red item 3"
NEW = 12


@pytest.fixture(scope="module")
def model(finished_run):
    return collab.client_model(finished_run[0], 1)


def test_greedy_text_is_transformers_greedy_generation_on_the_merged_export(finished_run, model, tmp_path, capsys):
    hf = transformers.GPT2LMHeadModel.from_pretrained(export.export(finished_run[0], 1, "merged", tmp_path)).eval()
    ids = torch.tensor([get_tokenizer().encode(PROMPT)])
    expected = hf.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert expected.shape[1] == ids.shape[1] + NEW
    argv = [str(finished_run[0]), "--client", "1", "--prompt", PROMPT, "--greedy", "--max_new_tokens", str(NEW)]
    assert generate.main(argv) == 0
    assert capsys.readouterr().out == get_tokenizer().decode(expected[0].tolist()) + "\n"
    with torch.no_grad():  # the model a user gets from Python continues the same way
        assert torch.equal(model.generate(ids, NEW, temperature=0), expected)


def test_sampling_is_seeded_and_top_k_1_is_greedy(model):
    greedy = collab.generate_text(model, PROMPT, NEW, temperature=0)
    assert collab.generate_text(model, PROMPT, NEW, temperature=1.5, top_k=1, seed=3) == greedy
    sampled = [collab.generate_text(model, PROMPT, NEW, temperature=1.0, top_k=None, seed=s) for s in (0, 0, 1)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_clients_differ_and_an_empty_prompt_starts_a_new_document(finished_run, model):
    other = collab.client_model(finished_run[0], 0)
    ids = torch.tensor([get_tokenizer().encode(PROMPT)])
    with torch.no_grad():
        assert not torch.equal(model(ids), other(ids))  # each client's own adapter
    assert isinstance(collab.generate_text(model, "", 5, temperature=0), str)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--client", "7"], "client_07 not found; the run saved client_00 to client_01"),
        (["--client", "0", "--temperature", "-1"], "--generate.temperature must be >= 0"),
        (["--client", "0", "--max_new_tokens", "0"], "--generate.max_new_tokens must be >= 1"),
    ],
)
def test_bad_requests_fail_naming_the_fix(finished_run, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate.main([str(finished_run[0]), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
