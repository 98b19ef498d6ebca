"""Inference speed of bert.py's half-depth student against its teacher: DistilBERT's point.

Weights do not change the speed, so both are freshly initialised at bert.py's shape (its Config
defaults, or these flags) and timed on one batch of random full-length inputs.

    python bench/bert.py                     # CPU: 4 x 128 teacher, 2-layer student, 64 x 64
    python bench/bert.py --device=cuda --n_layer=12 --n_embd=768 --n_head=12   # bf16 autocast

Prints each model's layers, parameters, sequences per second (the best of --repeats runs after a
warm-up) and its speed relative to the teacher.
"""
import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bert  # noqa: E402


@dataclass
class BenchConfig:
    n_layer: int = bert.Config.n_layer  # the teacher's encoder layers; the student keeps half
    n_embd: int = bert.Config.n_embd  # hidden size
    n_head: int = bert.Config.n_head  # attention heads
    vocab_size: int = bert.Config.vocab_size  # tokens
    max_len: int = bert.Config.max_len  # tokens per sequence
    batch_size: int = 64  # sequences per forward pass
    repeats: int = 5  # timed runs of each model; the fastest counts
    device: str = "auto"  # auto | cpu | cuda | mps

    def __post_init__(self):
        bert.Config(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                    vocab_size=self.vocab_size, max_len=self.max_len)  # bert.py's checks
        if self.batch_size < 1 or self.repeats < 1:
            raise ValueError(f"batch_size={self.batch_size} and repeats={self.repeats} must be > 0")


@torch.no_grad()
def sequences_per_second(model, idx, device, repeats):
    seconds = []
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        with bert.autocast(device):
            model(idx)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return len(idx) / min(seconds[1:])


def main(cfg):
    device = bert.pick_device(cfg.device)
    torch.manual_seed(0)
    shape = bert.BertConfig(vocab_size=cfg.vocab_size, max_len=cfg.max_len, n_layer=cfg.n_layer,
                            n_head=cfg.n_head, n_embd=cfg.n_embd)
    teacher = bert.BertClassifier(bert.Bert(shape), 2).to(device).eval()
    idx = torch.randint(bert.N_SPECIAL, cfg.vocab_size, (cfg.batch_size, cfg.max_len))
    idx[:, 0] = bert.CLS
    models = {"teacher": teacher, "student (every other layer)": bert.half_depth(teacher)}
    speeds = {name: sequences_per_second(m, idx.to(device), device, cfg.repeats)
              for name, m in models.items()}
    print(f"{cfg.batch_size} x {cfg.max_len} tokens on {device}")
    print(f"{'model':<30}{'layers':>7}{'params':>9}{'seq/s':>9}{'speed':>7}")
    for name, model in models.items():
        print(f"{name:<30}{model.bert.config.n_layer:>7}{bert.count_params(model) / 1e6:>8.2f}M"
              f"{speeds[name]:>9.0f}{speeds[name] / speeds['teacher']:>6.2f}x")
    return speeds


if __name__ == "__main__":
    main(bert.parse_args(BenchConfig))
