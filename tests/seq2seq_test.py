"""Conditional fine-tuning, `finetune.task = 'generation'` (gptjax/seq2seq.py, gptjax/train/seq2seq.py): the template
layout, the loss on target tokens only, a real run through the one loop, and the fine-tuned model's predictions
through `gptjax.load`, `python -m gptjax.predict` and `python -m gptjax.evaluate --task generation`."""

import json
import os
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

import gptjax
from tests import tiny_lm
from configs import finetune_generation
from gptjax import eval_data
from gptjax import model as M
from gptjax import seq2seq
from gptjax import sharding
from gptjax import tasks
from gptjax import tokenizer as tokenizer_lib
from gptjax.language_model import LanguageModel
from gptjax.train import loop
from gptjax.train import schema

REPO = pathlib.Path(__file__).resolve().parents[1]
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'"
# The task: a source's first letter decides its target (of several words, so that BLEU has 4-grams to count).
ANSWERS = {"a": "yes it is so", "b": "no it is not so", "c": "it may be so"}


def _records(rows):
  return [(f"data.jsonl:{i + 1}", row) for i, row in enumerate(rows)]


def test_template_pieces_and_bad_templates():
  prefix, end = seq2seq.parse_template("Q: {source}<|delimiter|>{target}<|endoftext|>")
  assert prefix == [("text", "Q: "), ("source", "{source}"), ("special", "<|delimiter|>")]
  assert end == [("special", "<|endoftext|>")]
  assert seq2seq.GenerationSpec(template=seq2seq.TLDR_TEMPLATE).special_tokens == ["<|endoftext|>"]
  for template, message in [("{target}{source}!", "must contain {source} once and, after it, {target} once"),
                            ("{source} {source} {target}.", "must contain {source} once"),
                            ("{source}: {target}", "has nothing after {target}"), ("no fields", "{source} once")]:
    with pytest.raises(ValueError, match=message) as error:
      seq2seq.parse_template(template)
    assert repr(template) in str(error.value)


def test_examples_are_prefix_target_end_marker_and_fields_are_plain_text():
  tok = tokenizer_lib.train_bpe(tiny_lm.CORPUS + ["the source and the target <|endoftext|>"], 300)
  assert tok.eos_id is not None
  spec = seq2seq.GenerationSpec(template="Q: {source}<|delimiter|>{target}<|endoftext|>")
  before = tok.vocab_size
  ids = seq2seq.add_template_tokens(tok, spec)
  assert tok.vocab_size == before + 1 and ids["<|endoftext|>"] == tok.eos_id  # Only the delimiter was missing.
  rows = [{"source": "Hello <|endoftext|> world", "target": "Stream"}, {"source": "日本語", "target": "emoji 😀"}]
  data = seq2seq.encode_examples(spec, tok, ids, _records(rows), 64)
  for i, row in enumerate(rows):
    with tasks._plain_text(tok):  # pylint: disable=protected-access
      source, target = tok.encode(row["source"]), tok.encode(row["target"])
    expected = tok.encode("Q: ") + source + [ids["<|delimiter|>"]] + target + [tok.eos_id]
    assert data.tokens[i, :data.lengths[i]].tolist() == expected
    assert data.prefix_lengths[i] == len(expected) - len(target) - 1
    assert (data.tokens[i, data.lengths[i]:] == 0).all()
  assert tok.eos_id not in data.tokens[0, :data.prefix_lengths[0]]  # A literal <|endoftext|> in a field is text.


def test_over_long_examples_lose_the_end_of_their_source_never_the_target():
  tok = tokenizer_lib.char_tokenizer(ALPHABET)
  spec = seq2seq.GenerationSpec()
  ids = seq2seq.add_template_tokens(tok, spec)
  assert set(ids) == {"<|delimiter|>", "<|endoftext|>"} and tok.eos_id == ids["<|endoftext|>"]  # Both added.
  rows = [{"source": "abcdefghij", "target": "xyz"}, {"source": "ab", "target": "q"}]
  data = seq2seq.encode_examples(spec, tok, ids, _records(rows), 10)
  assert tok.decode(data.tokens[0, :data.lengths[0]]) == "abcde<|delimiter|>xyz<|endoftext|>"
  assert data.num_truncated == 1 and data.lengths.tolist() == [10, 5]
  with pytest.raises(ValueError, match="data.jsonl:1: the source's 10 tokens do not fit in the 5 left"):
    seq2seq.encode_examples(seq2seq.GenerationSpec(truncate=False), tok, ids, _records(rows), 10)
  with pytest.raises(ValueError, match="data.jsonl:1: no room for the source"):
    seq2seq.encode_examples(spec, tok, ids, _records([{"source": "ab", "target": "abcdefghi"}]), 10)
  with pytest.raises(ValueError, match="data.jsonl:1: missing field 'target'"):
    seq2seq.encode_examples(spec, tok, ids, _records([{"source": "ab", "answer": "x"}]), 10)


def _tiny(tok, seed=0):
  config = M.ModelConfig(vocab_size=40, block_size=32, num_layers=2, num_heads=2, emb_dim=32, mlp_dim=64)
  return config, jax.device_get(nn.meta.unbox(jax.jit(M.init_params, static_argnums=0)(config, jax.random.key(seed))))


def _batch(tok, rows, length=24):
  spec = seq2seq.GenerationSpec()
  data = seq2seq.encode_examples(spec, tok, seq2seq.add_template_tokens(tok, spec), _records(rows), length)
  return {"tokens": data.tokens, "prefix_lengths": data.prefix_lengths, "lengths": data.lengths}


def test_only_the_targets_predictions_have_a_gradient():
  tok = tokenizer_lib.char_tokenizer(ALPHABET)
  batch = _batch(tok, [{"source": "abcdef", "target": "xyz"}, {"source": "ab", "target": "hello"}])
  B, L = batch["tokens"].shape
  logits = jax.random.normal(jax.random.key(0), (B, L, 40))
  grads = jax.grad(lambda x: seq2seq.target_nll_sum(x, batch["tokens"], batch["prefix_lengths"],
                                                     batch["lengths"])[0])(logits)
  scored = np.abs(np.asarray(grads)).sum(-1) > 0  # [B, L]: positions whose prediction the loss reads.
  for b in range(B):
    prefix, length = batch["prefix_lengths"][b], batch["lengths"][b]
    # Position t predicts token t + 1: the target's tokens and the end marker, nothing of the source or padding.
    assert np.flatnonzero(scored[b]).tolist() == list(range(prefix - 1, length - 1))
  _, count = seq2seq.target_nll_sum(logits, batch["tokens"], batch["prefix_lengths"], batch["lengths"])
  assert count == (3 + 1) + (5 + 1)


def test_the_loss_is_the_targets_cross_entropy_given_the_source():
  tok = tokenizer_lib.char_tokenizer(ALPHABET)
  rows = [{"source": "the cat", "target": "sat"}, {"source": "a dog ran far", "target": "home!"}]
  batch = _batch(tok, rows)
  config, params = _tiny(tok)
  sums = jax.jit(seq2seq.loss_sums, static_argnums=0)(config, params, batch)
  lm = LanguageModel(config, params, tok)
  total, count = 0.0, 0
  for b, row in enumerate(rows):  # Each example alone, unpadded, through the inference engine.
    ids = batch["tokens"][b, :batch["lengths"][b]]
    logp = jax.nn.log_softmax(jnp.asarray(lm.logits(ids)[0]), axis=-1)
    answer = range(batch["prefix_lengths"][b], len(ids))  # The target and <|endoftext|>.
    assert tok.decode(ids[answer.start:]) == row["target"] + "<|endoftext|>"
    total -= sum(float(logp[t - 1, ids[t]]) for t in answer)
    count += len(answer)
  assert float(sums["tokens"]) == count
  np.testing.assert_allclose(float(sums["loss_sum"]), total, rtol=1e-5)


# ---- A real run through the loop, and the model it exports -------------------------------------------------------


def _write_task(directory, counts=(("train", 96), ("val", 24))):
  rng = np.random.default_rng(0)
  for split, count in counts:
    with open(directory / f"{split}.jsonl", "w") as f:
      for i in range(count):
        first = "abc"[i % 3]
        source = first + "".join(rng.choice(list("defghij"), int(rng.integers(3, 8))))  # Ragged lengths.
        f.write(json.dumps({"source": source, "target": ANSWERS[first]}) + "\n")


def _config(directory, steps=60):
  config = finetune_generation.get_config()
  settings = {"init_from": str(directory / "hf"), "finetune.train_data": str(directory / "train.jsonl"),
              "finetune.val_data": str(directory / "val.jsonl"), "finetune.max_new_tokens": 16,
              "model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0, "opt.lr": 1e-2, "opt.warmup_steps": 2,
              "train.steps": steps, "train.batch_size": 16, "train.eval_every": 20, "train.log_every": 10,
              "train.tensorboard": False, "eval.batch_size": 8}
  for key, value in settings.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
  """A tiny GPT-2 (random weights, character tokenizer) fine-tuned for 60 steps on the first-letter task."""
  directory = tmp_path_factory.mktemp("generation")
  tok = tokenizer_lib.char_tokenizer(ALPHABET)
  LanguageModel(*_tiny(tok), tok).save(directory / "hf")
  _write_task(directory)
  result = loop.train_and_evaluate(_config(directory), directory / "work",
                                   mesh=sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  return directory, result


def test_a_run_learns_the_targets_and_its_workdir_predicts_them(tuned):
  directory, result = tuned
  log = [json.loads(line) for line in (directory / "work" / "metrics.jsonl").read_text().splitlines()]
  val = [m["val_loss"] for m in log if "val_loss" in m]
  assert len(val) == 3 and val[-1] < val[0] / 4 and result["metric"] == "loss" and result["best_step"] == 60
  lm = gptjax.load(directory / "work")  # The workdir's best model, the task and template with it.
  assert lm.head.spec == seq2seq.GenerationSpec(max_new_tokens=16)
  assert lm.tokenizer.token_to_id("<|delimiter|>") is not None and lm.tokenizer.eos_id is not None
  examples = [json.loads(line) for line in (directory / "val.jsonl").read_text().splitlines()]
  predictions = lm.predict([e["source"] for e in examples])
  assert np.mean([p == e["target"] for p, e in zip(predictions, examples)]) >= 0.9
  assert lm.predict(examples[0]["source"]) == predictions[0]
  # Beam options pass through to lm.generate, on the template's prompt.
  beams = lm.predict([e["source"] for e in examples[:3]], num_beams=3, num_return_sequences=2)
  prompts = [lm.tokenizer.encode(e["source"]) + [lm.tokenizer.token_to_id("<|delimiter|>")] for e in examples[:3]]
  expected = lm.generate(prompts, 16, num_beams=3, num_return_sequences=2, stop=[[lm.tokenizer.eos_id]])
  assert beams == [lm.tokenizer.decode(ids) for ids in expected] and len(beams) == 6


def test_a_template_without_an_end_marker_is_a_config_error_before_anything_runs(tmp_path):
  config = _config(tmp_path)
  config.finetune.template = "{source} => {target}"
  with pytest.raises(schema.ConfigError, match=r"config.finetune: template '\{source\} => \{target\}' has nothing"):
    loop.train_and_evaluate(config, tmp_path / "work")
  assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_predict_and_evaluate_commands_on_the_fine_tuned_workdir(tuned, tmp_path):
  directory, _ = tuned
  lm = gptjax.load(directory / "work")
  examples = [json.loads(line) for line in (directory / "val.jsonl").read_text().splitlines()][:9]
  examples[1]["target"] = "no it was not so"  # Not every prediction right: BLEU below 100.
  data = tmp_path / "test.jsonl"
  data.write_text("".join(json.dumps(e) + "\n" for e in examples))
  out = _cli("gptjax.predict", f"--model={directory / 'work'}", f"--data={data}", "--num_beams=2")
  assert out.returncode == 0, out.stderr
  predictions = [json.loads(line)["prediction"] for line in out.stdout.splitlines()]
  assert predictions == lm.predict([e["source"] for e in examples], num_beams=2)
  metrics = json.loads(out.stderr.strip().splitlines()[-1][len("metrics: "):])
  assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [[e["target"] for e in examples]]).score)

  # Several references for one example; the reported BLEU is sacreBLEU's over the predictions evaluate returns.
  examples[2] = {"source": examples[2]["source"], "targets": [examples[2]["target"], "it may not be"]}
  data.write_text("".join(json.dumps(e) + "\n" for e in examples))
  result_file = tmp_path / "result.json"
  out = _cli("gptjax.evaluate", f"--model={directory / 'work'}", "--task=generation", f"--data={data}",
             "--num_beams=2", "--length_penalty=0.5", "--noprogress", f"--output={result_file}")
  assert out.returncode == 0, out.stderr
  result = json.loads(result_file.read_text())
  assert result["predictions"] == lm.predict([e["source"] for e in examples], num_beams=2, length_penalty=0.5)
  references = [e.get("targets") or [e["target"]] for e in examples]
  streams = [[r[k] if k < len(r) else None for r in references] for k in range(2)]
  expected = sacrebleu.corpus_bleu(result["predictions"], streams)
  assert result["metrics"]["bleu"] == pytest.approx(expected.score) and 0 < expected.score < 100
  assert result["settings"]["bleu"].startswith("nrefs:var|") and "bleu" in out.stdout and "rougeL" in out.stdout
  assert result["settings"]["decoding"].startswith("beam search") and "num_beams=2" in result["settings"]["decoding"]
  assert result["settings"]["template"] == seq2seq.DEFAULT_TEMPLATE and result["counts"]["references"] == 10
  bad = _cli("gptjax.evaluate", f"--model={directory / 'work'}", "--task=generation", f"--data={data}",
             "--length_penalty=0.5")
  assert bad.returncode == 2 and bad.stderr.strip() == ("error: --length_penalty applies to beam search only: add "
                                                        "--num_beams=K (K > 1), or drop it")


def test_generation_flags_with_another_task_are_an_error_naming_them(tmp_path):
  out = _cli("gptjax.evaluate", f"--model={tmp_path}", "--task=perplexity", f"--data={tmp_path / 'x.jsonl'}",
             "--num_beams=2", "--template={source}: {target}.")
  assert out.returncode == 2
  assert out.stderr.strip() == "error: only --task generation takes --template, --num_beams; this is --task perplexity"


def test_generation_data_reads_source_and_one_or_several_references_and_names_bad_lines(tmp_path):
  path = tmp_path / "g.jsonl"
  path.write_text(json.dumps({"source": "a", "target": "b"}) + "\n" + json.dumps({"source": "c", "targets": ["d", "e"]})
                  + "\n")
  records = eval_data.load_task_data("generation", str(path))
  assert [eval_data.references(r) for r in records.items] == [["b"], ["d", "e"]]
  for line, message in [({"source": "a"}, "needs 'target' (a string) or 'targets'"),
                        ({"source": "a", "targets": []}, "'targets' must be a non-empty list of strings"),
                        ({"target": "b"}, "'source' must be a string")]:
    path.write_text(json.dumps({"source": "x", "target": "y"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=f"g.jsonl line 2: {re.escape(message)}"):
      eval_data.load_task_data("generation", str(path))
  with pytest.raises(ValueError, match="generation reads JSONL"):
    eval_data.load_task_data("generation", f"text:{path}")
