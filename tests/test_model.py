"""The hand-written GPT-2 against `transformers`' GPT2LMHeadModel, and its save/load round trip."""

import json

import pytest
import torch

from lora_gpt import GPT, GPTConfig
from lora_gpt.weights import PretrainedNotFoundError, WeightsFileError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=1000, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    # Non-trivial biases and norms, so a missed transpose or key cannot hide behind zeros/ones.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(folder)
    return folder, model


def test_logits_match_transformers(hf_folder):
    folder, hf = hf_folder
    ours = GPT.from_pretrained(folder).eval()
    idx = torch.randint(0, 1000, (3, 40))
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)
    assert (got - expected).abs().max().item() < 1e-4


def test_exact_gelu_matches_transformers_gelu_and_is_kept_in_config_json(tmp_path):
    """A checkpoint whose config.json says "gelu" (the exact GELU: the reference code's nn.GELU()) runs
    as transformers runs it, and is saved so; `gelu=` overrides what the file says. GPT-2's own
    "gelu_new" stays the default (test_logits_match_transformers)."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=1000, activation_function="gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # pre-activations and logits of order 1, where the two GELUs differ
        hf.transformer.wte.weight.normal_(0.0, 1.0)
        for block in hf.transformer.h:
            block.mlp.c_fc.weight.normal_(0.0, 0.5)
            block.mlp.c_proj.weight.normal_(0.0, 0.5)
    hf.save_pretrained(tmp_path / "hf")
    exact, tanh = GPT.from_pretrained(tmp_path / "hf").eval(), GPT.from_pretrained(tmp_path / "hf", gelu="tanh").eval()
    assert (exact.config.gelu, tanh.config.gelu) == ("exact", "tanh")
    idx = torch.randint(0, 1000, (2, 30))
    with torch.no_grad():
        expected, got = hf(idx).logits, exact(idx)
        assert (got - expected).abs().max().item() < 1e-4
        assert (tanh(idx) - expected).abs().max().item() > 1e-3  # the override is used
    exact.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["activation_function"] == "gelu"
    with torch.no_grad():
        again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()(idx).logits
        assert (again - got).abs().max().item() < 1e-4


def test_leading_client_dim_is_batch_dim(hf_folder):
    ours = GPT.from_pretrained(hf_folder[0]).eval()
    idx = torch.randint(0, 1000, (2, 3, 16))
    with torch.no_grad():
        stacked = ours(idx)
        flat = ours(idx.reshape(6, 16)).reshape(2, 3, 16, -1)
    torch.testing.assert_close(stacked, flat)


def test_save_pretrained_round_trip_and_transformers_reads_it(hf_folder, tmp_path):
    ours = GPT.from_pretrained(hf_folder[0]).eval()
    ours.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path).eval()
    hf_again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 1000, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(again(idx), ours(idx))
        assert (hf_again(idx).logits - ours(idx)).abs().max().item() < 1e-4


def test_missing_weights_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(PretrainedNotFoundError, match="model.safetensors"):
        (tmp_path / "config.json").write_text("{}")
        GPT.from_pretrained(tmp_path)
    with pytest.raises(PretrainedNotFoundError, match="data.offline_base"):
        GPT.from_pretrained("no-such-model-here", allow_download=False)


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_cut_short_weights_name_the_file_and_the_fix(hf_folder, tmp_path, keep):
    folder, _ = hf_folder
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    weights = (folder / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(weights[: int(len(weights) * keep)])
    with pytest.raises(WeightsFileError, match=f"{tmp_path / 'model.safetensors'} cannot be read .*cut short.*Fix"):
        GPT.from_pretrained(tmp_path)


def test_mismatched_shapes_are_refused(hf_folder, tmp_path):
    folder, _ = hf_folder
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_embd"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="shape"):
        GPT.from_pretrained(tmp_path)


def test_generate_greedy_matches_argmax_and_top_k_restricts():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=50)).eval()
    idx = torch.randint(0, 50, (2, 5))
    out = model.generate(idx, max_new_tokens=4, temperature=0)
    assert out.shape == (2, 9)
    step = idx
    for _ in range(4):
        step = torch.cat([step, model(step)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, step)
    sampled = model.generate(idx, max_new_tokens=1, temperature=1.0, top_k=1)
    assert torch.equal(sampled[:, -1], out[:, 5])


def test_tied_embeddings_and_config_errors():
    model = GPT(GPTConfig.from_name("gpt2-tiny"))
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="known presets"):
        GPTConfig.from_name("gpt5")
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_gpt2_preset_has_124m_parameters():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_name("gpt2"))
    assert model.num_params(non_embedding=False) == 124_439_808
