"""`gptjax lm_eval --model gptjax ...` runs lm-eval tasks of all three request kinds, on tasks written here.

The log-likelihoods lm-eval records equal a brute-force log_softmax of `lm.logits` on the unpadded sequence, the
rolling ones equal `lm.score`, and the generations equal `lm.generate`'s greedy continuations.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import gptjax
from gptjax import tokenizer as tokenizer_lib
from tests import tiny_lm

ROOT = pathlib.Path(__file__).parents[1]
QUESTIONS = [
    {"question": "The cat sat on the", "choices": [" mat", " moon", " dog sat"], "label": 0, "answer": " mat"},
    {"question": "Two plus two is ", "choices": ["four", "five"], "label": 0, "answer": "four"},
    {"question": "Hello", "choices": [" world", ", there!"], "label": 1, "answer": " world"},
]
TEXTS = [{"text": "the quick brown fox jumps over the lazy dog. " * 3}, {"text": "Hello world!"}]


def _task_yaml(name, data, body):
  return textwrap.dedent(f"""\
      task: {name}
      dataset_path: json
      dataset_kwargs:
        data_files:
          test: {data}
      test_split: test
      """) + textwrap.dedent(body)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("lm_eval")
  corpus = [q["question"] + c for q in QUESTIONS for c in q["choices"]] + [t["text"] for t in TEXTS]
  tokenizer = tokenizer_lib.train_bpe(corpus * 4, 300)
  assert tokenizer.eos_id is not None
  lm = tiny_lm.text_lm(tokenizer)
  model_dir = lm.save(root / "model")
  tasks = root / "tasks"
  tasks.mkdir()
  (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
  (root / "texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
  (tasks / "choice.yaml").write_text(_task_yaml("gptjax_choice", root / "questions.jsonl", """\
      output_type: multiple_choice
      doc_to_text: "{{question}}"
      doc_to_choice: "{{choices}}"
      doc_to_target: "{{label}}"
      target_delimiter: ""
      metric_list:
        - metric: acc
      """))
  (tasks / "rolling.yaml").write_text(_task_yaml("gptjax_rolling", root / "texts.jsonl", """\
      output_type: loglikelihood_rolling
      doc_to_text: ""
      doc_to_target: "{{text}}"
      metric_list:
        - metric: word_perplexity
      """))
  (tasks / "generate.yaml").write_text(_task_yaml("gptjax_generate", root / "questions.jsonl", """\
      output_type: generate_until
      doc_to_text: "{{question}}"
      doc_to_target: "{{answer}}"
      generation_kwargs:
        until: ["."]
        max_gen_toks: 6
        do_sample: false
      metric_list:
        - metric: exact_match
      """))
  out = root / "out"
  env = dict(os.environ, PYTHONPATH=str(ROOT), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run(
      [sys.executable, "-m", "gptjax", "lm_eval", "--model", "gptjax", "--model_args",
       f"pretrained={model_dir}", "--batch_size", "4", "--tasks", "gptjax_choice,gptjax_rolling,gptjax_generate",
       "--include_path", str(tasks), "--output_path", str(out), "--log_samples"],
      env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  samples = {}
  for path in out.rglob("samples_*.jsonl"):
    task = path.name[len("samples_"):].rsplit("_", 1)[0]
    samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
  return gptjax.load(model_dir), samples, result.stdout


def _brute_force_loglikelihood(lm, context, continuation):
  """lm-eval's token split, then log_softmax of lm.logits over the whole unpadded sequence."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  context_ids = lm.tokenizer.encode(context)
  continuation_ids = lm.tokenizer.encode(context + continuation)[len(context_ids):]
  tokens = context_ids + continuation_ids
  logprobs = np.asarray(jax.nn.log_softmax(lm.logits(tokens[:-1])[0].astype(np.float64), axis=-1))
  rows = np.arange(len(context_ids) - 1, len(tokens) - 1)
  chosen = logprobs[rows, continuation_ids]
  return chosen.sum(), bool((logprobs[rows].argmax(-1) == continuation_ids).all())


def test_loglikelihoods_equal_a_brute_force_log_softmax(setup):
  lm, samples, stdout = setup
  assert "gptjax_choice" in stdout
  records = samples["gptjax_choice"]
  assert len(records) == len(QUESTIONS)
  for record in records:
    question = QUESTIONS[record["doc_id"]]
    logprobs = [resp[0] for resp in record["resps"]]
    assert len(logprobs) == len(question["choices"])
    for (logprob, greedy), choice in zip(logprobs, question["choices"]):
      expected, expected_greedy = _brute_force_loglikelihood(lm, question["question"], choice)
      np.testing.assert_allclose(float(logprob), expected, rtol=1e-4, atol=1e-4)
      assert str(greedy) == str(expected_greedy)  # The samples file stores it as text.
    assert record["acc"] == float(int(np.argmax([float(lp) for lp, _ in logprobs])) == question["label"])


def test_rolling_loglikelihoods_equal_lm_score(setup):
  lm, samples, _ = setup
  for record in samples["gptjax_rolling"]:
    text = TEXTS[record["doc_id"]]["text"]
    (logprob,) = [resp[0] for resp in record["resps"]]
    np.testing.assert_allclose(float(logprob), lm.score(text).logprob, rtol=1e-5, atol=1e-4)


def test_generations_equal_greedy_lm_generate(setup):
  lm, samples, _ = setup
  for record in samples["gptjax_generate"]:
    question = QUESTIONS[record["doc_id"]]["question"]
    (expected,) = lm.generate([question], max_new_tokens=6, temperature=0.0, stop=["."])
    assert record["resps"][0][0] == expected
