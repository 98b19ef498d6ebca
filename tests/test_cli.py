"""The command line is the same in every script: one block of lines, copied byte for byte into
each file that must run without gpt.py, and every script answers --help on its own."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANNER = "# " + "-" * 77 + " command line\n"
STANDALONE = ["attention.py", "rope.py", "bert.py", "flash_attention.py", "vit.py"]
WITH_GPT = ["train.py", "sft.py", "dpo.py", "ppo.py", "grpo.py", "agent.py", "evaluate.py",
            "diffusion_lm.py", "moe.py", "rag.py"]
DEMO_NEEDS_GPT = ["moe.py", "rag.py"]  # their layer and retrievers import alone; their demos do not


def cli_block(name):
    """From the banner to the __main__ guard: pick_device, to_bool and parse_args."""
    source = open(os.path.join(ROOT, name), encoding="utf-8").read()
    assert source.count(BANNER) == 1, f"{name} has no single command-line banner"
    return source[source.index(BANNER):source.index('if __name__ == "__main__":')]


@pytest.mark.parametrize("name", STANDALONE)
def test_the_copies_equal_gpts_block(name):
    assert cli_block(name) == cli_block("gpt.py")


@pytest.mark.parametrize("name", WITH_GPT)
def test_scripts_that_import_gpt_use_its_parser(name):
    source = open(os.path.join(ROOT, name), encoding="utf-8").read()
    assert BANNER not in source and "def parse_args" not in source
    assert "parse_args(" in source.split('if __name__ == "__main__":')[-1]


# One interpreter for every --help (torch imported once, not 16 times): each script runs as
# __main__ from its own folder, with the project modules the last one imported forgotten first.
HELP_RUNNER = """import contextlib, io, json, os, runpy, sys
outputs = []
for folder, name in json.loads(sys.argv[1]):
    for module, loaded in list(sys.modules.items()):
        if (getattr(loaded, "__file__", None) or "").startswith(os.getcwd()):
            del sys.modules[module]
    sys.path[0] = folder
    sys.argv = [name, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(f"{folder}/{name}", run_name="__main__")
        code = "no exit"
    except SystemExit as e:
        code = e.code
    except Exception as e:
        code = repr(e)
    outputs.append([code, out.getvalue()])
print(json.dumps(outputs))"""


def test_each_file_answers_help_copied_alone(tmp_path):
    """Each standalone file alone in an empty folder, each other script with gpt.py beside it:
    --help prints the purpose (the docstring's first line) and exits 0. moe.py and rag.py alone
    say in one line that their demo needs gpt.py."""
    runs = []
    for name in STANDALONE + WITH_GPT + ["gpt.py"] + [f"alone/{n}" for n in DEMO_NEEDS_GPT]:
        folder = tmp_path / name.removesuffix(".py")
        folder.mkdir(parents=True)
        name = os.path.basename(name)
        beside = ["gpt.py"] if name in WITH_GPT and folder.parent == tmp_path else []
        for needed in [name] + beside:
            shutil.copy(os.path.join(ROOT, needed), folder)
        runs.append([str(folder), name])
    run = subprocess.run([sys.executable, "-c", HELP_RUNNER, json.dumps(runs)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    outputs = json.loads(run.stdout.splitlines()[-1])
    assert len(outputs) == len(runs)
    for (folder, name), (code, out) in zip(runs, outputs):
        if os.path.basename(os.path.dirname(folder)) == "alone":
            assert "gpt.py" in code and "\n" not in code and not out, (name, code)
            continue
        purpose = open(os.path.join(ROOT, name), encoding="utf-8").read().split("\n")[0]
        assert code in (0, None), f"{name}: {code}"
        assert "".join(purpose.strip('"').split()) in "".join(out.split()), name  # any wrapping
