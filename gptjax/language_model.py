"""`LanguageModel`: a model config, its parameters and its tokenizer, behind one object.

`gptjax.load(path_or_name)` builds one from a Hugging Face folder or hub name (and, once trained, a gptjax workdir).
Token ids are checked on the host before they reach a jitted function, where an out-of-range id would be clipped
silently.

A leaf: every forward pass goes through the inference engine (`lm.engine()`, `gptjax/inference/engine.py`), and the
modules that use a model (evaluate, finetune, probe, serve) import this one, never the reverse.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import heads
from gptjax import hf
from gptjax import paths
from gptjax import seq2seq
from gptjax.inference import beam
from gptjax.inference import engine as engine_lib
from gptjax.inference import quantize as quantize_lib
from gptjax.inference import scoring
from gptjax.inference.sampling import SamplingParams
from gptjax.model import ModelConfig

TokenIds = Union[Sequence[int], Sequence[Sequence[int]], np.ndarray]


class LanguageModel:
  """A GPT with its parameters and (optionally) its tokenizer.

  Attributes:
    config: The `ModelConfig`.
    params: Parameter tree (plain arrays, HF names).
    tokenizer: A `gptjax.tokenizer.Tokenizer`, or None when the model came without one.
  """

  def __init__(self, config: ModelConfig, params: dict, tokenizer: Any = None):
    self.config = dataclasses.replace(config, decode=False)
    self.params = params
    self.tokenizer = tokenizer
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
      raise ValueError(f"Tokenizer has {tokenizer.vocab_size} tokens but the model's embedding has only "
                       f"vocab_size={config.vocab_size} rows")

  def __repr__(self) -> str:
    c = self.config
    try:
      arch = hf.model_type(c)
    except ValueError:
      arch = f"norm={c.norm}"
    return (f"LanguageModel({arch}, "
            f"layers={c.num_layers}, heads={c.num_heads}, width={c.emb_dim}, vocab={c.vocab_size}, "
            f"context={c.block_size}, tokenizer={getattr(self.tokenizer, 'kind', None)})")

  _MAX_ENGINES = 4  # Engines kept per model (each may hold a slot cache).

  def engine(self, num_slots: int = 8, max_length: Optional[int] = None, *, name: str = "default"
             ) -> engine_lib.Engine:
    """The inference engine with `num_slots` slots of `max_length` tokens (default: the context), made once and
    cached on the model (the few most recently used).

    An engine's slots serve one `Scheduler` at a time: `name` keeps users apart (`lm.generate` uses its own, so a
    server's engine is never disturbed by it).
    """
    engines = self.__dict__.setdefault("_engines", {})
    key = (name, num_slots, self.config.block_size if max_length is None else max_length)
    engine = engines.pop(key, None) or engine_lib.Engine(self, num_slots=key[1], max_length=key[2])
    engines[key] = engine  # Most recently used last.
    while len(engines) > self._MAX_ENGINES:
      engines.pop(next(iter(engines)))
    return engine

  def check_token_ids(self, ids: np.ndarray) -> None:
    """Raises ValueError naming the first id outside [0, vocab_size) (the engine's own check)."""
    engine_lib.check_vocabulary(self.config, np.asarray(ids))

  def logits(self, token_ids: TokenIds, attention_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Next-token logits for every position.

    Args:
      token_ids: [T] or [B, T] ints (a list, nested list or array).
      attention_mask: Optional [B, T] 1/0 marking real tokens (left padding for ragged batches).

    Returns:
      float32 array [B, T, V] (B = 1 for a single sequence).
    """
    ids = np.asarray(token_ids)
    if attention_mask is not None and np.shape(attention_mask) != (ids[None] if ids.ndim == 1 else ids).shape:
      raise ValueError(f"attention_mask shape {np.shape(attention_mask)} does not match token_ids shape "
                       f"{(ids[None] if ids.ndim == 1 else ids).shape}")
    return self.engine().forward(ids, attention_mask).logits_BTV

  def score(self, texts: Union[str, Sequence[str]], *, context: Optional[int] = None, stride: Optional[int] = None,
            batch_size: int = 8):
    """Log-probability of each text under the model, batched and jitted.

    Each text is scored alone. GPT-2 convention: the first token is predicted from `<|endoftext|>`, so every token
    counts. A tokenizer without `<|endoftext|>` (GPT-1) has nothing to predict the first token from: it is context
    only and not counted. Texts longer than `context` are scored with a sliding window (`gptjax.evaluate`).

    Args:
      texts: One string or a list of strings.
      context: Window length in tokens (default: the model's block_size).
      stride: Step between windows of a long text (default: context // 2).
      batch_size: Rows per forward pass.

    Returns:
      A `TextScore` (`logprob` in nats, `num_tokens` scored, `num_bytes` UTF-8) per text; a single one for a
      single string.
    """
    single = isinstance(texts, str)
    scores = scoring.score_texts(self, [texts] if single else texts, context=context, stride=stride,
                                 batch_size=batch_size)
    return scores[0] if single else scores

  # ----- Decoding (on the engine's slots: gptjax/inference/engine.py, generation.py, sampling.py) ----------------

  def generate(self, prompts, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               repetition_penalty: float = 1.0, seed: int = 0, stop=None, num_samples: int = 1,
               stop_at_eos: bool = True, truncate_prompt: bool = False, *, num_beams: int = 1,
               length_penalty: float = 1.0, early_stopping=False, num_return_sequences: int = 1,
               no_repeat_ngram_size: int = 0, min_new_tokens: int = 0) -> list:
    """Continues each prompt by up to `max_new_tokens` tokens, with a cached decoding loop compiled once per shape.

    The next token is chosen from the last logits l (a vector over the vocabulary) in this order (as Hugging Face):
      1. repetition penalty r (CTRL, Keskar et al. 2019): for every token id present in the prompt or generated so
         far, l_i <- l_i / r if l_i > 0 else l_i * r. r = 1 is off; r > 1 discourages repeats.
      2. temperature T: p = softmax(l / T). T = 0 is greedy: argmax l (the lowest id among ties); then the steps
         below cannot change the result and `seed` is unused.
      3. top-k: logits below the k-th largest become -inf (ties with the k-th are kept). k = 0 is off.
      4. top-p (nucleus, Holtzman et al. 2019): with the remaining probabilities sorted decreasing, p_(1) >= p_(2)
         >= ..., token (i) is kept iff p_(1) + ... + p_(i-1) < top_p: the smallest set whose mass reaches top_p,
         never empty. top_p = 1 is off.
      5. The token is drawn from softmax of what is left, with a key derived from (seed, prompt index, sample
         index, step): results do not depend on which other prompts share the batch.
    The rows run through the engine's slots: a list longer than the slot count streams through them.

    Stopping: each row stops on its own, at `<|endoftext|>` (when the tokenizer has one and `stop_at_eos`; GPT-1
    has none, so it stops only at `stop` sequences or `max_new_tokens`), at any `stop` sequence, or after
    `max_new_tokens` tokens. The stop sequence or `<|endoftext|>` is not part of the returned continuation.

    Args:
      prompts: A list of strings, or a list of token-id lists. None: one unconditional sample, started from
        `<|endoftext|>` as GPT-2 samples.
      max_new_tokens: Most tokens to generate per sample. The prompt plus this must fit in `config.block_size`.
      temperature: T >= 0 (0 = greedy).
      top_k: k >= 0 and <= vocab size (0 = off).
      top_p: In (0, 1] (1 = off).
      repetition_penalty: r > 0 (1 = off).
      seed: Integer seed of the draws.
      stop: Stop sequences: a string, a list of strings (text prompts only: matched on the generated text, and
        the loop also stops early when the generated ids equal the string's encoding), a token-id list or a list of
        them (matched on ids). A list with one such entry per prompt (each a list, or None) gives per-prompt stops.
      num_samples: Samples per prompt.
      stop_at_eos: Stop at `<|endoftext|>` (False: always generate `max_new_tokens`, e.g. for benchmarks).
      truncate_prompt: When prompt + max_new_tokens exceed the context, keep only the prompt's last
        `block_size - max_new_tokens` tokens instead of raising.
      num_beams: K > 1: beam search as Hugging Face's `generate(num_beams=K)` (`gptjax/inference/beam.py`);
        deterministic, so temperature, top_k, top_p and num_samples other than their defaults are an error.
      length_penalty: Beam search: a finished hypothesis scores sum(log p) / length ** length_penalty.
      early_stopping: Beam search: True stops a prompt at K finished hypotheses; False (HF's default) when no
        running beam can beat them (HF's heuristic); 'never' as HF.
      num_return_sequences: Beam search: the best this many hypotheses per prompt (<= num_beams); without beams,
        the same as `num_samples`.
      no_repeat_ngram_size: n > 0: never generate an n-gram already in the prompt or the continuation.
      min_new_tokens: `<|endoftext|>` (and single-token stops) are banned for the first this many tokens.

    Returns:
      The continuations (without the prompt), prompt-major: `len(prompts) * num_samples` strings for text prompts,
      token-id lists for id prompts.

    Raises:
      ValueError: an empty or overlong prompt, an id outside the vocabulary, or a parameter outside its range (the
        message names it).
    """
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    # ----- generation helper: beams and per-row history run in their own program (gptjax/inference/beam.py) -----
    if num_beams != 1 or no_repeat_ngram_size or min_new_tokens or num_return_sequences != 1:
      if num_beams > 1:  # Beam search is deterministic: a sampling setting would be silently ignored.
        unused = [f"{name}={value!r}" for name, value, default in (
            ("temperature", temperature, 1.0), ("top_k", top_k, 0), ("top_p", top_p, 1.0),
            ("num_samples", num_samples, 1)) if value != default]
        if unused:
          raise ValueError(f"{', '.join(unused)} not used by beam search (num_beams={num_beams}): leave temperature, "
                           f"top_k, top_p and num_samples at their defaults (num_return_sequences picks how many "
                           f"hypotheses per prompt)")
      if num_beams == 1 and num_samples != 1:
        num_return_sequences = num_samples * num_return_sequences
      return beam.generate(self, prompts, max_new_tokens, params, num_beams=num_beams, length_penalty=length_penalty,
                           early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                           no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens, seed=seed,
                           stop=stop, stop_at_eos=stop_at_eos, truncate_prompt=truncate_prompt)
    # ----- end of generation helper -----
    return engine_lib.generate(self, prompts, max_new_tokens, params, seed=seed, stop=stop, num_samples=num_samples,
                               stop_at_eos=stop_at_eos, truncate_prompt=truncate_prompt)

  def stream(self, prompt, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             repetition_penalty: float = 1.0, seed: int = 0, stop=None, stop_at_eos: bool = True,
             truncate_prompt: bool = False):
    """Yields the continuation of one prompt piece by piece as tokens arrive, for servers and notebooks.

    Same arguments and maths as `generate` for a single prompt (a string, a token-id list, or None), and the same
    result: `''.join(stream(p, ...)) == generate([p], ...)[0]`. Text pieces never split a UTF-8 character and never
    show a prefix of a stop string that then completes. Id prompts yield lists of new ids. Breaking out of the loop
    stops the computation.
    """
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    return engine_lib.stream(self, prompt, max_new_tokens, params, seed=seed, stop=stop, stop_at_eos=stop_at_eos,
                             truncate_prompt=truncate_prompt)

  # ----- End of decoding ---------------------------------------------------------------------------------------------

  def predict(self, inputs, **options):
    """What the model is for, on one input or a list: labels for a fine-tuned model, continuations otherwise.

    A fine-tuned classification / entailment / similarity model returns `classify(inputs)`; a multiple-choice
    model takes `(context, answers)` pairs and returns `choose`'s indices; a model fine-tuned for generation
    (`finetune.task = 'generation'`) returns each source's target, laid out with its template and decoded greedy
    unless `options` (`max_new_tokens`, `lm.generate`'s beam options) say otherwise; a language model returns
    `generate(inputs, max_new_tokens=32, temperature=0)` (greedy unless `options` say otherwise).

    Args:
      inputs: One input or a list of them (strings for a language model).
      **options: Passed on to `classify` / `choose` / `generate`.
    """
    if self.head is not None:
      if self.head.spec.kind == seq2seq.TASK:  # Fine-tuned for source -> target (gptjax/seq2seq.py).
        return seq2seq.predict(self, inputs, **options)
      if self.head.spec.kind == "choice":
        single = isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], str)
        pairs = [inputs] if single else list(inputs)
        result = self.choose([c for c, _ in pairs], [a for _, a in pairs], **options)
        return result[0] if single else result
      return self.classify(inputs, **options)
    single = isinstance(inputs, str)
    options = {"max_new_tokens": 32, "temperature": 0.0, **options}
    result = self.generate([inputs] if single else list(inputs), **options)
    return result[0] if single else result

  # ---- Quantized inference (gptjax/inference/quantize.py) ----------------------------------------------------------
  @property
  def quantization(self) -> Optional[str]:
    """'int8' / 'int4' for a quantized model, else None."""
    return quantize_lib.mode_of(self.params)

  def quantize(self, mode: str, *, kv_cache: str = "auto") -> "LanguageModel":
    """A copy with weight-only quantized matrices ('int8': per output channel; 'int4': groups of 32).

    Args:
      mode: 'int8' or 'int4'.
      kv_cache: 'auto' (the compute dtype) or 'int8' (keys and values cached as int8 while decoding).
    """
    if mode not in quantize_lib.MODES:
      raise ValueError(f"quantize: mode must be one of {quantize_lib.MODES}, got {mode!r}")
    if kv_cache not in quantize_lib.KV_CACHE_DTYPES:
      raise ValueError(f"quantize: kv_cache must be one of {quantize_lib.KV_CACHE_DTYPES}, got {kv_cache!r}")
    config = dataclasses.replace(self.config, kv_cache_dtype=kv_cache)
    model = LanguageModel(config, quantize_lib.quantize_params(self.params, mode), self.tokenizer)
    model.head = self.head
    return model

  def dequantize(self) -> "LanguageModel":
    """A float32 copy of a quantized model (what the HF export writes with `dequantize=True`)."""
    config = dataclasses.replace(self.config, kv_cache_dtype="auto")
    model = LanguageModel(config, jax.device_get(quantize_lib.dequantize_tree(self.params)), self.tokenizer)
    model.head = self.head
    return model
  # ---- end of quantized inference ----------------------------------------------------------------------------------

  def save(self, out_dir: os.PathLike, format: str = "hf",  # pylint: disable=redefined-builtin
           dequantize: bool = False) -> pathlib.Path:
    """Saves the model (and tokenizer files) to `out_dir`.

    `format="hf"` writes `config.json` + `model.safetensors` (+ the tokenizer's files) that
    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads. A quantized model saves in its own layout
    (int8 / int4 values with their scales, read back by `gptjax.load`); the HF format refuses it unless
    `dequantize=True`, which writes the float32 weights its int8 / int4 values stand for.
    """
    if format != "hf":
      raise ValueError(f"Unknown save format {format!r}; supported: 'hf'")
    if paths.is_uri(out_dir):  # A cloud folder: written locally (safetensors writes files), then uploaded.
      with paths.local_folder_for(out_dir) as local:
        self.save(local, format, dequantize)
      return paths.path(out_dir)
    out_dir = pathlib.Path(out_dir)
    if self.quantization is not None:
      if not dequantize:
        if self.head is not None:
          raise ValueError("a quantized model with a fine-tuned head cannot be saved; save the float model")
        return quantize_lib.save(out_dir, self.config, self.params, self.tokenizer)
      return self.dequantize().save(out_dir, format)
    eos_id = getattr(self.tokenizer, "eos_id", None)
    hf.save_hf(out_dir, self.config, jax.device_get(self.params), eos_id=eos_id)
    if self.tokenizer is not None:
      self.tokenizer.save(out_dir)
    if self.head is not None:  # A fine-tuned task head (gptjax.finetune), saved beside the weights.
      self.head.save(out_dir)
    return out_dir

  # ---- Fine-tuned task heads (trained by gptjax/finetune.py, run by gptjax/heads.py) --------------------------------
  head = None  # A `heads.TaskHead` once fine-tuned; `load` restores it from `finetune.json` + `head.safetensors`.

  def classify(self, inputs, *, probabilities: bool = False):
    """Labels (or regression scores) from a fine-tuned classification / entailment / similarity head.

    Args:
      inputs: One input or a list: a str (classification), a (str, str) pair (entailment, similarity), or a dict
        of the task's named fields.
      probabilities: Return {label: probability} per input instead of the label.
    """
    return heads.classify(self, inputs, probabilities=probabilities)

  def choose(self, context, choices, *, probabilities: bool = False):
    """Index of the best answer from a fine-tuned multiple-choice head (GPT-1: softmax across answers).

    Args:
      context: A str, or a list of str.
      choices: The answers (list of str) for the context, or one such list per context.
      probabilities: Return the softmax across answers instead of the index.
    """
    return heads.choose(self, context, choices, probabilities=probabilities)
  # ---- end of fine-tuned task heads ------------------------------------------------------------------------------

  # ---- Hugging Face Hub (gptjax/hub.py) ---------------------------------------------------------------------------
  workdir = None  # The gptjax run folder `load` read it from, if any: its model card states that run's config.

  def push_to_hub(self, repo_id: str, **options) -> str:
    """Uploads the model (Hugging Face layout) with a model card stating how it was trained; see `gptjax.hub`.

    Args:
      repo_id: `<user or org>/<name>`.
      **options: `workdir`, `private`, `token`, `commit_message` of `gptjax.hub.push_to_hub`.

    Returns:
      The URL of the commit. Raises RuntimeError, saying why, when the Hub cannot be reached.
    """
    from gptjax import hub  # pylint: disable=g-import-not-at-top
    return hub.push_to_hub(self, repo_id, **options)
  # ---- end of Hugging Face Hub ------------------------------------------------------------------------------------


def _load_tokenizer_if_present(directory: pathlib.Path):
  names = ("tokenizer.json", "vocab.json")
  if not any((directory / n).exists() for n in names):
    return None
  from gptjax.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  return load_tokenizer(directory)


def load(path_or_name: Union[str, os.PathLike]) -> LanguageModel:
  """Loads a model from a gptjax run folder, a Hugging Face folder, or a hub name when online.

  Args:
    path_or_name: A `--workdir` of `python -m gptjax.train` (its latest checkpoint; see
      `gptjax.checkpoint.load_workdir` for the best one), a folder saved by `GPT2LMHeadModel` /
      `OpenAIGPTLMHeadModel` / `LanguageModel.save`, or a hub name such as `gpt2` or `openai-gpt`.

  Returns:
    A `LanguageModel` with the folder's tokenizer (None when it has no tokenizer files).
  """
  path = paths.path(path_or_name) if paths.is_uri(path_or_name) else pathlib.Path(path_or_name).expanduser()
  # --- gptjax run folders (branch `train`): the latest checkpoint's parameters and <workdir>/tokenizer. ---
  if (path / "checkpoints").is_dir():
    from gptjax import checkpoint  # pylint: disable=g-import-not-at-top  (orbax: only when needed)
    if checkpoint.is_workdir(path):
      config, params, _ = checkpoint.load_workdir(path)
      model = LanguageModel(config, params, _load_tokenizer_if_present(path / checkpoint.TOKENIZER_DIR))
      model.workdir = path  # For push_to_hub's model card (gptjax/hub.py).
      return model
  # --- end of gptjax run folders. ---
  if paths.is_uri(path):  # Any other cloud folder is read from a local copy (safetensors reads local files).
    if (path / "best" / "finetune.json").is_file():  # A fine-tuning workdir: copy its best model only.
      path = path / "best"
    if not path.is_dir():
      raise FileNotFoundError(f"No such model folder: {path}")
    with paths.local_copy(path) as local:
      return load(local)
  if (path / "best" / "finetune.json").is_file():  # A fine-tuning workdir (gptjax.finetune): its best model.
    path = path / "best"
  if path.is_dir():
    if quantize_lib.is_quantized_folder(path):  # Saved by a quantized model's `save`.
      config, params = quantize_lib.load(path)
      return LanguageModel(config, params, _load_tokenizer_if_present(path))
    if hf.is_hf_folder(path):
      config, params = hf.load_hf(path)
      model = LanguageModel(config, jax.tree.map(jnp.asarray, params), _load_tokenizer_if_present(path))
      model.head = heads.load_head(path)  # None unless the folder holds a fine-tuned task head.
      return model
    raise FileNotFoundError(f"{path} is a folder but not a model: expected config.json with "
                            "model.safetensors or pytorch_model.bin (a Hugging Face folder)")
  if path.exists():
    raise ValueError(f"{path} is a file; gptjax.load expects a model folder or a hub name")
  if os.sep in str(path_or_name) and str(path_or_name).startswith((".", "/", "~")):
    raise FileNotFoundError(f"No such model folder: {path}")
  return load(hf.download(str(path_or_name)))
