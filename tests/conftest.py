"""Shared test set-up: eight fake CPU devices for sharding tests, float32 matmuls."""

import os

# Must happen before jax is imported anywhere: gives the sharding tests 8 host devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402

# Parity tests compare against PyTorch fp32; XLA's CPU default is already full precision, make it explicit.
jax.config.update("jax_default_matmul_precision", "highest")
