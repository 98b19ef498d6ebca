"""The MoE layer's dispatch, forward + backward: moe.py's sorted dispatch against the naive loop.

The same routing feeds every variant (the router is not timed): the naive per-expert loop (a
mask finds each expert's tokens), the sort by expert with a loop over contiguous slices or one
grouped matmul (torch._grouped_mm, where this torch and device have it), every expert on every
token weighted by the gates (E times the compute), and a dense SwiGLU MLP with the same active
parameters.

    python bench/moe.py                    # d = 256, 8 experts, top-2, 512 to 8,192 tokens
    python bench/moe.py --device=cuda      # d = 1024, 4,096 to 65,536 tokens, bf16 autocast

Prints the best of --repeats timed runs (after one warm-up) and the speed-up over the loop.
"""
import functools
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt  # noqa: E402
import moe  # noqa: E402


@dataclass
class BenchConfig:
    n_embd: int = 256  # model width d
    n_expert: int = 8  # routed experts E
    top_k: int = 2  # experts per token k
    tokens: str = "512,2048,8192"  # token counts to time, comma-separated
    repeats: int = 3  # timed runs of each; the fastest counts
    device: str = "auto"  # auto | cpu | cuda | mps

    def __post_init__(self):
        if not all(n.strip().isdigit() and int(n) > 0 for n in self.tokens.split(",")):
            raise ValueError(f"tokens={self.tokens!r}: positive integers, comma-separated")
        if not 1 <= self.top_k <= self.n_expert or min(self.n_embd, self.repeats) < 1:
            raise ValueError("n_embd, repeats >= 1 and top_k in 1..n_expert")


GPU = dict(n_embd=1024, tokens="4096,16384,65536", repeats=10)


def dispatch_loop(x, expert_index, gates, experts, capacity=0):
    """The naive baseline (as in most first MoE implementations): per expert, a mask finds its
    tokens in priority order, it runs on them, and the weighted result is added back."""
    y = torch.zeros_like(moe.upcast(x))
    for e in range(experts.w_in.size(0)):
        choice, token = torch.where(expert_index.t() == e)  # row-major: first choices first
        if capacity:
            choice, token = choice[:capacity], token[:capacity]
        if len(token):
            out = moe.upcast(experts.expert(e, x[token]))
            y.index_add_(0, token, out * gates[token, choice, None])
    return y


def dispatch_dense(x, expert_index, gates, experts):
    """Every expert on every token, weighted by the gates (zero for the unchosen)."""
    outs = torch.stack([experts.expert(e, x) for e in range(experts.w_in.size(0))], 1)  # (N, E, d)
    G = torch.zeros(len(x), outs.size(1), dtype=gates.dtype, device=x.device)
    G = G.scatter(1, expert_index, gates)  # (N, E)
    return (G[..., None] * moe.upcast(outs)).sum(1)


def time_fwd_bwd(fn, x, device, repeats):
    """The fastest of `repeats` forward + backward passes in ms, after one warm-up call."""
    times = []
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(x).square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times[1:])


def main(cfg):
    device = gpt.pick_device(cfg.device)
    cuda = device.startswith("cuda")
    d, E, k = cfg.n_embd, cfg.n_expert, cfg.top_k
    h = 16 * math.ceil(8 * d / 3 / k / 16)  # the demo's expert width: equal active parameters
    torch.manual_seed(0)
    experts = moe.Experts(E, d, h).to(device)
    dense_mlp = moe.Experts(1, d, k * h).to(device)  # one SwiGLU k experts wide
    router = moe.Router(moe.MoEConfig(n_embd=d, n_expert=E, top_k=k)).to(device)
    dtype = torch.bfloat16 if cuda else torch.float32  # the matmuls' dtype under autocast
    grouped = moe.grouped_mm_runs(torch.device(device).type, dtype)
    print(f"MoE layer fwd+bwd, d={d}, {E} SwiGLU experts of {h}, top-{k}, {device}"
          f"{', bf16 autocast' if cuda else ''}; ratios are speed-ups over the naive loop")
    print(f"{'tokens':>7} {'naive loop':>11} {'sorted+loop':>16} {'sorted+grouped':>16}"
          f" {'all experts':>16} {'dense MLP':>16}")
    for n in [int(t) for t in cfg.tokens.split(",")]:
        x = torch.randn(n, d, device=device, requires_grad=True)
        with torch.no_grad():
            _, _, idx, gates = router(x)
        sort = functools.partial(moe.dispatch_sorted, expert_index=idx, gates=gates,
                                 experts=experts)
        variants = {"naive": lambda x: dispatch_loop(x, idx, gates, experts),
                    "sorted": lambda x: sort(x)[0], "grouped": lambda x: sort(x, grouped=True)[0],
                    "all": lambda x: dispatch_dense(x, idx, gates, experts),
                    "dense": lambda x: dense_mlp.expert(0, x)}
        if not grouped:
            del variants["grouped"]
        with gpt.autocast(device):
            ms = {name: time_fwd_bwd(fn, x, device, cfg.repeats) for name, fn in variants.items()}
        row = [f"{ms[v]:7.1f}ms {ms['naive'] / ms[v]:5.2f}x" if v in ms else f"{'n/a':>16}"
               for v in ("sorted", "grouped", "all", "dense")]
        print(f"{n:>7} {ms['naive']:9.1f}ms " + " ".join(row))


if __name__ == "__main__":
    main(gpt.parse_args(BenchConfig, gpu=GPU))
