r"""Style transfer, code -> prose: a tiny GPT-2 learns to write a Python function's one-line summary from its code.

  python experiments/style_transfer.py [--workdir /tmp/style_transfer]

Everything comes from what Python ships. The examples are the functions of the standard library (`ast` over the
sources that `builtin:python` walks, in the same sorted order): source = the function's code with its docstring
removed (its first 4 non-blank lines, dedented), target = the docstring's first line (a sentence of 3 to 16 words).
The model is first pre-trained from scratch on the first PRETRAIN_BYTES of the same sorted sources (configs/
quickstart.py's shape with 2 layers, 675k parameters; a BPE of 2,048 tokens trained on that text), and the examples
come only from the modules after those bytes, split train / val / test by module, so no function the model
pre-trained on, and no module, is in two splits. Fine-tuning is `finetune.task = 'generation'`
(configs/finetune_generation.py) on the one loop, with a plain-text template the pre-trained model can be prompted
with as it is, zero-shot:

  {source}\n#{target}\n     a comment line after the code; the line break ends it (targets start with a space)

Scores on the test functions are `gptjax.evaluate --task generation`'s: corpus BLEU (sacreBLEU, its signature
below) and ROUGE-L (rouge-score), greedy before and after fine-tuning, and beam search after. The peer knows no
source: it predicts, for every test function, the training target with the best mean ROUGE-L against the others.

Measured on 2026-12-02 on a 2-core cloud VM shared with other jobs (Python 3.11.7's stdlib; 2,000 train, 200 val,
200 test functions; 300 pre-training steps of 16 x 128 tokens, 400 fine-tuning steps of batch 16, lr 1e-3). 3 min
35 s in all: data 2 s, pre-training 77 s, fine-tuning 107 s, the three evaluations 23 s, the rest start-up and
compiles (5 min 12 s in an earlier run under a heavier load; the same numbers to the last digit):

  model and decoding                                           BLEU   ROUGE-L
  pre-trained, zero-shot, greedy                               0.06      2.03
  fine-tuned, greedy                                           0.38     15.68
  fine-tuned, beam 4, no 3-gram repeat                         0.71     14.69
  peer: always ' Return a Traversable object for the given package.'   0.31     16.16
  (sacreBLEU signature nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0)

The validation loss on the target tokens was 4.46, 4.35 and 4.34 nats at steps 133, 266 and 400 (train 3.2).
Samples (test set):

  nntplib.py:last     reference  " Process a LAST command.  No arguments.  Return as for STAT."
                      before     " _convert_b'"
                      after      " Return a file-like object."
  ctypes/macholib/dylib.py:dylib_info
                      reference  " A dylib name can take one of the following four forms:"
                      before     " AIIIIIIIIIIIIIIIICCCCCCCCCCCCCCC"
                      after      " Return a list of the list of the list of the"

What this shows: fine-tuning turns a model that writes noise after `#` into one that writes docstring prose
("Return a ..."), ROUGE-L 2 -> 16; but at this size and training time it has learnt the register, not the content:
a constant sentence scores as well on ROUGE-L, and BLEU stays below 1 (few 4-grams in common with the reference).
The script is the pipeline, measured end to end (data, pre-training, fine-tuning on the one loop, greedy and beam
decoding, sacreBLEU and ROUGE-L), not a result about summarisation; longer runs are its flags away
(--pretrain_steps, --finetune_steps, --train_examples).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import sys
import sysconfig
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRETRAIN_BYTES = 1_500_000  # Pre-training text: the first 1.5 MB of the sorted stdlib sources.
TEMPLATE = "{source}\n#{target}\n"  # The target keeps the space after '#' (see _example).
SKIP = {"test", "tests", "site-packages", "dist-packages", "__pycache__", "idlelib", "turtledemo"}  # As data.py.
SOURCE_LINES = 4


def stdlib_files() -> list[pathlib.Path]:
  """The stdlib sources in `builtin:python`'s order (sorted relative paths, tests and site-packages pruned)."""
  root = sysconfig.get_paths()["stdlib"]
  paths = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = [d for d in subdirs if d not in SKIP]
    paths += [os.path.relpath(os.path.join(directory, f), root) for f in files if f.endswith(".py")]
  return [pathlib.Path(root, rel) for rel in sorted(p.replace(os.sep, "/") for p in paths)]


def _example(function: ast.FunctionDef, lines: list[str]):
  docstring = ast.get_docstring(function)
  if not docstring or not function.body[1:]:
    return None
  summary = docstring.strip().splitlines()[0].strip()
  if not 3 <= len(summary.split()) <= 16 or not summary[:1].isupper() or "`" in summary:
    return None
  doc = function.body[0]
  start = (function.decorator_list[0] if function.decorator_list else function).lineno
  kept = [line for n, line in enumerate(lines[start - 1:function.end_lineno], start)
          if not doc.lineno <= n <= doc.end_lineno and line.strip()]
  source = textwrap.dedent("\n".join(kept[:SOURCE_LINES]))
  # " " + summary: byte-level BPEs attach a space to the word after it, so a prompt ending in "# " would end in a
  # lone space token, text the pre-trained model has rarely seen; ending in "#" it writes " Return ..." as code does.
  return {"source": source, "target": " " + summary}


def build_examples(counts: dict[str, int]) -> dict[str, list[dict]]:
  """Functions of the modules past PRETRAIN_BYTES -> {split: examples}; modules go round-robin to the splits (train
  gets 8 modules in 10), until each split has its count."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  total, out = 0, {split: [] for split in counts}
  order = ["train"] * 8 + ["val", "test"]
  module = 0
  for path in stdlib_files():
    try:
      text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
      continue  # builtin:python skips it too, without counting its bytes.
    total += len(text.encode("utf-8"))
    if total - len(text.encode("utf-8")) < PRETRAIN_BYTES:  # Any part of this file was pre-training text.
      continue
    try:
      tree = ast.parse(text)
    except (SyntaxError, ValueError):
      continue
    split = order[module % len(order)]
    module += 1
    if len(out[split]) >= counts[split]:
      continue
    lines = text.splitlines()
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        example = _example(node, lines)
        if example and len(out[split]) < counts[split]:
          out[split].append({**example, "where": f"{path.relative_to(root)}:{node.name}"})
    if all(len(out[s]) >= counts[s] for s in counts):
      break
  return out


def central_target(targets: list[str], candidates: int = 200, references: int = 400) -> str:
  """The peer that knows no source: the training target with the best mean ROUGE-L against other training targets
  (a sample of each), predicted for every test function."""
  import random  # pylint: disable=g-import-not-at-top
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  rng = random.Random(0)
  pool, refs = rng.sample(targets, min(candidates, len(targets))), rng.sample(targets, min(references, len(targets)))
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  return max(pool, key=lambda c: sum(scorer.score(r, c)["rougeL"].fmeasure for r in refs))


def pretrain_config(steps: int):
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.data.builtin_max_bytes = PRETRAIN_BYTES
  config.model.num_layers = 2
  config.train.steps = steps
  config.opt.warmup_steps = min(config.opt.warmup_steps, steps // 6)
  config.train.eval_every = steps
  config.train.tensorboard = False
  config.eval.tasks = ""
  return config


def finetune_config(init_from: pathlib.Path, data: pathlib.Path, steps: int, lr: float):
  from configs import finetune_generation  # pylint: disable=g-import-not-at-top
  config = finetune_generation.get_config()
  config.init_from = str(init_from)
  config.finetune.train_data, config.finetune.val_data = str(data / "train.jsonl"), str(data / "val.jsonl")
  config.finetune.template = TEMPLATE
  config.finetune.max_new_tokens = 32
  config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
  config.opt.lr = lr
  config.opt.warmup_steps = min(20, steps // 6)
  config.train.steps = steps
  config.train.batch_size = 16
  config.train.eval_every = steps // 3
  config.train.log_every = 25
  config.train.tensorboard = False
  config.eval.batch_size = 40
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("--workdir", default="/tmp/style_transfer")
  parser.add_argument("--pretrain_steps", type=int, default=300)
  parser.add_argument("--finetune_steps", type=int, default=400)
  parser.add_argument("--finetune_lr", type=float, default=1e-3)
  parser.add_argument("--train_examples", type=int, default=2000)
  parser.add_argument("--test_examples", type=int, default=200)
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import gptjax  # pylint: disable=g-import-not-at-top
  from gptjax import evaluate  # pylint: disable=g-import-not-at-top
  from gptjax import text_metrics  # pylint: disable=g-import-not-at-top
  from gptjax.train import loop  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(args.workdir)
  data = workdir / "data"
  data.mkdir(parents=True, exist_ok=True)
  times = {}

  start = time.perf_counter()
  splits = build_examples({"train": args.train_examples, "val": args.test_examples, "test": args.test_examples})
  for split, examples in splits.items():
    (data / f"{split}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
  print({split: len(examples) for split, examples in splits.items()})
  times["data"] = time.perf_counter() - start

  start = time.perf_counter()
  loop.train_and_evaluate(pretrain_config(args.pretrain_steps), workdir / "pretrain")  # Resumes when already done.
  times["pre-training"] = time.perf_counter() - start

  test = splits["test"]
  rows = []

  def score(name, lm, **options):
    begin = time.perf_counter()
    result = evaluate.run_task(lm, "generation", [{"source": e["source"], "target": e["target"]} for e in test],
                               max_new_tokens=32, **options)
    times[f"evaluate: {name}"] = time.perf_counter() - begin
    rows.append((name, result))
    return result

  base = gptjax.load(workdir / "pretrain")
  before = score("pre-trained, zero-shot, greedy", base, template=TEMPLATE)

  start = time.perf_counter()
  result = loop.train_and_evaluate(finetune_config(workdir / "pretrain", data, args.finetune_steps,
                                                   args.finetune_lr), workdir / "finetune")
  times["fine-tuning"] = time.perf_counter() - start
  tuned = gptjax.load(workdir / "finetune")
  after = score("fine-tuned, greedy", tuned)
  score("fine-tuned, beam 4, no 3-gram repeat", tuned, num_beams=4, no_repeat_ngram_size=3)

  constant = central_target([e["target"] for e in splits["train"]])
  peer = text_metrics.generation_metrics([constant] * len(test), [[e["target"]] for e in test])
  rows.append((f"peer: always {constant!r}", peer))
  print(f"\n{'model and decoding':<40} {'BLEU':>6} {'ROUGE-L':>8}")
  for name, r in rows:
    print(f"{name:<40} {r['metrics']['bleu']:>6.2f} {r['metrics']['rougeL']:>8.2f}")
  print(f"(sacreBLEU signature {rows[0][1]['settings']['bleu']})")
  print(f"fine-tuning: best validation loss {result['best_metric']:.3f} at step {result['best_step']}")
  print("\nsamples (test set):")
  for i in (0, len(test) // 2, len(test) - 1):
    print(f"  {test[i]['where']}\n    reference: {test[i]['target']}\n    before:    "
          f"{before['predictions'][i]!r}\n    after:     {after['predictions'][i]!r}")
  print("\ntimes: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))


if __name__ == "__main__":
  main()
