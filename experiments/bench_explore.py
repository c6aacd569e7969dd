"""Explorer latency: one full `POST /v1/explore` reply, next to the same computation in Hugging Face PyTorch.

    python experiments/bench_explore.py                       # GPT-2 small shape, random weights, 128 tokens
    python experiments/bench_explore.py --layers=2 --width=128 --heads=4 --vocab=1000 --tokens=32   # a quick one

A full reply (`gptjax.explore.run`, what the route returns, then `json.dumps` of it) holds: every token's rank and
probability, the top-10 next tokens at every position, attention for all layers and heads ([12, 12, 128, 128] as
float16 base64: 4.7 MB of halves), and the logit lens at the last position (13 residual streams through ln_f and the
unembedding). "+ ablation" adds one head switched off: a second forward pass and the comparison.

The Hugging Face side does the same work on the same weights: `GPT2LMHeadModel(output_attentions=True,
output_hidden_states=True)` with eager attention (the one that returns probabilities), log-softmax, top-k and ranks
at every position, the lens through `ln_f` and `lm_head`, and, with the ablation, a second forward with the head's
slice of `c_proj`'s input zeroed by a hook. It stops at tensors: no JSON, no float16 encoding, so it does less.
Times are medians of `--repeats` calls after a warm-up call (gptjax's compile time is the warm-up's excess).

Measured on the development machine: 2 CPU cores shared with other jobs (load average 1-3 during this run; at
load 8-13 every figure was 3-5x larger), jax 0.10.2 CPU, torch 2.13 CPU, float32, random weights without a
tokenizer (token texts are then `<id>`; with GPT-2's tokenizer the per-id text table is built once and cached).

  python experiments/bench_explore.py --repeats=5 --torch_threads=2
  top-10 candidates at 128 positions: largest probability difference from HF 9.9e-10
  GPT-2 shape: layers=12 heads=12 width=768 vocab=50257 (124.4M parameters); 128 tokens; engine Engine
  what                       |  gptjax ms |     HF ms
  forward (logits+attn+hid)  |      237.6 |     210.8
  next tokens + ranks only   |      326.7 |     253.8
  full reply                 |      376.0 |     307.3
  full reply + ablation      |      627.4 |     543.4
  reply size: 6.48 MB of JSON; compile 1.4 s (first calls)

A full reply takes ~0.38 s (goal < 1 s), ~0.63 s with an ablation (a second forward pass through all 12 blocks).
HF is ~20% faster here while doing less (it stops at tensors). About 0.1-0.15 s of ours is host work after the
forward pass in numpy (log-softmax, top-k and ranks over [128, 50257], JSON of 1,280 candidates, the 6.3 MB base64
of the attention); moving the log-softmax and top-k into a jitted program was slower on this CPU (`lax.top_k`).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from absl import app
from absl import flags

_LAYERS = flags.DEFINE_integer("layers", 12, "Transformer blocks (GPT-2 small: 12).")
_HEADS = flags.DEFINE_integer("heads", 12, "Attention heads (GPT-2 small: 12).")
_WIDTH = flags.DEFINE_integer("width", 768, "Model width (GPT-2 small: 768).")
_VOCAB = flags.DEFINE_integer("vocab", 50257, "Vocabulary size (GPT-2: 50257).")
_CONTEXT = flags.DEFINE_integer("context", 1024, "Context length (GPT-2: 1024).")
_TOKENS = flags.DEFINE_integer("tokens", 128, "Tokens in the explored text.")
_TOP_K = flags.DEFINE_integer("top_k", 10, "Candidates per position.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (the median is reported).")
_SKIP_HF = flags.DEFINE_bool("skip_hf", False, "Measure gptjax only.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", None, "torch.set_num_threads for HF (default: torch's).")


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _interleaved_medians(fns: dict, repeats: int) -> tuple[dict, dict]:
  """(seconds of each first call, median seconds of `repeats` more), interleaved so load changes hit all alike."""
  first = {name: _timed(fn) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(_timed(fn))
  return first, {name: statistics.median(t) for name, t in times.items()}


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  import gptjax  # pylint: disable=g-import-not-at-top
  from gptjax import explore  # pylint: disable=g-import-not-at-top
  from gptjax import model as M  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  hf_config = transformers.GPT2Config(vocab_size=_VOCAB.value, n_positions=_CONTEXT.value, n_layer=_LAYERS.value,
                                      n_head=_HEADS.value, n_embd=_WIDTH.value)
  hf_config._attn_implementation = "eager"  # pylint: disable=protected-access  (only eager returns attentions)
  reference = transformers.GPT2LMHeadModel(hf_config).eval()
  with tempfile.TemporaryDirectory() as folder:
    reference.save_pretrained(folder)
    lm = gptjax.load(folder)
  cfg = lm.config
  T, k = _TOKENS.value, _TOP_K.value
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, T).tolist()
  engine = explore.engine_for(lm)
  ablation = ("head", cfg.num_layers // 2, 0)

  def ours(ablate: bool, full: bool = True):
    request = explore.ExploreRequest.parse(lm, {"ids": ids, "top_k": k, "attention": full, "lens": full,
                                                "ablations": [dict(zip(("kind", "layer", "head"), ablation))]
                                                if ablate else []})
    return json.dumps(explore.run(engine, lm, request))

  def ours_forward():
    engine.forward(np.asarray([ids]), hidden_states=True, attention=True)

  fns = {"ours_forward": ours_forward, "ours_next": lambda: ours(False, full=False), "ours_reply": lambda: ours(False),
         "ours_ablation": lambda: ours(True)}

  if not _SKIP_HF.value:
    input_ids = torch.as_tensor([ids])
    targets = input_ids[0, 1:]
    head_dim = cfg.emb_dim // cfg.num_heads

    def hf_reply(ablate: bool, full: bool = True):
      with torch.no_grad():
        out = reference(input_ids, output_attentions=full, output_hidden_states=full)
        logprobs = torch.log_softmax(out.logits[0], -1)
        top = torch.topk(logprobs, k, dim=-1)
        chosen = logprobs[:-1].gather(1, targets[:, None])
        ranks = (logprobs[:-1] > chosen).sum(-1) + 1
        if not full:
          return [top, ranks]
        attention = torch.stack(out.attentions)[:, 0].half()
        # HF's last hidden state already went through ln_f; the others have not.
        streams = torch.stack([h[0, -1] for h in out.hidden_states[:-1]])
        lens = torch.log_softmax(
            torch.cat([reference.lm_head(reference.transformer.ln_f(streams)),
                       reference.lm_head(out.hidden_states[-1][0, -1:])]), -1)
        lens_top = torch.topk(lens, k, dim=-1)
        result = [top, ranks, attention, lens_top]
        if ablate:
          layer, head = ablation[1], ablation[2]

          def zero_head(module, args):
            x = args[0].clone()
            x[..., head * head_dim:(head + 1) * head_dim] = 0
            return (x,)

          hook = reference.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero_head)
          try:
            ablated = torch.log_softmax(reference(input_ids).logits[0, -1], -1)
          finally:
            hook.remove()
          result.append(torch.topk(ablated, k))
        return result

    def hf_forward():
      with torch.no_grad():
        reference(input_ids, output_attentions=True, output_hidden_states=True)

    fns.update(hf_forward=hf_forward, hf_next=lambda: hf_reply(False, full=False), hf_reply=lambda: hf_reply(False),
               hf_ablation=lambda: hf_reply(True))
    # Same weights, same answer: every candidate's probability as HF computes it (random weights give near-ties, so
    # the order of two candidates may differ within rounding; their probabilities may not).
    positions = json.loads(ours(False, full=False))["positions"]
    with torch.no_grad():
      hf_probs = torch.softmax(reference(input_ids).logits[0].double(), -1).numpy()
    gap = max(abs(c["prob"] - hf_probs[t, c["id"]]) for t, p in enumerate(positions) for c in p["top"])
    print(f"top-{k} candidates at {T} positions: largest probability difference from HF {gap:.1e}")

  print(f"GPT-2 shape: layers={cfg.num_layers} heads={cfg.num_heads} width={cfg.emb_dim} vocab={cfg.vocab_size} "
        f"({M.count_params(lm.params) / 1e6:.1f}M parameters); {T} tokens; engine {type(engine).__name__}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
  first, t = _interleaved_medians(fns, _REPEATS.value)
  print(f"{'what':<26} | {'gptjax ms':>10} | {'HF ms':>9}")
  for name, label in (("forward", "forward (logits+attn+hid)"), ("next", "next tokens + ranks only"),
                      ("reply", "full reply"),
                      ("ablation", "full reply + ablation")):
    hf = f"{t[f'hf_{name}'] * 1e3:9.1f}" if f"hf_{name}" in t else f"{'-':>9}"
    print(f"{label:<26} | {t[f'ours_{name}'] * 1e3:10.1f} | {hf}")
  print(f"reply size: {len(ours(False)) / 1e6:.2f} MB of JSON; compile "
        f"{first['ours_reply'] + first['ours_forward'] - t['ours_reply'] - t['ours_forward']:.1f} s (first calls)")


if __name__ == "__main__":
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  app.run(main)
