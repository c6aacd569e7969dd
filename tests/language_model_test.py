"""gptjax/language_model.py: `LanguageModel` (its checks, repr, engine cache, logits, predict's routing, quantize and
save guards) and `gptjax.load`'s choice among a run folder, a fine-tuning folder, a Hugging Face folder and errors.

Logits parity with PyTorch is hf_test.py's, decoding sampling_test.py's and generation_test.py's, scoring
evaluate_test.py's, quantization quality quantize_test.py's; here the model object itself.
"""

import dataclasses

import jax
import numpy as np
import pytest

import gptjax
from gptjax import finetune
from gptjax import heads
from gptjax import model as M
from gptjax import tasks
from gptjax.language_model import LanguageModel
from gptjax.tokenizer import char_tokenizer
from tests import tiny_lm

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'"


@pytest.fixture(scope="module")
def lm():
  """A one-layer random model, context 64, with a character tokenizer and 20 embedding rows beyond it."""
  return tiny_lm.text_lm(char_tokenizer(ALPHABET))


def test_a_tokenizer_larger_than_the_embedding_is_rejected_and_decode_mode_is_dropped():
  config = tiny_lm.model_config(vocab_size=20)
  with pytest.raises(ValueError, match=r"Tokenizer has 32 tokens but the model's embedding has only vocab_size=20"):
    LanguageModel(config, {}, char_tokenizer(ALPHABET))
  assert LanguageModel(dataclasses.replace(config, decode=True), {}).config.decode is False


def test_repr_names_the_architecture_and_sizes(lm):
  assert repr(lm) == "LanguageModel(gpt2, layers=1, heads=2, width=16, vocab=52, context=64, tokenizer=char)"
  gpt1 = LanguageModel(tiny_lm.model_config("gpt1"), {})
  assert repr(gpt1).startswith("LanguageModel(openai-gpt, layers=2,") and repr(gpt1).endswith("tokenizer=None)")
  # Pre-LN without a final LayerNorm is neither GPT-2 nor GPT-1: the repr says what it is instead.
  assert repr(LanguageModel(tiny_lm.model_config(final_norm=False), {})).startswith("LanguageModel(norm=pre, ")


def test_engines_are_cached_per_name_and_shape_and_the_least_recently_used_goes_first(lm):
  model = LanguageModel(lm.config, lm.params, lm.tokenizer)  # Its own engine cache.
  default = model.engine()
  assert model.engine() is default and (default.num_slots, default.max_length) == (8, 64)
  server = model.engine(name="server")
  assert server is not default  # A server's slots are never shared with lm.generate's.
  small = model.engine(2, 16)
  assert (small.num_slots, small.max_length) == (2, 16)
  model.engine()  # Used again: now the most recent.
  model.engine(4)
  model.engine(1)  # Five engines made, at most four kept: the least recently used ('server') goes.
  assert model.engine() is default and model.engine(2, 16) is small
  assert model.engine(name="server") is not server


def test_logits_equal_the_linen_model_and_ids_are_checked_on_the_host(lm):
  ids = np.array(lm.tokenizer.encode("hello world"))
  logits = lm.logits(ids)  # One sequence: [1, T, V].
  expected = M.GPT(lm.config).apply({"params": lm.params}, ids[None])
  assert logits.shape == (1, len(ids), lm.config.vocab_size) and logits.dtype == np.float32
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)
  # The engine pads ragged rows on the left; each row's real positions keep their logits.
  mask = np.ones((2, len(ids)), bool)
  mask[1, :4] = False
  batch = lm.logits(np.stack([ids, ids]), attention_mask=mask)
  np.testing.assert_allclose(batch[0], logits[0], atol=1e-5)
  np.testing.assert_allclose(batch[1, 4:], lm.logits(ids[4:])[0], atol=1e-5)
  for check in (lm.logits, lm.check_token_ids):  # The engine's check, and the one prompts get before it.
    with pytest.raises(ValueError, match=r"Token id 52 is outside the model's vocabulary \[0, 52\)"):
      check(np.array([1, 52]))
  with pytest.raises(ValueError, match=r"attention_mask shape \(1, 3\) does not match token_ids shape \(1, 2\)"):
    lm.logits([1, 2], attention_mask=np.ones((1, 3)))


def test_predict_on_a_language_model_is_greedy_generate(lm):
  single = lm.predict("hello", max_new_tokens=6)
  assert single == lm.generate(["hello"], 6, temperature=0)[0]
  assert lm.predict(["hello", "a cat"], max_new_tokens=6) == lm.generate(["hello", "a cat"], 6, temperature=0)
  assert lm.predict("hello", max_new_tokens=6, temperature=1.0, seed=3) == lm.generate(["hello"], 6, seed=3)[0]


def _with_head(spec):
  """A one-layer model whose character tokenizer has the task tokens, and an initialised head for `spec`."""
  tokenizer = char_tokenizer(ALPHABET)
  tasks.add_task_tokens(tokenizer)
  model = tiny_lm.random_lm(tiny_lm.model_config(vocab_size=tokenizer.vocab_size, num_layers=1), tokenizer)
  model.head = heads.TaskHead(spec, finetune.init_head(spec, model.config, jax.random.key(1)))
  return model


def test_predict_on_a_fine_tuned_model_is_classify_or_choose():
  classifier = _with_head(tasks.TaskSpec("classification", ("text",), labels=("neg", "pos", "odd")))
  assert classifier.predict("a cat") == classifier.classify("a cat")
  assert classifier.predict(["a cat", "no"], probabilities=True) == classifier.classify(["a cat", "no"],
                                                                                      probabilities=True)
  chooser = _with_head(tasks.TaskSpec("multiple_choice", ("ctx",), choice_fields=("a", "b"), num_choices=2))
  assert chooser.predict(("it rained", ["wet", "dry", "sunny"])) == chooser.choose("it rained", ["wet", "dry", "sunny"])
  pairs = [("it rained", ["wet", "dry"]), ("sky", ["blue", "red", "green"])]
  assert chooser.predict(pairs) == chooser.choose(["it rained", "sky"], [["wet", "dry"], ["blue", "red", "green"]])


def test_quantize_and_save_name_what_they_refuse(lm, tmp_path):
  with pytest.raises(ValueError, match=r"quantize: mode must be one of \('int8', 'int4'\), got 'int2'"):
    lm.quantize("int2")
  with pytest.raises(ValueError, match=r"quantize: kv_cache must be one of .* got 'fp8'"):
    lm.quantize("int8", kv_cache="fp8")
  with pytest.raises(ValueError, match="Unknown save format 'onnx'; supported: 'hf'"):
    lm.save(tmp_path / "x", format="onnx")
  quantized = lm.quantize("int8", kv_cache="int8")
  assert (quantized.quantization, quantized.config.kv_cache_dtype, lm.quantization) == ("int8", "int8", None)
  assert quantized.tokenizer is lm.tokenizer
  back = quantized.dequantize()
  assert back.quantization is None and back.config.kv_cache_dtype == "auto"
  assert all(np.asarray(x).dtype == np.float32 for x in jax.tree.leaves(back.params))
  tuned = _with_head(tasks.TaskSpec("classification", ("text",), labels=("neg", "pos"))).quantize("int8")
  assert tuned.head is not None  # Quantizing keeps the head...
  with pytest.raises(ValueError, match="a quantized model with a fine-tuned head cannot be saved"):
    tuned.save(tmp_path / "tuned")  # ...but its own layout has no place for one.


def test_load_reads_each_kind_of_folder_and_names_what_it_cannot(lm, tmp_path):
  saved = gptjax.load(lm.save(tmp_path / "hf"))
  assert saved.config == lm.config and saved.tokenizer.kind == "char" and saved.head is None
  jax.tree.map(np.testing.assert_array_equal, saved.params, jax.device_get(lm.params))
  quantized = gptjax.load(lm.quantize("int8").save(tmp_path / "int8"))
  assert quantized.quantization == "int8" and quantized.tokenizer.kind == "char"
  # A fine-tuning workdir: its best model, head included.
  tuned = _with_head(tasks.TaskSpec("classification", ("text",), labels=("neg", "pos")))
  tuned.save(tmp_path / "finetune_run" / "best")
  best = gptjax.load(tmp_path / "finetune_run")
  assert best.head.spec == tuned.head.spec and best.classify("a cat") == tuned.classify("a cat")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty is a folder but not a model: expected config.json with"):
    gptjax.load(tmp_path / "empty")
  (tmp_path / "weights.bin").write_bytes(b"")
  with pytest.raises(ValueError, match="weights.bin is a file; gptjax.load expects a model folder or a hub name"):
    gptjax.load(tmp_path / "weights.bin")
  with pytest.raises(FileNotFoundError, match="No such model folder"):
    gptjax.load(str(tmp_path / "missing"))
