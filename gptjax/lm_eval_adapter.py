r"""EleutherAI's lm-evaluation-harness on gptjax models: every task, through LanguageModel's public methods.

  pip install 'gptjax[eval]'
  gptjax lm_eval --model gptjax --model_args pretrained=<workdir or HF folder or hub name> --tasks hellaswag
  # = python -m gptjax.lm_eval_adapter ..., which takes exactly lm_eval's own flags (--include_path, --limit, ...).

lm-eval (0.4.x) finds models only in its own registry and loads no plugins (no entry-point group), so the `lm_eval`
command cannot see `gptjax` by itself: importing this module registers it, and the commands above import it and
then run lm_eval's command line. From Python: `import gptjax.lm_eval_adapter` then
`lm_eval.simple_evaluate(model="gptjax", model_args="pretrained=...", tasks=[...])`, or pass `GptjaxLM(...)`.

The three request kinds:
- `loglikelihood(context, continuation)`: the summed log-probability of the continuation's tokens after the
  context, and whether each is the greedy choice. Tokens are split as lm-eval's HF model splits them: trailing
  spaces of the context move to the continuation, the continuation is what `encode(context + continuation)` adds
  after `encode(context)`, and an empty context is `<|endoftext|>`. Only the last `block_size + 1` tokens are
  read (the context's head is cut). Computed from `lm.logits` on left-padded batches whose length is a power of two,
  so a whole task compiles a handful of programs.
- `loglikelihood_rolling(text)`: `lm.score(text).logprob`, GPT-2's convention (the first token predicted from
  `<|endoftext|>`); texts longer than the context are scored by `lm.score`'s sliding window (stride block/2).
- `generate_until(context, {until, max_gen_toks, temperature, do_sample})`: `lm.generate`, greedy unless
  `do_sample` with a temperature > 0, stopping at any `until` string and at `<|endoftext|>`; a context too long for
  the model keeps its last tokens.
"""

from __future__ import annotations

import collections
import math
import sys

import numpy as np

try:
  from lm_eval.api.model import LM
  from lm_eval.api.registry import register_model
except ImportError:
  raise ImportError("gptjax's lm-eval adapter needs lm-eval: pip install 'gptjax[eval]'") from None

import gptjax

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until tasks that do not set max_gen_toks.


@register_model("gptjax")
class GptjaxLM(LM):
  """A gptjax `LanguageModel` as an lm-eval `LM` (`--model gptjax --model_args pretrained=PATH --batch_size N`)."""

  def __init__(self, pretrained=None, batch_size: int | str = 8, lm: gptjax.LanguageModel | None = None,
               max_batch_size=None, device=None, **unused):
    """Loads the model.

    Args:
      pretrained: What `gptjax.load` takes: a gptjax workdir, a Hugging Face folder, or a hub name.
      batch_size: Rows per forward pass ('auto' = 8).
      lm: An already loaded model instead of `pretrained` (Python use).
      max_batch_size, device: lm-eval passes these to every model; JAX places the arrays itself.
      **unused: other lm-eval model arguments; named in an error.
    """
    super().__init__()
    del max_batch_size, device
    if unused:
      raise TypeError(f"--model_args for gptjax take pretrained and batch_size, not {sorted(unused)}")
    if (lm is None) == (pretrained is None):
      raise ValueError("give exactly one of pretrained=<path or name> and lm=<LanguageModel>")
    self.lm = lm if lm is not None else gptjax.load(pretrained)
    if self.lm.tokenizer is None:
      raise ValueError(f"{pretrained}: the model has no tokenizer, and lm-eval's requests are text")
    self.batch_size = 8 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
    self.block_size = self.lm.config.block_size

  # ---- loglikelihood ----------------------------------------------------------------------------------------------

  def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    eos = self.lm.tokenizer.eos_id
    if not context:
      if eos is None:
        raise ValueError("an empty context needs <|endoftext|> to predict the first token from, and this "
                         "tokenizer has none (GPT-1)")
      return [eos], self.lm.tokenizer.encode(continuation)
    whole = self.lm.tokenizer.encode(context + continuation)
    context_ids = self.lm.tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    del disable_tqdm
    pairs = [self._encode_pair(*request.args) for request in requests]
    return self.continuation_logprobs(pairs)

  def continuation_logprobs(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """(summed log-probability of the continuation ids, all greedy) per (context ids, continuation ids) pair."""
    results: list = [None] * len(pairs)
    rows = []
    for i, (context, continuation) in enumerate(pairs):
      if not continuation:
        results[i] = (0.0, True)
        continue
      if len(continuation) > self.block_size:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's context of "
                         f"{self.block_size}")
      tokens = (context + continuation)[-(self.block_size + 1):]
      rows.append((i, tokens[:-1], continuation))
    # Longest first, so each batch pads little; lengths bucketed to powers of two, so few programs compile.
    rows.sort(key=lambda row: -len(row[1]))
    for lo in range(0, len(rows), self.batch_size):
      batch = rows[lo:lo + self.batch_size]
      length = min(self.block_size, 2 ** math.ceil(math.log2(len(batch[0][1]))))
      ids = np.zeros((self.batch_size, length), np.int32)
      mask = np.zeros((self.batch_size, length), np.int32)
      mask[:, -1] = 1  # Filler rows: one real token, so no row is all padding.
      for r, (_, inputs, _) in enumerate(batch):
        ids[r, length - len(inputs):], mask[r, length - len(inputs):] = inputs, 1
      logits_BTV = self.lm.logits(ids, mask)
      for r, (i, _, continuation) in enumerate(batch):
        logprobs_CV = _log_softmax(logits_BTV[r, length - len(continuation):])
        targets = np.asarray(continuation)
        chosen = logprobs_CV[np.arange(len(continuation)), targets]
        results[i] = (float(chosen.sum()), bool((logprobs_CV.argmax(-1) == targets).all()))
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    del disable_tqdm
    texts = [request.args[0] for request in requests]
    return [float(score.logprob) for score in self.lm.score(texts, batch_size=self.batch_size)] if texts else []

  # ---- generation -------------------------------------------------------------------------------------------------

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    results: list = [None] * len(requests)
    groups = collections.defaultdict(list)  # One generate call per distinct set of generation settings.
    for i, request in enumerate(requests):
      context, kwargs = request.args
      groups[repr(sorted((kwargs or {}).items()))].append((i, context, dict(kwargs or {})))
    for members in groups.values():
      kwargs = members[0][2]
      until = kwargs.pop("until", None) or []
      until = [until] if isinstance(until, str) else list(until)
      max_new = min(int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), self.block_size - 1)
      temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
      for lo in range(0, len(members), self.batch_size):
        chunk = members[lo:lo + self.batch_size]
        prompts = [context or self.lm.tokenizer.decode([self.lm.tokenizer.eos_id]) for _, context, _ in chunk]
        outputs = self.lm.generate(prompts, max_new_tokens=max_new, temperature=temperature, stop=until or None,
                                   truncate_prompt=True)
        for (i, _, _), text in zip(chunk, outputs):
          results[i] = text
    return results


def _log_softmax(logits_TV: np.ndarray) -> np.ndarray:
  logits_TV = logits_TV.astype(np.float64)
  shifted = logits_TV - logits_TV.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def main() -> None:
  """lm_eval's command line, with `gptjax` registered (this module's import did it)."""
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  from gptjax import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()  # Before the first compile: a rerun reads its programs back (gptjax/compilation_cache.py).
  sys.argv[0] = "lm_eval"
  cli_evaluate()


if __name__ == "__main__":
  main()
