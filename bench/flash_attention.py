"""FlashAttention measured: HBM traffic, peak memory, time against naive attention and SDPA.

flash_attention.py checks values; this file counts and measures. Four tables:
- io: HBM elements read and written by one head's forward (hbm_accesses), naive
  4N^2 + 4Nd against tiled ~ 2N^2 d / B, B the largest tile that fits in --sram_kb.
- memory: peak memory of one forward + backward of one head, N = 1k doubling to --max_n. Naive
  attention holds N x N matrices; ours (tiled) and F.scaled_dot_product_attention grow linearly.
  CUDA: the caching allocator's high-water mark; CPU: torch.profiler's allocator events.
- speed: time and peak memory of one forward + backward (B=1, H=2 on CPU; B=8, H=16 on CUDA),
  ours vs naive and SDPA.
- tflops: TFLOP/s of the forward and of forward + backward for naive, ours and SDPA's
  FlashAttention backend, with batch * N = --tokens and H * d = 2048 (the FlashAttention-2
  paper's setup), d = 64 and 128, causal and not; err is the largest |ours - SDPA| over O, dQ,
  dK and dV. On CUDA by default; on CPU only when asked, with small sizes.

    python bench/flash_attention.py                   # CPU: io, memory to N = 16k, speed
    python bench/flash_attention.py --tables=memory   # the peak memory table alone
    python bench/flash_attention.py --device=cuda     # all four; memory to N = 64k
    python bench/flash_attention.py --tables=tflops --tflops_sizes=256,512 --tokens=1024  # CPU
"""
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import flash_attention as fa  # noqa: E402

TABLES = ("io", "memory", "speed", "tflops")


@dataclass
class BenchConfig:
    tables: str = "io,memory,speed"  # comma-separated, of io, memory, speed and tflops
    sram_kb: int = 192  # on-chip SRAM per SM for the io table (H100: 228 KB, A100: 164 KB)
    head_dim: int = 64  # d of the memory and speed tables (tflops runs d = 64 and 128)
    max_n: int = 16384  # largest N of the memory table, doubling from 1024
    speed_sizes: str = "1024,2048,4096"  # N of the speed table
    tflops_sizes: str = "1024,4096,16384"  # N of the TFLOP/s table
    tokens: int = 16384  # batch * N of the TFLOP/s table
    device: str = "auto"  # auto | cpu | cuda (MPS cannot measure peak memory)

    def __post_init__(self):
        if not set(self.tables.split(",")) <= set(TABLES):
            raise ValueError(f"tables={self.tables}: choose from {','.join(TABLES)}")
        for name in ("speed_sizes", "tflops_sizes"):
            text = getattr(self, name)
            if not all(n.strip().isdigit() and int(n) > 0 for n in text.split(",")):
                raise ValueError(f"{name}={text!r}: use positive integers, comma-separated")
        if self.max_n < 1024 or self.head_dim < 1:
            raise ValueError(f"max_n={self.max_n} must be at least 1024 (the table doubles from "
                             f"1024) and head_dim={self.head_dim} positive")
        if self.sram_kb < 1:
            raise ValueError(f"sram_kb={self.sram_kb} must be positive: try --sram_kb=228 (H100)")
        if any(self.tokens % int(n) for n in self.tflops_sizes.split(",")):
            raise ValueError(f"tokens={self.tokens}: use a multiple of every N in tflops_sizes")


GPU = dict(tables="io,memory,speed,tflops", max_n=65536)  # on CUDA: all four tables, longer N


# ----------------------------------------------------------------------------- measuring

def peak_memory(fn, device):
    """Peak bytes allocated while fn() runs, above what was allocated before it. CUDA: the caching
    allocator's high-water mark. CPU: torch's profiler, which logs every allocation and free of
    torch's CPU allocator with the running total (its '[memory]' events)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with quiet_stderr():  # Kineto writes a line to the C-level stderr at every start and stop
        prof.start()
    try:
        fn()
    finally:
        with quiet_stderr():
            prof.stop()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    return max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"),
               default=0)


@contextlib.contextmanager
def quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def free_memory(device):
    """Bytes the device can still allocate (CPU: MemAvailable of /proc/meminfo, else all of RAM)."""
    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            line = next(line for line in f if line.startswith("MemAvailable"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def time_ms(fn, device, reps=5):
    """Median wall time of fn() in ms after one warm-up call (CUDA events on the GPU)."""
    fn()
    times = []
    for _ in range(reps):
        if str(device).startswith("cuda"):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def forward_backward(attn, q, k, v, causal, dO):
    """One training step of attention: forward, then backward into q.grad, k.grad, v.grad; the
    output and the three gradients."""
    q.grad = k.grad = v.grad = None
    out = attn(q, k, v, causal=causal)
    out.backward(dO)
    return [out.detach(), q.grad, k.grad, v.grad]


def sdpa_flash(q, k, v, causal=False):
    """F.scaled_dot_product_attention restricted to its FlashAttention backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def naive_fits(B, H, N, element_size, device):
    """Whether S, P, dP and dS of naive attention (N^2 each) fit in half of the free memory."""
    return 4 * B * H * N * N * element_size <= free_memory(device) // 2


# ----------------------------------------------------------------------------- tables

def hbm_accesses(N, d, sram):
    """HBM elements read + written by one head's forward: (naive, tiled, tile size)."""
    # naive: S = Q K^T reads Q, K, writes S; P = softmax(S) reads S, writes P; O = P V reads P, V
    naive = (2 * N * d + N * N) + (N * N + N * N) + (N * N + N * d + N * d)  # = 4 N^2 + 4 N d
    # B: the largest square tile whose working set fits, Q_i, O_i, K_j, V_j (4 B d) and S_ij (B^2)
    B = math.isqrt(4 * d * d + sram) - 2 * d  # solves B^2 + 4 d B <= sram
    if B < 1:
        raise ValueError(f"sram={sram} elements cannot hold a 1-row tile at d={d}: more SRAM")
    query_tiles = -(-N // B)  # tiled: Q once, K and V once per query tile, O and L once
    tiled = N * d + query_tiles * 2 * N * d + N * d + N  # ~ 2 N^2 d / B ~ 8 N^2 d^2 / M
    return naive, tiled, B


def io_table(sram_kb):
    elem_bytes = 2  # fp16
    sram = sram_kb * 1024 // elem_bytes
    print(f"\nHBM traffic of one head's forward, fp16, SRAM {sram_kb} KB = {sram} elements "
          "(naive 4N^2 + 4Nd; tiled ~ 2N^2 d / B with B the largest tile that fits)")
    print(f"{'N':>6} {'d':>4} {'tile B':>7} {'naive MB':>10} {'tiled MB':>10} {'naive/tiled':>12}")
    for d in (64, 128):
        for N in (1024, 4096, 16384):
            naive, tiled, B = hbm_accesses(N, d, sram)
            print(f"{N:>6} {d:>4} {B:>7} {naive * elem_bytes / 1e6:>10.1f} "
                  f"{tiled * elem_bytes / 1e6:>10.1f} {naive / tiled:>11.1f}x")


def memory_table(device, d, max_n):
    """Peak memory of one step (forward + backward) of one head: naive grows as N^2, ours as N."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    how = "torch.cuda.max_memory_allocated" if device == "cuda" else "torch.profiler's events"
    print(f"\npeak memory of forward + backward, B=1, H=1, d={d}, {dtype}, measured with {how}")
    print(f"{'N':>6} {'naive MiB':>10} {'ours MiB':>9} {'SDPA MiB':>9} {'naive/ours':>11}")
    for N in tqdm([1024 * 2 ** i for i in range(int(math.log2(max_n // 1024)) + 1)],
                  desc="memory", leave=False):
        q, k, v = (torch.randn(1, 1, N, d, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        dO = torch.randn(1, 1, N, d, device=device, dtype=dtype)
        mib = {}
        for name, attn in (("ours", fa.flash_attention), ("sdpa", fa.sdpa),
                           ("naive", fa.naive_attention)):
            if name != "naive" or naive_fits(1, 1, N, q.element_size(), device):  # never swap
                step = lambda: forward_backward(attn, q, k, v, False, dO)  # noqa: E731
                mib[name] = peak_memory(step, device) / 2 ** 20
        naive = f"{mib['naive']:.1f}" if "naive" in mib else "too big"
        ratio = f"{mib['naive'] / mib['ours']:.0f}x" if "naive" in mib else ""
        tqdm.write(f"{N:>6} {naive:>10} {mib['ours']:>9.1f} {mib['sdpa']:>9.1f} {ratio:>11}")


def speed_table(device, d, sizes):
    """Time and peak memory of one forward + backward: ours vs naive vs SDPA."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    B, H = (8, 16) if device == "cuda" else (1, 2)
    ours = "the Triton kernels" if device == "cuda" and fa.triton else "the PyTorch version"
    print(f"\nforward + backward on {device}, {dtype}, B={B}, H={H}, d={d}; ours is {ours}; a "
          "ratio above 1 means ours is faster or smaller")
    print(f"{'N':>5} {'causal':>6} | {'naive ms':>9} {'ours ms':>8} {'SDPA ms':>8} | "
          f"{'naive/ours':>10} {'SDPA/ours':>9} | {'naive/ours mem':>14} {'SDPA/ours mem':>13}")
    for N in sizes:
        for causal in (False, True):
            q, k, v = (torch.randn(B, H, N, d, device=device, dtype=dtype, requires_grad=True)
                       for _ in range(3))
            dO = torch.randn_like(q)
            ms = {}
            mem = {}
            for name, attn in (("naive", fa.naive_attention), ("ours", fa.flash_attention),
                               ("sdpa", fa.sdpa)):
                step = lambda: forward_backward(attn, q, k, v, causal, dO)  # noqa: E731
                ms[name] = time_ms(step, device, reps=3)
                mem[name] = peak_memory(step, device)
            print(f"{N:>5} {causal!s:>6} | {ms['naive']:>9.1f} {ms['ours']:>8.1f} "
                  f"{ms['sdpa']:>8.1f} | {ms['naive'] / ms['ours']:>9.2f}x "
                  f"{ms['sdpa'] / ms['ours']:>8.2f}x | {mem['naive'] / mem['ours']:>13.1f}x "
                  f"{mem['sdpa'] / mem['ours']:>12.1f}x")


def attention_flops(B, H, N, d, causal):
    """Forward FLOPs: two matmuls of 2 N^2 d each, half of them when causal; the backward has five
    matmuls, 2.5x the forward."""
    return 4 * B * H * N * N * d / (2 if causal else 1)


def tflops_table(device, sizes, tokens):
    """TFLOP/s of naive attention, ours and SDPA's FlashAttention backend, and ours' largest
    difference from SDPA; bf16 on CUDA, float32 on CPU."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print(f"\nTFLOP/s, {dtype}, B = {tokens} / N, H = 2048 / d (fwd+bwd counts the backward as "
          "2.5x the forward); err = max |ours - SDPA| over O, dQ, dK, dV")
    columns = f"{'naive':>6} {'ours':>6} {'SDPA':>6} {'ours/SDPA':>9}"
    print(f"{'d':>4} {'causal':>6} {'N':>6} | {columns} | fwd+bwd: {columns} | err")
    cases = [(d, causal, N) for d in (64, 128) for causal in (False, True) for N in sizes]
    for d, causal, N in tqdm(cases, desc="TFLOP/s", leave=False):
        B = tokens // N
        H = 2048 // d
        q, k, v = (torch.randn(B, H, N, d, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        dO = torch.randn_like(q)
        flops = attention_flops(B, H, N, d, causal)
        fwd = {"naive": math.nan}
        both = {"naive": math.nan}
        for name, attn in (("naive", fa.naive_attention), ("ours", fa.flash_attention),
                           ("sdpa", sdpa_flash)):
            if name == "naive" and not naive_fits(B, H, N, q.element_size(), device):
                continue
            with torch.no_grad():
                fwd[name] = flops / time_ms(lambda: attn(q, k, v, causal=causal), device) / 1e9
            step = lambda: forward_backward(attn, q, k, v, causal, dO)  # noqa: E731
            both[name] = 3.5 * flops / time_ms(step, device) / 1e9
        ours = forward_backward(fa.flash_attention, q, k, v, causal, dO)
        error = max((a.float() - b.float()).abs().max().item()
                    for a, b in zip(ours, forward_backward(sdpa_flash, q, k, v, causal, dO)))
        cells = lambda r: (f"{r['naive']:>6.2f} {r['ours']:>6.2f} {r['sdpa']:>6.2f} "  # noqa: E731
                           f"{r['ours'] / r['sdpa']:>8.2f}x")
        tqdm.write(f"{d:>4} {causal!s:>6} {N:>6} | {cells(fwd)} | fwd+bwd: {cells(both)} | "
                   f"{error:.1e}")
        if device == "cuda":
            torch.cuda.empty_cache()


def main(cfg):
    device = fa.pick_device(cfg.device)
    torch.manual_seed(0)
    if device == "mps":
        print("peak memory cannot be measured on MPS; running on CPU")
        device = "cpu"
    tables = cfg.tables.split(",")
    if "io" in tables:
        io_table(cfg.sram_kb)
    if "memory" in tables:
        memory_table(device, cfg.head_dim, cfg.max_n)
    if "speed" in tables:
        speed_table(device, cfg.head_dim, [int(n) for n in cfg.speed_sizes.split(",")])
    if "tflops" in tables:
        tflops_table(device, [int(n) for n in cfg.tflops_sizes.split(",")], cfg.tokens)


if __name__ == "__main__":
    main(fa.parse_args(BenchConfig, gpu=GPU))
