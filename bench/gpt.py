"""Generation speed with and without the KV cache: gpt.py's GPT at the CPU-default shape.

Without the cache every new token re-runs the whole prefix, so a step costs more as the text
grows; with it, each step feeds one token and attends to the stored keys and values.

    python bench/gpt.py                      # batch 1, greedy, 256 and 1,024 new tokens
    python bench/gpt.py --new_tokens=256,2048 --device=cuda

Prints tokens/s for both and the speed-up (each the best of --repeats runs).
"""
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt  # noqa: E402


@dataclass
class BenchConfig:
    new_tokens: str = "256,1024"  # generation lengths to time, comma-separated
    repeats: int = 3  # timed runs of each; the fastest counts
    device: str = "auto"  # auto | cpu | cuda | mps

    def __post_init__(self):
        if not all(n.strip().isdigit() and int(n) > 0 for n in self.new_tokens.split(",")):
            raise ValueError(f"new_tokens={self.new_tokens!r}: positive integers, comma-separated")


def main(cfg):
    device = gpt.pick_device(cfg.device)
    lengths = [int(n) for n in cfg.new_tokens.split(",")]
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(block_size=max(lengths) + 8)).to(device).eval()
    print(f"gpt.GPT, {gpt.count_params(model) / 1e6:.1f}M parameters (4 layers, 256 wide), batch 1,"
          f" greedy, {device}")
    print(f"{'new tokens':>10} {'no cache tok/s':>15} {'KV cache tok/s':>15} {'speed-up':>9}")
    for n in lengths:
        speed = []
        for use_cache in (False, True):
            run = lambda: model.generate([[1] * 8], n, temperature=0, use_cache=use_cache)  # noqa
            speed.append(n / gpt.best_time(run, cfg.repeats)[1])
        print(f"{n:>10} {speed[0]:>15.1f} {speed[1]:>15.1f} {speed[1] / speed[0]:>8.1f}x")


if __name__ == "__main__":
    main(gpt.parse_args(BenchConfig))
