"""gptjax: GPT-1 and GPT-2 in JAX/Flax.

The public face. Nothing heavy happens at import: submodules load on first use.
"""

__version__ = "0.1.0"
