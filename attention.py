"""Attention with several heads (MHA, GQA, MQA) and the 2017 Transformer: encoder and decoder.

Each token's query q is matched against every key k, and its output averages the values v by
those matches: Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V. Several heads run side by side
on learned projections, and may share keys and values to shrink the KV cache (GQA, MQA). Papers:
Vaswani et al. 2017 (the Transformer), Shazeer 2019 (MQA), Ainslie et al. 2023 (GQA), Beltagy et
al. 2020 (sliding-window attention), Szegedy et al. 2016 (label smoothing).

    python attention.py             # digits -> words ("4071" -> "four thousand seventy one")
    python attention.py --n_kv_head=1 --label_smoothing=0 --beam_size=8
    python attention.py --plot      # and the cross-attention map as out/attention/attention.png
    python bench/attention.py       # our attention vs F.scaled_dot_product_attention, timed

On CPU (a few minutes): the loss falling, held-out exact match for greedy and beam search (about
99% on numbers never seen in training), a cross-attention map as a text heat map (each word looks
at the digits that spell it), and the KV-cache memory of MHA, GQA and MQA at Llama-2/3 7-8B size.
Left out: a real translation corpus and tokenizer, pre-norm and other post-2017 changes (gpt.py
has them), and a fused attention kernel (flash_attention.py).
"""
import argparse
import dataclasses
import inspect
import math
import os
import random
import re
import sys
import typing
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

@dataclass
class Config:
    max_digits: int = 6  # source numbers have 1 to max_digits digits (3 to 9; 6 = up to 999,999)
    d_model: int = 128  # model width
    n_head: int = 4  # query heads in every attention layer
    n_kv_head: int = 0  # key/value heads: 0 = n_head (MHA), 1 = MQA, in between = GQA
    n_layer: int = 2  # encoder layers, and as many decoder layers
    dropout: float = 0.1  # on sub-layer outputs, embeddings + positions, and attention weights
    label_smoothing: float = 0.1  # eps in the target q = (1 - eps) one_hot(y) + eps / V
    steps: int = 1200  # optimizer steps
    batch_size: int = 64  # (number, words) pairs per step
    lr: float = 2e-3  # peak learning rate of the warmup + inverse-square-root schedule
    warmup: int = 200  # linear warmup steps (the paper uses 4000)
    n_test: int = 500  # held-out numbers (3 or more digits, never seen in training)
    beam_size: int = 4  # beams for beam-search decoding
    plot: bool = False  # also draw the cross-attention map as out/attention/attention.png
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # data, initialisation and dropout

    def __post_init__(self):
        for name in "d_model n_head n_layer steps batch_size lr warmup n_test beam_size".split():
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        for name, ok, fix in [
                ("max_digits", 3 <= self.max_digits <= 9, "use 3 to 9 (the test set holds out "
                 "numbers of 3 or more digits; the speller stops at 10^9)"),
                ("n_test", 2 * self.n_test <= 10 ** self.max_digits - 100, "hold out at most "
                 "half the numbers of 3 or more digits: lower n_test or raise max_digits"),
                ("d_model", self.d_model % self.n_head == 0, "use a multiple of n_head"),
                ("n_kv_head", self.n_kv_head >= 0 and self.n_head % (self.n_kv_head or 1) == 0,
                 "use a divisor of n_head (0 = n_head)"),
                ("dropout", 0 <= self.dropout < 1, "use a probability in [0, 1)"),
                ("label_smoothing", 0 <= self.label_smoothing < 1, "use an eps in [0, 1)")]:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)}: {fix}")

GPU = dict(d_model=256, steps=4000)  # on CUDA: a wider model, trained longer

# ----------------------------------------------------------------------------- attention

def scaled_dot_product_attention(q, k, v, mask=None, dropout_p=0.0, return_weights=False):
    """softmax(Q K^T / sqrt(d_k)) V, written out. q (B, H, Tq, d), k (B, H_kv, Tk, d), v (B, H_kv,
    Tk, d_v): H / H_kv query heads share each key/value head (GQA; H_kv = 1 is MQA). mask: True =
    may attend; a row that may attend to nothing gets zeros, not NaN (as F.sdpa since torch 2.5)."""
    check_attention_inputs(q, k, v, mask)
    B, H, Tq, d = q.shape
    _, H_kv, Tk, _ = k.shape
    G = H // H_kv  # query heads per key/value head
    # grouping the query heads avoids materialising H copies of K and V (the "repeat" form)
    scores = q.view(B, H_kv, G, Tq, d) @ k.transpose(-2, -1)[:, :, None]  # (B, H_kv, G, Tq, Tk)
    scores = scores.view(B, H, Tq, Tk) / math.sqrt(d)
    if mask is not None:  # the finite minimum, not -inf: exp underflows to exactly 0 either way
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk), rows sum to 1
    if mask is not None:  # a row with nothing allowed came out uniform: make it all zeros instead
        weights = weights.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights  # returned: before it
    out = (dropped.view(B, H_kv, G, Tq, Tk) @ v[:, :, None]).view(B, H, Tq, -1)  # (B, H, Tq, d_v)
    return (out, weights) if return_weights else out

def check_attention_inputs(q, k, v, mask):
    if (q.dim(), k.dim(), v.dim()) != (4, 4, 4) or q.size(-1) != k.size(-1) or (
            q.size(0) != k.size(0) or k.shape[:3] != v.shape[:3] or q.size(1) % k.size(1)):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit: "
                         "need q (B, H, Tq, d), k (B, H_kv, Tk, d), v (B, H_kv, Tk, d_v) with H a "
                         "multiple of H_kv (from (B, T, H, d), use .transpose(1, 2))")
    full = (q.size(0), q.size(1), q.size(2), k.size(2))
    if mask is not None and (mask.dtype != torch.bool or mask.dim() > 4 or any(
            m not in (1, n) for m, n in zip(mask.shape[::-1], full[::-1]))):
        raise ValueError(f"mask must be boolean (True = may attend) and broadcast to (B, H, Tq, Tk)"
                         f" = {full}, got {mask.dtype} {tuple(mask.shape)}: build it with "
                         "causal_mask or padding_mask")

def causal_mask(T_q, T_k=None, window=None, device=None):
    """(T_q, T_k): query i sees key j <= i, queries being the last T_q positions (KV cache); with
    a window also j > i - window: sliding-window attention, as in Longformer and Mistral."""
    if window is not None and window < 1:
        raise ValueError(f"window={window} must be >= 1 (the token itself)")
    T_k = T_q if T_k is None else T_k
    i = torch.arange(T_k - T_q, T_k, device=device)[:, None]  # absolute position of each query
    j = torch.arange(T_k, device=device)[None, :]
    return (j <= i) & (j > i - window) if window else j <= i

def padding_mask(lengths, T):
    """(B, 1, 1, T): key j of row b is real iff j < lengths[b] (right padding)."""
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]

class KVCache:
    """Self-attention appends each step's keys and values (step t costs O(t), not O(t^2));
    cross-attention stores the encoder's once. It grows by torch.cat; gpt.py preallocates."""
    k = v = None  # (B, n_kv_head, S, head_dim) each, once append has run

    def __len__(self):
        return 0 if self.k is None else self.k.size(2)

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

def kv_cache_bytes(n_layer, n_kv_head, head_dim, seq_len, batch=1, bytes_per_value=2):
    """Memory of a full KV cache: K and V, for every layer, KV head, position and sequence."""
    return 2 * n_layer * n_kv_head * head_dim * seq_len * batch * bytes_per_value

class MultiHeadAttention(nn.Module):
    """MultiHead(X) = Concat(head_1..head_h) W_O, head_i = Attention(X W_Q^i, C W_K^g(i),
    C W_V^g(i)) with C = X (self-attention) or the encoder output (cross-attention); query head
    i reads key/value head g(i) = i // (n_head / n_kv_head): n_kv_head = n_head is MHA, 1 MQA."""

    def __init__(self, d_model, n_head, n_kv_head=None, dropout=0.0):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if d_model % n_head or n_head % n_kv_head:
            raise ValueError(f"d_model={d_model}, n_head={n_head}, n_kv_head={n_kv_head}: n_head "
                             "must divide d_model, and n_kv_head must divide n_head")
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.head_dim = d_model // n_head
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        # W_K and W_V are n_head / n_kv_head times smaller than W_Q
        self.k_proj = nn.Linear(d_model, n_kv_head * self.head_dim)
        self.v_proj = nn.Linear(d_model, n_kv_head * self.head_dim)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x, context=None, mask=None, cache=None, return_weights=False):
        """x (B, T, d_model) makes the queries, context (B, S, d_model) the keys and values
        (None: x, self-attention). mask broadcasts to (B, n_head, T, S), S counting cached keys."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        if context is not None and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # cross-attention while decoding: the encoder's, computed once
        else:
            source = x if context is None else context  # (B, S, d_model)
            k = self.k_proj(source).view(B, -1, self.n_kv_head, self.head_dim).transpose(1, 2)
            v = self.v_proj(source).view(B, -1, self.n_kv_head, self.head_dim).transpose(1, 2)
            if cache is not None:  # k, v: (B, n_kv_head, S, hd)
                k, v = cache.append(k, v)
        p = self.dropout if self.training else 0.0
        y, weights = scaled_dot_product_attention(q, k, v, mask, p, return_weights=True)
        y = self.out_proj(y.transpose(1, 2).reshape(B, T, -1))  # concatenate the heads, then W_O
        return (y, weights) if return_weights else y

# ----------------------------------------------------------------------------- the 2017 Transformer

def sinusoidal_positions(T, d_model, base=10000.0):
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)), float32."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    angles = pos * base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (T, d/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).float()  # (T, d_model)

class Layer(nn.Module):
    """Post-norm, as in 2017: x = LayerNorm(x + Dropout(Sublayer(x))). An encoder layer has
    self-attention and the FFN; a decoder layer (cross=True) masked self-attention, then
    cross-attention to the encoder output, then the FFN(x) = max(0, x W_1 + b_1) W_2 + b_2."""

    def __init__(self, d_model, n_head, n_kv_head, d_ff, dropout, cross=False):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_head, n_kv_head, dropout)
        self.cross_attn = MultiHeadAttention(d_model, n_head, n_kv_head, dropout) if cross else None
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(d_ff, d_model))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3 if cross else 2))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask, memory=None, src_mask=None, caches=(None, None)):
        """-> (output, cross-attention weights (B, n_head, T, S) or None)."""
        x = self.norms[0](x + self.drop(self.self_attn(x, mask=mask, cache=caches[0])))
        weights = None
        if self.cross_attn is not None:
            z, weights = self.cross_attn(x, memory, src_mask, caches[1], return_weights=True)
            x = self.norms[1](x + self.drop(z))
        return self.norms[-1](x + self.drop(self.ff(x))), weights

class Transformer(nn.Module):
    """Encoder-decoder: memory = Encoder(x); p(y_t | y_<t, x) = softmax(Decoder(y_<t, memory)
    W_E^T). Embeddings are scaled by sqrt(d_model); the output layer is the target embedding."""

    def __init__(self, src_vocab, tgt_vocab, d_model=128, n_head=4, n_kv_head=None, n_layer=2,
                 d_ff=512, dropout=0.1, max_len=256):
        super().__init__()
        self.d_model = d_model
        self.src_embed = nn.Embedding(src_vocab, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model)
        self.register_buffer("pe", sinusoidal_positions(max_len, d_model), persistent=False)
        layer = (d_model, n_head, n_kv_head, d_ff, dropout)
        self.encoder = nn.ModuleList(Layer(*layer) for _ in range(n_layer))
        self.decoder = nn.ModuleList(Layer(*layer, cross=True) for _ in range(n_layer))
        self.head = nn.Linear(d_model, tgt_vocab, bias=False)
        self.head.weight = self.tgt_embed.weight  # tied, as in the paper (Press & Wolf 2017)
        self.drop = nn.Dropout(dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def embed(self, table, idx, start=0):
        if start + idx.size(1) > len(self.pe):
            raise ValueError(f"{start + idx.size(1)} tokens exceed max_len={len(self.pe)}")
        return self.drop(table(idx) * math.sqrt(self.d_model) + self.pe[start:start + idx.size(1)])

    def encode(self, src, src_mask):  # src: (B, S) token ids; src_mask: (B, 1, 1, S)
        x = self.embed(self.src_embed, src)  # (B, S, d_model)
        for layer in self.encoder:
            x = layer(x, src_mask)[0]
        return x

    def decode(self, tgt, memory, src_mask, caches=None, return_weights=False):
        """Logits (B, T, tgt_vocab) for target tokens tgt (B, T). With caches (from new_caches),
        tgt holds only the new tokens and continues after those already decoded."""
        start = len(caches[0][0]) if caches else 0
        y = self.embed(self.tgt_embed, tgt, start)
        self_mask = causal_mask(tgt.size(1), start + tgt.size(1), device=tgt.device)
        for i, layer in enumerate(self.decoder):
            y, cross = layer(y, self_mask, memory, src_mask, caches[i] if caches else (None, None))
        logits = self.head(y)
        return (logits, cross) if return_weights else logits  # cross: the last layer's weights

    def forward(self, src, src_mask, tgt):
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

    def new_caches(self):  # (self-attention, cross-attention) per decoder layer
        return [(KVCache(), KVCache()) for _ in self.decoder]

    @torch.no_grad()
    def beam_search(self, src, src_mask, bos, eos, beam_size=4, max_len=32):
        """For one source (1, S): keep the beam_size most probable prefixes by log p(y|x) =
        sum_t log p(y_t | y_<t, x); one that picks eos among the top beam_size is finished. Stop
        once a finished one beats every live prefix (log-probs only fall as a prefix grows).
        beam_size=1 is greedy decoding, y_t = argmax p(y | y_<t, x). In eval(); eos left out."""
        memory = self.encode(src, src_mask)
        caches = self.new_caches()
        tokens = torch.full((1, 1), bos, device=src.device)  # the last token of each live prefix
        scores = torch.zeros(1, device=src.device)  # log p(prefix | x) of each live prefix
        prefixes = [[]]
        finished = []  # (score, prefix), eos left out
        for _ in range(max_len):
            logits = self.decode(tokens, memory, src_mask, caches)[:, -1]  # (live, V)
            total = (scores[:, None] + F.log_softmax(logits.float(), -1)).flatten()
            live = []  # (parent row, token, score), best first
            for rank, (score, flat) in enumerate(zip(*total.topk(min(2 * beam_size, len(total))))):
                parent, token = divmod(int(flat), logits.size(1))
                if token == eos and rank < beam_size:
                    finished.append((float(score), prefixes[parent]))
                elif token != eos and len(live) < beam_size:
                    live.append((parent, token, float(score)))
            if not live or (finished and max(f[0] for f in finished) >= live[0][2]):
                break
            rows = torch.tensor([p for p, _, _ in live], device=src.device)  # row i continues
            for cache in (c for pair in caches for c in pair):  # from row rows[i]
                cache.k, cache.v = cache.k[rows], cache.v[rows]
            tokens = torch.tensor([[t] for _, t, _ in live], device=src.device)
            scores = torch.tensor([s for _, _, s in live], device=src.device)
            prefixes = [prefixes[p] + [t] for p, t, _ in live]
        return max(finished, key=lambda f: f[0])[1] if finished else prefixes[0]

# ----------------------------------------------------------------------------- the toy task

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen").split()
TENS = "- - twenty thirty forty fifty sixty seventy eighty ninety".split()
PAD, BOS, EOS = 0, 1, 2
SRC_VOCAB = ["<pad>"] + list("0123456789")
TGT_VOCAB = ["<pad>", "<bos>", "<eos>"] + ONES + TENS[2:] + ["hundred", "thousand", "million"]

def number_words(n):
    """4071 -> ['four', 'thousand', 'seventy', 'one']: US English, no 'and', no hyphens, < 10^9."""
    if n < 20:
        return [ONES[n]]
    if n < 100:
        return [TENS[n // 10]] + (number_words(n % 10) if n % 10 else [])
    scale, name = next(s for s in ((10 ** 6, "million"), (1000, "thousand"), (100, "hundred"))
                       if n >= s[0])
    return number_words(n // scale) + [name] + (number_words(n % scale) if n % scale else [])

def draw_number(rng, min_digits, max_digits):
    digits = rng.randint(min_digits, max_digits)  # first the length, so short numbers are common
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)

def make_batch(numbers, device):
    """Source digits (B, S) with their padding mask, decoder input [bos] + words and target
    words + [eos] (B, T), each right-padded with PAD."""
    src = [[SRC_VOCAB.index(c) for c in str(n)] for n in numbers]
    tgt = [[TGT_VOCAB.index(w) for w in number_words(n)] for n in numbers]
    pad = lambda rows: nn.utils.rnn.pad_sequence(  # noqa: E731
        [torch.tensor(r) for r in rows], batch_first=True, padding_value=PAD).to(device)
    src_mask = padding_mask(torch.tensor([len(s) for s in src], device=device), max(map(len, src)))
    return pad(src), src_mask, pad([[BOS] + t for t in tgt]), pad([t + [EOS] for t in tgt])

def label_smoothed_loss(logits, targets, smoothing, ignore_index):
    """Cross-entropy against q = (1 - eps) one_hot(y) + eps / V, averaged over kept targets:
    L = (1 - eps) * (-log p_y) + eps * mean_v(-log p_v). eps = 0 is plain cross-entropy."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (..., V)
    nll = -logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    loss = (1 - smoothing) * nll - smoothing * logp.mean(-1)
    return loss[targets != ignore_index].mean()

# ----------------------------------------------------------------------------- train and evaluate

def train(model, cfg, test_set, device):
    """Adam(0.9, 0.98), lr = peak * min(step / warmup, sqrt(warmup / step)) as in the paper."""
    rng = random.Random(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9)
    schedule = lambda s: min((s + 1) / cfg.warmup, math.sqrt(cfg.warmup / (s + 1)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    for step in (bar := tqdm(range(cfg.steps), desc="train")):
        numbers = []
        while len(numbers) < cfg.batch_size:  # fresh pairs every step; held-out ones never appear
            n = draw_number(rng, 1, cfg.max_digits)
            if n not in test_set:
                numbers.append(n)
        src, src_mask, tgt_in, tgt_out = make_batch(numbers, device)
        with torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda")):
            logits = model(src, src_mask, tgt_in)
        loss = label_smoothed_loss(logits, tgt_out, cfg.label_smoothing, ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()

def exact_match(model, numbers, device, beam_size=1):
    """Exact match of beam search (beam_size=1: greedy decoding) on each number; its outputs."""
    src, src_mask, _, _ = make_batch(numbers, device)
    lengths = tqdm(src_mask.sum((1, 2, 3)).tolist(), desc=f"{beam_size} beams", leave=False)
    out = [model.beam_search(src[i:i + 1, :n], src_mask[i:i + 1, ..., :n], BOS, EOS, beam_size, 40)
           for i, n in enumerate(lengths)]
    words = [[TGT_VOCAB.index(w) for w in number_words(n)] for n in numbers]
    return sum(o == w for o, w in zip(out, words)) / len(numbers), out

def heat_map(weights, rows, cols):
    """A text heat map of an attention matrix (len(rows), len(cols)): darker = more attention."""
    width = max(map(len, rows))
    lines = [" " * width + "  " + " ".join(cols)]
    for name, w in zip(rows, weights.tolist()):
        lines.append(f"{name:>{width}}  " + " ".join(" .:-=+*#%@"[min(int(x * 10), 9)] for x in w))
    return "\n".join(lines)

def kv_cache_table(n_layer=32, n_head=32, head_dim=128, seq_len=8192):
    print(f"\nKV cache per sequence, {n_layer} layers, {n_head} query heads of {head_dim}, "
          f"{seq_len} tokens, bf16:\n{'variant':<22} {'n_kv_head':>9} {'per token':>10} "
          f"{'per sequence':>13} {'seqs in 40 GiB':>15}")
    for name, n_kv in [("MHA (Llama-2-7B)", n_head), ("GQA-8 (Llama-3-8B)", 8), ("MQA", 1)]:
        per_seq = kv_cache_bytes(n_layer, n_kv, head_dim, seq_len)
        print(f"{name:<22} {n_kv:>9} {per_seq / seq_len / 2 ** 10:>7.0f} KiB "
              f"{per_seq / 2 ** 30:>9.3f} GiB {int(40 * 2 ** 30 // per_seq):>15}")

# ----------------------------------------------------------------------------- main

def pyplot():
    """matplotlib.pyplot (Agg) for --plot; if it is missing, a one-line note and None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("note: --plot needs matplotlib (pip install matplotlib): no PNG will be written")

def plot_attention(plt, weights, rows, cols, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    plt.imshow(weights.numpy(), cmap="Greys", vmin=0, vmax=1)  # darker = more, as in the text map
    plt.xticks(range(len(cols)), cols)
    plt.yticks(range(len(rows)), rows)
    plt.title("cross-attention of the last decoder layer (mean over heads) by source digit")
    plt.savefig(path, dpi=120, bbox_inches="tight")
    plt.close()
    print(f"plot: {path}")

def main(cfg):
    plt = pyplot() if cfg.plot else None
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed + 1)
    test_set = set()
    while len(test_set) < cfg.n_test:  # held out: 3+ digit numbers (training needs all 1-2 digit)
        test_set.add(draw_number(rng, 3, cfg.max_digits))
    test = sorted(test_set, key=lambda n: rng.random())
    model = Transformer(len(SRC_VOCAB), len(TGT_VOCAB), cfg.d_model, cfg.n_head, cfg.n_kv_head,
                        cfg.n_layer, 4 * cfg.d_model, cfg.dropout).to(device)
    print(f"Transformer {cfg.n_layer}+{cfg.n_layer} layers, d_model={cfg.d_model}, {cfg.n_head} "
          f"heads ({cfg.n_kv_head or cfg.n_head} kv), "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, on {device}")
    print(f"task: numbers of 1-{cfg.max_digits} digits -> English words, "
          f"e.g. {test[0]} -> {' '.join(number_words(test[0]))}")
    greedy_before, _ = exact_match(model.eval(), test[:100], device)  # eval: no dropout
    train(model, cfg, test_set, device)
    greedy_acc, outputs = exact_match(model, test, device)
    beam_acc, _ = exact_match(model, test, device, cfg.beam_size)
    print(f"held-out exact match on {len(test)} numbers never seen in training: before training "
          f"{greedy_before:.1%}; greedy {greedy_acc:.1%}; beam search ({cfg.beam_size} beams) "
          f"{beam_acc:.1%}")
    wrong = [(n, out) for n, out in zip(test, outputs)
             if out != [TGT_VOCAB.index(w) for w in number_words(n)]]
    for n, out in list(zip(test, outputs))[:2] + wrong[:3]:
        mark = "  (wrong)" if (n, out) in wrong else ""
        print(f"  {n:>9} -> {' '.join(TGT_VOCAB[t] for t in out)}{mark}")
    number = max(test[:10], key=lambda n: len(str(n)))
    src, src_mask, tgt_in, _ = make_batch([number], device)
    with torch.no_grad():  # the last decoder layer's cross-attention, mean over heads: (T, S)
        _, cross = model.decode(tgt_in, model.encode(src, src_mask), src_mask, return_weights=True)
    words = [TGT_VOCAB[t] for t in tgt_in[0, 1:].tolist()] + ["<eos>"]  # what each row predicts
    attention = (cross[0].mean(0).cpu(), words, list(str(number)))
    print(f"cross-attention of the last decoder layer (mean over heads) for {number}: "
          "row = the word being predicted, column = a source digit")
    print(heat_map(*attention))
    kv_cache_table()
    if plt:
        plot_attention(plt, *attention, "out/attention/attention.png")

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
    main(parse_args(Config, gpu=GPU))
