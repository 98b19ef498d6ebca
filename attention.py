"""Attention, multi-head attention (MHA, GQA, MQA) and the original encoder-decoder Transformer.

Every token asks a question (query q), every token offers a label (key k) and a content (value
v); a token's output is the average of the values weighted by how well its query matches each key:
Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V. Several heads run side by side on learned
projections (multi-head), and heads may share keys and values to shrink the KV cache (GQA, MQA).
Papers: Vaswani et al. 2017 (the Transformer), Shazeer 2019 (MQA), Ainslie et al. 2023 (GQA),
Beltagy et al. 2020 (sliding-window attention), Szegedy et al. 2016 (label smoothing).

    python attention.py                       # train digits -> English words ("4071" -> "four thousand seventy one")
    python attention.py --n_kv_head=1 --label_smoothing=0 --beam_size=8
    python attention.py --bench               # our written-out attention vs F.scaled_dot_product_attention

On CPU (about 2 minutes) you see a tqdm bar with the loss falling, the held-out exact-match
accuracy for greedy and beam-search decoding (about 99% on numbers never seen in training), one
cross-attention map as a text heat map (each output word looks at the digits that spell it), and
the KV-cache memory of MHA, GQA and MQA at the size of Llama-2/3 7-8B.
"""
import dataclasses
import math
import random
import re
import sys
import time
import typing
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class Config:
    max_digits: int = 6  # source numbers have 1 to max_digits digits (3 to 9; 6 = up to 999,999)
    d_model: int = 0  # model width; 0 = 128 on CPU, 256 on CUDA
    n_head: int = 4  # query heads in every attention layer
    n_kv_head: int = 0  # key/value heads: 0 = n_head (MHA), 1 = MQA, in between = GQA
    n_layer: int = 2  # encoder layers, and as many decoder layers
    d_ff: int = 0  # hidden width of the feed-forward layers; 0 = 4 * d_model
    dropout: float = 0.1  # on sub-layer outputs, on embeddings + positions, and on attention weights
    label_smoothing: float = 0.1  # eps in the target q = (1 - eps) one_hot(y) + eps / V; 0 = plain cross-entropy
    steps: int = 0  # optimizer steps; 0 = 1200 on CPU, 4000 on CUDA
    batch_size: int = 64  # (number, words) pairs per step
    lr: float = 2e-3  # peak learning rate of the warmup + inverse-square-root schedule
    warmup: int = 200  # linear warmup steps (the paper uses 4000)
    n_test: int = 500  # held-out numbers (3 or more digits, never seen in training)
    beam_size: int = 4  # beams for beam-search decoding
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # data, initialisation and dropout
    bench: bool = False  # time our attention against F.scaled_dot_product_attention instead of training

    def __post_init__(self):
        if self.max_digits > 9:
            raise ValueError(f"max_digits={self.max_digits}: the number speller stops at 9 digits (millions)")
        if min(self.n_head, self.n_layer, self.batch_size, self.n_test, self.beam_size) < 1:
            raise ValueError("n_head, n_layer, batch_size, n_test and beam_size must be >= 1")
        if self.max_digits < 3 or self.n_test > (10 ** self.max_digits - 100) // 2:
            raise ValueError(f"n_test={self.n_test} with max_digits={self.max_digits}: the test set holds out at "
                             "most half of the numbers of 3 or more digits; lower n_test or raise max_digits")


def parse_args(config_cls, argv=None):
    """--field=value overrides for a dataclass; --help lists the fields, defaults and comments."""
    argv = sys.argv[1:] if argv is None else argv
    fields, hints = {f.name: f for f in dataclasses.fields(config_cls)}, typing.get_type_hints(config_cls)
    if "--help" in argv or "-h" in argv:
        import inspect
        notes = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(config_cls), flags=re.M))
        print("\n".join(f"  --{n}={f.default!s:<8} {notes.get(n, '')}" for n, f in fields.items()))
        raise SystemExit(0)
    overrides = {}
    for arg in argv:
        name, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in fields:
            raise SystemExit(f"error: unknown option {arg!r}; valid: " + " ".join(f"--{n}" for n in fields))
        kind, value = hints[name], value if eq else "true"
        if kind is bool and value.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise SystemExit(f"error: --{name} takes true or false, got {value!r}")
        try:
            overrides[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise SystemExit(f"error: --{name} takes a {kind.__name__}, got {value!r}") from None
    try:
        return config_cls(**overrides)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def pick_device(name="auto"):
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


# ----------------------------------------------------------------------------- attention

def scaled_dot_product_attention(q, k, v, mask=None, dropout_p=0.0, return_weights=False):
    """softmax(Q K^T / sqrt(d_k)) V, written out, in the (batch, heads, time, head_dim) layout.

    q: (B, H, Tq, d); k: (B, H_kv, Tk, d); v: (B, H_kv, Tk, d_v). H_kv may divide H: then each
    group of H / H_kv query heads shares one key/value head (GQA; H_kv = 1 is MQA).
    mask: boolean, True = may attend, broadcastable to (B, H, Tq, Tk); see causal_mask,
    sliding_window_mask, padding_mask. A query row whose mask is all False attends to nothing:
    it gets zero weights and a zero output, never NaN (softmax over an empty set is undefined;
    F.scaled_dot_product_attention also returns zeros there since torch 2.5).
    Returns the output (B, H, Tq, d_v), and the weights (B, H, Tq, Tk) before dropout on request.
    """
    check_attention_inputs(q, k, v, mask)
    B, H, Tq, d = q.shape
    H_kv, Tk = k.size(1), k.size(2)
    G = H // H_kv  # query heads per key/value head
    # grouping the query heads avoids materialising H copies of K and V (the "repeat" form)
    scores = q.view(B, H_kv, G, Tq, d) @ k.transpose(-2, -1)[:, :, None]  # (B, H_kv, G, Tq, Tk)
    scores = scores.view(B, H, Tq, Tk) / math.sqrt(d)
    if mask is not None:  # the finite minimum, not -inf: exp underflows to exactly 0 either way
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (B, H, Tq, Tk), rows sum to 1
    if mask is not None:  # a row with nothing allowed came out uniform: make it all zeros instead
        weights = weights.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    out = (dropped.view(B, H_kv, G, Tq, Tk) @ v[:, :, None]).view(B, H, Tq, v.size(-1))  # (B, H, Tq, d_v)
    return (out, weights) if return_weights else out


def check_attention_inputs(q, k, v, mask):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (batch, heads, time, head_dim), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}: use .view(B, T, H, d).transpose(1, 2)")
    if q.size(-1) != k.size(-1):
        raise ValueError(f"query head dim {q.size(-1)} != key head dim {k.size(-1)}: q . k needs equal sizes")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"keys {tuple(k.shape)} and values {tuple(v.shape)} differ in batch, heads or length")
    if q.size(0) != k.size(0):
        raise ValueError(f"queries have batch {q.size(0)} but keys have batch {k.size(0)}")
    if q.size(1) % k.size(1):
        raise ValueError(f"n_head={q.size(1)} is not a multiple of n_kv_head={k.size(1)}: "
                         "each key/value head must serve a whole group of query heads")
    if mask is not None:
        full = (q.size(0), q.size(1), q.size(2), k.size(2))
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        try:
            ok = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, full) == full
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to (B, H, Tq, Tk) = {full}: "
                             "build it with causal_mask, sliding_window_mask or padding_mask")


def causal_mask(T_q, T_k=None, device=None):
    """(T_q, T_k): query i sees key j iff j <= i + (T_k - T_q). The queries are the last T_q of T_k
    positions, as when decoding with a KV cache."""
    T_k = T_q if T_k is None else T_k
    i = torch.arange(T_k - T_q, T_k, device=device)[:, None]  # absolute position of each query
    j = torch.arange(T_k, device=device)[None, :]
    return j <= i


def sliding_window_mask(T_q, window, T_k=None, device=None):
    """(T_q, T_k) causal and local: query i sees keys i - window < j <= i, exactly `window` of them
    once i >= window - 1 (Longformer/Mistral-style local attention)."""
    if window < 1:
        raise ValueError(f"window={window} must be >= 1 (the token itself)")
    T_k = T_q if T_k is None else T_k
    i = torch.arange(T_k - T_q, T_k, device=device)[:, None]
    j = torch.arange(T_k, device=device)[None, :]
    return (j <= i) & (j > i - window)


def padding_mask(lengths, T):
    """(B, 1, 1, T): key j of row b is real iff j < lengths[b] (right padding); broadcasts over heads and queries."""
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]


class KVCache:
    """The keys and values one attention layer has already computed. Self-attention appends the
    new tokens' k, v each step (so step t costs O(t), not O(t^2)); cross-attention stores the
    encoder's once and reuses them. Grows by concatenation, which is simple; a preallocated buffer
    avoids the copies (gpt.py does that)."""

    def __init__(self):
        self.k = self.v = None  # (B, n_kv_head, S, head_dim)

    def __len__(self):
        return 0 if self.k is None else self.k.size(2)

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def reorder(self, rows):  # beam search: row i continues from row rows[i]
        if self.k is not None:
            self.k, self.v = self.k[rows], self.v[rows]


def kv_cache_bytes(n_layer, n_kv_head, head_dim, seq_len, batch=1, bytes_per_value=2):
    """Memory of a full KV cache: K and V, for every layer, KV head, position and sequence."""
    return 2 * n_layer * n_kv_head * head_dim * seq_len * batch * bytes_per_value


class MultiHeadAttention(nn.Module):
    """MultiHead(X) = Concat(head_1, ..., head_h) W_O with head_i = Attention(X W_Q^i, C W_K^g(i), C W_V^g(i)),
    where C = X for self-attention and the encoder output for cross-attention, and query head i
    reads key/value head g(i) = i // (n_head / n_kv_head): n_kv_head = n_head is MHA, 1 is MQA."""

    def __init__(self, d_model, n_head, n_kv_head=None, dropout=0.0, bias=True):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        if n_head % n_kv_head:
            raise ValueError(f"n_head={n_head} is not divisible by n_kv_head={n_kv_head}: "
                             "each key/value head must serve a whole group of query heads")
        self.n_head, self.n_kv_head, self.head_dim, self.dropout = n_head, n_kv_head, d_model // n_head, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_head * self.head_dim, bias=bias)  # n_head / n_kv_head times
        self.v_proj = nn.Linear(d_model, n_kv_head * self.head_dim, bias=bias)  # smaller than W_Q
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, context=None, mask=None, cache=None, return_weights=False):
        """x: (B, T, d_model) makes the queries; context: (B, S, d_model) makes keys and values for
        cross-attention (None = self-attention). mask: boolean, broadcastable to (B, n_head, T, S)
        where S counts cached keys too. cache: a KVCache (see there)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head, T, hd)
        if context is not None and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # cross-attention while decoding: the encoder's K, V, computed once
        else:
            source = x if context is None else context  # (B, S, d_model)
            k = self.k_proj(source).view(B, -1, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head, S, hd)
            v = self.v_proj(source).view(B, -1, self.n_kv_head, self.head_dim).transpose(1, 2)
            if cache is not None:
                k, v = cache.append(k, v)
        y, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout if self.training else 0.0, True)
        y = self.out_proj(y.transpose(1, 2).reshape(B, T, -1))  # concatenate the heads, then W_O
        return (y, weights) if return_weights else y


# ----------------------------------------------------------------------------- the 2017 Transformer

def sinusoidal_positions(T, d_model, base=10000.0):
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)): (T, d_model), float32."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    angles = pos * base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (T, d/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).float()  # sin, cos interleaved


class FeedForward(nn.Module):
    def __init__(self, d_model, d_ff, dropout):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))

    def forward(self, x):  # FFN(x) = max(0, x W_1 + b_1) W_2 + b_2
        return self.net(x)


class EncoderLayer(nn.Module):
    """Post-norm, as in 2017: x = LayerNorm(x + Dropout(Sublayer(x)))."""

    def __init__(self, d_model, n_head, n_kv_head, d_ff, dropout):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_head, n_kv_head, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.norm1, self.norm2, self.drop = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.Dropout(dropout)

    def forward(self, x, src_mask):
        x = self.norm1(x + self.drop(self.self_attn(x, mask=src_mask)))
        return self.norm2(x + self.drop(self.ff(x)))


class DecoderLayer(nn.Module):
    """Masked self-attention, then cross-attention to the encoder output, then the FFN; post-norm."""

    def __init__(self, d_model, n_head, n_kv_head, d_ff, dropout):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_head, n_kv_head, dropout)
        self.cross_attn = MultiHeadAttention(d_model, n_head, n_kv_head, dropout)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, y, memory, self_mask, src_mask, caches=(None, None)):
        y = self.norms[0](y + self.drop(self.self_attn(y, mask=self_mask, cache=caches[0])))
        z, cross_weights = self.cross_attn(y, context=memory, mask=src_mask, cache=caches[1], return_weights=True)
        y = self.norms[1](y + self.drop(z))
        return self.norms[2](y + self.drop(self.ff(y))), cross_weights


class Transformer(nn.Module):
    """Encoder-decoder: memory = Encoder(x); p(y_t | y_<t, x) = softmax(Decoder(y_<t, memory) W_E^T).
    Embeddings are scaled by sqrt(d_model) and the output layer shares the target embedding matrix."""

    def __init__(self, src_vocab, tgt_vocab, d_model=128, n_head=4, n_kv_head=None, n_layer=2, d_ff=512,
                 dropout=0.1, max_len=256):
        super().__init__()
        self.d_model = d_model
        self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, d_model), nn.Embedding(tgt_vocab, d_model)
        self.register_buffer("pe", sinusoidal_positions(max_len, d_model), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, n_head, n_kv_head, d_ff, dropout) for _ in range(n_layer))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, n_head, n_kv_head, d_ff, dropout) for _ in range(n_layer))
        self.head = nn.Linear(d_model, tgt_vocab, bias=False)
        self.head.weight = self.tgt_embed.weight  # weight tying (Press & Wolf 2017), as in the paper
        self.drop = nn.Dropout(dropout)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def embed(self, table, idx, start=0):
        if start + idx.size(1) > self.pe.size(0):
            raise ValueError(f"sequence of {start + idx.size(1)} tokens exceeds max_len={self.pe.size(0)}")
        return self.drop(table(idx) * math.sqrt(self.d_model) + self.pe[start:start + idx.size(1)])

    def encode(self, src, src_mask):  # src: (B, S) token ids; src_mask: (B, 1, 1, S)
        x = self.embed(self.src_embed, src)  # (B, S, d_model)
        for layer in self.encoder:
            x = layer(x, src_mask)
        return x

    def decode(self, tgt, memory, src_mask, caches=None, return_weights=False):
        """Logits (B, T, tgt_vocab) for target tokens tgt (B, T). With caches (from new_caches),
        tgt holds only the new tokens and continues after those already decoded."""
        start = len(caches[0][0]) if caches else 0
        y = self.embed(self.tgt_embed, tgt, start)
        self_mask = causal_mask(tgt.size(1), start + tgt.size(1), device=tgt.device)
        cross = []
        for i, layer in enumerate(self.decoder):
            y, w = layer(y, memory, self_mask, src_mask, caches[i] if caches else (None, None))
            cross.append(w)  # (B, n_head, T, S) per layer
        logits = self.head(y)
        return (logits, cross) if return_weights else logits

    def forward(self, src, src_mask, tgt):
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

    def new_caches(self):
        return [(KVCache(), KVCache()) for _ in self.decoder]  # (self-attention, cross-attention) per layer

    @torch.no_grad()
    def greedy(self, src, src_mask, bos, eos, max_len):
        """Batched greedy decoding with KV caches: y_t = argmax p(y | y_<t, x). Lists cut before eos.
        Call model.eval() first, or dropout stays on."""
        memory, caches = self.encode(src, src_mask), self.new_caches()
        token = torch.full((src.size(0), 1), bos, dtype=torch.long, device=src.device)
        out, done = [], torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            token = self.decode(token, memory, src_mask, caches)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            out.append(token)
            done |= token[:, 0] == eos
            if bool(done.all()):
                break
        rows = torch.cat(out, 1).tolist()
        return [row[:row.index(eos)] if eos in row else row for row in rows]

    @torch.no_grad()
    def beam_search(self, src, src_mask, bos, eos, beam_size=4, max_len=32):
        """For one source (1, S): keep the beam_size most probable prefixes by log p(y|x) = sum_t
        log p(y_t | y_<t, x). A prefix that picks eos among the top beam_size is finished. The
        search stops once the best finished score beats every live prefix (log-probs only fall
        as a prefix grows, so none can catch up). Returns the best finished sequence, without eos."""
        memory = self.encode(src, src_mask).expand(beam_size, -1, -1)
        src_mask, caches = src_mask.expand(beam_size, -1, -1, -1), self.new_caches()
        tokens = torch.full((beam_size, 1), bos, dtype=torch.long, device=src.device)
        scores = torch.full((beam_size,), -math.inf, device=src.device)
        scores[0] = 0.0  # the rows start identical: keep one live, or the beam fills with copies
        prefixes, finished = [[] for _ in range(beam_size)], []
        for _ in range(max_len):
            logp = F.log_softmax(self.decode(tokens, memory, src_mask, caches)[:, -1].float(), -1)  # (beam, V)
            top_scores, top = (scores[:, None] + logp).flatten().topk(2 * beam_size)
            live = []  # (parent row, token, score), best first
            for rank, (score, flat) in enumerate(zip(top_scores.tolist(), top.tolist())):
                parent, token = divmod(flat, logp.size(1))
                if score == -math.inf or len(live) == beam_size:
                    break
                if token != eos:
                    live.append((parent, token, score))
                elif rank < beam_size:
                    finished.append((score, prefixes[parent]))
            if not live or (finished and max(f[0] for f in finished) >= live[0][2]):
                break
            live += [(live[0][0], live[0][1], -math.inf)] * (beam_size - len(live))  # dead rows keep the shape
            parents = torch.tensor([p for p, _, _ in live], device=src.device)
            scores = torch.tensor([s for _, _, s in live], device=src.device)
            prefixes = [prefixes[p] + [t] for p, t, _ in live]
            for cache in (c for pair in caches for c in pair):
                cache.reorder(parents)
            tokens = torch.tensor([[t] for _, t, _ in live], device=src.device)
        if not finished:  # nothing ended within max_len: the best live prefix
            finished = [(s, p) for s, p in zip(scores.tolist(), prefixes) if s > -math.inf]
        return max(finished, key=lambda f: f[0])[1]


def label_smoothed_loss(logits, targets, smoothing, ignore_index):
    """Cross-entropy against q = (1 - eps) one_hot(y) + eps / V, averaged over non-ignored targets:
    L = (1 - eps) * (-log p_y) + eps * mean_v(-log p_v). eps = 0 is plain cross-entropy."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (..., V)
    keep = targets != ignore_index
    nll = -logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    loss = (1 - smoothing) * nll - smoothing * logp.mean(-1)
    return loss[keep].mean()


# ----------------------------------------------------------------------------- the toy translation task

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()
TENS = "- - twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ((10 ** 6, "million"), (10 ** 3, "thousand"), (1, None))
PAD, BOS, EOS = 0, 1, 2
SRC_VOCAB = ["<pad>"] + list("0123456789")
TGT_VOCAB = ["<pad>", "<bos>", "<eos>"] + ONES + TENS[2:] + ["hundred", "thousand", "million"]


def number_words(n):
    """4071 -> ['four', 'thousand', 'seventy', 'one']: US English, no 'and', no hyphens, below 10^9."""
    if n == 0:
        return ["zero"]
    words = []
    for scale, name in SCALES:
        group = n // scale % 1000
        if group >= 100:
            words += [ONES[group // 100], "hundred"]
        rest = group % 100
        if rest >= 20:
            words.append(TENS[rest // 10])
            rest %= 10
        if rest:
            words.append(ONES[rest])
        if group and name:
            words.append(name)
    return words


def draw_number(rng, min_digits, max_digits):
    digits = rng.randint(min_digits, max_digits)  # first the length, so short numbers are common too
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def make_batch(numbers, device):
    """Right-padded source digits (B, S) with their lengths, decoder input [bos] + words and
    target words + [eos] (B, T), padded with PAD."""
    src = [[SRC_VOCAB.index(c) for c in str(n)] for n in numbers]
    tgt = [[TGT_VOCAB.index(w) for w in number_words(n)] for n in numbers]
    S, T = max(map(len, src)), max(map(len, tgt)) + 1
    src_ids = torch.tensor([s + [PAD] * (S - len(s)) for s in src], device=device)
    tgt_in = torch.tensor([[BOS] + t + [PAD] * (T - 1 - len(t)) for t in tgt], device=device)
    tgt_out = torch.tensor([t + [EOS] + [PAD] * (T - 1 - len(t)) for t in tgt], device=device)
    return src_ids, torch.tensor([len(s) for s in src], device=device), tgt_in, tgt_out


# ----------------------------------------------------------------------------- training and evaluation

def train(model, cfg, test_set, device):
    """Adam(0.9, 0.98) with the paper's schedule lr = peak * min(step / warmup, sqrt(warmup / step))."""
    rng = random.Random(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / cfg.warmup, math.sqrt(cfg.warmup / (s + 1))))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    model.train()
    bar = tqdm(range(cfg.steps), desc="train")
    for step in bar:
        numbers = []
        while len(numbers) < cfg.batch_size:  # fresh pairs every step; held-out numbers never appear
            n = draw_number(rng, 1, cfg.max_digits)
            if n not in test_set:
                numbers.append(n)
        src, lengths, tgt_in, tgt_out = make_batch(numbers, device)
        src_mask = padding_mask(lengths, src.size(1))
        with amp:
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


def exact_match(model, numbers, device, beam_size=0):
    """Fraction of numbers spelled exactly right by greedy decoding (batched) and, with beam_size,
    by beam search (one number at a time); plus the greedy outputs."""
    src, lengths, _, _ = make_batch(numbers, device)
    src_mask = padding_mask(lengths, src.size(1))
    words = [[TGT_VOCAB.index(w) for w in number_words(n)] for n in numbers]
    greedy = model.greedy(src, src_mask, BOS, EOS, max_len=40)
    greedy_acc = sum(g == w for g, w in zip(greedy, words)) / len(numbers)
    if not beam_size:
        return greedy_acc, None, greedy
    beam = [model.beam_search(src[i:i + 1, :lengths[i]], src_mask[i:i + 1, ..., :lengths[i]], BOS, EOS, beam_size, 40)
            for i in tqdm(range(len(numbers)), desc=f"beam search ({beam_size})", leave=False)]
    return greedy_acc, sum(b == w for b, w in zip(beam, words)) / len(numbers), greedy


def heat_map(weights, rows, cols):
    """A text heat map of an attention matrix (len(rows), len(cols)): darker = more attention."""
    shades = " .:-=+*#%@"
    width = max(map(len, rows))
    lines = [" " * width + "  " + " ".join(cols)]
    for name, w in zip(rows, weights.tolist()):
        lines.append(f"{name:>{width}}  " + " ".join(shades[min(int(x * len(shades)), len(shades) - 1)] for x in w))
    return "\n".join(lines)


def show_cross_attention(model, number, device):
    src, lengths, tgt_in, _ = make_batch([number], device)
    with torch.no_grad():
        _, cross = model.decode(tgt_in, model.encode(src, padding_mask(lengths, src.size(1))),
                                padding_mask(lengths, src.size(1)), return_weights=True)
    weights = cross[-1][0].mean(0)  # last decoder layer, averaged over heads: (T, S)
    rows = [TGT_VOCAB[t] for t in tgt_in[0, 1:].tolist()] + ["<eos>"]  # the word each row predicts
    print(f"cross-attention of the last decoder layer (mean over heads) for {number}: "
          "row = the word being predicted, column = a source digit")
    print(heat_map(weights, rows, list(str(number))))


def kv_cache_table(n_layer=32, n_head=32, head_dim=128, seq_len=8192):
    print(f"\nKV cache per sequence, {n_layer} layers, {n_head} query heads of {head_dim}, {seq_len} tokens, bf16:")
    print(f"{'variant':<22} {'n_kv_head':>9} {'per token':>10} {'per sequence':>13} {'seqs in 40 GiB':>15}")
    for name, n_kv in [("MHA (Llama-2-7B)", n_head), ("GQA-8 (Llama-3-8B)", 8), ("MQA", 1)]:
        per_seq = kv_cache_bytes(n_layer, n_kv, head_dim, seq_len)
        print(f"{name:<22} {n_kv:>9} {per_seq / seq_len / 2 ** 10:>7.0f} KiB {per_seq / 2 ** 30:>9.3f} GiB "
              f"{int(40 * 2 ** 30 // per_seq):>15}")


# ----------------------------------------------------------------------------- benchmark

def bench(device):
    """Our written-out attention (materialises the T x T weights) vs F.scaled_dot_product_attention
    (a fused kernel: flash attention on CPU and CUDA), forward pass, causal, B=4, H=8, d=64."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn, reps):
        fn(), sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return (time.perf_counter() - t0) / reps * 1e3

    print(f"causal attention forward, B=4, H=8, d=64, {dtype}, {device}, {torch.get_num_threads()} threads")
    print(f"{'T':>6} {'kv heads':>8} {'ours ms':>9} {'F.sdpa ms':>10} {'time ours / F.sdpa':>19}")
    for T, H_kv in [(128, 8), (512, 8), (1024, 8), (2048, 8), (1024, 2)]:
        q = torch.randn(4, 8, T, 64, device=device, dtype=dtype)
        k, v = (torch.randn(4, H_kv, T, 64, device=device, dtype=dtype) for _ in range(2))
        mask = causal_mask(T, device=device)
        reps = max(2, int(2e8 // (T * T * 64 * 4 * 8)))
        with torch.no_grad():
            ours = timed(lambda: scaled_dot_product_attention(q, k, v, mask), reps)
            ref = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H_kv != 8), reps)
        print(f"{T:>6} {H_kv:>8} {ours:>9.2f} {ref:>10.2f} {ours / ref:>18.2f}x")


# ----------------------------------------------------------------------------- main

def resolve(cfg, device):
    """Fill the 0 = auto fields: a two-minute model on CPU, a wider one trained longer on CUDA."""
    cuda = device.startswith("cuda")
    d_model = cfg.d_model or (256 if cuda else 128)
    return dataclasses.replace(cfg, d_model=d_model, d_ff=cfg.d_ff or 4 * d_model,
                               steps=cfg.steps or (4000 if cuda else 1200))


def main(cfg):
    device = pick_device(cfg.device)
    if cfg.bench:
        return bench(device)
    cfg = resolve(cfg, device)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed + 1)
    test_set = set()
    while len(test_set) < cfg.n_test:  # held out: 3+ digit numbers (all 1-2 digit ones are needed in training)
        test_set.add(draw_number(rng, min(3, cfg.max_digits), cfg.max_digits))
    test = sorted(test_set, key=lambda n: rng.random())
    model = Transformer(len(SRC_VOCAB), len(TGT_VOCAB), cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.n_layer,
                        cfg.d_ff, cfg.dropout).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Transformer {cfg.n_layer}+{cfg.n_layer} layers, d_model={cfg.d_model}, {cfg.n_head} heads "
          f"({cfg.n_kv_head or cfg.n_head} kv), {n_params / 1e6:.2f}M parameters, on {device}")
    print(f"task: numbers of 1-{cfg.max_digits} digits -> English words, "
          f"e.g. {test[0]} -> {' '.join(number_words(test[0]))}")
    greedy_before, _, _ = exact_match(model.eval(), test[:100], device)  # eval mode: no dropout while decoding
    train(model, cfg, test_set, device)
    greedy_acc, beam_acc, outputs = exact_match(model, test, device, cfg.beam_size)
    print(f"held-out exact match on {len(test)} numbers never seen in training: before training "
          f"{greedy_before:.1%}; greedy {greedy_acc:.1%}; beam search ({cfg.beam_size} beams) {beam_acc:.1%}")
    wrong = [(n, out) for n, out in zip(test, outputs) if out != [TGT_VOCAB.index(w) for w in number_words(n)]]
    for n, out in list(zip(test, outputs))[:2] + wrong[:3]:
        mark = "  (wrong)" if (n, out) in wrong else ""
        print(f"  {n:>9} -> {' '.join(TGT_VOCAB[t] for t in out)}{mark}")
    show_cross_attention(model, max(test[:10], key=lambda n: len(str(n))), device)
    kv_cache_table()


if __name__ == "__main__":
    main(parse_args(Config))
