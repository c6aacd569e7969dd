"""Weight-only quantization: weight bytes, perplexity, greedy agreement and decode speed per precision.

  PYTHONPATH=$PWD python experiments/bench_quantize.py [--steps 150] [--tokens 256] [--skip_gpt2]

Rows: fp32, bf16 (weights and compute), int8 (per output channel), int4 (groups of 32), int8 + int8 KV cache.
Models: a small trained model (configs/quickstart.py trained `--steps` steps with `gptjax.fit`, cached under
~/.cache/gptjax-bench/quickstart-<steps>) and the GPT-2 small shape with random weights, for which perplexity means
nothing: its rows report bytes, speed and agreement only.

Columns: weight bytes (in memory, scales included) and their ratio to fp32; perplexity on the quickstart run's
validation text (token level, `lm.score`); greedy agreement = the share of `--tokens` greedy tokens equal to fp32's
at the same position (a single prompt; after the first disagreement the continuations differ, so this is strict);
decode tokens/s of one slot after compilation.

Goals (issue 12): int8 <= +1.0% perplexity with >= 99% greedy tokens equal, int4 <= +5%, int8 bytes <= 0.27x fp32.
On CPUs XLA does not fuse the dequantization into the matmul, so int8 / int4 decode more slowly there.

Measured 2026-12-01 on the shared 2-core CPU (`--steps 100 --tokens 256`; 3 prompts of 16 tokens + 112 greedy tokens
each, 336 tokens compared; about 3 minutes for this table, training included):

  quickstart (100 steps)
  | precision | weight MB | x fp32 | perplexity       | greedy agree | decode tok/s |
  |-----------|-----------|--------|------------------|--------------|--------------|
  | fp32      | 4.3       | 1.000  | 257.749          | 100.0%       | 223.4        |
  | bf16      | 2.1       | 0.500  | 257.773 (+0.01%) | 100.0%       | 141.0        |
  | int8      | 1.1       | 0.261  | 257.727 (-0.01%) | 100.0%       | 2369.0       |
  | int4      | 0.7       | 0.162  | 259.727 (+0.77%) | 82.7%        | 2252.0       |
  | int8+kv8  | 1.1       | 0.261  | 257.727 (-0.01%) | 100.0%       | 1741.1       |

  GPT-2 small shape, random weights (one 32-token prompt, 256 greedy tokens)
  | precision | weight MB | x fp32 | perplexity | greedy agree | decode tok/s |
  |-----------|-----------|--------|------------|--------------|--------------|
  | fp32      | 497.8     | 1.000  | n/a        | 100.0%       | 14.6         |
  | bf16      | 248.9     | 0.500  | n/a        | 100.0%       | 12.2         |
  | int8      | 125.3     | 0.252  | n/a        | 70.7%        | 18.6         |
  | int4      | 78.2      | 0.157  | n/a        | 11.3%        | 24.4         |
  | int8+kv8  | 125.3     | 0.252  | n/a        | 67.6%        | 22.0         |
  Random GPT-2-init weights give nearly flat next-token distributions (logit gaps far below a trained model's), so
  any perturbation flips near-ties and the strict positional agreement falls; it says little about trained GPT-2.

Goals: int8 -0.01% perplexity (<= +1.0%: met), 100% greedy tokens equal (>= 99%: met), 0.261x fp32 bytes (<= 0.27x:
met; the float biases and LayerNorms are 1% of this small model); int4 +0.77% (<= +5%: met). The decode column is not
trustworthy: one timed run per row on a CPU shared with other jobs (fp32 slower than int8 by 10x contradicts the
unfused dequantization); rerun alone before quoting speed. No accelerator was used for this table.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import gptjax
from gptjax.inference import quantize as Q

ROWS = ("fp32", "bf16", "int8", "int4", "int8+kv8")


def variant(lm, row: str):
  if row == "fp32":
    return lm
  if row == "bf16":
    config = dataclasses.replace(lm.config, dtype="bfloat16", param_dtype="bfloat16")
    return gptjax.LanguageModel(config, jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), lm.params),
                                lm.tokenizer)
  if row == "int8+kv8":
    return lm.quantize("int8", kv_cache="int8")
  return lm.quantize(row)


def greedy(lm, prompt, tokens):
  """Greedy tokens: several prompts when `tokens` exceed the context (each prompt's continuation fills it)."""
  prompts = prompt if isinstance(prompt[0], list) else [prompt]
  per_prompt = min(tokens, lm.config.block_size - max(len(p) for p in prompts))
  rows = lm.generate(prompts, per_prompt, temperature=0.0, stop_at_eos=False)
  return [t for row in rows for t in row]


def decode_speed(lm, prompt, tokens):
  prompt = prompt[0] if isinstance(prompt[0], list) else prompt  # One slot.
  greedy(lm, prompt, tokens)  # Compiles.
  start = time.perf_counter()
  n = len(greedy(lm, prompt, tokens))
  return n / (time.perf_counter() - start)


def perplexity(lm, texts):
  scores = lm.score(texts)
  return float(np.exp(-sum(s.logprob for s in scores) / sum(s.num_tokens for s in scores)))


def trained_quickstart(steps: int):
  from gptjax.workflow import fit, load_config  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path("~/.cache/gptjax-bench").expanduser() / f"quickstart-{steps}"
  config = load_config(str(pathlib.Path(__file__).parents[1] / "configs" / "quickstart.py"))
  config.train.steps = steps
  config.data.builtin_max_bytes = 3_000_000  # The corpus this file's and bench_distill.py's figures were taken on.
  return fit(config, workdir)


def table(name, lm, prompt, tokens, texts):
  base_bytes = Q.weight_bytes(lm.params)
  ref = greedy(lm, prompt, tokens)
  print(f"\n{name}\n| precision | weight MB | x fp32 | perplexity | greedy agree | decode tok/s |")
  print("|---|---|---|---|---|---|")
  base_ppl = None
  for row in ROWS:
    model = variant(lm, row)
    nbytes = Q.weight_bytes(model.params)
    ppl = perplexity(model, texts) if texts else float("nan")
    base_ppl = ppl if row == "fp32" else base_ppl
    delta = "" if row == "fp32" or not texts else f" ({100 * (ppl / base_ppl - 1):+.2f}%)"
    got = greedy(model, prompt, tokens)
    agree = np.mean(np.asarray(got) == np.asarray(ref))
    speed = decode_speed(model, prompt, tokens)
    ppl_text = f"{ppl:.3f}{delta}" if texts else "n/a (random)"
    print(f"| {row} | {nbytes / 1e6:.1f} | {nbytes / base_bytes:.3f} | {ppl_text} | {100 * agree:.1f}% | "
          f"{speed:.1f} |", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--tokens", type=int, default=256)
  parser.add_argument("--skip_gpt2", action="store_true")
  args = parser.parse_args()
  lm = trained_quickstart(args.steps)
  from gptjax import data  # pylint: disable=g-import-not-at-top
  # The run's own held-out text (same source, cap and fraction as configs/quickstart.py): 20 pieces of 2,000 chars.
  val_text = "".join(data.load_corpus("builtin:python", val_fraction=0.1, builtin_max_bytes=3_000_000).val)
  texts = [val_text[i:i + 2000] for i in range(0, min(len(val_text), 40000), 2000)]
  # 16-token prompts from the validation text; each continuation fills the context, enough of them for --tokens.
  per_prompt = lm.config.block_size - 16
  prompt = [lm.tokenizer.encode(t)[:16] for t in texts[:-(-args.tokens // per_prompt)]]
  table(f"quickstart ({args.steps} steps)", lm, prompt, args.tokens, texts)
  if not args.skip_gpt2:
    from gptjax.model import gpt2_config  # pylint: disable=g-import-not-at-top
    from tests.tiny_lm import random_lm  # pylint: disable=g-import-not-at-top
    big = random_lm(gpt2_config("small", dropout_rate=0.0, attention_dropout_rate=0.0), scale=1.0)
    table("GPT-2 small shape (random weights: perplexity meaningless)", big, list(range(1, 33)), args.tokens, [])


if __name__ == "__main__":
  main()
