"""Side by side: our train.py against nanoGPT's, on the same data: the time to reach a loss.

nanoGPT's documented CPU recipe (its README): 4 layers, 4 heads, 128 wide, context 64, batch 12,
2000 iterations, lr 1e-3 decayed to 1e-4, 100 warmup steps, beta2 0.99, dropout 0, on
tiny-shakespeare at character level. Ours (RMSNorm, RoPE, SwiGLU, tied embeddings) sees the same
data and context (bytes are characters in this ASCII text; the 90/10 split is nanoGPT's) with a
model no larger, trained with the CPU speedrun recipe in OURS. Every eval_every steps both runs
keep their weights; afterwards one function scores every snapshot on the same eighth of the
validation split (the last on all of it), so the losses compare exactly and neither clock counts
evaluation.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT      # once; it is never committed
    python bench/train_vs_nanogpt.py --nanogpt=/tmp/nanoGPT      # tiny-shakespeare fetched once

Prints, for each run: iterations, ms/iter, the training time at which the val loss first reaches
nanoGPT's final value, and the final val loss; then the ratios ours / nanoGPT.
"""
import os
import pickle
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import gpt  # noqa: E402
import train  # noqa: E402


@dataclass
class BenchConfig:
    nanogpt: str = ""  # path to a nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT)
    text: str = ""  # tiny-shakespeare's input.txt; empty: downloaded once into data/ by train.py
    iters: int = 2000  # nanoGPT's training iterations: its final val loss is the target
    eval_every: int = 25  # steps between the snapshots both runs keep
    out_dir: str = "out/bench"  # checkpoints of both runs

    def __post_init__(self):
        if not os.path.isfile(os.path.join(self.nanogpt, "train.py")):
            raise ValueError(f"nanogpt={self.nanogpt!r} is not a nanoGPT checkout: git clone"
                             " https://github.com/karpathy/nanoGPT somewhere and pass its path")
        if self.text and not os.path.isfile(self.text):
            raise ValueError(f"text={self.text!r}: no such file; pass tiny-shakespeare's input.txt")
        for name in ("iters", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


# our CPU speedrun: nanoGPT's context, a smaller MLP (0.80M parameters in all, as nanoGPT's
# 0.80M), Muon for the block matrices, twice the batch (it pays for Newton-Schulz), a short
# warmup and a schedule that ends early
OURS = dict(depth=4, n_embd=128, n_head=4, mlp_hidden=320, block_size=64, batch_size=24,
            max_iters=275, optimizer="muon", lr=3e-3, muon_lr=0.03, warmup_frac=0.03,
            schedule="wsd", decay_frac=0.4, min_lr_frac=0.0, beta2=0.99, weight_decay=0.1)


def prepare_nanogpt_data(text, nanogpt_dir):
    """nanoGPT's shakespeare_char layout: sorted-character vocabulary, first 90% train."""
    folder = os.path.join(nanogpt_dir, "data", "shakespeare_char")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    split = int(len(text) * 0.9)
    for name, part in (("train", text[:split]), ("val", text[split:])):
        ids = np.array([stoi[c] for c in part], dtype=np.uint16)
        ids.tofile(os.path.join(folder, f"{name}.bin"))
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return stoi


# nanoGPT's train.py unchanged, but each checkpoint it saves at an eval is kept as ckpt_<iter>.pt
KEEP_SNAPSHOTS = """import runpy, sys, torch
save = torch.save
def keep(ckpt, path):
    weights = {k: ckpt[k] for k in ("model", "model_args")}
    save(weights, path.replace("ckpt.pt", f"ckpt_{ckpt['iter_num']}.pt"))
torch.save = keep
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def run_nanogpt(cfg, out_dir):
    """nanoGPT's README command for CPU, verbatim, plus where to save and an eval every
    eval_every steps; returns {step: seconds of training}."""
    cmd = [sys.executable, "-c", KEEP_SNAPSHOTS, "config/train_shakespeare_char.py",
           "--device=cpu", "--compile=False", "--eval_iters=1", "--log_interval=1",
           "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
           f"--max_iters={cfg.iters}", f"--lr_decay_iters={cfg.iters}", "--dropout=0.0",
           f"--out_dir={out_dir}", "--always_save_checkpoint=True",
           f"--eval_interval={cfg.eval_every}"]
    done = subprocess.run(cmd, cwd=cfg.nanogpt, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nanoGPT failed:\n{done.stderr[-2000:]}")
    lines = re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", done.stdout)
    times = {int(i): float(ms) for i, ms in lines}
    # an iteration at an eval also holds the eval and the save: it counts as a mean step
    step_ms = statistics.mean(ms for i, ms in times.items() if i % cfg.eval_every)
    clock = np.cumsum([0.0] + [times[i] if i % cfg.eval_every else step_ms
                               for i in range(cfg.iters)]) / 1000
    return {s: clock[s] for s in range(0, cfg.iters + 1, cfg.eval_every)}


def run_ours(cfg, text_path, out_dir, **recipe):
    """OURS (updated by recipe) through our train.py; returns ({step: seconds of training},
    {step: weights}): the weights are copied at each eval's save."""
    tcfg = train.TrainConfig(**{**OURS, **recipe, "data": os.path.abspath(text_path),
                                "tokenizer": "byte", "cache_dir": os.path.join(out_dir, "cache"),
                                "out_dir": out_dir, "eval_interval": cfg.eval_every,
                                "eval_iters": 1, "sample_tokens": 0, "device": "cpu"})
    save = train.save_state
    weights = {}

    def keep(path, raw, optimizers, tok, tcfg, step, generator):
        weights[step] = {k: v.clone() for k, v in raw.state_dict().items()}
        save(path, raw, optimizers, tok, tcfg, step, generator)
    train.save_state = keep
    try:
        result = train.main(tcfg)
    finally:
        train.save_state = save
    return {row["step"]: row["time"] for row in result["history"]}, weights


@torch.no_grad()
def full_val_loss(forward, ids, block=64, batch=64, every=1):
    """Mean next-character loss over every `every`-th non-overlapping window of the val split."""
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    n = (len(ids) - 1) // block
    x = ids[:n * block].view(n, block)[::every].contiguous()  # nanoGPT views its targets
    y = ids[1:n * block + 1].view(n, block)[::every]
    total = sum(F.cross_entropy(forward(x[i:i + batch]).flatten(0, 1), y[i:i + batch].flatten(),
                                reduction="sum").item() for i in range(0, len(x), batch))
    return total / y.numel()


def nanogpt_snapshots(cfg, out_dir):
    """(step, logits function) for each snapshot nanoGPT kept, through its own model class."""
    sys.path.insert(0, cfg.nanogpt)
    from model import GPT as NanoGPT, GPTConfig as NanoConfig  # the fetched checkout's own model
    matches = map(re.compile(r"ckpt_(\d+)\.pt").fullmatch, os.listdir(out_dir))
    names = {int(m[1]): m[0] for m in matches if m}
    for step in sorted(names):  # in order: each logits function lives until the next snapshot
        ckpt = torch.load(os.path.join(out_dir, names[step]), map_location="cpu")
        model = NanoGPT(NanoConfig(**ckpt["model_args"])).eval()
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
        # nanoGPT returns the logits of every position only when given targets
        yield step, lambda x: model(x, targets=x)[0]


def ours_snapshots(out_dir, weights):
    model = gpt.load_model(os.path.join(out_dir, "ckpt.pt"))[0].eval()
    for step, state in weights.items():
        model.load_state_dict(state)
        yield step, lambda x: model(x)[0]


def score(snapshots, val):
    """({step: val loss on every 8th window}, the last snapshot's on the whole split): a fixed
    eighth of the split (14k characters) ranks the snapshots at an eighth of the cost."""
    curve = {}
    for step, logits in snapshots:
        curve[step] = full_val_loss(logits, val, every=8)
    return curve, full_val_loss(logits, val)


def time_to_loss(clock, losses, target):
    """(step, seconds) of the first snapshot whose val loss is at most target, or None."""
    return next(((s, clock[s]) for s in sorted(losses) if losses[s] <= target), None)


def main(cfg):
    path = cfg.text or train.download(train.SHAKESPEARE_URL, "data")
    if path is None:
        raise SystemExit("error: offline; pass tiny-shakespeare's input.txt as --text")
    with gpt.bad_input():
        text = gpt.read_text(path)
    if not text.isascii():
        raise SystemExit("error: the benchmark needs ASCII text, so that bytes are characters")
    stoi = prepare_nanogpt_data(text, cfg.nanogpt)
    nano_dir = os.path.abspath(os.path.join(cfg.out_dir, "nanogpt"))
    ours_dir = os.path.abspath(os.path.join(cfg.out_dir, "ours"))
    nano_clock = run_nanogpt(cfg, nano_dir)
    ours_clock, weights = run_ours(cfg, path, ours_dir)
    val = text[int(len(text) * 0.9):]
    nano_curve, nano_loss = score(nanogpt_snapshots(cfg, nano_dir), [stoi[c] for c in val])
    ours_curve, ours_loss = score(ours_snapshots(ours_dir, weights), list(val.encode()))
    target = nano_curve[cfg.iters]
    print(f"\ntarget: nanoGPT's val loss after {cfg.iters} iterations, {target:.4f} on every 8th"
          f" window; {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'':<18}{'iters':>6}{'ms/iter':>9}{'time to target':>22}{'val loss':>10}")
    hits = []
    ms = []
    for name, clock, curve, loss in (("nanoGPT train.py", nano_clock, nano_curve, nano_loss),
                                     ("ours train.py", ours_clock, ours_curve, ours_loss)):
        hits.append(time_to_loss(clock, curve, target))
        ms.append(1000 * clock[max(clock)] / max(clock))
        when = f"{hits[-1][1]:.1f} s (step {hits[-1][0]})" if hits[-1] else "not reached"
        print(f"{name:<18}{max(clock):>6}{ms[-1]:>9.2f}{when:>22}{loss:>10.4f}")
    ratio = hits[1][1] / hits[0][1] if all(hits) else float("nan")
    print(f"{'ours / nanoGPT':<18}{'':>6}{ms[1] / ms[0]:>8.2f}x{ratio:>21.2f}x"
          f"{ours_loss - nano_loss:>+10.4f}")
    print("(time to target: training steps only, evals excluded from both clocks; val loss: the"
          " whole split)")
    return dict(target=target, nanogpt=nano_curve, ours=ours_curve, ratio=ratio)


if __name__ == "__main__":
    main(gpt.parse_args(BenchConfig))
