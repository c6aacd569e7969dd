"""gptjax: GPT-1 and GPT-2 in JAX/Flax, end to end."""

import setuptools

setuptools.setup(
    name="gptjax",
    version="0.1.0",
    description="GPT-1 and GPT-2 in JAX/Flax: train, fine-tune, probe and serve.",
    packages=setuptools.find_packages(include=["gptjax", "gptjax.*"]),
    # The explorer page (GET /explorer): static files served from the installed package.
    package_data={"gptjax.serve": ["static/*.html", "static/*.css", "static/*.js"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.8",
        "array-record>=0.7",
        "ml-collections>=1.0",
        "chex>=0.1.88",
        "absl-py",
        "numpy",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "huggingface-hub",
        "tqdm",
        "tensorboardX",
        # Serving (gptjax/serve): the OpenAI-compatible HTTP server.
        "fastapi>=0.110",
        "uvicorn>=0.29",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",
            # A bare `torch` resolves to a multi-GB CUDA build; 2.13.0 is the CPU wheel CI has.
            "torch==2.13.0",
            "transformers>=4.45",
            # The server tests talk to `python -m gptjax.serve` through the real OpenAI client.
            "openai>=1.40",
            "httpx",  # FastAPI's TestClient
            # Browser tests drive the system's Chromium (`apt-get install chromium`); never `playwright install`.
            "playwright>=1.40",
        ],
    },
)
