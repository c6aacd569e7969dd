"""gptjax: GPT-1 and GPT-2 in JAX/Flax, end to end.

Every `>=` below is a floor that `tests/floors_test.py` installs exactly (`==`, the rest resolved by pip) and runs a
tiny training run on; raise a floor there and here together. Why each floor is where it is:

- jax 0.7.1: `jax.set_mesh` became public there (the trainer's mesh context); jax 0.7 needs Python >= 3.11.
- flax 0.10.0: flax 0.9 and older trace with `DynamicJaxprTrace.level`, which jax 0.7 removed.
- orbax-checkpoint 0.12.3: the first to write `commit_success.txt` into local step folders, which `checkpoint.py`
  requires of a complete step (older ones also lack a `DeviceLocalLayout`-free serializer for jax 0.7, < 0.11.17).
- tensorflow-datasets 4.9.10: 4.9.9 and older read `FieldDescriptor.label`, which protobuf 7 (what pip picks) removed.
- tokenizers 0.20: `Tokenizer.encode_batch_fast`.
- etils[epath] 1.13.0: every workdir path is an `epath.Path` (gptjax/paths.py), and before 1.13 `Path.is_file()`
  is True for a path that does not exist (`not is_dir()`), so a fresh run took its missing tokenizer spec for a
  saved one. orbax depends on etils too; named here because gptjax calls it.
- numpy 1.26 and scipy 1.12: jax 0.7.1's own floors.
"""

import setuptools

# Kept in variables so the floors test reads exactly these lists (it parses this file; nothing is imported).
INSTALL_REQUIRES = [
    "jax>=0.7.1",
    "flax>=0.10.0",
    "optax>=0.1.9",
    "orbax-checkpoint>=0.12.3",
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.5.1",  # TFDS's random-access file format (no TensorFlow needed).
    "ml-collections>=0.1.1",
    "absl-py>=1.4.0",
    "numpy>=1.26",
    "scipy>=1.12",  # Spearman / Pearson correlations of fine-tuning tasks (STS-B).
    "tokenizers>=0.20",
    "safetensors>=0.4.0",
    "huggingface-hub>=0.23.0",
    "tqdm>=4.64.0",
    "tensorboardX>=2.6",  # Writes the events; the `tensorboard` extra is the viewer.
    "etils[epath]>=1.13.0",  # Local and cloud paths alike (gs://, s3://): gptjax/paths.py.
    # Serving (gptjax/serve): the OpenAI-compatible HTTP server and the explorer page.
    "fastapi>=0.110",
    "uvicorn>=0.29",
]

EXTRAS_REQUIRE = {
    # `hf:<dataset>` data sources (configs/gpt2_small.py reads FineWeb-Edu through it).
    "datasets": ["datasets>=2.19"],
    # `gptjax lm_eval --model gptjax ...` (gptjax/lm_eval_adapter.py; lm-eval has no plugin entry points).
    "eval": ["lm-eval>=0.4.13"],
    # `tensorboard --logdir <workdir>/tensorboard`.
    "tensorboard": ["tensorboard"],
    # notebooks/*.ipynb plot with matplotlib.
    "notebook": ["matplotlib", "jupyter"],
    # Generation metrics (gptjax/text_metrics.py): sacreBLEU 2.0 is the first with the BLEU class, its signature
    # object and a variable number of references (None in a reference stream); rouge-score 0.1 the first with
    # `score_multi` (the best of several references; 0.0.4 lacks it). Both floors were run with text_metrics.py.
    "metrics": ["sacrebleu>=2.0.0", "rouge-score>=0.1"],
    # gs:// workdirs and caches: fsspec's GCS filesystem, what etils.epath uses when TensorFlow is not installed
    # (orbax's arrays go through tensorstore's own GCS driver). s3:// needs `s3fs` the same way.
    "gcs": ["gcsfs"],
}
EXTRAS_REQUIRE["test"] = [
    "pytest",
    "pytest-xdist",
    "chex>=0.1.88",  # Only tests use chex (`chex.variants`).
    # A bare `torch` resolves to a multi-GB CUDA build; 2.13.0 is the CPU wheel CI has.
    "torch==2.13.0",
    "transformers>=4.45",
    "matplotlib",  # The notebooks' plots run in tests/notebooks_test.py.
    # The server tests talk to `python -m gptjax.serve` through the real OpenAI client.
    "openai>=1.40",
    "httpx",  # FastAPI's TestClient.
    # TFDS 4.9.10 reads `importlib_resources.abc` for a dataset builder defined inside a package (the tests' builders
    # live in `tests.*`) but declares the backport only for Python < 3.9; 5.0 is the first with `abc.Traversable`.
    "importlib_resources>=5.0",
    # Browser tests drive Debian's Chromium (`apt-get install chromium`); never `playwright install`.
    "playwright>=1.40",
    *EXTRAS_REQUIRE["datasets"],
    *EXTRAS_REQUIRE["eval"],
    *EXTRAS_REQUIRE["metrics"],
    *EXTRAS_REQUIRE["gcs"],
    "gcp-storage-emulator",  # tests/fake_gcs.py: an in-memory GCS bucket for the gs:// runs of tests/paths_test.py.
    "tensorboard",  # tests/tensorboard_test.py reads the event files back with TensorBoard's own reader.
]

setuptools.setup(
    name="gptjax",
    version="0.1.0",
    description="GPT-1 and GPT-2 in JAX/Flax: train, fine-tune, probe and serve.",
    # Namespace packages too: gptjax/inference has no __init__.py. static/ is data (package_data below).
    packages=setuptools.find_namespace_packages(
        include=["gptjax", "gptjax.*"], exclude=["*.static", "*.static.*", "*__pycache__*"]) + ["gptjax.configs"],
    # The top-level configs/ ships inside the package as gptjax.configs, so an installed gptjax can name them
    # (`--config gptjax:gpt2_small`); in a checkout gptjax/config_files.py finds configs/ itself.
    package_dir={"gptjax.configs": "configs"},
    # The explorer's page (gptjax/serve/static/) is data, not a package.
    package_data={"gptjax.serve": ["static/*", "static/**/*"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["gptjax = gptjax.cli:main"]},
)
