"""Our written-out attention against F.scaled_dot_product_attention, in one run.

attention.scaled_dot_product_attention materialises the T x T scores and weights;
F.scaled_dot_product_attention runs a fused kernel (flash attention on CPU and CUDA) that never
does. Both get the same causal q, k, v; the bench checks that their outputs agree before timing.

    python bench/attention.py                  # B=4, H=8, d=64, T = 128 to 2048, 8 and 2 kv heads
    python bench/attention.py --device=cuda    # bf16 on CUDA

Prints the forward time of each (the best of --repeats runs) and the ratio ours / F.sdpa.
"""
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import attention  # noqa: E402


@dataclass
class BenchConfig:
    lengths: str = "128,512,1024,2048"  # sequence lengths T, comma-separated
    kv_heads: str = "8,2"  # key/value heads for the 8 query heads: 8 = MHA, fewer = GQA
    repeats: int = 3  # timed runs of each; the fastest counts
    device: str = "auto"  # auto | cpu | cuda | mps

    def __post_init__(self):
        for name in ("lengths", "kv_heads"):
            text = getattr(self, name)
            if not all(n.strip().isdigit() and int(n) > 0 for n in text.split(",")):
                raise ValueError(f"{name}={text!r}: use positive integers, comma-separated")
        if any(8 % int(n) for n in self.kv_heads.split(",")):
            raise ValueError(f"kv_heads={self.kv_heads!r}: each must divide the 8 query heads")
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats} must be at least 1")


def best_ms(fn, repeats, sync):
    """The fastest of `repeats` runs of fn, in ms, after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(cfg):
    device = attention.pick_device(cfg.device)
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"causal attention forward, B=4, H=8, d=64, {dtype}, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'T':>6} {'kv heads':>8} {'ours ms':>9} {'F.sdpa ms':>10} {'ours / F.sdpa':>14}")
    for H_kv in (int(n) for n in cfg.kv_heads.split(",")):
        for T in (int(n) for n in cfg.lengths.split(",")):
            q = torch.randn(4, 8, T, 64, device=device, dtype=dtype)
            k = torch.randn(4, H_kv, T, 64, device=device, dtype=dtype)
            v = torch.randn(4, H_kv, T, 64, device=device, dtype=dtype)
            mask = attention.causal_mask(T, device=device)
            with torch.no_grad():
                ours = lambda: attention.scaled_dot_product_attention(q, k, v, mask)  # noqa: E731
                ref = lambda: F.scaled_dot_product_attention(  # noqa: E731
                    q, k, v, is_causal=True, enable_gqa=H_kv != 8)
                error = (ours().float() - ref().float()).abs().max().item()
                if error > (0.05 if cuda else 1e-4):  # bf16 keeps 8 bits; float32 sums of 2048
                    raise SystemExit(f"outputs differ by {error:.2g} at T={T}, {H_kv} kv heads")
                t_ours = best_ms(ours, cfg.repeats, sync)
                t_ref = best_ms(ref, cfg.repeats, sync)
            print(f"{T:>6} {H_kv:>8} {t_ours:>9.2f} {t_ref:>10.2f} {t_ours / t_ref:>13.2f}x")


if __name__ == "__main__":
    main(attention.parse_args(BenchConfig))
