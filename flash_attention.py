"""FlashAttention: exact attention that never writes the N x N score matrix to memory.

Attention is O = softmax(S) V with S = Q K^T / sqrt(d). Naive code writes S and P = softmax(S) to
HBM (GPU main memory), O(N^2) traffic and memory. FlashAttention (Dao et al. 2022; FlashAttention-2,
Dao 2023) tiles Q, K, V into blocks that fit in on-chip SRAM and computes softmax online: per row it
keeps a running max m and running sum l, and rescales what it has summed when m grows:
    m' = max(m, rowmax(S_ij))   l' = e^(m - m') l + rowsum(e^(S_ij - m'))   O' = e^(m - m') O + e^(S_ij - m') V_j
The backward pass recomputes P = exp(S - L) from the saved log-sum-exp L instead of storing P.
Memory grows linearly in N and the HBM traffic drops from Theta(N^2) to Theta(N^2 d^2 / M).

This file has the algorithm twice: in PyTorch (readable, any device) and as a Triton kernel
(forward and backward, used on CUDA). `flash_attention(q, k, v, causal, scale)` picks one.

    python flash_attention.py           # check vs naive, IO table, peak memory vs N; TFLOP/s on CUDA
    python flash_attention.py --bench   # time and peak memory: ours vs naive vs F.scaled_dot_product_attention
    python -m pytest -q tests/test_flash_attention.py   # the Triton kernels run on CPU under TRITON_INTERPRET=1

On CPU (about a minute) you see errors of ~1e-6 against float64 naive attention, as small as SDPA's;
the IO table; and the peak memory of a forward + backward of one head growing as N^2 for naive
attention (3.1 GiB at N = 16k) but linearly for ours (29 MiB, 108x less).
"""
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (CPU-only, macOS, Windows): the PyTorch path serves every call
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton kernels run on CPU tensors in numpy


@dataclass
class Config:
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # for the random q, k, v
    head_dim: int = 64  # d of the value check and the memory table
    max_n: int = 0  # largest N of the memory table, doubling from 1024; 0 = 16384 on CPU, 65536 on CUDA
    sram_kb: int = 192  # on-chip SRAM per SM for the IO table (H100: 228 KB, A100: 164 KB)
    bench: bool = False  # only time ours vs naive vs F.scaled_dot_product_attention (and their peak memory)

    def __post_init__(self):
        if self.max_n and self.max_n < 1024:  # the memory table doubles N from 1024
            raise ValueError(f"max_n={self.max_n} is below 1024: use 1024 or more, or 0 for auto")
        if self.head_dim < 1:
            raise ValueError(f"head_dim={self.head_dim} must be positive: try --head_dim=64")
        if self.sram_kb < 1:
            raise ValueError(f"sram_kb={self.sram_kb} must be positive: try --sram_kb=228 (H100)")


# ----------------------------------------------------------------------------- reference

def causal_mask(Lq, Lk, device=None):
    """Bottom-right aligned causal mask (Lq, Lk): query r sees key c iff c <= r + (Lk - Lq).
    With Lq < Lk the queries are the last Lq positions (decoding with a cache); with Lq > Lk the
    first Lq - Lk queries see nothing."""
    return torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril(diagonal=Lk - Lq)


def naive_attention(q, k, v, causal=False, scale=None):
    """softmax(Q K^T * scale) V with the whole (B, H, Lq, Lk) matrix in memory. Rows with no
    visible key give 0, as F.scaled_dot_product_attention does."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S = scale * q @ k.transpose(-2, -1)  # (B, H, Lq, Lk)
    if not causal:
        return torch.softmax(S, dim=-1) @ v
    keep = causal_mask(q.shape[-2], k.shape[-2], q.device)
    P = torch.softmax(S.masked_fill(~keep, -math.inf), dim=-1).masked_fill(~keep, 0.0)  # NaN rows -> 0
    return P @ v


def check_inputs(q, k, v):
    """Clear errors for the mistakes that are easy to make with attention tensors."""
    if not (q.dim() == k.dim() == v.dim() == 4):
        raise ValueError(f"q, k, v must be 4-D (batch, heads, seq_len, head_dim), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}; from (B, N, H, d) use .transpose(1, 2)")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise TypeError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}; "
                        "convert them with .to(dtype)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on {q.device}, {k.device}, {v.device}; move them to one device")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
                         "need q (B, H, Lq, d), k (B, H, Lk, d), v (B, H, Lk, d_v) "
                         "(for GQA repeat k and v over heads first)")


# ----------------------------------------------------------------------------- FlashAttention-2 in PyTorch

def _tile_keep(i0, i1, j0, j1, offset, device):
    """Causal keep-mask of the tile rows i0:i1 x cols j0:j1, or None when the tile is all visible."""
    if j1 - 1 <= i0 + offset:  # the tile's last key is visible to its first query
        return None
    rows = torch.arange(i0, i1, device=device)[:, None]
    cols = torch.arange(j0, j1, device=device)[None, :]
    return cols <= rows + offset


def _torch_forward(q, k, v, causal, scale, block_q, block_k):
    """Returns O and L = logsumexp of each score row, both in float32 (float64 for float64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    Lq, Lk = q.shape[2], k.shape[2]
    offset = Lk - Lq  # bottom-right causal alignment
    O = q.new_empty(q.shape[:3] + v.shape[-1:], dtype=acc)  # (B, H, Lq, d_v)
    L = q.new_empty(q.shape[:3], dtype=acc)  # (B, H, Lq)
    for i0 in range(0, Lq, block_q):  # outer loop: one block of queries ...
        i1 = min(i0 + block_q, Lq)
        Qi = q[:, :, i0:i1].to(acc)  # (B, H, Br, d)
        m = Qi.new_full(Qi.shape[:3], -math.inf)  # running row max, (B, H, Br)
        l = Qi.new_zeros(Qi.shape[:3])  # running row sum of exp(S - m)
        Oi = Qi.new_zeros(Qi.shape[:3] + (v.shape[-1],))  # running unnormalised P V, (B, H, Br, d_v)
        for j0 in range(0, Lk, block_k):  # ... inner loop: stream the key/value blocks past it
            j1 = min(j0 + block_k, Lk)
            if causal and j0 > i1 - 1 + offset:
                break  # this and every later block lies above the diagonal
            S = scale * Qi @ k[:, :, j0:j1].to(acc).transpose(-2, -1)  # S_ij = Q_i K_j^T * scale, (B, H, Br, Bc)
            keep = _tile_keep(i0, i1, j0, j1, offset, q.device) if causal else None
            if keep is not None:
                S = S.masked_fill(~keep, -math.inf)
            m_new = torch.maximum(m, S.amax(-1))  # m' = max(m, rowmax(S_ij))
            m_use = m_new.masked_fill(m_new == -math.inf, 0.0)  # a row with no visible key yet: exp(-inf) = 0
            P = torch.exp(S - m_use[..., None])  # P~_ij = exp(S_ij - m')
            alpha = torch.exp(m - m_use)  # e^(m - m') rescales what was summed under the old max
            l = alpha * l + P.sum(-1)  # l' = e^(m - m') l + rowsum(P~_ij)
            Oi = alpha[..., None] * Oi + P @ v[:, :, j0:j1].to(acc)  # O' = e^(m - m') O + P~_ij V_j
            m = m_new
        O[:, :, i0:i1] = Oi / l.masked_fill(l == 0, 1.0)[..., None]  # O_i = O' / l'; rows that saw nothing stay 0
        L[:, :, i0:i1] = m + torch.log(l)  # L_i = m + log l (-inf for rows that saw nothing)
    return O, L


def _torch_backward(q, k, v, O, L, dO, causal, scale, block_q, block_k):
    """dQ, dK, dV by recomputing each tile of P from L: nothing of size N x N was saved."""
    acc = O.dtype
    Lq, Lk = q.shape[2], k.shape[2]
    offset = Lk - Lq
    dO = dO.to(acc)
    D = (dO * O).sum(-1)  # D_i = rowsum(dO_i * O_i) = rowsum(P_i * dP_i), (B, H, Lq)
    dQ = torch.zeros(q.shape, dtype=acc, device=q.device)
    dK, dV = torch.zeros(k.shape, dtype=acc, device=q.device), torch.zeros(v.shape, dtype=acc, device=q.device)
    for j0 in range(0, Lk, block_k):  # outer loop: one block of keys/values, whose dK_j, dV_j we accumulate
        j1 = min(j0 + block_k, Lk)
        Kj, Vj = k[:, :, j0:j1].to(acc), v[:, :, j0:j1].to(acc)  # (B, H, Bc, d)
        for i0 in range(0, Lq, block_q):  # inner loop: the query blocks that see it
            i1 = min(i0 + block_q, Lq)
            if causal and j0 > i1 - 1 + offset:
                continue  # tile above the diagonal
            Qi, dOi = q[:, :, i0:i1].to(acc), dO[:, :, i0:i1]
            P = torch.exp(scale * Qi @ Kj.transpose(-2, -1) - L[:, :, i0:i1, None])  # P_ij = exp(S_ij - L_i)
            keep = _tile_keep(i0, i1, j0, j1, offset, q.device) if causal else None
            if keep is not None:
                P = P.masked_fill(~keep, 0.0)
            dV[:, :, j0:j1] += P.transpose(-2, -1) @ dOi  # dV_j += P_ij^T dO_i
            dP = dOi @ Vj.transpose(-2, -1)  # dP_ij = dO_i V_j^T
            dS = P * (dP - D[:, :, i0:i1, None])  # dS_ij = P_ij * (dP_ij - D_i)
            dQ[:, :, i0:i1] += scale * dS @ Kj  # dQ_i += scale dS_ij K_j
            dK[:, :, j0:j1] += scale * dS.transpose(-2, -1) @ Qi  # dK_j += scale dS_ij^T Q_i
    return dQ.to(q.dtype), dK.to(k.dtype), dV.to(v.dtype)


class FlashAttentionTorch(torch.autograd.Function):
    """Saves q, k, v, O and L (linear in N); the backward recomputes the rest tile by tile."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, block_q, block_k):
        O, L = _torch_forward(q, k, v, causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, O, L)
        ctx.args = (causal, scale, block_q, block_k)
        return O.to(q.dtype)

    @staticmethod
    def backward(ctx, dO):
        return *_torch_backward(*ctx.saved_tensors, dO, *ctx.args), None, None, None, None


def flash_attention_torch(q, k, v, causal=False, scale=None, block_q=256, block_k=256):
    """The PyTorch FlashAttention-2 on any device; q (B, H, Lq, d), k (B, H, Lk, d) and
    v (B, H, Lk, d_v). Tiles of 256 x 256 ran fastest on CPU (Python overhead per tile against
    cache-sized work)."""
    check_inputs(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return FlashAttentionTorch.apply(q, k, v, causal, scale, block_q, block_k)


# ----------------------------------------------------------------------------- FlashAttention-2 in Triton
# One program per (query block, batch*head) in the forward; the backward runs one kernel for dK, dV
# (a program per key block, looping over query blocks) and one for dQ (a program per query block),
# so no two programs write the same output and no atomics are needed. Scores are kept in base 2:
# s = S log2(e), so exp(S - m) = exp2(s - m2). Every key loop is split into tiles that need no mask
# (the bulk, and the fast path) and tiles on the diagonal or the ragged end that do.

# float32 runs only under the interpreter, as an exact check of the algorithm: on a GPU its tiles
# would not fit in registers at these block sizes (and SDPA's flash backend is 16-bit only too).
TRITON_DTYPES = (torch.float16, torch.bfloat16) + ((torch.float32,) if INTERPRET else ())
TRITON_HEAD_DIMS = (16, 32, 64, 128)

if triton is not None:
    # Autotune candidates (BLOCK_M, BLOCK_N, warps, stages) by head dim: compiled for sm_90 (H100),
    # these spill no or few registers (ptxas -v); the others were dropped. Unmeasured on a GPU.
    _FWD = {64: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 32, 4, 4), (64, 64, 4, 3)],
            128: [(128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4)]}
    _DKDV = {64: [(64, 128, 8, 3), (32, 128, 8, 2), (32, 64, 4, 3)],
             128: [(32, 64, 8, 3), (32, 64, 4, 3), (16, 64, 4, 3), (32, 32, 4, 3)]}
    _DQ = {64: [(128, 64, 8, 3), (128, 32, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2)],
           128: [(64, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 2)]}
    _KEY = ["Lq", "Lk", "HEAD_DIM", "CAUSAL"]

    def _configs(table, interpreted):
        """Every candidate of the table on a GPU; one small tiling in the interpreter, so that tiny test
        inputs still span several tiles and ragged ends."""
        if INTERPRET:
            return [triton.Config({"BLOCK_M": interpreted[0], "BLOCK_N": interpreted[1]})]
        shapes = sorted({shape for shapes in table.values() for shape in shapes})
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]

    def _prune(table):
        """Keeps the candidates listed for the call's head dim (16 and 32 take those of 64)."""
        def prune(configs, named_args, **kwargs):
            wanted = table[64 if kwargs["HEAD_DIM"] <= 64 else 128]
            shape = lambda c: (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)  # noqa: E731
            return [c for c in configs if shape(c) in wanted]
        return {"early_config_prune": prune}

    _UPCAST_DOTS = tl.constexpr(INTERPRET)
    LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x log2(e))

    @triton.jit
    def _dot(a, b, acc):
        """acc + a @ b, accumulated in float32. The interpreter multiplies bfloat16 as raw bits
        (triton-lang/triton#11584), so there the operands go to float32 first: a product of two
        16-bit floats is exact in float32, which is what the tensor cores compute too."""
        if _UPCAST_DOTS:
            a, b = a.to(tl.float32), b.to(tl.float32)
        return tl.dot(a, b, acc)

    @triton.jit
    def _load_rows(base, idx, stride, dims, n, MASKED: tl.constexpr):
        """Rows idx of an (n, d) matrix; with MASKED, rows past n read as 0. The addresses are built
        here from 1-D indices rather than kept as a 2-D tensor of pointers, which spills registers."""
        ptrs = base + idx[:, None] * stride + dims[None, :]
        if MASKED:
            rows = tl.load(ptrs, mask=idx[:, None] < n, other=0.0)
        else:
            rows = tl.load(ptrs)
        return rows

    @triton.jit
    def _key_split(start_m, Lq, Lk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
        """The keys a query tile visits, [0, end), split at full_end: before it whole tiles that every row
        of the tile sees (no mask); after it the tiles cut by the diagonal or by the ragged end."""
        if CAUSAL:
            full_end = tl.maximum(start_m + Lk - Lq + 1, 0) // BLOCK_N * BLOCK_N
            end = tl.minimum(start_m + BLOCK_M + Lk - Lq, Lk)  # nothing after the last row's diagonal
        else:
            full_end = Lk // BLOCK_N * BLOCK_N
            end = Lk
        return full_end, end

    @triton.jit
    def _fwd_tiles(acc, l_i, m_i, q, K_bh, V_bh, sk_n, sv_n, rows, cols, dims, start, end, Lq, Lk, qk_scale,
                   BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
        for start_n in range(start, end, BLOCK_N):
            n = start_n + cols  # key indices of this tile, (BLOCK_N,)
            k = _load_rows(K_bh, n, sk_n, dims, Lk, MASKED)  # K_j, (BLOCK_N, d)
            v = _load_rows(V_bh, n, sv_n, dims, Lk, MASKED)  # V_j (loaded here both are prefetched together)
            s = _dot(q, tl.trans(k), None) * qk_scale  # S_ij log2(e), (BLOCK_M, BLOCK_N)
            if MASKED:
                keep = n[None, :] < Lk
                if CAUSAL:
                    keep = keep & (n[None, :] <= rows[:, None] + Lk - Lq)
                s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # m' = max(m, rowmax(S_ij))
            if MASKED:
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no visible key yet: exp2(-inf) = 0
            else:
                m_use = m_new
            p = tl.math.exp2(s - m_use[:, None])  # P~_ij
            alpha = tl.math.exp2(m_i - m_use)  # e^(m - m')
            l_i = l_i * alpha + tl.sum(p, 1)  # l' = e^(m - m') l + rowsum(P~_ij)
            acc = _dot(p.to(v.dtype), v, acc * alpha[:, None])  # O' = e^(m - m') O + P~_ij V_j
            m_i = m_new
        return acc, l_i, m_i

    @triton.autotune(configs=_configs(_FWD, (32, 16)), key=_KEY, prune_configs_by=_prune(_FWD))
    @triton.jit
    def _fwd_kernel(Q, K, V, O, LSE, sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_n,
                    H, Lq, Lk, qk_scale, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        start_m = tl.program_id(0) * BLOCK_M
        bh = tl.program_id(1).to(tl.int64)  # int64 offsets: B*H*N*d may pass 2^31
        b, h = bh // H, bh % H
        rows, cols, dims = start_m + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, HEAD_DIM)
        q = _load_rows(Q + b * sq_b + h * sq_h, rows, sq_n, dims, Lq, True)  # Q_i stays on chip, (BLOCK_M, d)
        K_bh, V_bh = K + b * sk_b + h * sk_h, V + b * sv_b + h * sv_h
        full_end, end = _key_split(start_m, Lq, Lk, BLOCK_M, BLOCK_N, CAUSAL)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K_bh, V_bh, sk_n, sv_n, rows, cols, dims, 0, full_end, Lq, Lk,
                                   qk_scale, BLOCK_N, False, CAUSAL)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K_bh, V_bh, sk_n, sv_n, rows, cols, dims, full_end, end, Lq, Lk,
                                   qk_scale, BLOCK_N, True, CAUSAL)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # l = 0: the row saw no key, and its O stays 0
        lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_safe)) / LOG2E)  # L = m + ln l, float32
        tl.store(LSE + bh * Lq + rows, lse, mask=rows < Lq)
        o = acc / l_safe[:, None]
        tl.store(O + b * so_b + h * so_h + rows[:, None] * so_n + dims[None, :], o.to(O.dtype.element_ty),
                 mask=rows[:, None] < Lq)

    @triton.jit
    def _dkdv_tiles(dk, dv, k, v, Q_bh, DO_bh, LSE_bh, D_bh, sq_n, sdo_n, rows, cols, dims, start, end, Lq, Lk,
                    qk_scale, BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
        for start_m in range(start, end, BLOCK_M):
            m = start_m + rows  # query indices of this tile, (BLOCK_M,)
            q = _load_rows(Q_bh, m, sq_n, dims, Lq, MASKED)  # Q_i, (BLOCK_M, d); rows past Lq read as 0,
            do = _load_rows(DO_bh, m, sdo_n, dims, Lq, MASKED)  # and with dO = D = 0 they add nothing
            if MASKED:
                lse = tl.load(LSE_bh + m, mask=m < Lq, other=0.0)
                delta = tl.load(D_bh + m, mask=m < Lq, other=0.0)
            else:
                lse = tl.load(LSE_bh + m)
                delta = tl.load(D_bh + m)
            pT = tl.math.exp2(_dot(k, tl.trans(q), None) * qk_scale - lse[None, :] * LOG2E)  # P_ij^T = exp(S - L)^T
            if MASKED:
                if CAUSAL:
                    pT = tl.where(cols[:, None] <= m[None, :] + Lk - Lq, pT, 0.0)
            dv = _dot(pT.to(do.dtype), do, dv)  # dV_j += P_ij^T dO_i
            dpT = _dot(v, tl.trans(do), None)  # dP_ij^T = V_j dO_i^T
            dsT = pT * (dpT - delta[None, :])  # dS = P * (dP - D)
            dk = _dot(dsT.to(q.dtype), q, dk)  # dK_j += dS_ij^T Q_i (times the scale at the end)
        return dk, dv

    @triton.autotune(configs=_configs(_DKDV, (16, 32)), key=_KEY, prune_configs_by=_prune(_DKDV))
    @triton.jit
    def _dkdv_kernel(Q, K, V, DO, LSE, D, DK, DV, sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
                     sdo_b, sdo_h, sdo_n, H, Lq, Lk, qk_scale, scale, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        start_n = tl.program_id(0) * BLOCK_N
        bh = tl.program_id(1).to(tl.int64)
        b, h = bh // H, bh % H
        rows, cols, dims = tl.arange(0, BLOCK_M), start_n + tl.arange(0, BLOCK_N), tl.arange(0, HEAD_DIM)
        # K_j, V_j stay on chip. Key rows past Lk read as 0; their dK, dV rows are never stored.
        k = _load_rows(K + b * sk_b + h * sk_h, cols, sk_n, dims, Lk, True)  # (BLOCK_N, d)
        v = _load_rows(V + b * sv_b + h * sv_h, cols, sv_n, dims, Lk, True)
        Q_bh, DO_bh, LSE_bh, D_bh = Q + b * sq_b + h * sq_h, DO + b * sdo_b + h * sdo_h, LSE + bh * Lq, D + bh * Lq
        if CAUSAL:  # queries before the first key's diagonal see none of the block: skip them
            start = tl.maximum(start_n - (Lk - Lq), 0) // BLOCK_M * BLOCK_M
            seen_all = tl.maximum(start_n + BLOCK_N - 1 - (Lk - Lq), 0)  # from this query on, all keys are seen
            mid = tl.minimum(tl.maximum((seen_all + BLOCK_M - 1) // BLOCK_M * BLOCK_M, start), Lq)
        else:
            start = 0
            mid = 0
        full_end = tl.maximum(mid, Lq // BLOCK_M * BLOCK_M)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        # query tiles [start, mid) are cut by the diagonal, [mid, full_end) are whole, [full_end, Lq) is ragged
        dk, dv = _dkdv_tiles(dk, dv, k, v, Q_bh, DO_bh, LSE_bh, D_bh, sq_n, sdo_n, rows, cols, dims, start, mid,
                             Lq, Lk, qk_scale, BLOCK_M, True, CAUSAL)
        dk, dv = _dkdv_tiles(dk, dv, k, v, Q_bh, DO_bh, LSE_bh, D_bh, sq_n, sdo_n, rows, cols, dims, mid, full_end,
                             Lq, Lk, qk_scale, BLOCK_M, False, CAUSAL)
        dk, dv = _dkdv_tiles(dk, dv, k, v, Q_bh, DO_bh, LSE_bh, D_bh, sq_n, sdo_n, rows, cols, dims, full_end, Lq,
                             Lq, Lk, qk_scale, BLOCK_M, True, CAUSAL)
        out = bh * Lk * HEAD_DIM + cols[:, None] * HEAD_DIM + dims[None, :]  # dK, dV are contiguous
        tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=cols[:, None] < Lk)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=cols[:, None] < Lk)

    @triton.jit
    def _dq_tiles(dq, q, do, lse, delta, K_bh, V_bh, sk_n, sv_n, rows, cols, dims, start, end, Lq, Lk, qk_scale,
                  BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
        for start_n in range(start, end, BLOCK_N):
            n = start_n + cols
            k = _load_rows(K_bh, n, sk_n, dims, Lk, MASKED)
            v = _load_rows(V_bh, n, sv_n, dims, Lk, MASKED)
            p = tl.math.exp2(_dot(q, tl.trans(k), None) * qk_scale - lse[:, None] * LOG2E)  # P_ij = exp(S_ij - L_i)
            if MASKED:
                keep = n[None, :] < Lk
                if CAUSAL:
                    keep = keep & (n[None, :] <= rows[:, None] + Lk - Lq)
                p = tl.where(keep, p, 0.0)
            dp = _dot(do, tl.trans(v), None)  # dP_ij = dO_i V_j^T
            ds = p * (dp - delta[:, None])  # dS = P * (dP - D)
            dq = _dot(ds.to(k.dtype), k, dq)  # dQ_i += dS_ij K_j (times the scale at the end)
        return dq

    @triton.autotune(configs=_configs(_DQ, (32, 16)), key=_KEY, prune_configs_by=_prune(_DQ))
    @triton.jit
    def _dq_kernel(Q, K, V, DO, LSE, D, DQ, sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
                   sdo_b, sdo_h, sdo_n, H, Lq, Lk, qk_scale, scale, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        start_m = tl.program_id(0) * BLOCK_M
        bh = tl.program_id(1).to(tl.int64)
        b, h = bh // H, bh % H
        rows, cols, dims = start_m + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, HEAD_DIM)
        q = _load_rows(Q + b * sq_b + h * sq_h, rows, sq_n, dims, Lq, True)  # Q_i, dO_i, L_i, D_i stay on chip
        do = _load_rows(DO + b * sdo_b + h * sdo_h, rows, sdo_n, dims, Lq, True)
        lse = tl.load(LSE + bh * Lq + rows, mask=rows < Lq, other=0.0)
        delta = tl.load(D + bh * Lq + rows, mask=rows < Lq, other=0.0)
        K_bh, V_bh = K + b * sk_b + h * sk_h, V + b * sv_b + h * sv_h
        full_end, end = _key_split(start_m, Lq, Lk, BLOCK_M, BLOCK_N, CAUSAL)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        dq = _dq_tiles(dq, q, do, lse, delta, K_bh, V_bh, sk_n, sv_n, rows, cols, dims, 0, full_end, Lq, Lk,
                       qk_scale, BLOCK_N, False, CAUSAL)
        dq = _dq_tiles(dq, q, do, lse, delta, K_bh, V_bh, sk_n, sv_n, rows, cols, dims, full_end, end, Lq, Lk,
                       qk_scale, BLOCK_N, True, CAUSAL)
        out = bh * Lq * HEAD_DIM + rows[:, None] * HEAD_DIM + dims[None, :]  # dQ is contiguous
        tl.store(DQ + out, (dq * scale).to(DQ.dtype.element_ty), mask=rows[:, None] < Lq)


def _strides(*tensors):
    return [s for t in tensors for s in t.stride()[:3]]


def _triton_forward(q, k, v, causal, scale):
    """Returns O (in q's dtype) and L = logsumexp of each score row in float32."""
    B, H, Lq, d = q.shape
    O = torch.empty_like(q, memory_format=torch.contiguous_format)
    L = torch.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
    _fwd_kernel[grid](q, k, v, O, L, *_strides(q, k, v, O), H, Lq, k.shape[2], scale / math.log(2),  # scale log2(e)
                      HEAD_DIM=d, CAUSAL=causal)
    return O, L


def _triton_backward(q, k, v, O, L, dO, causal, scale):
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    dO = dO if dO.stride(-1) == 1 else dO.contiguous()
    D = (dO.float() * O).sum(-1)  # D_i = rowsum(dO_i * O_i), (B, H, Lq) float32
    dQ, dK, dV = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    args = (*_strides(q, k, v, dO), H, Lq, Lk, scale / math.log(2), scale)
    meta = dict(HEAD_DIM=d, CAUSAL=causal)
    _dkdv_kernel[lambda m: (triton.cdiv(Lk, m["BLOCK_N"]), B * H)](q, k, v, dO, L, D, dK, dV, *args, **meta)
    _dq_kernel[lambda m: (triton.cdiv(Lq, m["BLOCK_M"]), B * H)](q, k, v, dO, L, D, dQ, *args, **meta)
    return dQ, dK, dV


class FlashAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        O, L = _triton_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, O, L)
        ctx.args = (causal, scale)
        return O

    @staticmethod
    def backward(ctx, dO):
        return *_triton_backward(*ctx.saved_tensors, dO, *ctx.args), None, None


def _triton_supports(q, v):
    return q.dtype in TRITON_DTYPES and q.shape[-1] in TRITON_HEAD_DIMS and v.shape[-1] == q.shape[-1]


def flash_attention_triton(q, k, v, causal=False, scale=None):
    """The Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    check_inputs(q, k, v)
    if triton is None:
        raise RuntimeError("Triton is not installed: pip install triton, or call flash_attention_torch")
    if not _triton_supports(q, v):
        raise ValueError(f"the Triton kernel takes dtypes {TRITON_DTYPES} and head dims {TRITON_HEAD_DIMS} "
                         f"(same for v), got {q.dtype}, d={q.shape[-1]}, d_v={v.shape[-1]}; "
                         "use flash_attention_torch for other shapes")
    if not q.is_cuda and not INTERPRET:
        raise ValueError(f"the Triton kernel needs CUDA tensors (got {q.device}); set TRITON_INTERPRET=1 before "
                         "importing this file to run it on CPU, or call flash_attention_torch")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return FlashAttentionTriton.apply(q, k, v, causal, scale)


def flash_attention(q, k, v, causal=False, scale=None):
    """Exact attention softmax(Q K^T * scale) V in the (B, H, N, d) layout of F.scaled_dot_product_attention,
    differentiable. Causal masking is bottom-right aligned (query r sees keys c <= r + Lk - Lq).
    Runs the Triton kernel on CUDA when Triton is installed and supports the shape, else PyTorch."""
    check_inputs(q, k, v)
    if triton is not None and q.is_cuda and _triton_supports(q, v):
        return flash_attention_triton(q, k, v, causal, scale)
    return flash_attention_torch(q, k, v, causal, scale)


# ----------------------------------------------------------------------------- IO analysis

def tile_size(d, sram):
    """Largest square tile B whose working set fits in `sram` elements: Q_i and O_i (2 B d),
    K_j and V_j (2 B d) and the score tile S_ij (B^2). Solves B^2 + 4 d B <= sram."""
    return math.isqrt(4 * d * d + sram) - 2 * d


def hbm_accesses(N, d, sram):
    """Elements read + written in HBM by one head's attention forward: (naive, tiled, tile size).
    Naive: S = Q K^T reads Q, K and writes S; P = softmax(S) reads S, writes P; O = P V reads P, V, writes O.
    Tiled (FlashAttention-2 loop order): Q read once; K and V read once per query tile; O and L written once."""
    naive = (2 * N * d + N * N) + (N * N + N * N) + (N * N + N * d + N * d)  # = 4 N^2 + 4 N d
    B = tile_size(d, sram)
    if B < 1:
        raise ValueError(f"sram={sram} elements cannot hold even a 1-row tile at d={d}; use a larger SRAM")
    query_tiles = -(-N // B)
    tiled = N * d + query_tiles * 2 * N * d + N * d + N  # ~ 2 N^2 d / B ~ 8 N^2 d^2 / M: Theta(N^2 d^2 / M)
    return naive, tiled, B


def print_io_table(sram_kb):
    elem_bytes = 2  # fp16
    sram = sram_kb * 1024 // elem_bytes
    print(f"\nHBM traffic of one head's forward, fp16, SRAM {sram_kb} KB = {sram} elements "
          "(naive 4N^2 + 4Nd; tiled ~ 2N^2 d / B with B the largest tile that fits)")
    print(f"{'N':>6} {'d':>4} {'tile B':>7} {'naive MB':>10} {'tiled MB':>10} {'naive/tiled':>12}")
    for d in (64, 128):
        for N in (1024, 4096, 16384):
            naive, tiled, B = hbm_accesses(N, d, sram)
            print(f"{N:>6} {d:>4} {B:>7} {naive * elem_bytes / 1e6:>10.1f} {tiled * elem_bytes / 1e6:>10.1f} "
                  f"{naive / tiled:>11.1f}x")


# ----------------------------------------------------------------------------- measurement

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
    with _quiet_stderr():  # Kineto writes a line to the C-level stderr at every start and stop
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    return max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0)


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
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
            return int(next(line for line in f if line.startswith("MemAvailable")).split()[1]) * 1024
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def time_ms(fn, device, reps=5):
    """Median wall time of fn() in ms after one warm-up call (CUDA events on the GPU)."""
    fn()
    times = []
    for _ in range(reps):
        if str(device).startswith("cuda"):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
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


def sdpa(q, k, v, causal=False):
    """F.scaled_dot_product_attention with bottom-right causal alignment (is_causal is top-left)."""
    if not causal or q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(q.shape[-2], k.shape[-2], q.device))


def forward_backward(attn, q, k, v, causal, dO):
    """One training step of attention: forward, then backward into q.grad, k.grad, v.grad."""
    q.grad = k.grad = v.grad = None
    attn(q, k, v, causal=causal).backward(dO)


def sdpa_flash(q, k, v, causal=False):
    """F.scaled_dot_product_attention restricted to its FlashAttention backend (CUDA, 16-bit)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


# ----------------------------------------------------------------------------- demo

def check_table(device, d):
    """Max |error| of O, dQ, dK, dV against float64 naive attention, for ours and for SDPA."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print(f"\nmax |error| against float64 naive attention ({dtype}, B=1, H=4, d={d}); "
          "ours passes if within 2x SDPA's error + 1e-6")
    print(f"{'Lq':>5} {'Lk':>5} {'causal':>6}  {'ours: O, dQ, dK, dV':<36} {'SDPA: O, dQ, dK, dV':<36} ok")
    for Lq, Lk, causal in ((1000, 1000, False), (1000, 1000, True), (300, 1000, True), (1000, 300, True)):
        q, k, v = (torch.randn(1, 4, n, d, device=device) for n in (Lq, Lk, Lk))
        dO = torch.randn(1, 4, Lq, d, device=device)
        errors = {}
        for name, attn, dt in (("ref", naive_attention, torch.float64), ("ours", flash_attention, dtype),
                               ("sdpa", sdpa, dtype)):
            leaves = [t.to(dt, copy=True).requires_grad_() for t in (q, k, v)]
            out = attn(*leaves, causal=causal)
            out.backward(dO.to(dt))
            errors[name] = [out.double()] + [t.grad.double() for t in leaves]
        ours, theirs = ([(a - r).abs().max().item() for a, r in zip(errors[name], errors["ref"])]
                        for name in ("ours", "sdpa"))
        ok = all(o <= 2 * s + 1e-6 for o, s in zip(ours, theirs))
        fmt = lambda errs: " ".join(f"{e:.1e}" for e in errs)  # noqa: E731
        print(f"{Lq:>5} {Lk:>5} {causal!s:>6}  {fmt(ours):<36} {fmt(theirs):<36} {'yes' if ok else 'NO'}")


def memory_table(device, d, max_n):
    """Peak memory of one training step (forward + backward) of one head: naive grows as N^2, ours as N."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    how = "torch.cuda.max_memory_allocated" if device == "cuda" else "torch.profiler's allocator events"
    print(f"\npeak memory of forward + backward, B=1, H=1, d={d}, {dtype}, measured with {how}")
    print(f"{'N':>6} {'naive MiB':>10} {'ours MiB':>9} {'SDPA MiB':>9} {'naive/ours':>11}")
    sizes = [1024 * 2 ** i for i in range(int(math.log2(max_n // 1024)) + 1)]
    for N in tqdm(sizes, desc="memory", leave=False):
        q, k, v = (torch.randn(1, 1, N, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        dO = torch.randn(1, 1, N, d, device=device, dtype=dtype)
        row = {}
        for name, attn in (("ours", flash_attention), ("sdpa", sdpa), ("naive", naive_attention)):
            if name == "naive" and 4 * N * N * q.element_size() > free_memory(device) // 2:
                row[name] = None  # S, P, dP and dS of N^2 each would not fit: skip rather than swap
                continue
            row[name] = peak_memory(lambda: forward_backward(attn, q, k, v, False, dO), device) / 2 ** 20
        naive = "too big" if row["naive"] is None else f"{row['naive']:.1f}"
        ratio = "" if row["naive"] is None else f"{row['naive'] / row['ours']:.0f}x"
        tqdm.write(f"{N:>6} {naive:>10} {row['ours']:>9.1f} {row['sdpa']:>9.1f} {ratio:>11}")


def attention_flops(B, H, N, d, causal):
    """Forward FLOPs: two matmuls of 2 N^2 d each, half of them when causal. Backward = 2.5x (five matmuls)."""
    return 4 * B * H * N * N * d / (2 if causal else 1)


def tflops_table(device):
    """TFLOP/s on CUDA, bf16, batch * N = 16k tokens and H * d = 2048 (the FlashAttention-2 paper's setup)."""
    print("\nTFLOP/s, bf16, B = 16384 / N, H = 2048 / d (fwd+bwd counts the backward as 2.5x the forward)")
    print(f"{'d':>4} {'causal':>6} {'N':>6} | {'naive':>6} {'ours':>6} {'SDPA':>6} {'ours/SDPA':>9} | fwd+bwd: "
          f"{'naive':>6} {'ours':>6} {'SDPA':>6} {'ours/SDPA':>9}")
    cases = [(d, causal, N) for d in (64, 128) for causal in (False, True) for N in (1024, 2048, 4096, 8192, 16384)]
    for d, causal, N in tqdm(cases, desc="TFLOP/s", leave=False):
        B, H = 16384 // N, 2048 // d
        q, k, v = (torch.randn(B, H, N, d, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        dO = torch.randn_like(q)
        flops = attention_flops(B, H, N, d, causal)
        fwd, both = {}, {}
        for name, attn in (("naive", naive_attention), ("ours", flash_attention), ("sdpa", sdpa_flash)):
            try:
                fwd[name] = flops / time_ms(lambda: attn(q, k, v, causal=causal), device) / 1e9
                both[name] = 3.5 * flops / time_ms(lambda: forward_backward(attn, q, k, v, causal, dO), device) / 1e9
            except torch.cuda.OutOfMemoryError:
                fwd[name] = both[name] = float("nan")  # naive attention at large N
            torch.cuda.empty_cache()
        cells = lambda r: (f"{r['naive']:>6.0f} {r['ours']:>6.0f} {r['sdpa']:>6.0f} "  # noqa: E731
                           f"{r['ours'] / r['sdpa']:>8.2f}x")
        tqdm.write(f"{d:>4} {causal!s:>6} {N:>6} | {cells(fwd)} | fwd+bwd: {cells(both)}")


def bench(device, d):
    """Time and peak memory of one forward + backward: ours vs naive vs F.scaled_dot_product_attention."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    B, H = (8, 16) if device == "cuda" else (1, 2)
    print(f"forward + backward on {device}, {dtype}, B={B}, H={H}, d={d}; ours is "
          f"{'the Triton kernel' if device == 'cuda' and triton is not None else 'the PyTorch tiled version'}; "
          "a ratio above 1 means ours is faster or smaller")
    print(f"{'N':>5} {'causal':>6} | {'naive ms':>9} {'ours ms':>8} {'SDPA ms':>8} | {'naive/ours':>10} "
          f"{'SDPA/ours':>9} | {'naive/ours mem':>14} {'SDPA/ours mem':>13}")
    for N in (1024, 2048, 4096):
        for causal in (False, True):
            q, k, v = (torch.randn(B, H, N, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
            dO = torch.randn_like(q)
            ms, mem = {}, {}
            for name, attn in (("naive", naive_attention), ("ours", flash_attention), ("sdpa", sdpa)):
                step = lambda: forward_backward(attn, q, k, v, causal, dO)  # noqa: E731
                ms[name], mem[name] = time_ms(step, device, reps=3), peak_memory(step, device)
            print(f"{N:>5} {causal!s:>6} | {ms['naive']:>9.1f} {ms['ours']:>8.1f} {ms['sdpa']:>8.1f} | "
                  f"{ms['naive'] / ms['ours']:>9.2f}x {ms['sdpa'] / ms['ours']:>8.2f}x | "
                  f"{mem['naive'] / mem['ours']:>13.1f}x {mem['sdpa'] / mem['ours']:>12.1f}x")


def pick_device(name="auto"):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def parse_args(config_cls, argv=None):
    """--field=value overrides of a dataclass; --help lists fields and defaults; mistakes exit with a message."""
    argv = sys.argv[1:] if argv is None else argv
    hints, fields = typing.get_type_hints(config_cls), {f.name: f.default for f in dataclasses.fields(config_cls)}
    if "--help" in argv or "-h" in argv:
        print("options (see the Config class for what each does): " + " ".join(f"--{n}={v}" for n, v in fields.items()))
        raise SystemExit(0)
    overrides = {}
    for arg in argv:
        name, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in fields:
            raise SystemExit(f"error: unknown option {arg!r}; valid: " + " ".join(f"--{n}" for n in fields))
        kind = hints[name]
        if kind is bool:
            if value.lower() not in ("", "1", "true", "0", "false"):
                raise SystemExit(f"error: --{name} takes true or false, got {value!r}")
            overrides[name] = value.lower() in ("", "1", "true")
            continue
        try:
            overrides[name] = kind(value)
        except ValueError:
            raise SystemExit(f"error: --{name}={value!r} is not a valid {kind.__name__}") from None
    return config_cls(**overrides)


def main(cfg):
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device == "mps":
        print("peak memory cannot be measured on MPS; running on CPU")
        device = "cpu"
    if cfg.bench:
        return bench(device, cfg.head_dim)
    path = "Triton kernel" if device == "cuda" and triton is not None else "PyTorch tiled FlashAttention-2"
    print(f"device: {device}; flash_attention runs the {path}")
    check_table(device, cfg.head_dim)
    print_io_table(cfg.sram_kb)
    memory_table(device, cfg.head_dim, cfg.max_n or (65536 if device == "cuda" else 16384))
    if device == "cuda":
        tflops_table(device)


if __name__ == "__main__":
    main(parse_args(Config))
