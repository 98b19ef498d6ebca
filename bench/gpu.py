"""GPU readiness in one command: every script's __main__ for a few steps, train.py compiled at
GPT-2 small's shape, the Triton attention kernel against SDPA, and torchrun on two GPUs.

Each script runs as a subprocess at its GPU defaults (its GPU dict, which gpt.parse_args applies
on CUDA) with only its step counts cut, in bf16 where the script autocasts. Recorded: finished
or not, wall time (start-up, data and evaluation included: a few steps give no steady rate),
the peak memory (CUDA: torch.cuda.max_memory_allocated; CPU: the process's max RSS), and
tokens/s and MFU for train.py, both as it prints them (compile time included) and over its
steps after the first eval (steady state). One table, also written as JSON.

    python bench/gpu.py                               # on the CUDA device, within --budget
    python bench/gpu.py --device=cpu                  # the same harness at tiny sizes
    python bench/gpu.py --only=train-compile,flash    # some rows only
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import gpt  # noqa: E402


@dataclass
class BenchConfig:
    only: str = ""  # comma-separated row names to run (e.g. train-compile,flash); empty = all
    budget: int = 450  # seconds for everything; rows left when it runs out are marked skipped
    out: str = "out/gpu/bench.json"  # the table as JSON, relative to the repository
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self):
        unknown = set(filter(None, self.only.split(","))) - set(ROWS)
        if unknown:
            raise ValueError(f"only={self.only}: no row {', '.join(sorted(unknown))}; rows are"
                             f" {','.join(ROWS)}")
        if self.budget < 1:
            raise ValueError(f"budget={self.budget} must be at least 1 second")
        gpt.pick_device(self.device)


# Per row: the command after `python`, the flags that cut it to a few steps (its model keeps the
# GPU size on CUDA), and on CPU the flags that also shrink it to seconds (None: not on CPU).
TRAIN = "train.py --tokenizer=byte --eval_interval=10 --eval_iters=2 --sample_tokens=0"
TRAIN_TINY = "--depth=2 --n_embd=64 --block_size=64 --batch_size=8"
ROWS = {  # the two measured goals first, should the budget run out
    "train-compile": (TRAIN + " --compile", "--max_iters=30", None),  # inductor alone: minutes
    "flash": ("bench/flash_attention.py --tables=tflops", "",
              "--tflops_sizes=128 --tokens=128"),
    "gpt.py": ("gpt.py", "--steps=20 --max_new_tokens=16", "--steps=10 --max_new_tokens=8"),
    "train.py": (TRAIN, "--max_iters=30", TRAIN_TINY),
    "sft.py": ("sft.py", "--base_steps=20 --steps=10 --n_train=500 --n_eval=20",
               "--n_train=200 --n_eval=10 --steps=4"),
    "dpo.py": ("dpo.py", "--base_steps=20 --sft_steps=10 --steps=10 --eval_interval=5"
               " --n_train=200 --n_eval=20", "--n_train=50 --n_eval=10 --steps=4"
               " --eval_interval=2"),
    "grpo.py": ("grpo.py", "--steps=4 --sft_steps=20 --eval_problems=16 --pass_k=2"
                " --eval_every=2", ""),
    "ppo.py": ("ppo.py", "--base_steps=20 --rm_pairs=200 --rm_steps=20 --iters=3 --best_of=4"
               " --eval_prompts=16", ""),
    "agent.py": ("agent.py", "--steps=20 --n_train=500 --n_eval=5", "--n_train=200 --n_eval=2"),
    "evaluate.py": ("evaluate.py", "--steps=20 --judge_cases=200 --repeat=2", ""),
    "bert.py": ("bert.py", "--pretrain_steps=20 --finetune_steps=10",
                "--vocab_size=512 --n_per_class=5 --finetune_steps=4"),
    "vit.py": ("vit.py", "--steps=20 --vlm_steps=10 --n_train=512 --n_test=128", ""),
    "rag.py": ("rag.py", "--encoder_steps=20 --cross_steps=20 --reader_steps=20",
               "--n_entities=100"),
    "attention.py": ("attention.py", "--steps=20 --warmup=10 --n_test=50", ""),
    "rope.py": ("rope.py", "--steps=20 --n_eval=50", ""),
    "moe.py": ("moe.py", "--steps=20 --eval_batches=2", ""),
    "diffusion_lm.py": ("diffusion_lm.py", "--steps=20 --eval_interval=10 --n_samples=8"
                        " --n_mc=2 --step_counts=8", ""),
    "flash_attention.py": ("flash_attention.py", "", ""),
    "torchrun": ("-m torch.distributed.run --standalone --nproc_per_node=2 " + TRAIN,
                 "--max_iters=20", TRAIN_TINY),
}
TIMEOUT = {"train-compile": 180, "flash": 180, "torchrun": 90}  # seconds; other rows 60

# The child: the script as __main__, then its peak memory into the file peak_bytes.
CHILD = """import resource, runpy, sys, torch
sys.path.insert(0, {root!r})
sys.argv = {argv!r}
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024
    open("peak_bytes", "w").write(str(peak))"""


def command(name, device):
    """The row's argv, or None when it cannot run here (with the reason as a second value)."""
    script, few, tiny = ROWS[name]
    if device == "cpu" and tiny is None:
        return None, "skipped on CPU: tests/test_gpu_paths.py compiles on CPU"
    if name == "torchrun" and device == "cuda" and torch.cuda.device_count() < 2:
        return None, f"skipped: {torch.cuda.device_count()} GPU, two needed"
    argv = f"{script} {few} {tiny if device == 'cpu' else ''} --device={device}".split()
    argv = [os.path.join(ROOT, a) if a.endswith(".py") else a for a in argv]  # run from a tmp dir
    if argv[0] == "-m":
        return [sys.executable] + argv, ""
    code = CHILD.format(root=ROOT, argv=argv)
    return [sys.executable, "-c", code], ""


def measure(out, cwd):
    """What the row's output says: peak memory, train.py's tokens/s and MFU, the TFLOP/s table."""
    found = {}
    if os.path.exists(os.path.join(cwd, "peak_bytes")):
        found["peak_MiB"] = round(int(open(os.path.join(cwd, "peak_bytes")).read()) / 2 ** 20)
    if m := re.search(r"^throughput +([\d,]+) tokens/s", out, re.M):
        found["tok_per_s"] = float(m.group(1).replace(",", ""))
        mfu = re.search(r"^MFU +([\d.]+)%", out, re.M)
        found["mfu"] = float(mfu.group(1)) / 100 if mfu else None
        rows = [json.loads(line) for line in open(os.path.join(cwd, "out/train/log.jsonl"))]
        if len(rows) > 2:  # from the first eval on: compile and warm-up left out
            steady = (rows[-1]["tokens"] - rows[1]["tokens"]) / (rows[-1]["time"] - rows[1]["time"])
            found["steady_tok_per_s"] = steady
            found["steady_mfu"] = found["mfu"] and found["mfu"] * steady / found["tok_per_s"]
    keys = "d causal N naive ours sdpa ratio bwd_naive bwd_ours bwd_sdpa bwd_ratio err".split()
    number = r"\s+([\d.]+|nan)x?"
    table = re.findall(r"^\s*(\d+)\s+(True|False)\s+(\d+)\s+\|" + 4 * number + r"\s+\|\s+fwd\+bwd:"
                       + 4 * number + r"\s+\|\s+(\S+)$", out, re.M)
    if table:
        found["tflops"] = [{k: v == "True" if k == "causal" else float(v)
                            for k, v in zip(keys, row)} for row in table]
    return found


def run_row(name, device, deadline):
    argv, note = command(name, device)
    left = deadline - time.time()
    if argv is None or left < 5:
        return dict(row=name, finished=None, note=note or "skipped: out of time")
    with tempfile.TemporaryDirectory() as cwd:  # each row's out/ and data/ caches, then gone
        t0 = time.time()
        child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)
        try:
            out = child.communicate(timeout=min(TIMEOUT.get(name, 60), left))[0]
            ok = child.returncode == 0
            note = "" if ok else (out.strip().splitlines() or ["failed"])[-1][:120]
        except subprocess.TimeoutExpired as e:
            os.killpg(child.pid, signal.SIGKILL)  # torchrun's workers too, not just the launcher
            out = child.communicate()[0]
            ok = False
            note = f"timed out after {e.timeout:.0f} s"
        return dict(row=name, finished=ok, wall_s=round(time.time() - t0, 1), note=note,
                    **measure(out, cwd))


def show(r):
    done = {True: "yes", False: "NO", None: "-"}[r["finished"]]
    rate = ""
    if "tok_per_s" in r:
        rate = f"{r['tok_per_s']:,.0f} tok/s" + (f", MFU {r['mfu']:.1%}" if r["mfu"] else "")
        if "steady_tok_per_s" in r:
            rate += f"; steady {r['steady_tok_per_s']:,.0f}" + (
                f", MFU {r['steady_mfu']:.1%}" if r["steady_mfu"] else "")
    wall = f"{r['wall_s']:.1f}" if "wall_s" in r else "-"
    print(f"{r['row']:<18} {done:>8} {wall:>7} {r.get('peak_MiB', '-'):>9}  {rate or r['note']}")
    for t in r.get("tflops", []):
        print(f"{'':<18} d={t['d']:>3.0f} causal={t['causal']!s:<5} N={t['N']:>5.0f}: TFLOP/s fwd"
              f" {t['ours']:.2f} vs SDPA {t['sdpa']:.2f} ({t['ratio']:.2f}x), fwd+bwd"
              f" {t['bwd_ours']:.2f} vs {t['bwd_sdpa']:.2f} ({t['bwd_ratio']:.2f}x),"
              f" err {t['err']:.1e}")


def main(cfg):
    device = gpt.pick_device(cfg.device).split(":")[0]
    name = torch.cuda.get_device_name() if device == "cuda" else device
    print(f"{name}, torch {torch.__version__}; {cfg.budget} s budget")
    print(f"{'row':<18} {'finished':>8} {'wall s':>7} {'peak MiB':>9}  tokens/s, MFU or note")
    deadline = time.time() + cfg.budget
    results = []
    for row in [r for r in ROWS if r in cfg.only.split(",") or not cfg.only]:
        results.append(run_row(row, device, deadline))
        show(results[-1])
    path = os.path.join(ROOT, cfg.out)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(device=name, torch=torch.__version__, rows=results), f, indent=1)
    print(f"written: {path}")
    return results


if __name__ == "__main__":
    main(gpt.parse_args(BenchConfig))
