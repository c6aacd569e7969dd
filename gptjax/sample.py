"""Prints samples from a model: `python -m gptjax.sample --model gpt2 --start "Once upon a time" --num_samples 3`.

`--model` is anything `gptjax.load` reads (a Hugging Face folder, a hub name). `--start` is the prompt text, or
`FILE:path` to read it from a UTF-8 file; without it samples are unconditional (they start from `<|endoftext|>`, as
GPT-2's). Each sample is printed as prompt + continuation, followed by a line of dashes. The sampling maths is in
`LanguageModel.generate`'s docstring.

Beam search and constrained decoding (`gptjax/decoding_flags.py`): `--num_beams 4 --num_return_sequences 2` prints
the two best beams, best first, exactly as Hugging Face's `generate(num_beams=4, ...)` would on the same weights;
`--no_repeat_ngram_size` and `--min_new_tokens` work with beams and with sampling. Flags the chosen decoding would
ignore (`--temperature` with beams, `--length_penalty` without) are an error naming them.
"""

import pathlib

from absl import app
from absl import flags

import gptjax
from gptjax import compilation_cache
from gptjax import console
from gptjax import decoding_flags

_MODEL = flags.DEFINE_string("model", None, "Model folder (Hugging Face layout) or hub name.", required=True)
_START = flags.DEFINE_string("start", "", "Prompt text, or FILE:path to read it from. Empty: unconditional.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Samples to draw.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate per sample at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep only the k most likely tokens; 0 is off.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1]; 1 is off.")
_REPETITION_PENALTY = flags.DEFINE_float("repetition_penalty", 1.0, "CTRL's repetition penalty; 1 is off.")
_QUANTIZE = flags.DEFINE_enum("quantize", None, ["int8", "int4"], "Weight-only quantization before sampling.")
_KV_CACHE = flags.DEFINE_enum("kv_cache", "auto", ["auto", "int8"], "With --quantize: the KV cache's dtype.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_STOP = flags.DEFINE_multi_string("stop", [], "Stop string (repeatable); not printed.")
_TRUNCATE = flags.DEFINE_bool("truncate_prompt", False,
                              "Keep only the prompt's last tokens when it does not fit with --max_new_tokens.")
decoding_flags.define(return_sequences=True)


def read_start(start: str) -> str:
  """The prompt text of a `--start` value: the text itself, or a file's contents for `FILE:path`."""
  if start.startswith("FILE:"):
    path = pathlib.Path(start[len("FILE:"):]).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f"--start={start}: no such file {path}")
    return path.read_text(encoding="utf-8")
  return start


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  compilation_cache.enable()  # Before the first compile: a rerun reads its programs back (gptjax/compilation_cache.py).
  # Bad input raises ValueError / OSError naming it: `console.run` reports it as one `error:` line.
  start = read_start(_START.value)
  beam_options = decoding_flags.options()
  lm = gptjax.load(_MODEL.value)
  if _QUANTIZE.value and lm.quantization is None:
    lm = lm.quantize(_QUANTIZE.value, kv_cache=_KV_CACHE.value)
  samples = lm.generate([start] if start else None, _MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value,
                        top_k=_TOP_K.value, top_p=_TOP_P.value, repetition_penalty=_REPETITION_PENALTY.value,
                        seed=_SEED.value, stop=_STOP.value or None, num_samples=_NUM_SAMPLES.value,
                        truncate_prompt=_TRUNCATE.value, **beam_options)
  for sample in samples:
    print(start + sample)
    print("-" * 40)


if __name__ == "__main__":
  console.run(main)
