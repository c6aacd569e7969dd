"""The HTTP server: OpenAI-compatible routes and the explorer page (`python -m gptjax.serve`)."""
