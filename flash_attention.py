"""FlashAttention: exact attention that never writes the N x N score matrix to memory.

Attention is O = softmax(S) V with S = Q K^T / sqrt(d). Naive code writes S and P = softmax(S)
to HBM (GPU main memory): O(N^2) traffic and memory. FlashAttention (Dao et al. 2022;
FlashAttention-2, Dao 2023) tiles Q, K, V into blocks that fit in on-chip SRAM and computes the
softmax online, keeping a running max m and sum l per row: m' = max(m, rowmax(S_ij)),
l' = e^(m - m') l + rowsum(e^(S_ij - m')), O' = e^(m - m') O + e^(S_ij - m') V_j. The backward
recomputes P = exp(S - L) from the saved log-sum-exp L. Memory grows linearly in N, and HBM
traffic drops from Theta(N^2) to Theta(N^2 d^2 / M). Here twice: in PyTorch and in Triton (CUDA).

    python flash_attention.py                 # values and gradients vs naive attention
    python bench/flash_attention.py           # HBM IO table, peak memory vs N, speed; TFLOP/s
    python -m pytest -q tests/test_flash_attention.py   # Triton runs on CPU, TRITON_INTERPRET=1

On CPU: errors of ~1e-6 against float64 naive attention, as small as SDPA's.
Left out: dropout, masks other than causal, GQA (repeat k and v), variable-length batches, and
FlashAttention-3's Hopper-specific asynchrony and FP8.
"""
import argparse
import dataclasses
import inspect
import math
import os
import re
import sys
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton (CPU-only, macOS, Windows): the PyTorch path serves every call
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton kernels run on CPU tensors in numpy

@dataclass
class Config:
    head_dim: int = 64  # d of the value and gradient check
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # for the random q, k, v

    def __post_init__(self):
        if self.head_dim < 1:
            raise ValueError(f"head_dim={self.head_dim} must be positive: try --head_dim=64")
        pick_device(self.device)  # a device that is not here is an error naming those that are

# ----------------------------------------------------------------------------- reference

def causal_mask(Lq, Lk, device=None):
    """(Lq, Lk), bottom-right aligned: query r sees key c iff c <= r + (Lk - Lq), as when the
    queries are the last Lq positions (decoding with a cache); Lq > Lk: the first see nothing."""
    return torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril(diagonal=Lk - Lq)

def naive_attention(q, k, v, causal=False):
    """softmax(Q K^T / sqrt(d)) V, all (B, H, Lq, Lk) of it in memory; a row with no key gives 0."""
    S = q.shape[-1] ** -0.5 * q @ k.transpose(-2, -1)  # (B, H, Lq, Lk)
    if not causal:
        return torch.softmax(S, dim=-1) @ v
    keep = causal_mask(q.shape[-2], k.shape[-2], q.device)
    P = torch.softmax(S.masked_fill(~keep, -math.inf), dim=-1).masked_fill(~keep, 0.0)  # NaN -> 0
    return P @ v

def sdpa(q, k, v, causal=False):  # bottom-right causal alignment (is_causal is top-left)
    square = q.shape[-2] == k.shape[-2]  # is_causal there: the fused kernels take no mask
    mask = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal and not square else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and square)

def check_inputs(q, k, v):  # the mistakes that are easy to make with attention tensors
    if not (q.dim() == k.dim() == v.dim() == 4) or q.shape[:2] != k.shape[:2] or (
            k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]):
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v "
                         f"{tuple(v.shape)}; need q (B, H, Lq, d), k (B, H, Lk, d), v (B, H, Lk, "
                         "d_v): from (B, N, H, d) use .transpose(1, 2), for GQA repeat k and v")
    if not (q.dtype == k.dtype == v.dtype and q.device == k.device == v.device and
            q.is_floating_point()):
        raise TypeError(f"q, k, v must share one floating dtype and one device, got {q.dtype}, "
                        f"{k.dtype}, {v.dtype} on {q.device}, {k.device}, {v.device}")

# ----------------------------------------------------------------------------- in PyTorch

def _tile_keep(i0, i1, j0, j1, offset, device):  # causal mask of a tile, None if all is seen
    if j1 - 1 <= i0 + offset:  # the tile's last key is visible to its first query
        return None
    rows = torch.arange(i0, i1, device=device)[:, None]
    return torch.arange(j0, j1, device=device) <= rows + offset

def _torch_forward(q, k, v, causal, scale, block_q, block_k):  # -> O, L = logsumexp rows
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    Lq, Lk = q.shape[2], k.shape[2]
    offset = Lk - Lq  # bottom-right causal alignment
    O = q.new_empty(q.shape[:3] + v.shape[-1:], dtype=acc)  # (B, H, Lq, d_v)
    L = q.new_empty(q.shape[:3], dtype=acc)  # (B, H, Lq)
    for i0 in range(0, Lq, block_q):  # outer loop: one block of queries ...
        i1 = min(i0 + block_q, Lq)
        Qi = q[:, :, i0:i1].to(acc)  # (B, H, Br, d)
        m = Qi.new_full(Qi.shape[:3], -math.inf)  # running row max, (B, H, Br)
        l = Qi.new_zeros(Qi.shape[:3])  # running row sum of exp(S - m)
        Oi = Qi.new_zeros(Qi.shape[:3] + v.shape[-1:])  # running unnormalised P V, (B, H, Br, d_v)
        for j0 in range(0, Lk, block_k):  # ... inner loop: stream the key/value blocks past it
            j1 = min(j0 + block_k, Lk)
            if causal and j0 > i1 - 1 + offset:
                break  # this and every later block lies above the diagonal
            S = scale * Qi @ k[:, :, j0:j1].to(acc).transpose(-2, -1)  # S_ij, (B, H, Br, Bc)
            keep = _tile_keep(i0, i1, j0, j1, offset, q.device) if causal else None
            if keep is not None:
                S = S.masked_fill(~keep, -math.inf)
            m_new = torch.maximum(m, S.amax(-1))  # m' = max(m, rowmax(S_ij))
            m_use = m_new.masked_fill(m_new == -math.inf, 0.0)  # no visible key yet: exp(-inf) = 0
            P = torch.exp(S - m_use[..., None])  # P~_ij = exp(S_ij - m')
            alpha = torch.exp(m - m_use)  # e^(m - m') rescales what was summed under the old max
            l = alpha * l + P.sum(-1)  # l' = e^(m - m') l + rowsum(P~_ij)
            Oi = alpha[..., None] * Oi + P @ v[:, :, j0:j1].to(acc)  # O' = e^(m - m') O + P~_ij V_j
            m = m_new
        O[:, :, i0:i1] = Oi / l.masked_fill(l == 0, 1.0)[..., None]  # O_i = O' / l' (0 if l = 0)
        L[:, :, i0:i1] = m + torch.log(l)  # L_i = m + log l (-inf for rows that saw nothing)
    return O, L

def _torch_backward(q, k, v, O, L, dO, causal, scale, block_q, block_k):
    """dQ, dK, dV by recomputing each tile of P from L: nothing of size N x N was saved."""
    acc = O.dtype
    Lq, Lk = q.shape[2], k.shape[2]
    offset = Lk - Lq
    dO = dO.to(acc)
    D = (dO * O).sum(-1)  # D_i = rowsum(dO_i * O_i) = rowsum(P_i * dP_i), (B, H, Lq)
    dQ, dK, dV = (torch.zeros(t.shape, dtype=acc, device=q.device) for t in (q, k, v))
    for j0 in range(0, Lk, block_k):  # outer loop: a key/value block, accumulating dK_j, dV_j
        j1 = min(j0 + block_k, Lk)
        Kj = k[:, :, j0:j1].to(acc)  # (B, H, Bc, d)
        Vj = v[:, :, j0:j1].to(acc)
        for i0 in range(0, Lq, block_q):  # inner loop: the query blocks that see it
            i1 = min(i0 + block_q, Lq)
            if causal and j0 > i1 - 1 + offset:
                continue  # tile above the diagonal
            Qi = q[:, :, i0:i1].to(acc)
            dOi = dO[:, :, i0:i1]
            P = torch.exp(scale * Qi @ Kj.transpose(-2, -1) - L[:, :, i0:i1, None])  # exp(S - L_i)
            keep = _tile_keep(i0, i1, j0, j1, offset, q.device) if causal else None
            if keep is not None:
                P = P.masked_fill(~keep, 0.0)
            dV[:, :, j0:j1] += P.transpose(-2, -1) @ dOi  # dV_j += P_ij^T dO_i
            dP = dOi @ Vj.transpose(-2, -1)  # dP_ij = dO_i V_j^T
            dS = P * (dP - D[:, :, i0:i1, None])  # dS_ij = P_ij * (dP_ij - D_i)
            dQ[:, :, i0:i1] += scale * dS @ Kj  # dQ_i += scale dS_ij K_j
            dK[:, :, j0:j1] += scale * dS.transpose(-2, -1) @ Qi  # dK_j += scale dS_ij^T Q_i
    return dQ.to(q.dtype), dK.to(k.dtype), dV.to(v.dtype)

class FlashAttentionTorch(torch.autograd.Function):  # saves q, k, v, O, L: linear in N
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
    """FlashAttention-2 in PyTorch. 256 x 256 tiles ran fastest on CPU: few tiles, cache-sized."""
    check_inputs(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return FlashAttentionTorch.apply(q, k, v, causal, scale, block_q, block_k)

# ----------------------------------------------------------------------------- in Triton
# A program per (query block, batch*head) in the forward; the backward runs one kernel for dK, dV
# (a program per key block) and one for dQ (a program per query block), so no two programs write
# the same output: no atomics. Scores are kept in base 2: exp(S - m) = exp2(S log2(e) - m2). Key
# loops are split into whole tiles (no mask: the fast path) and the diagonal or ragged-end tiles
# that need one. Tensors are contiguous (B, H, N, d): row r of head bh starts at (bh N + r) d.
# float32 runs only under the interpreter, as an exact check of the algorithm: on a GPU its tiles
# would not fit in registers at these block sizes (and SDPA's flash backend is 16-bit only too).
TRITON_DTYPES = (torch.float16, torch.bfloat16) + ((torch.float32,) if INTERPRET else ())
TRITON_HEAD_DIMS = (16, 32, 64, 128)

if triton is not None:
    # Autotune candidates (BLOCK_M, BLOCK_N, warps, stages) by head dim: compiled for sm_90 (H100),
    # these spill no or few registers (ptxas -v); the others were dropped. Unmeasured on a GPU.
    _FWD = {64: [(128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 32, 4, 4),
                 (64, 64, 4, 3)],
            128: [(128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3),
                  (64, 64, 4, 4)]}
    _DKDV = {64: [(64, 128, 8, 3), (32, 128, 8, 2), (32, 64, 4, 3)],
             128: [(32, 64, 8, 3), (32, 64, 4, 3), (16, 64, 4, 3), (32, 32, 4, 3)]}
    _DQ = {64: [(128, 64, 8, 3), (128, 32, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2)],
           128: [(64, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 2)]}

    def _autotune(table, interpreted):
        """Candidates by head dim (16, 32 take 64's); interpreted, tiles that tiny tests span."""
        key = ["Lq", "Lk", "HEAD_DIM", "CAUSAL"]
        if INTERPRET:
            return triton.autotune([triton.Config(dict(BLOCK_M=interpreted[0],
                                                       BLOCK_N=interpreted[1]))], key)
        shapes = sorted({shape for shapes in table.values() for shape in shapes})

        def prune(configs, named_args, **kwargs):
            wanted = table[64 if kwargs["HEAD_DIM"] <= 64 else 128]
            return [c for c in configs if (*c.kwargs.values(), c.num_warps, c.num_stages) in wanted]
        return triton.autotune([triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s)
                                for m, n, w, s in shapes], key,
                               prune_configs_by={"early_config_prune": prune})

    _UPCAST_DOTS = tl.constexpr(INTERPRET)
    LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x log2(e))

    @triton.jit
    def _dot(a, b, acc):
        """acc + a @ b in float32. The interpreter multiplies bfloat16 as raw bits, so there the
        operands go to float32 first (triton-lang/triton#11584); 16-bit products are exact."""
        if _UPCAST_DOTS:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, b, acc)

    @triton.jit
    def _load_rows(base, idx, dims, n, MASKED: tl.constexpr):
        """Rows idx of an (n, d) matrix, those past n as 0 with MASKED. Addresses from 1-D
        indices here: a 2-D tensor of pointers kept across the loop spills registers."""
        ptrs = base + idx[:, None] * dims.shape[0] + dims[None, :]
        if MASKED:
            rows = tl.load(ptrs, mask=idx[:, None] < n, other=0.0)
        else:
            rows = tl.load(ptrs)
        return rows

    @triton.jit
    def _key_split(start_m, Lq, Lk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr):
        """A query tile's keys [0, end): whole tiles (no mask) before full_end, cut ones after."""
        if CAUSAL:
            full_end = tl.maximum(start_m + Lk - Lq + 1, 0) // BLOCK_N * BLOCK_N
            end = tl.minimum(start_m + BLOCK_M + Lk - Lq, Lk)  # nothing after the last diagonal
        else:
            full_end = Lk // BLOCK_N * BLOCK_N
            end = Lk
        return full_end, end

    @triton.jit
    def _fwd_tiles(acc, l_i, m_i, q, K_bh, V_bh, rows, cols, dims, start, end, Lq, Lk, qk_scale,
                   BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
        for start_n in range(start, end, BLOCK_N):
            n = start_n + cols  # key indices of this tile, (BLOCK_N,)
            k = _load_rows(K_bh, n, dims, Lk, MASKED)  # K_j, (BLOCK_N, d)
            v = _load_rows(V_bh, n, dims, Lk, MASKED)  # V_j: loaded here, both are prefetched
            s = _dot(q, tl.trans(k), None) * qk_scale  # S_ij log2(e), (BLOCK_M, BLOCK_N)
            if MASKED:
                keep = n[None, :] < Lk
                if CAUSAL:
                    keep = keep & (n[None, :] <= rows[:, None] + Lk - Lq)
                s = tl.where(keep, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # m' = max(m, rowmax(S_ij))
            if MASKED:  # a row with no visible key yet: exp2(-inf) = 0
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            else:
                m_use = m_new
            p = tl.math.exp2(s - m_use[:, None])  # P~_ij
            alpha = tl.math.exp2(m_i - m_use)  # e^(m - m')
            l_i = l_i * alpha + tl.sum(p, 1)  # l' = e^(m - m') l + rowsum(P~_ij)
            acc = _dot(p.to(v.dtype), v, acc * alpha[:, None])  # O' = e^(m - m') O + P~_ij V_j
            m_i = m_new
        return acc, l_i, m_i

    @_autotune(_FWD, (32, 16))
    @triton.jit
    def _fwd_kernel(Q, K, V, O, LSE, Lq, Lk, qk_scale, HEAD_DIM: tl.constexpr,
                    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        start_m = tl.program_id(0) * BLOCK_M
        bh = tl.program_id(1).to(tl.int64)  # int64 offsets: B*H*N*d may pass 2^31
        rows = start_m + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        dims = tl.arange(0, HEAD_DIM)
        q = _load_rows(Q + bh * Lq * HEAD_DIM, rows, dims, Lq, True)  # Q_i stays on chip
        K_bh = K + bh * Lk * HEAD_DIM
        V_bh = V + bh * Lk * HEAD_DIM
        full_end, end = _key_split(start_m, Lq, Lk, BLOCK_M, BLOCK_N, CAUSAL)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K_bh, V_bh, rows, cols, dims, 0, full_end,
                                   Lq, Lk, qk_scale, BLOCK_N, False, CAUSAL)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K_bh, V_bh, rows, cols, dims, full_end, end,
                                   Lq, Lk, qk_scale, BLOCK_N, True, CAUSAL)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # l = 0: the row saw no key, and its O stays 0
        lse = (m_i + tl.math.log2(l_safe)) / LOG2E  # L = m + ln l, float32
        tl.store(LSE + bh * Lq + rows, tl.where(l_i == 0.0, float("-inf"), lse), mask=rows < Lq)
        out = (bh * Lq + rows[:, None]) * HEAD_DIM + dims[None, :]
        tl.store(O + out, (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=rows[:, None] < Lq)

    @triton.jit
    def _dkdv_tiles(dk, dv, k, v, Q_bh, DO_bh, LSE_bh, D_bh, rows, cols, dims, start, end, Lq, Lk,
                    qk_scale, BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
        for start_m in range(start, end, BLOCK_M):
            m = start_m + rows  # query indices of this tile, (BLOCK_M,)
            q = _load_rows(Q_bh, m, dims, Lq, MASKED)  # Q_i, (BLOCK_M, d); rows past Lq read as 0,
            do = _load_rows(DO_bh, m, dims, Lq, MASKED)  # and with dO = D = 0 they add nothing
            if MASKED:
                lse = tl.load(LSE_bh + m, mask=m < Lq, other=0.0)
                delta = tl.load(D_bh + m, mask=m < Lq, other=0.0)
            else:
                lse = tl.load(LSE_bh + m)
                delta = tl.load(D_bh + m)
            # P_ij^T = exp(S - L)^T
            pT = tl.math.exp2(_dot(k, tl.trans(q), None) * qk_scale - lse[None, :] * LOG2E)
            if MASKED:
                if CAUSAL:
                    pT = tl.where(cols[:, None] <= m[None, :] + Lk - Lq, pT, 0.0)
            dv = _dot(pT.to(do.dtype), do, dv)  # dV_j += P_ij^T dO_i
            dpT = _dot(v, tl.trans(do), None)  # dP_ij^T = V_j dO_i^T
            dsT = pT * (dpT - delta[None, :])  # dS = P * (dP - D)
            dk = _dot(dsT.to(q.dtype), q, dk)  # dK_j += dS_ij^T Q_i (times the scale at the end)
        return dk, dv

    @_autotune(_DKDV, (16, 32))
    @triton.jit
    def _dkdv_kernel(Q, K, V, DO, LSE, D, DK, DV, Lq, Lk, qk_scale, scale, HEAD_DIM: tl.constexpr,
                     CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        start_n = tl.program_id(0) * BLOCK_N
        bh = tl.program_id(1).to(tl.int64)
        rows = tl.arange(0, BLOCK_M)
        cols = start_n + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, HEAD_DIM)
        # K_j, V_j stay on chip. Key rows past Lk read as 0; their dK, dV rows are never stored.
        k = _load_rows(K + bh * Lk * HEAD_DIM, cols, dims, Lk, True)  # (BLOCK_N, d)
        v = _load_rows(V + bh * Lk * HEAD_DIM, cols, dims, Lk, True)
        Q_bh = Q + bh * Lq * HEAD_DIM
        DO_bh = DO + bh * Lq * HEAD_DIM
        if CAUSAL:  # queries before the first key's diagonal see none of the block: skip them
            start = tl.maximum(start_n - (Lk - Lq), 0) // BLOCK_M * BLOCK_M
            seen_all = tl.maximum(start_n + BLOCK_N - 1 - (Lk - Lq), 0)  # from here all keys seen
            mid = tl.minimum(tl.maximum((seen_all + BLOCK_M - 1) // BLOCK_M * BLOCK_M, start), Lq)
        else:
            start = 0
            mid = 0
        full_end = tl.maximum(mid, Lq // BLOCK_M * BLOCK_M)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        # query tiles [start, mid) are cut by the diagonal, [mid, full_end) whole, then ragged
        dk, dv = _dkdv_tiles(dk, dv, k, v, Q_bh, DO_bh, LSE + bh * Lq, D + bh * Lq, rows, cols,
                             dims, start, mid, Lq, Lk, qk_scale, BLOCK_M, True, CAUSAL)
        dk, dv = _dkdv_tiles(dk, dv, k, v, Q_bh, DO_bh, LSE + bh * Lq, D + bh * Lq, rows, cols,
                             dims, mid, full_end, Lq, Lk, qk_scale, BLOCK_M, False, CAUSAL)
        dk, dv = _dkdv_tiles(dk, dv, k, v, Q_bh, DO_bh, LSE + bh * Lq, D + bh * Lq, rows, cols,
                             dims, full_end, Lq, Lq, Lk, qk_scale, BLOCK_M, True, CAUSAL)
        out = (bh * Lk + cols[:, None]) * HEAD_DIM + dims[None, :]
        tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=cols[:, None] < Lk)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=cols[:, None] < Lk)

    @triton.jit
    def _dq_tiles(dq, q, do, lse, delta, K_bh, V_bh, rows, cols, dims, start, end, Lq, Lk,
                  qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
        for start_n in range(start, end, BLOCK_N):
            n = start_n + cols
            k = _load_rows(K_bh, n, dims, Lk, MASKED)
            v = _load_rows(V_bh, n, dims, Lk, MASKED)
            # P_ij = exp(S_ij - L_i)
            p = tl.math.exp2(_dot(q, tl.trans(k), None) * qk_scale - lse[:, None] * LOG2E)
            if MASKED:
                keep = n[None, :] < Lk
                if CAUSAL:
                    keep = keep & (n[None, :] <= rows[:, None] + Lk - Lq)
                p = tl.where(keep, p, 0.0)
            dp = _dot(do, tl.trans(v), None)  # dP_ij = dO_i V_j^T
            ds = p * (dp - delta[:, None])  # dS = P * (dP - D)
            dq = _dot(ds.to(k.dtype), k, dq)  # dQ_i += dS_ij K_j (times the scale at the end)
        return dq

    @_autotune(_DQ, (32, 16))
    @triton.jit
    def _dq_kernel(Q, K, V, DO, LSE, D, DQ, Lq, Lk, qk_scale, scale, HEAD_DIM: tl.constexpr,
                   CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        start_m = tl.program_id(0) * BLOCK_M
        bh = tl.program_id(1).to(tl.int64)
        rows = start_m + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        dims = tl.arange(0, HEAD_DIM)
        q = _load_rows(Q + bh * Lq * HEAD_DIM, rows, dims, Lq, True)  # Q_i, dO_i, L_i, D_i stay
        do = _load_rows(DO + bh * Lq * HEAD_DIM, rows, dims, Lq, True)  # on chip
        lse = tl.load(LSE + bh * Lq + rows, mask=rows < Lq, other=0.0)
        delta = tl.load(D + bh * Lq + rows, mask=rows < Lq, other=0.0)
        K_bh = K + bh * Lk * HEAD_DIM
        V_bh = V + bh * Lk * HEAD_DIM
        full_end, end = _key_split(start_m, Lq, Lk, BLOCK_M, BLOCK_N, CAUSAL)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        dq = _dq_tiles(dq, q, do, lse, delta, K_bh, V_bh, rows, cols, dims, 0, full_end, Lq, Lk,
                       qk_scale, BLOCK_N, False, CAUSAL)
        dq = _dq_tiles(dq, q, do, lse, delta, K_bh, V_bh, rows, cols, dims, full_end, end, Lq, Lk,
                       qk_scale, BLOCK_N, True, CAUSAL)
        out = (bh * Lq + rows[:, None]) * HEAD_DIM + dims[None, :]
        tl.store(DQ + out, (dq * scale).to(DQ.dtype.element_ty), mask=rows[:, None] < Lq)

def _triton_forward(q, k, v, causal, scale):  # O in q's dtype, L in float32; all contiguous
    B, H, Lq, d = q.shape
    O = torch.empty_like(q)
    L = torch.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
    _fwd_kernel[grid](q, k, v, O, L, Lq, k.shape[2], scale / math.log(2),  # scale log2(e)
                      HEAD_DIM=d, CAUSAL=causal)
    return O, L

def _triton_backward(q, k, v, O, L, dO, causal, scale):
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    dO = dO.contiguous()
    D = (dO.float() * O).sum(-1)  # D_i = rowsum(dO_i * O_i), (B, H, Lq) float32
    dQ, dK, dV = (torch.empty_like(t) for t in (q, k, v))
    args = (Lq, Lk, scale / math.log(2), scale)
    meta = dict(HEAD_DIM=d, CAUSAL=causal)
    grid = lambda m: (triton.cdiv(Lk, m["BLOCK_N"]), B * H)  # noqa: E731
    _dkdv_kernel[grid](q, k, v, dO, L, D, dK, dV, *args, **meta)
    grid = lambda m: (triton.cdiv(Lq, m["BLOCK_M"]), B * H)  # noqa: E731
    _dq_kernel[grid](q, k, v, dO, L, D, dQ, *args, **meta)
    return dQ, dK, dV

class FlashAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        q, k, v = (t.contiguous() for t in (q, k, v))  # a copy only for strided views
        O, L = _triton_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, O, L)
        ctx.args = (causal, scale)
        return O

    @staticmethod
    def backward(ctx, dO):
        return *_triton_backward(*ctx.saved_tensors, dO, *ctx.args), None, None

def _triton_supports(q, v):
    d = q.shape[-1]
    return q.dtype in TRITON_DTYPES and d in TRITON_HEAD_DIMS and v.shape[-1] == d

def flash_attention_triton(q, k, v, causal=False, scale=None):  # CUDA, or CPU interpreted
    check_inputs(q, k, v)
    if triton is None:
        raise RuntimeError("Triton is not installed: pip install triton, or use the PyTorch path")
    if not _triton_supports(q, v):
        raise ValueError(f"the Triton kernel takes {TRITON_DTYPES}, head dims {TRITON_HEAD_DIMS}"
                         f" and d_v = d, got {q.dtype}, d={q.shape[-1]}, d_v={v.shape[-1]}; use"
                         " flash_attention_torch for other shapes")
    if not q.is_cuda and not INTERPRET:
        raise ValueError(f"the Triton kernel needs CUDA tensors, got {q.device}: on CPU, set"
                         " TRITON_INTERPRET=1 before importing, or use flash_attention_torch")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return FlashAttentionTriton.apply(q, k, v, causal, scale)

def flash_attention(q, k, v, causal=False, scale=None):
    """softmax(Q K^T * scale) V, exact and differentiable, in SDPA's layout: q (B, H, Lq, d),
    k (B, H, Lk, d), v (B, H, Lk, d_v), causal bottom-right; Triton on CUDA where it can."""
    if triton is not None and q.is_cuda and _triton_supports(q, v):
        return flash_attention_triton(q, k, v, causal, scale)
    return flash_attention_torch(q, k, v, causal, scale)

# ----------------------------------------------------------------------------- main

def main(cfg):  # max |error| of O, dQ, dK, dV against float64 naive attention: ours and SDPA's
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device == "mps":
        print("the float64 reference needs CPU or CUDA (MPS has no float64): running on CPU")
        device = "cpu"
    path = "Triton kernels" if device == "cuda" and triton is not None else "PyTorch version"
    print(f"device: {device}; flash_attention runs the {path}")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    d = cfg.head_dim
    print(f"max |error| of O, dQ, dK, dV against float64 naive attention ({dtype}, B=1, H=4, "
          f"d={d}); ours passes within 2x SDPA's error + 1e-6")
    print(f"{'Lq':>5} {'Lk':>5} {'causal':>6}  {'ours':<36} {'SDPA':<36} ok")
    for Lq, Lk, causal in ((1000, 1000, False), (1000, 1000, True), (300, 1000, True),
                           (1000, 300, True)):
        q, k, v, dO = (torch.randn(1, 4, n, d, device=device) for n in (Lq, Lk, Lk, Lq))
        results = []
        for attn, dt in ((naive_attention, torch.float64), (flash_attention, dtype), (sdpa, dtype)):
            leaves = [t.to(dt, copy=True).requires_grad_() for t in (q, k, v)]
            out = attn(*leaves, causal=causal)
            out.backward(dO.to(dt))
            results.append([out.double()] + [t.grad.double() for t in leaves])
        ours, theirs = ([(a - r).abs().max().item() for a, r in zip(res, results[0])]
                        for res in results[1:])
        ok = all(o <= 2 * s + 1e-6 for o, s in zip(ours, theirs))
        print(f"{Lq:>5} {Lk:>5} {causal!s:>6}  {' '.join(f'{e:.1e}' for e in ours):<36} "
              f"{' '.join(f'{e:.1e}' for e in theirs):<36} {'yes' if ok else 'NO'}")

# ----------------------------------------------------------------------------- command line
# The same lines in every script that has a command line (tests/test_cli.py keeps the copies
# identical), so that each standalone file can be copied on its own.

def pick_device(name="auto"):
    """cuda, then mps, then cpu; asking for one that is not here is an error naming what is."""
    here = [d for d, ok in [("cuda", torch.cuda.is_available()),
                            ("mps", torch.backends.mps.is_available()), ("cpu", True)] if ok]
    if name != "auto" and name.split(":")[0] not in here:
        raise ValueError(f"--device={name}, but this machine has only {', '.join(here)}")
    return here[0] if name == "auto" else name

def to_bool(text):
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"

def parse_args(config_cls, argv=None, gpu=None):
    """A Config from --field=value arguments; --help prints each field with its comment. gpu: the
    defaults that change on a CUDA device, in one place (what the command line sets wins)."""
    doc = sys.modules[config_cls.__module__].__doc__.split("\n")[0]
    parser = argparse.ArgumentParser(description=doc, allow_abbrev=False,
                                     epilog=f"on CUDA the defaults become {gpu}" if gpu else None)
    notes = dict(re.findall(r"^ +(\w+):[^#\n]*#(.*(?:\n +#.*)*)", inspect.getsource(config_cls),
                            re.M))
    for f in dataclasses.fields(config_cls):
        kind = typing.get_type_hints(config_cls)[f.name]
        note = " ".join(notes.get(f.name, "").replace("#", " ").split()).replace("%", "%%")
        names = dict.fromkeys([f"--{f.name}", f"--{f.name.replace('_', '-')}"])
        how = dict(type=to_bool, nargs="?", const=True) if kind is bool else dict(type=kind)
        parser.add_argument(*names, dest=f.name, default=f.default, **how,
                            help=f"{note} (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if gpu and pick_device(getattr(args, "device", "auto")).startswith("cuda"):
            parser.set_defaults(**gpu)
            args = parser.parse_args(argv)
        return config_cls(**vars(args))
    except ValueError as e:
        parser.error(str(e))

if __name__ == "__main__":
    main(parse_args(Config))
