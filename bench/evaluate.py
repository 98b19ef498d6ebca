"""Multiple-choice scoring: evaluate.py's batched log-likelihoods against one forward per option.

MMLU-style harnesses score every option of every question by log p(option | prompt). Batched,
all (question, option) rows go through the model a few at a time, left-padded; the naive loop
runs one forward pass per row. Both must give the same numbers: the bench prints the largest
difference beside the speed-up.

    python bench/evaluate.py                     # evaluate.py's tiny model, 4 options per fact
    python bench/evaluate.py --device=cuda

Prints rows/s for both (each the best of --repeats runs) and the ratio.
"""
import os
import random
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate as E  # noqa: E402
import gpt  # noqa: E402


@dataclass
class BenchConfig:
    countries: int = 16  # made-up countries of evaluate.py's world, 3 facts and 4 options each
    n_layer: int = 2  # layers of the (untrained) model: the speed does not depend on its weights
    n_embd: int = 96  # its width
    vocab_size: int = 900  # its BPE vocabulary
    repeats: int = 3  # timed runs of each; the fastest counts
    device: str = "auto"  # auto | cpu | cuda | mps

    def __post_init__(self):
        E.EvalConfig(countries=self.countries, held_out=1, n_layer=self.n_layer,
                     n_embd=self.n_embd, vocab_size=self.vocab_size)  # its checks
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats} must be at least 1")


def main(cfg):
    device = gpt.pick_device(cfg.device)
    torch.manual_seed(0)
    world = E.make_world(cfg.countries, 0)
    model, tok = E.tiny_model(cfg, world, device)
    rng = random.Random(0)
    end = tok.special("<|end|>")
    rows = [(prompt, tok.encode(o) + [end]) for prompt, a, wrong in E.unseen_items(world, tok)
            for o in [a] + rng.sample(wrong, min(3, len(wrong)))]
    prompts, options = [p for p, _ in rows], [o for _, o in rows]
    model.eval()
    batched, fast = gpt.best_time(lambda: E.option_logprobs(model, prompts, options), cfg.repeats)
    naive, slow = gpt.best_time(lambda: [E.option_logprobs(model, [p], [o])[0] for p, o in rows],
                                cfg.repeats)
    worst = max(abs(x - y) for x, y in zip(batched, naive))
    print(f"multiple-choice scoring of {len(rows)} (question, option) rows,"
          f" {gpt.count_params(model) / 1e6:.2f}M parameters, {device}")
    print(f"{'method':<24} {'rows/s':>9} {'ratio':>7}")
    print(f"{'one forward per option':<24} {len(rows) / slow:>9.0f} {1.0:>6.1f}x")
    print(f"{'batched (ours)':<24} {len(rows) / fast:>9.0f} {slow / fast:>6.1f}x")
    print(f"largest difference in log p between the two: {worst:.1e}")


if __name__ == "__main__":
    main(gpt.parse_args(BenchConfig))
