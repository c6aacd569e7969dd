"""The beam-search and constrained-decoding flags of the command lines that generate text, defined once.

`python -m gptjax.sample`, `python -m gptjax.predict` and `python -m gptjax.evaluate --task generation` take the
same flags for `LanguageModel.generate`'s beam options (`gptjax/inference/beam.py`): --num_beams,
--length_penalty, --early_stopping, --no_repeat_ngram_size, --min_new_tokens (and, for sample,
--num_return_sequences). A flag that the chosen decoding would ignore is an error naming it, never a silent no-op:
beam search is deterministic, so sampling flags (--temperature, --top_k, --top_p) cannot go with --num_beams > 1;
--length_penalty and --early_stopping only mean something with beams; --repetition_penalty is not implemented with
beams, n-gram blocking or a minimum length.
"""

from __future__ import annotations

from typing import Optional, Sequence

from absl import flags

BEAM_ONLY = ("length_penalty", "early_stopping")
SAMPLING = ("temperature", "top_k", "top_p")


def define(*, return_sequences: bool = False) -> None:
  """Defines the flags in `absl.flags.FLAGS` (call once per command line, at import or before parsing)."""
  flags.DEFINE_integer("num_beams", 1, "Beam search with this many beams (Hugging Face's generate); 1 is off.")
  flags.DEFINE_float("length_penalty", 1.0, "Beam search: a finished beam scores sum(log p) / length ** this.")
  flags.DEFINE_enum("early_stopping", "false", ["true", "false", "never"],
                    "Beam search: 'true' stops at num_beams finished beams; 'false' (Hugging Face's default) when no "
                    "running beam can beat them; 'never' as Hugging Face.")
  flags.DEFINE_integer("no_repeat_ngram_size", 0, "Never generate an n-gram already in the text; 0 is off.")
  flags.DEFINE_integer("min_new_tokens", 0, "<|endoftext|> (and single-token stops) banned for this many tokens.")
  if return_sequences:
    flags.DEFINE_integer("num_return_sequences", 1, "Beam search: the best this many beams per prompt (<= "
                         "--num_beams); without beams the same as --num_samples.")


def _given(name: str, values) -> bool:
  return name in values and values[name].present


def options(values: Optional[flags.FlagValues] = None, *, sampling: Sequence[str] = SAMPLING) -> dict:
  """`LanguageModel.generate`'s beam keyword arguments from the parsed flags, checked for combinations it ignores.

  Args:
    values: The parsed flags (default `absl.flags.FLAGS`).
    sampling: The sampling flags this command line defines (they may not go with --num_beams > 1).

  Raises:
    ValueError: naming the flags that do not go together.
  """
  values = values or flags.FLAGS
  beams = values.num_beams
  out = {"num_beams": beams, "no_repeat_ngram_size": values.no_repeat_ngram_size,
         "min_new_tokens": values.min_new_tokens}
  if beams > 1:
    given = [f"--{name}" for name in sampling if _given(name, values)]
    if given:
      verb, it = ("chooses", "it") if len(given) == 1 else ("choose", "them")
      raise ValueError(f"{', '.join(given)} {verb} tokens by sampling, but --num_beams={beams} is beam search, "
                       f"which is deterministic: drop {it}, or use --num_beams=1 to sample")
    if _given("num_samples", values) and values.num_samples != 1:
      raise ValueError(f"--num_samples={values.num_samples} draws samples; with --num_beams={beams} ask for the best "
                       "beams with --num_return_sequences instead")
    out.update(length_penalty=values.length_penalty,
               early_stopping={"true": True, "false": False, "never": "never"}[values.early_stopping])
  else:
    given = [f"--{name}" for name in BEAM_ONLY if _given(name, values)]
    if given:
      verb, it = ("applies", "it") if len(given) == 1 else ("apply", "them")
      raise ValueError(f"{', '.join(given)} {verb} to beam search only: add --num_beams=K (K > 1), or drop {it}")
  if "repetition_penalty" in values and values.repetition_penalty != 1.0:
    used = [f"--{n}={values[n].value}" for n in ("num_beams", "no_repeat_ngram_size", "min_new_tokens")
            if values[n].value != values[n].default]
    if used:
      raise ValueError(f"--repetition_penalty={values.repetition_penalty} is not implemented together with "
                       f"{', '.join(used)}: drop one")
  if "num_return_sequences" in values:
    count = values.num_return_sequences
    if beams == 1 and count != 1 and _given("num_samples", values) and values.num_samples != 1:
      raise ValueError(f"--num_return_sequences={count} and --num_samples={values.num_samples} both count samples "
                       "without beams: give one")
    out["num_return_sequences"] = count
  return out
