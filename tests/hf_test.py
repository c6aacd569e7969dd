"""Hugging Face import/export: logits parity with PyTorch on the same weights, round trips, bad checkpoints."""

import json

import numpy as np
import pytest
import torch
import transformers

import gptjax
from gptjax import hf
from tests import hf_reference

# (vocab, context, layers, heads, width): odd head counts, small vocabularies, short contexts.
SHAPES = [(97, 16, 2, 3, 24), (50, 8, 1, 1, 8), (257, 32, 3, 5, 40)]


@pytest.mark.parametrize("arch", ["gpt2", "openai-gpt"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "v{}_c{}_l{}_h{}_d{}".format(*s))
def test_logits_match_pytorch_on_the_same_weights(tmp_path, arch, shape):
  reference = hf_reference.random_hf_model(arch, *shape)
  reference.save_pretrained(tmp_path)
  lm = gptjax.load(tmp_path)
  assert hf.model_type(lm.config) == arch
  vocab, context = shape[0], shape[1]
  ids = np.random.default_rng(0).integers(0, vocab, size=(2, context))
  ours = lm.logits(ids)
  assert ours.shape == (2, context, vocab) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, hf_reference.torch_logits(reference, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "openai-gpt"])
def test_export_round_trip_loads_in_transformers_with_the_same_logits(tmp_path, arch):
  reference = hf_reference.random_hf_model(arch, 97, 16, 2, 3, 24, seed=1)
  reference.save_pretrained(tmp_path / "in")
  lm = gptjax.load(tmp_path / "in")
  lm.save(tmp_path / "out")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  assert type(reloaded) is type(reference)
  ids = np.arange(16)[None] % 97
  np.testing.assert_allclose(hf_reference.torch_logits(reloaded, ids), lm.logits(ids), atol=1e-4, rtol=0)
  # And back again: gptjax reads what it wrote.
  np.testing.assert_array_equal(gptjax.load(tmp_path / "out").logits(ids), lm.logits(ids))


@pytest.mark.parametrize("arch, mlp_dim", [("gpt2", 40), ("gpt1", 64)])
def test_our_initialised_model_exports_to_transformers(tmp_path, tiny_model_config, tiny_params, arch, mlp_dim):
  config = tiny_model_config(arch, block_size=12, mlp_dim=mlp_dim)
  lm = gptjax.LanguageModel(config, tiny_params(config))
  lm.save(tmp_path)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  assert type(reloaded) is {"gpt2": transformers.GPT2LMHeadModel, "gpt1": transformers.OpenAIGPTLMHeadModel}[arch]
  ids = np.arange(12)[None] * 5 % 61
  np.testing.assert_allclose(hf_reference.torch_logits(reloaded, ids), lm.logits(ids), atol=1e-5, rtol=0)


def test_pytorch_bin_checkpoints_load(tmp_path):
  reference = hf_reference.random_hf_model("gpt2", 50, 8, 1, 1, 8, seed=2)
  torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
  reference.config.to_json_file(tmp_path / "config.json")
  ids = np.arange(8)[None]
  np.testing.assert_allclose(gptjax.load(tmp_path).logits(ids), hf_reference.torch_logits(reference, ids), atol=1e-4)


def test_sharded_safetensors_checkpoints_load(tmp_path):
  reference = hf_reference.random_hf_model("gpt2", 257, 32, 3, 5, 40, seed=3)
  reference.save_pretrained(tmp_path, max_shard_size="40KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  ids = np.arange(20)[None]
  np.testing.assert_allclose(gptjax.load(tmp_path).logits(ids), hf_reference.torch_logits(reference, ids), atol=1e-4)


def _saved(tmp_path, arch="gpt2"):
  hf_reference.random_hf_model(arch, 50, 8, 1, 1, 8).save_pretrained(tmp_path)
  return tmp_path


@pytest.mark.parametrize("field, value, error, message", [
    ("n_positions", 16, hf.CheckpointMismatchError, r"'wpe.weight': expected shape \(16, 8\) .* found \(8, 8\)"),
    ("n_layer", 2, hf.CheckpointMismatchError, r"'h.1.ln_1.weight' .* is missing"),
    ("model_type", "llama", ValueError, "Unsupported Hugging Face model_type 'llama'"),
], ids=["shape_mismatch", "missing_parameter", "unknown_architecture"])
def test_checkpoints_that_do_not_fit_their_config_are_named(tmp_path, field, value, error, message):
  folder = _saved(tmp_path)
  config = json.loads((folder / "config.json").read_text())
  config[field] = value
  (folder / "config.json").write_text(json.dumps(config))
  with pytest.raises(error, match=message):
    gptjax.load(folder)


def test_folder_without_weights_and_missing_paths(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="not a model"):
    gptjax.load(tmp_path)
  with pytest.raises(FileNotFoundError, match="No such model folder"):
    gptjax.load(str(tmp_path / "nope"))


def test_hub_name_offline_gives_a_clear_error(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(FileNotFoundError, match="not a local folder, and fetching it from the Hugging Face hub"):
    gptjax.load("no-such-user/no-such-gpt")


def test_out_of_range_and_overlong_inputs_are_rejected(tmp_path):
  lm = gptjax.load(_saved(tmp_path))
  with pytest.raises(ValueError, match=r"Token id 50 is outside the model's vocabulary \[0, 50\)"):
    lm.logits([1, 2, 50])
  with pytest.raises(ValueError, match="9 tokens exceeds the model's context block_size=8"):
    lm.logits(list(range(9)))


def test_model_folder_with_the_real_gpt2_tokenizer_round_trips(tmp_path):
  from tests import assets  # pylint: disable=g-import-not-at-top

  tokenizer = gptjax.load_tokenizer(assets.gpt2_vocab_dir())
  reference = hf_reference.random_hf_model("gpt2", 50257, 16, 1, 2, 8, seed=4)
  reference.save_pretrained(tmp_path / "in")
  tokenizer.save(tmp_path / "in")
  lm = gptjax.load(tmp_path / "in")
  assert lm.tokenizer is not None and lm.tokenizer.eos_id == 50256
  ids = lm.tokenizer.encode("Hello world")
  assert ids == [15496, 995]
  lm.save(tmp_path / "out")
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  assert hf_tokenizer("Hello world")["input_ids"] == ids
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  assert reloaded.config.eos_token_id == 50256
  np.testing.assert_allclose(hf_reference.torch_logits(reloaded, [ids]), lm.logits(ids), atol=1e-4, rtol=0)


def test_tokenizer_larger_than_the_embedding_is_rejected(tmp_path):
  from tests import assets  # pylint: disable=g-import-not-at-top

  hf_reference.random_hf_model("gpt2", 50, 8, 1, 1, 8).save_pretrained(tmp_path)
  gptjax.load_tokenizer(assets.gpt2_vocab_dir()).save(tmp_path)
  with pytest.raises(ValueError, match="Tokenizer has 50257 tokens but .* vocab_size=50 rows"):
    gptjax.load(tmp_path)
