"""Shared fixtures: tiny configs that run in seconds on a 2-core CPU."""
import importlib
import os
import platform
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gpt  # noqa: E402

# The tests' models are tiny: a second thread costs more in synchronisation than it saves (and
# under load far more). Subprocesses (DDP, --help, the benches) keep torch's own default.
torch.set_num_threads(1)

# .ci/run sets REQUIRE_REFERENCES=1 after installing the reference packages and Triton: there a
# missing reference is a failure, so CI can never go green with the comparisons skipped.
REQUIRED = os.environ.get("REQUIRE_REFERENCES") == "1"


def require(module, promised=True):
    """Import a reference package; skip without it, unless the environment promises it."""
    if REQUIRED and promised:
        return importlib.import_module(module)
    return pytest.importorskip(module)


# requirements.txt installs Triton on Linux x86_64 only.
TRITON_PROMISED = sys.platform == "linux" and platform.machine() == "x86_64"


@pytest.fixture
def tiny_gpt_config():
    """A 2-layer GQA model (4 query heads sharing 2 key/value heads) over a 64-token vocabulary."""
    return gpt.GPTConfig(vocab_size=64, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


@pytest.fixture
def corpus_file(tmp_path):
    """About 40 kB of the embedded corpus as a local text file."""
    path = tmp_path / "corpus.txt"
    path.write_text(gpt.embedded_corpus()[:40_000], encoding="utf-8")
    return str(path)


@pytest.fixture
def tiny_train_config(tmp_path, corpus_file):
    """train.TrainConfig for a byte-level 1-layer model that trains for a few steps in ~1 s."""
    import train
    return train.TrainConfig(data=corpus_file, tokenizer="byte", cache_dir=str(tmp_path / "cache"),
                             out_dir=str(tmp_path / "out"), depth=1, n_embd=32, n_head=2, block_size=16,
                             batch_size=4, max_iters=8, eval_interval=4, eval_iters=2, sample_tokens=4,
                             device="cpu", seed=0)
