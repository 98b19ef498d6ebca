"""Side by side: our train.py against nanoGPT's train.py, in one run, on the same data.

nanoGPT's documented CPU recipe (its README): 4 layers, 4 heads, 128 wide, context 64, batch 12,
2000 iterations, lr 1e-3 decayed to 1e-4, 100 warmup steps, beta2 0.99, dropout 0, on
tiny-shakespeare at character level. We train our model (RMSNorm, RoPE, SwiGLU, tied
embeddings) with the same shape, schedule and data (byte level: tiny-shakespeare is ASCII, so
bytes are characters, and the 90/10 split is nanoGPT's). Both final models are then scored by
the same code on the whole validation split, so the losses compare exactly.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT      # once; it is never committed
    python bench/train_vs_nanogpt.py --nanogpt=/tmp/nanoGPT      # tiny-shakespeare fetched once

Prints ms/iter for both (training steps only, evals excluded), their ratio, and both val losses.
"""
import os
import pickle
import re
import subprocess
import sys
import time
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
    iters: int = 2000  # training iterations for both
    out_dir: str = "out/bench"  # checkpoints of both runs

    def __post_init__(self):
        if not os.path.isfile(os.path.join(self.nanogpt, "train.py")):
            raise ValueError(f"nanogpt={self.nanogpt!r} is not a nanoGPT checkout: git clone"
                             " https://github.com/karpathy/nanoGPT somewhere and pass its path")
        if self.text and not os.path.isfile(self.text):
            raise ValueError(f"text={self.text!r}: no such file; pass tiny-shakespeare's input.txt")
        if self.iters < 1:
            raise ValueError(f"iters={self.iters} must be >= 1")


def eval_interval(cfg):
    return min(250, cfg.iters)  # nanoGPT's config value; it saves its checkpoint at evals only


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


def run_nanogpt(cfg, out_dir):
    """nanoGPT's README command for CPU, verbatim, plus where to save and a save at the end."""
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
           "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
           "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
           f"--max_iters={cfg.iters}", f"--lr_decay_iters={cfg.iters}", "--dropout=0.0",
           f"--out_dir={out_dir}", "--always_save_checkpoint=True",
           f"--eval_interval={eval_interval(cfg)}"]
    done = subprocess.run(cmd, cwd=cfg.nanogpt, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nanoGPT failed:\n{done.stderr[-2000:]}")
    lines = re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", done.stdout)
    times = {int(i): float(ms) for i, ms in lines}
    train_only = [ms for i, ms in times.items() if i % eval_interval(cfg)]  # others hold an eval
    return float(np.mean(train_only))


def run_ours(cfg, text_path, out_dir):
    """The same recipe through our train.py: byte tokenizer, same shape, schedule and split."""
    tcfg = train.TrainConfig(data=os.path.abspath(text_path), tokenizer="byte",
                             cache_dir=os.path.join(out_dir, "cache"), out_dir=out_dir, depth=4,
                             n_embd=128, n_head=4, block_size=64, batch_size=12,
                             max_iters=cfg.iters, lr=1e-3, min_lr_frac=0.1,
                             warmup_frac=min(1.0, 100 / cfg.iters), beta2=0.99, weight_decay=0.1,
                             grad_clip=1.0, eval_interval=eval_interval(cfg), eval_iters=20,
                             sample_tokens=0, device="cpu")
    result = train.main(tcfg)
    return 1000 * tcfg.batch_size * tcfg.block_size / result["tok_per_s"]


@torch.no_grad()
def full_val_loss(forward, ids, block=64, batch=64):
    """Mean next-character loss over every non-overlapping window of the validation split."""
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    n = (len(ids) - 1) // block
    x, y = ids[:n * block].view(n, block), ids[1:n * block + 1].view(n, block)
    total = sum(F.cross_entropy(forward(x[i:i + batch]).flatten(0, 1), y[i:i + batch].flatten(),
                                reduction="sum").item() for i in range(0, n, batch))
    return total / (n * block)


def nanogpt_val_loss(cfg, out_dir, text, stoi):
    sys.path.insert(0, cfg.nanogpt)
    from model import GPT as NanoGPT, GPTConfig as NanoConfig  # the fetched checkout's own model
    ckpt = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu", weights_only=False)
    model = NanoGPT(NanoConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    val = [stoi[c] for c in text[int(len(text) * 0.9):]]

    def logits(x):  # nanoGPT returns only the last position unless given targets
        return model(x, targets=x)[0]
    return full_val_loss(logits, val)


def ours_val_loss(out_dir, text):
    model, tok, _ = gpt.load_model(os.path.join(out_dir, "ckpt.pt"))
    model.eval()
    val = list(text[int(len(text) * 0.9):].encode("utf-8"))
    return full_val_loss(lambda x: model(x)[0], val)


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
    t0 = time.time()
    nano_ms = run_nanogpt(cfg, nano_dir)
    t1 = time.time()
    ours_ms = run_ours(cfg, path, ours_dir)
    t2 = time.time()
    nano_loss = nanogpt_val_loss(cfg, nano_dir, text, stoi)
    ours_loss = ours_val_loss(ours_dir, text)
    print(f"\n{cfg.iters} iterations of nanoGPT's CPU recipe, {torch.get_num_threads()} threads,"
          f" torch {torch.__version__}")
    print(f"{'':<22}{'ms/iter':>10}{'val loss':>10}{'wall s':>9}")
    print(f"{'nanoGPT train.py':<22}{nano_ms:>10.2f}{nano_loss:>10.4f}{t1 - t0:>9.0f}")
    print(f"{'ours train.py':<22}{ours_ms:>10.2f}{ours_loss:>10.4f}{t2 - t1:>9.0f}")
    print(f"{'ours / nanoGPT':<22}{ours_ms / nano_ms:>9.2f}x{ours_loss - nano_loss:>+10.4f}")


if __name__ == "__main__":
    main(gpt.parse_args(BenchConfig))
