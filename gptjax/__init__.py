"""gptjax: GPT-1 and GPT-2 in JAX/Flax.

The public face: `gptjax.load`, `gptjax.load_tokenizer`, `gptjax.fit`, `gptjax.deploy`, `gptjax.LanguageModel`,
`gptjax.ModelConfig`.
Nothing heavy happens at import: the submodules (and jax) load on first use. The one thing import does is set
the host allocator up for XLA:CPU (`gptjax/host_memory.py`: glibc's `mallopt`, before JAX starts its CPU client).
"""

import importlib

from gptjax import host_memory as _host_memory

_host_memory.configure()

__version__ = "0.1.0"

_EXPORTS = {
    "load": "gptjax.language_model",
    "LanguageModel": "gptjax.language_model",
    "ModelConfig": "gptjax.model",
    "load_tokenizer": "gptjax.tokenizer",
    "fit": "gptjax.workflow",
    "deploy": "gptjax.serve.deploy",
    "Deployment": "gptjax.serve.deploy",
}


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'gptjax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_EXPORTS))
