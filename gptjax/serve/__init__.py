"""Serving: an OpenAI-compatible HTTP server over the engine (`app.py`, `batcher.py`), `python -m gptjax.serve`,
and `gptjax.deploy` (`deploy.py`). Nothing here imports jax or FastAPI until a submodule is used."""
