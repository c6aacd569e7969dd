"""The `gptjax` command: `gptjax <command> [flags]` runs `python -m gptjax.<module> [flags]`.

Each command is the module's own command line, run as `__main__` (so `gptjax train --help` lists the trainer's
flags, as `python -m gptjax.train --help` does); this file only picks the module. Modules are named, not imported,
until one is run: `gptjax --help` is instant, and a command whose module is not part of this install (e.g. the
server in an old version) says so.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys

# command -> (module run as __main__, one line for `gptjax --help`).
COMMANDS = {
    "train": ("gptjax.train", "Train or fine-tune from a config: gptjax train --config gptjax:tiny --workdir DIR"),
    "sample": ("gptjax.sample", "Print samples: gptjax sample --model DIR --start 'Once upon a time'"),
    "evaluate": ("gptjax.evaluate", "Perplexity, LAMBADA, multiple choice, BLEU, ROUGE-L: gptjax evaluate --model DIR"),
    "predict": ("gptjax.predict", "Predictions of a fine-tuned model: gptjax predict --model DIR --data FILE"),
    "serve": ("gptjax.serve", "OpenAI-compatible HTTP server (and the explorer page): gptjax serve --model DIR"),
    "lm_eval": ("gptjax.lm_eval_adapter",
                "lm-evaluation-harness: gptjax lm_eval --model gptjax --model_args pretrained=DIR --tasks T"),
}


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = ["usage: gptjax <command> [flags]   (gptjax <command> --help lists the command's flags)", "", "commands:"]
  lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Runs `gptjax <command> ...`; returns the exit status for usage errors (a command exits by itself)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    return 0 if argv else 2
  if argv[0] == "--version":
    from gptjax import __version__  # pylint: disable=g-import-not-at-top
    print(f"gptjax {__version__}")
    return 0
  command, *rest = argv
  if command not in COMMANDS:
    print(f"gptjax: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    return 2
  module = COMMANDS[command][0]
  if importlib.util.find_spec(module) is None:
    print(f"gptjax: error: {command!r} needs the module {module}, which this install of gptjax does not have",
          file=sys.stderr)
    return 2
  # absl names the program after argv[0] in usage lines and errors.
  sys.argv = [f"gptjax {command}", *rest]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
