"""Shared fixtures: tiny configs that run in seconds on a 2-core CPU."""
import atexit
import functools
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

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


# ----------------------------------------------------------------------------- the slow children
# The in-process tests use one thread, so one of the two cores idles while they run. These tests
# spend their time waiting on child processes (torchrun, the Triton interpreter, bench/gpu.py,
# --help in a fresh interpreter) or in inductor: they run together in one child pytest started
# as soon as collection ends, and each reports the child's verdict at the end of the session.
# The same checks; the suite's wall time falls by about the time they take.
EARLY = {
    "test_gpu_paths.py": {"test_compiled_gpt_equals_eager_forward_and_backward",
                          "test_train_compile_runs", "test_bench_gpu_harness_on_cpu"},
    "test_train.py": {"test_two_process_data_parallel_matches_one_process",
                      "test_bench_against_nanogpt_without_nanogpt"},
    "test_sft.py": {"test_ddp_two_processes_match_one"},
    "test_flash_attention.py": {"test_triton_under_interpreter"},
    "test_cli.py": {"test_each_file_answers_help_copied_alone"},
}
VERDICTS = os.environ.get("PYTEST_EARLY_VERDICTS")  # set in the child: where its verdicts go


def pytest_collection_modifyitems(session, config, items):
    early = [item for item in items if item.name in EARLY.get(item.path.name, ())]
    if VERDICTS or not early or len(early) == len(items):
        return  # the child itself, or nothing to run beside: run them here
    folder = tempfile.mkdtemp(prefix="pytest-early-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    verdicts, log = os.path.join(folder, "verdicts.jsonl"), os.path.join(folder, "output.txt")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--rootdir={config.rootpath}", f"--basetemp={folder}/tmp"]
    command += [f"{config.rootpath}/{item.nodeid}" for item in early]
    with open(log, "w") as output:
        child = subprocess.Popen(command, cwd=config.invocation_params.dir, stdout=output,
                                 stderr=subprocess.STDOUT,
                                 env=dict(os.environ, PYTEST_EARLY_VERDICTS=verdicts))
    atexit.register(child.kill)
    outcomes = {}

    def verdict(nodeid):
        if not outcomes:  # the first early test waits for the child, once
            try:
                child.wait(timeout=1200)
            except subprocess.TimeoutExpired:
                child.kill()
            outcomes["output"] = open(log).read()[-4000:]
            if os.path.exists(verdicts):
                outcomes.update((n, (o, text)) for n, o, text in map(json.loads, open(verdicts)))
        outcome, text = outcomes.get(nodeid, ("failed", "no verdict from the child pytest:\n"
                                                        + outcomes["output"]))
        if outcome == "skipped":
            pytest.skip(text)
        if outcome == "failed":
            pytest.fail(text, pytrace=False)

    for item in early:
        item.setup = lambda: None  # its fixtures are made in the child
        item.runtest = functools.partial(verdict, item.nodeid)
    items[:] = [item for item in items if item not in early] + early  # their verdicts come last


def pytest_runtest_logreport(report):
    """In the child: each test's outcome (a later failure, in teardown, overrides a pass)."""
    if VERDICTS and (report.when == "call" or report.outcome != "passed"):
        text = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) \
            else report.longreprtext
        with open(VERDICTS, "a") as f:
            f.write(json.dumps([report.nodeid, report.outcome, text]) + "\n")


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
