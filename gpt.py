"""GPT: the decoder-only language model that every tuning script in this project shares.

Pre-norm blocks x = x + Attn(Norm(x)); x = x + MLP(Norm(x)) with RMSNorm, rotary positions
(RoPE), grouped-query attention (GQA) and SwiGLU, trained to maximise log p(x) = sum_t
log p(x_t | x_<t); the same class is GPT-2 (learned positions, LayerNorm, GELU), whose weights
load. Then KV-cached decoding (greedy, temperature, top-k, top-p, stop tokens, beam search, an
allowed-token mask, speculative), the tokenizer, chat template, completion log-probs, checkpoints.
Radford et al. 2019 (GPT-2), Su et al. 2021 (RoPE), Ainslie et al. 2023 (GQA), Shazeer 2020
(SwiGLU), Holtzman et al. 2019 (top-p), Leviathan et al. 2023 (speculative decoding).

    python gpt.py                                   # a tiny model: a sample from each decoder
    python gpt.py --ckpt=out/train/ckpt.pt --prompt="The " --num_samples=3
    python gpt.py --ckpt=out/sft/ckpt.pt --chat     # talk to a chat-template checkpoint
    python gpt.py --ckpt=path/to/gpt2 --prompt="Hello"   # a Hugging Face GPT-2 folder
    python bench/gpt.py                             # tokens/s with and without the KV cache

On CPU the default trains a tiny byte-level model and a 1-layer draft, then prints a sample from
each decoding method, the speculative acceptance rate and the KV cache's speed-up.
Left out: paged or quantised caches, batched beam search, and serving many requests at once.
"""
import argparse
import codecs
import collections
import dataclasses
import functools
import inspect
import json
import math
import os
import random
import re
import sys
import time
import typing
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import tiktoken
import tiktoken.load
from tqdm import tqdm

@dataclass
class GPTConfig:
    vocab_size: int = 320  # tokens; Tokenizer.model_vocab_size rounds up to a multiple of 64
    block_size: int = 256  # the longest context the model accepts
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # query heads
    n_kv_head: int = 0  # key/value heads: 0 = n_head (MHA), 1 = MQA, in between = GQA
    n_embd: int = 256  # residual stream width
    mlp_hidden: int = 0  # 0 = 4*n_embd for gelu, 8/3*n_embd rounded up to 32 for swiglu
    mlp: str = "swiglu"  # swiglu | gelu
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    pos: str = "rope"  # rope | learned (GPT-2's absolute position table)
    rope_base: float = 10000.0  # theta in RoPE's frequencies theta^(-2i/d)
    causal: bool = True  # False turns the decoder into a bidirectional encoder
    bias: bool = False  # biases in Linear and LayerNorm (GPT-2 has them)
    tie_embeddings: bool = True  # the output head shares the token embedding matrix
    dropout: float = 0.0  # on attention weights and residual branches
    norm_eps: float = 1e-5  # epsilon inside the norms

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if (self.n_embd // self.n_head) % 2 and self.pos == "rope":
            raise ValueError(f"RoPE needs an even head dim, got {self.n_embd // self.n_head}")
        for name, allowed in [("mlp", ("swiglu", "gelu")), ("norm", ("rmsnorm", "layernorm")),
                              ("pos", ("rope", "learned"))]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {allowed}")
        if min(self.vocab_size, self.block_size, self.n_layer) < 1:
            raise ValueError("vocab_size, block_size and n_layer must be positive")
        swiglu = 32 * math.ceil(self.n_embd / 12)  # 8/3 n_embd in 32s: 3 matrices, GELU's 2 of 4x
        self.mlp_hidden = self.mlp_hidden or (4 * self.n_embd if self.mlp == "gelu" else swiglu)

# ----------------------------------------------------------------------------- the model

def upcast(x):
    """At least float32 (bf16 and fp16 go up; float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))

@contextmanager
def evaluating(*models):
    """Eval mode (no dropout draws from the global RNG) and no autograd, then the old modes."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)

def inference(fn):
    """Decorator: run fn inside evaluating(...) of every model among its positional arguments."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with evaluating(*[a for a in args if isinstance(a, nn.Module)]):
            return fn(*args, **kwargs)
    return run

def apply_rope(x, cos, sin):
    """NeoX pairs: x_i' = x_i cos - x_{i+d/2} sin, x_{i+d/2}' = x_{i+d/2} cos + x_i sin."""
    x1, x2 = upcast(x).chunk(2, dim=-1)
    return (upcast(x) * cos + torch.cat([x2, x1], dim=-1) * sin).type_as(x)

def rope_angles(positions, head_dim, base):
    """apply_rope's tables for angles pos * base^(-2i/d), float32 under any autocast."""
    i = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = base ** (-i / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (B|1, T, hd/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1)[:, None], torch.cat([-sin, sin], -1)[:, None]  # (B|1,1,T,hd)

class KVCache:
    """Every layer's keys and values so far, and which are real; setting pos back rolls it back."""

    def __init__(self, cfg, batch, max_len, device, dtype):
        shape = (cfg.n_layer, batch, cfg.n_kv_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.padded = False  # has any padding been written? If not, no mask is needed
        self.pos = 0

    def update(self, layer, k, v):  # k, v: (B, n_kv_head, T, hd) for the new tokens
        T = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]

    def reorder(self, rows):  # beam search: row i continues from row rows[i]
        self.k, self.v, self.valid = self.k[:, rows], self.v[:, rows], self.valid[rows]

def attention_mask(key_valid, T, causal):
    """(B, 1, T, S) for the last T of S slots; each query sees itself, so no row is NaN."""
    S = key_valid.size(1)
    q_slot = torch.arange(S - T, S, device=key_valid.device)[:, None]  # (T, 1)
    k_slot = torch.arange(S, device=key_valid.device)[None, :]  # (1, S)
    allowed = key_valid[:, None, None, :]
    if causal:
        allowed = allowed & (k_slot <= q_slot)
    return allowed | (k_slot == q_slot)

class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head
        self.head_dim = cfg.n_embd // cfg.n_head
        n_qkv = (cfg.n_head + 2 * cfg.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, n_qkv, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x, rope, mask, is_causal, cache, layer):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim)
        qk, v = qkv.transpose(1, 2).split([self.n_head + self.n_kv_head, self.n_kv_head], dim=1)
        if rope is not None:  # queries and keys rotate together: one pass over both
            qk = apply_rope(qk, *rope)
        q, k = qk.split([self.n_head, self.n_kv_head], dim=1)  # (B, n_head | n_kv_head, T, hd)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, n_kv_head, S, hd): every key so far
        # softmax(Q K^T / sqrt(hd)) V; each group of n_head/n_kv_head query heads shares one K, V
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv_head != self.n_head)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.c_fc = nn.Linear(cfg.n_embd, (2 if self.swiglu else 1) * cfg.mlp_hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:  # SwiGLU(x) = (SiLU(x W_gate) * x W_up) W_down
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:  # GPT-2's GELU, tanh approximation
            h = F.gelu(h, approximate="tanh")
        return self.c_proj(h)

def make_norm(cfg):
    if cfg.norm == "rmsnorm":  # x / sqrt(mean(x^2) + eps) * g
        return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)  # (x - mean) / std * g + b

class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, is_causal, cache, layer):
        x = x + self.drop(self.attn(self.ln_1(x), rope, mask, is_causal, cache, layer))
        return x + self.drop(self.mlp(self.ln_2(x)))

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = cfg = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=make_norm(cfg)))
        if cfg.pos == "learned":
            self.transformer.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        for module in self.modules():  # GPT-2's init: weights N(0, 0.02), biases 0
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/sqrt(2L)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def new_cache(self, batch, max_len):
        p = self.lm_head.weight
        dtype = torch.bfloat16 if torch.is_autocast_enabled() and p.is_cuda else p.dtype
        return KVCache(self.config, batch, max_len, p.device, dtype)

    def hidden(self, idx, attn_mask=None, cache=None, embeds=None):
        """(B, T, n_embd) of the new tokens; attn_mask False on padding; embeds replace wte."""
        cfg = self.config
        B, T = idx.shape if embeds is None else embeds.shape[:2]
        start = cache.pos if cache is not None else 0
        if start + T > cfg.block_size:  # before the lookup: on CUDA a bad id is a device assert
            raise ValueError(f"{start + T} tokens is longer than block_size={cfg.block_size}")
        x = self.transformer.wte(idx) if embeds is None else embeds  # (B, T, n_embd)
        device = x.device
        if attn_mask is not None and bool(attn_mask.all()):
            attn_mask = None  # no padding after all: take the fast path
        key_valid = attn_mask
        if cache is not None:
            cache.valid[:, start:start + T] = True if attn_mask is None else attn_mask
            cache.padded |= attn_mask is not None
            key_valid = cache.valid[:, :start + T] if cache.padded else None
        if key_valid is None and (start == 0 or T == 1 or not cfg.causal):
            positions = torch.arange(start, start + T, device=device)[None]  # (1, T)
            mask, is_causal = None, cfg.causal and T > 1
        else:  # padding, or several new tokens after a cache: positions count real tokens only
            if key_valid is None:
                key_valid = torch.ones(B, start + T, dtype=torch.bool, device=device)
            positions = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, start:]  # (B, T)
            mask, is_causal = attention_mask(key_valid, T, cfg.causal), False
        rope = None
        if cfg.pos == "rope":
            rope = rope_angles(positions, cfg.n_embd // cfg.n_head, cfg.rope_base)
        else:
            x = x + self.transformer.wpe(positions)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, rope, mask, is_causal, cache, layer)
        if cache is not None:
            cache.pos += T
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, attn_mask=None, cache=None):
        """Logits (B, T, vocab), and the mean cross-entropy over targets != -1 when given."""
        logits = self.lm_head(self.hidden(idx, attn_mask, cache))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(upcast(logits.flatten(0, 1)), targets.flatten(), ignore_index=-1)
        return logits, loss

    def flops_per_token(self, seq_len=None):
        """6N (weight matmuls, forward + backward) + 12*L*T*d (Q K^T, A V): PaLM's appendix B."""
        cfg = self.config
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * n_matmul + 12 * cfg.n_layer * (seq_len or cfg.block_size) * cfg.n_embd

    # ------------------------------------------------------------------------- generation

    def _prepare(self, prompts, max_new_tokens, pad_id):
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.config.block_size:
            raise ValueError(f"{longest} prompt tokens + max_new_tokens={max_new_tokens} exceeds"
                             f" block_size={self.config.block_size}: shorten it or generate less")
        return pad_left(prompts, pad_id, device=self.lm_head.weight.device)

    @inference
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_tokens=(),
                 allowed_tokens=None, use_cache=True, generator=None, pad_id=0, on_token=None):
        """Each prompt's new tokens, up to its first stop (temperature=0: greedy); on_token((B,))
        each step. allowed_tokens((b, t)) -> (b, vocab) bool sees unfinished rows (they parse)."""
        idx, valid = self._prepare(prompts, max_new_tokens, pad_id)  # (B, L)
        B = idx.size(0)
        cache = self.new_cache(B, idx.size(1) + max_new_tokens) if use_cache else None
        out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=idx.device)
        lengths = torch.zeros(B, dtype=torch.long, device=idx.device)  # tokens up to a stop
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device)
        h = self.hidden(idx, valid, cache)
        for t in range(max_new_tokens):
            logits = upcast(self.lm_head(h[:, -1]))  # (B, vocab)
            allowed = constrain(allowed_tokens, out[:, :t], done) if allowed_tokens else None
            token = sample_next(logits, temperature, top_k, top_p, allowed, generator)
            token = token.masked_fill(done, pad_id)
            out[:, t] = token
            if on_token:
                on_token(token)
            lengths += ~done
            done = done | torch.isin(token, stops)
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            idx = torch.cat([idx, token[:, None]], 1)
            valid = F.pad(valid, (0, 1), value=True)
            h = self.hidden(token[:, None], cache=cache) if cache else self.hidden(idx, valid)
        return [out[b, :lengths[b]].tolist() for b in range(B)]

    @inference
    def beam_search(self, prompt, beam_size=4, max_new_tokens=32, stop_tokens=(),
                    length_penalty=1.0):
        """argmax log p / len^length_penalty over finished (at the limit, also live) hypotheses."""
        idx, _ = self._prepare([prompt], max_new_tokens, 0)
        cache = self.new_cache(beam_size, idx.size(1) + max_new_tokens)
        h = self.hidden(idx.expand(beam_size, -1), cache=cache)
        beams = [[] for _ in range(beam_size)]
        finished = []
        scores = torch.full((beam_size,), -math.inf, device=idx.device)
        scores[0] = 0.0  # all rows start equal: only one is live, or the beam fills with copies
        for _ in range(max_new_tokens):
            logp = F.log_softmax(upcast(self.lm_head(h[:, -1])), dim=-1)  # (beam, vocab)
            cand_scores, cand = (scores[:, None] + logp).flatten().topk(2 * beam_size)
            live = []  # (score, parent row, token) of the hypotheses that go on
            for rank, (score, flat) in enumerate(zip(cand_scores.tolist(), cand.tolist())):
                parent, token = divmod(flat, logp.size(1))
                if score == -math.inf or len(live) == beam_size:
                    break
                if token not in stop_tokens:
                    live.append((score, parent, token))
                elif rank < beam_size:  # finished: ranked by its length-normalised score
                    hypothesis = beams[parent] + [token]
                    finished.append((score / len(hypothesis) ** length_penalty, hypothesis))
            if len(finished) >= beam_size or not live:
                break
            live += [(-math.inf, *live[0][1:])] * (beam_size - len(live))  # dead rows: same shape
            scores, parents, tokens = (torch.tensor(c, device=idx.device) for c in zip(*live))
            beams = [beams[p] + [t] for p, t in zip(parents.tolist(), tokens.tolist())]
            cache.reorder(parents)
            h = self.hidden(tokens[:, None], cache=cache)
        else:  # no break: the length limit ended it, and a live beam may beat the finished
            finished += [(s / max(len(b), 1) ** length_penalty, b)
                         for s, b in zip(scores.tolist(), beams) if s > -math.inf]
        return max(finished, key=lambda f: f[0])[1]

def pad_left(seqs, pad_id, device=None, width=None):
    """Right-align token lists: (B, width) ids and a (B, width) mask of real tokens."""
    width = width or max(len(s) for s in seqs)
    idx = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        idx[row, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs])
    valid = torch.arange(width)[None, :] >= (width - lengths)[:, None]
    return idx.to(device), valid.to(device)

def constrain(allowed_tokens, generated, done):
    """(B, vocab): allowed_tokens' mask for the unfinished rows, everything for finished ones."""
    rows = (~done).nonzero().flatten()
    allowed = allowed_tokens(generated[rows])  # (b, vocab)
    empty = (~allowed.any(-1)).nonzero().flatten().tolist()
    if empty:  # softmax over no token is NaN, and argmax would pick token 0 unseen
        raise ValueError(f"allowed_tokens allows no token for row {int(rows[empty[0]])} at step "
                         f"{generated.size(1)}: allow at least one token in every unfinished row")
    full = torch.ones(len(done), allowed.size(1), dtype=torch.bool, device=allowed.device)
    return full.index_copy(0, rows, allowed)

def next_token_probs(logits, temperature=1.0, top_k=0, top_p=1.0, allowed=None):
    """(B, vocab): mask, temperature, top-k, then top-p; temperature=0 is one-hot on the argmax."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, -math.inf)
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).to(logits.dtype)
    logits = logits / temperature  # p_i = exp(z_i / T) / sum_j exp(z_j / T)
    if top_k:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = F.softmax(logits, dim=-1)
    if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of strictly more likely tokens
        keep_sorted = mass_before < top_p  # the first token always has mass_before = 0
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return probs

def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, allowed=None, generator=None):
    probs = next_token_probs(logits, temperature, top_k, top_p, allowed)
    if temperature == 0:  # one-hot: take its argmax, no draw from the generator
        return probs.argmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

@inference
def speculative_generate(target, draft, prompt, max_new_tokens, k=4, temperature=1.0, top_k=0,
                         top_p=1.0, stop_tokens=(), generator=None):
    """Batch of one: k draft tokens x_i ~ q, one target pass p; exactly the target's law."""
    device = target.lm_head.weight.device
    target._prepare([prompt], max_new_tokens, 0)
    draft._prepare([prompt], max_new_tokens, 0)
    t_cache = target.new_cache(1, len(prompt) + max_new_tokens)
    d_cache = draft.new_cache(1, len(prompt) + max_new_tokens)

    def probs(model, tokens, cache):  # feed tokens (T,): the distribution after each, (T, vocab)
        logits = upcast(model.lm_head(model.hidden(tokens[None], cache=cache))[0])
        return next_token_probs(logits, temperature, top_k, top_p)

    out = []
    stats = collections.Counter()
    while len(out) < max_new_tokens and not (out and out[-1] in stop_tokens):
        seq = torch.tensor(prompt + out, device=device)  # a cache is fed seq[cache.pos:], unseen
        drafted, q = [], []  # x_1..x_n and the draft distributions they came from
        for i in range(min(k, max_new_tokens - len(out) - 1)):
            if drafted and int(drafted[-1]) in stop_tokens:
                break  # whatever follows a stop is thrown away: draft no further
            q.append(probs(draft, seq[d_cache.pos:] if i == 0 else drafted[-1][None], d_cache)[-1])
            drafted.append(torch.multinomial(q[-1], 1, generator=generator)[0])
        p = probs(target, torch.cat([seq[t_cache.pos:], *[x[None] for x in drafted]]), t_cache)
        p = p[-len(drafted) - 1:]  # p[i]: the target's distribution for x_{i+1}
        accepted = 0
        for i, x in enumerate(drafted):  # x kept with probability min(1, p(x) / q(x))
            if torch.rand((), generator=generator, device=device) >= p[i, x] / q[i][x]:
                break
            accepted += 1
        residual = p[accepted]  # every draft kept: one more token from p, free
        if accepted < len(drafted):  # rejected: resample from norm(max(0, p - q))
            residual = torch.clamp(p[accepted] - q[accepted], min=0)
            residual = residual if residual.sum() > 0 else p[accepted]  # p == q up to rounding
        new = torch.multinomial(residual / residual.sum(), 1, generator=generator)
        out += [int(x) for x in drafted[:accepted]]
        if not (out and out[-1] in stop_tokens):  # an accepted stop ends it: no free token
            out.append(int(new))
        stats.update(target_calls=1, drafted=len(drafted), accepted=accepted)
        # roll each cache back to the kept tokens it has seen (the draft never fed its last one)
        t_cache.pos = min(t_cache.pos, len(seq) + accepted)
        d_cache.pos = min(d_cache.pos, len(seq) + accepted)
    stats["acceptance"] = stats["accepted"] / max(stats["drafted"], 1)
    return out, stats  # it ends at its first stop token, within max_new_tokens

# ----------------------------------------------------------------------------- log-probs

def completion_logprobs(model, prompts, completions, pad_id=0, prompt_width=None, temperature=1.0):
    """(B, Tc) log softmax(z / T)[c_t] after prompt, c_<t, and the real tokens (pad may be eos)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    width = max(prompt_width or 0, max(len(p) for p in prompts))  # the prompt column
    Tc = max(max(len(c) for c in completions), 1)
    device = next(model.parameters()).device
    idx, valid = pad_left(prompts, pad_id, device, width)
    comp = torch.full((len(prompts), Tc), pad_id, dtype=torch.long, device=device)
    for row, c in enumerate(completions):
        comp[row, :len(c)] = torch.as_tensor(c, dtype=torch.long)
    lengths = torch.tensor([len(c) for c in completions], device=device)
    mask = torch.arange(Tc, device=device)[None] < lengths[:, None]
    logits, _ = model(torch.cat([idx, comp], 1), attn_mask=torch.cat([valid, mask], 1))
    logits = logits[:, width - 1:-1] / temperature  # (B, Tc, vocab): each completion token's
    logp = -F.cross_entropy(upcast(logits.flatten(0, 1)), comp.flatten(), reduction="none")
    return logp.view_as(comp) * mask, mask

def completion_loss(model, prompts, completions, pad_id=0):
    """SFT loss on completion tokens only: L = -sum_t mask_t log pi(c_t | ...) / sum_t mask_t."""
    logp, mask = completion_logprobs(model, prompts, completions, pad_id)
    return -logp.sum() / mask.sum().clamp(min=1)

def finetune(model, pairs, steps, lr=1e-3, batch_size=16, params=None, seed=0, desc="finetune",
             resume=None, on_step=None, grad_clip=0.0):
    """AdamW, cosine lr, gradient norm clipped to grad_clip (0 = off); on_step(step, loss, state)
    True stops; resume=state() is bit for bit."""
    if not pairs:
        raise ValueError("finetune needs at least one (prompt, completion) pair")
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    start = resume["step"] if resume else 0
    if resume:
        opt.load_state_dict(resume["optimizer"])
        g.set_state(resume["generator"].cpu())  # map_location="cuda" would hand it a CUDA tensor
    model.train()
    loss = torch.tensor(math.nan)
    bar = tqdm(range(start, steps), desc=desc, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        batch = [pairs[i] for i in torch.randint(len(pairs), (batch_size,), generator=g).tolist()]
        with autocast(device):
            loss = completion_loss(model, [p for p, _ in batch], [c for _, c in batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step and on_step(step + 1, loss.item(), lambda: dict(
                step=step + 1, optimizer=opt.state_dict(), generator=g.get_state())):  # noqa: B023
            break
    model.eval()
    return loss.item()

# ----------------------------------------------------------------------------- tokenizer

# GPT-2's pre-split pattern (for .tiktoken ranks files), and ours, written in Python's `re`
# dialect so the BPE trainer below can split text exactly as tiktoken does when encoding.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
                  "<|tool_call|>", "<|tool_result|>")

def train_bpe(text, vocab_size, pattern=SPLIT_PATTERN):
    """Byte-level BPE (Sennrich et al. 2016): merge the most frequent pair; {token bytes: rank}."""
    chunks = collections.Counter(re.findall(pattern, text))
    words = [list(w.encode("utf-8")) for w in chunks]  # each chunk as a list of token ids
    counts = list(chunks.values())
    vocab = [bytes([i]) for i in range(256)]
    ranks = {b: i for i, b in enumerate(vocab)}
    pair_counts, where = collections.Counter(), collections.defaultdict(set)
    for w, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            where[pair].add(w)
    bar = tqdm(total=max(vocab_size - 256, 0), desc="train BPE", leave=False,
               disable=vocab_size <= 256)
    while len(vocab) < vocab_size and pair_counts:
        # ties: the greater (vocab[a], vocab[b]), by content not id (as Stanford CS336's trainer)
        a, b = max(pair_counts, key=lambda ab: (pair_counts[ab], vocab[ab[0]], vocab[ab[1]]))
        merged = vocab[a] + vocab[b]
        new_id = ranks.get(merged, len(vocab))  # two merges may spell the same bytes: reuse the id
        if new_id == len(vocab):
            vocab.append(merged)
            ranks[merged] = new_id
            bar.update()
        for w in where.pop((a, b)):
            for pair in zip(words[w], words[w][1:]):  # forget this word's pairs, merge, recount
                pair_counts[pair] -= counts[w]
            word, i, words[w] = words[w], 0, []
            while i < len(word):  # left to right, every (a, b) becomes new_id
                pair = i + 1 < len(word) and word[i] == a and word[i + 1] == b
                words[w].append(new_id if pair else word[i])
                i += 2 if pair else 1
            for pair in zip(words[w], words[w][1:]):
                pair_counts[pair] += counts[w]
                where[pair].add(w)
        pair_counts = +pair_counts  # drop pairs whose count fell to zero
    bar.close()
    return ranks

class Tokenizer:
    """tiktoken plus our chat special tokens; state_dict() rides in every checkpoint."""

    def __init__(self, ranks, pattern, name="bpe"):
        if sorted(ranks.values()) != list(range(len(ranks))):
            raise ValueError("BPE ranks must be exactly 0..n-1")
        self.name = name
        self.pattern = pattern
        self.ranks = ranks
        specials = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens=specials)
        self.eot_id = self.special("<|endoftext|>")
        self.n_vocab = self.enc.n_vocab
        self.model_vocab_size = 64 * math.ceil(self.n_vocab / 64)  # faster matmuls; spare rows idle

    @classmethod
    def from_spec(cls, spec, text=None, vocab_size=512):
        """spec: "gpt2", a path to a .tiktoken file, "bpe" (train on text) or "byte" (no merges)."""
        if spec == "gpt2":
            try:
                base = tiktoken.get_encoding("gpt2")
            except Exception as e:
                raise ValueError(f"tiktoken could not load 'gpt2' ({e}); offline, pass the path of"
                                 " a gpt2.tiktoken ranks file instead") from None
            return cls(base._mergeable_ranks, base._pat_str, "gpt2")
        if spec.endswith(".tiktoken"):  # a missing file: tiktoken's FileNotFoundError names it
            return cls(tiktoken.load.load_tiktoken_bpe(spec), GPT2_PATTERN, os.path.basename(spec))
        if spec in ("bpe", "byte"):
            if not text:
                raise ValueError(f"tokenizer={spec!r} is trained on it, and the corpus is empty")
            return cls(train_bpe(text, vocab_size if spec == "bpe" else 256), SPLIT_PATTERN, spec)
        raise ValueError(f"unknown tokenizer {spec!r}: use gpt2, bpe, byte or a .tiktoken path")

    @classmethod
    def from_hf(cls, folder):
        """GPT-2's vocab.json + merges.txt as ranks; tiktoken needs ids in merges.txt's order."""
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        kept = [*range(33, 127), *range(161, 173), *range(174, 256)]  # printable: as themselves
        moved = [b for b in range(256) if b not in kept]  # the others spelled chr(256 + n)
        byte_of = {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(moved)}}
        ranks = {bytes(byte_of[c] for c in token): i for token, i in vocab.items()
                 if token not in SPECIAL_TOKENS}
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            merges = [line.split() for line in f if line.strip() and not line.startswith("#v")]
        ids = [vocab[a + b] for a, b in merges]
        if ids != sorted(ids):
            raise ValueError(f"{folder}: merges.txt's order differs from vocab.json's ids")
        return cls(ranks, GPT2_PATTERN, os.path.basename(os.path.normpath(folder)))

    def special(self, name):
        return self.enc.encode_single_token(name)

    def encode(self, text, allow_special=False):
        """Special-token strings in text stay ordinary text unless allow_special is set."""
        if allow_special:
            return self.enc.encode(text, allowed_special="all")
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids):
        return self.enc.decode_bytes([i for i in ids if i < self.n_vocab])

    def state_dict(self):
        return {"name": self.name, "pattern": self.pattern,
                "ranks": sorted(self.ranks, key=self.ranks.get), "specials": list(SPECIAL_TOKENS)}

    @classmethod
    def from_state_dict(cls, state):
        if list(state["specials"]) != list(SPECIAL_TOKENS):
            raise ValueError(f"special tokens {state['specials']} are not {SPECIAL_TOKENS}")
        return cls({b: i for i, b in enumerate(state["ranks"])}, state["pattern"], state["name"])

# ----------------------------------------------------------------------------- chat template

ROLES = ("system", "user", "assistant")

def _chat_segments(messages, tok, add_generation_prompt):
    """(ids, the assistant's?) of <|role|> content <|end|>; a typed "<|end|>" stays plain text."""
    end = tok.special("<|end|>")
    for msg in messages:
        if msg.get("role") not in ROLES:
            raise ValueError(f"message role {msg.get('role')!r} is not one of {ROLES}")
        yield [tok.special(f"<|{msg['role']}|>")], False  # the template's header, not the model's
        yield tok.encode(msg["content"]) + [end], msg["role"] == "assistant"  # it learns <|end|>
    if add_generation_prompt:
        yield [tok.special("<|assistant|>")], False

def render_chat(messages, tok, add_generation_prompt=False):
    """Ids of [{"role", "content"}, ...]; add_generation_prompt ends it with <|assistant|>."""
    return [t for ids, _ in _chat_segments(messages, tok, add_generation_prompt) for t in ids]

def loss_mask(messages, tok):
    """1 on the assistant's tokens of render_chat(messages), its <|end|> too: what is trained on."""
    return [int(assistant) for ids, assistant in _chat_segments(messages, tok, False) for _ in ids]

def check_chat_model(model, tok, context):
    """Say at load, not after minutes of training, that a model lacks chat tokens or context."""
    if max(tok.special(s) for s in SPECIAL_TOKENS) >= model.config.vocab_size:
        raise ValueError("the model has no rows for the chat tokens: start from train.py's model")
    if model.config.block_size < context:
        raise ValueError(f"the model's context is {model.config.block_size} tokens; this task needs"
                         f" {context}: train with --block_size={context} or more")

# ----------------------------------------------------------------------------- checkpoints

def unwrap(model):
    """The plain GPT inside DDP (.module) and torch.compile (._orig_mod) wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model

def save_checkpoint(path, model, tokenizer, step=0, config=None, optimizer=None, model_state=None,
                    **extra):
    """Write, then rename: a crash never clobbers a good file. model_state: FSDP's gathered one."""
    model = unwrap(model)
    state = {"model_args": dataclasses.asdict(model.config),
             "model": model_state or model.state_dict(), "optimizer": optimizer, "step": step,
             "tokenizer": tokenizer.state_dict(), **extra,
             "config": dataclasses.asdict(config) if config else None}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)

def load_checkpoint(path, device="cpu"):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one (python train.py) or fix it")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # torch's own message advises weights_only=False: unsafe, and no help here
        raise ValueError(f"{path} is not a readable checkpoint (corrupt, truncated, or not a"
                         " torch.save file)") from None
    missing = {"model_args", "model", "tokenizer"} - set(ckpt if isinstance(ckpt, dict) else {})
    if missing:
        raise ValueError(f"{path} is not a checkpoint of this project: it lacks {sorted(missing)}")
    return ckpt

def load_model(path, device="cpu"):
    """(model, tokenizer, checkpoint dict) from a checkpoint file or a Hugging Face GPT-2 folder."""
    if os.path.isdir(path):
        model, tok = from_pretrained(path)
        return model.to(device), tok, {"step": 0}
    ckpt = load_checkpoint(path, device)
    model = GPT(GPTConfig(**ckpt["model_args"])).to(device)
    model.load_state_dict(ckpt["model"])
    return model, Tokenizer.from_state_dict(ckpt["tokenizer"]), ckpt

def from_pretrained_gpt2(state_dict, config):
    """A GPT from a Hugging Face GPT-2 state dict and its config.json (a dict)."""
    shape = ("n_head", "n_layer", "n_embd", "n_positions", "vocab_size", "layer_norm_epsilon")
    missing = [key for key in shape if key not in (config or {})]
    if missing:  # the head count is not in the weights, and a guess gives wrong logits silently
        raise ValueError(f"the GPT-2 config lacks {missing}: pass its config.json as a dict")
    if config.get("activation_function", "gelu_new") != "gelu_new" or config.get("n_inner"):
        raise ValueError("only GPT-2's own MLP (gelu_new, n_inner = 4 n_embd) is supported")
    cfg = GPTConfig(vocab_size=config["vocab_size"], block_size=config["n_positions"],
                    n_layer=config["n_layer"], n_head=config["n_head"], n_embd=config["n_embd"],
                    norm_eps=config["layer_norm_epsilon"], mlp="gelu", norm="layernorm",
                    pos="learned", bias=True, tie_embeddings=True)
    ours = {}
    for k, v in state_dict.items():
        k = k.removeprefix("transformer.")
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
            continue  # causal-mask buffers; the head is tied to wte
        if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            v = v.t()  # HF's Conv1D stores (in, out); nn.Linear wants (out, in)
        ours["transformer." + k] = v
    ours["lm_head.weight"] = ours["transformer.wte.weight"]
    model = GPT(cfg)
    model.load_state_dict(ours)
    return model

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "U8": torch.uint8, "BOOL": torch.bool}

def read_safetensors(path):
    """u64 n, n bytes of JSON {name: {dtype, shape, data_offsets}}, then the data; torch only."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        flat = torch.frombuffer(data[start:end], dtype=SAFETENSORS_DTYPES[info["dtype"]])
        tensors[name] = flat.reshape(info["shape"])
    return tensors

def from_pretrained(folder):
    """(model, tokenizer) from a Hugging Face GPT-2 folder as downloaded."""
    names = [n for n in ("model.safetensors", "pytorch_model.bin")
             if os.path.exists(os.path.join(folder, n))]
    needed = ["config.json", "vocab.json", "merges.txt"]
    if not names or not all(os.path.exists(os.path.join(folder, n)) for n in needed):
        raise FileNotFoundError(f"{folder} needs config.json, vocab.json, merges.txt and"
                                " model.safetensors or pytorch_model.bin")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    path = os.path.join(folder, names[0])
    safe = path.endswith(".safetensors")
    weights = read_safetensors(path) if safe else torch.load(path, "cpu", weights_only=True)
    return from_pretrained_gpt2(weights, config), Tokenizer.from_hf(folder)

# ----------------------------------------------------------------------------- sample, chat, demo

@dataclass
class SampleConfig:
    ckpt: str = ""  # a checkpoint or a Hugging Face GPT-2 folder; empty: train a tiny demo model
    prompt: str = "The "  # text to continue
    num_samples: int = 1  # samples of the prompt's continuation (with --ckpt)
    max_new_tokens: int = 64  # tokens per sample or chat reply
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # sample among the k most likely tokens only (0 = all)
    top_p: float = 1.0  # sample from the smallest set of tokens holding this much mass (1 = all)
    chat: bool = False  # talk to --ckpt: each line of standard input is a user turn
    steps: int = 300  # training steps of the tiny demo model (its draft gets half)
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # sampling, and the tiny demo model

    def __post_init__(self):
        if self.ckpt and not os.path.exists(self.ckpt):
            raise ValueError(f"--ckpt={self.ckpt} does not exist: train one (python train.py)")
        if self.chat and not self.ckpt:
            raise ValueError("--chat needs --ckpt: a checkpoint with the chat template (sft.py's)")
        if min(self.num_samples, self.max_new_tokens, self.steps) < 1 or self.temperature < 0:
            raise ValueError("num_samples, max_new_tokens and steps must be >= 1, temperature >= 0")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1], top_k={self.top_k} >= 0")

def chat_loop(model, tok, cfg, lines, generator):
    """A user turn per line, the reply streamed; the oldest turns go when the context is full."""
    history = []
    end = tok.special("<|end|>")
    for line in lines:
        history.append({"role": "user", "content": line.rstrip("\n")})
        prompt = render_chat(history, tok, add_generation_prompt=True)
        while len(prompt) + cfg.max_new_tokens > model.config.block_size and len(history) > 1:
            history = history[2:]
            prompt = render_chat(history, tok, add_generation_prompt=True)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # whole characters only
        stream = lambda t: t != end and print(utf8.decode(tok.decode_bytes([int(t)])),  # noqa: E731
                                              end="", flush=True)
        print("assistant: ", end="")
        reply = model.generate([prompt], cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                               cfg.top_p, stop_tokens=(end,), generator=generator,
                               on_token=lambda token: stream(token[0]))[0]
        print()
        history.append({"role": "assistant", "content": tok.decode([t for t in reply if t != end])})

def demo(cfg, device, g):
    """A tiny byte-level model and a 1-layer draft, then a sample from each decoding method."""
    model, tok = base_model(cfg.steps, device)
    draft_cfg = dataclasses.replace(model.config, n_layer=1, n_embd=64, n_head=2, n_kv_head=0)
    draft = train_tiny(draft_cfg, embedded_corpus(), tok, cfg.steps // 2, device)
    prompt = tok.encode(cfg.prompt)
    n = cfg.max_new_tokens
    letters = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    letters[[t for t in range(256) if re.fullmatch(rb"[a-z ]", tok.decode_bytes([t]))]] = True
    only_letters = lambda x: letters.expand(len(x), -1)  # noqa: E731
    samples = {
        "greedy": model.generate([prompt], n, temperature=0)[0],
        "temperature 0.8": model.generate([prompt], n, temperature=0.8, generator=g)[0],
        "top-k 20": model.generate([prompt], n, top_k=20, generator=g)[0],
        "top-p 0.9": model.generate([prompt], n, top_p=0.9, generator=g)[0],
        "beam search (4)": model.beam_search(prompt, beam_size=4, max_new_tokens=n),
        "only [a-z ] allowed": model.generate([prompt], n, temperature=0.8, generator=g,
                                              allowed_tokens=only_letters)[0]}
    spec, stats = speculative_generate(model, draft, prompt, n, k=4, temperature=0.8, generator=g)
    samples["speculative (k=4)"] = spec
    for name, ids in samples.items():
        print(f"--- {name}\n{cfg.prompt}{tok.decode(ids)}")
    print(f"speculative: {stats['acceptance']:.0%} of draft tokens accepted, "
          f"{len(spec) / stats['target_calls']:.2f} tokens per target forward pass")
    n = model.config.block_size - len(prompt)
    seconds = [best_time(lambda: model.generate([prompt], n, temperature=0, use_cache=c), 1)[1]
               for c in (False, True)]  # noqa: B023 (called at once)
    print(f"greedy, {n} new tokens: {n / seconds[0]:.0f} tok/s without the KV cache,"
          f" {n / seconds[1]:.0f} with it ({seconds[0] / seconds[1]:.1f}x)")

def main(cfg):
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    g = torch.Generator(device).manual_seed(cfg.seed)
    if not cfg.ckpt:
        return demo(cfg, device, g)
    with bad_input():
        model, tok, _ = load_model(cfg.ckpt, device)
        if cfg.chat:
            check_chat_model(model, tok, cfg.max_new_tokens + 8)
    print(f"{cfg.ckpt}: {count_params(model) / 1e6:.2f}M parameters, {tok.n_vocab} tokens")
    if cfg.chat:
        return chat_loop(model.eval(), tok, cfg, sys.stdin, g)
    prompts = [tok.encode(cfg.prompt)] * cfg.num_samples
    for ids in model.generate(prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                              stop_tokens=(tok.eot_id,), generator=g):
        print(f"{cfg.prompt}{tok.decode(ids)}\n---")

# ----------------------------------------------------------------------------- shared run helpers
# Not the lecture: the plumbing every script needs (devices, timing, data, logs, resume).

def count_params(model):
    return sum(p.numel() for p in unwrap(model).parameters())

def setup_distributed(device_name):
    """(rank, world, device). Under torchrun: one process per GPU (NCCL), or gloo on CPU."""
    if "RANK" not in os.environ:
        return 0, 1, pick_device(device_name)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return rank, world, f"cuda:{local}" if cuda else "cpu"

def autocast(device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()

def best_time(fn, repeats=3):
    """(fn's last output, its best seconds): the least disturbed of `repeats` runs."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best

def embedded_corpus():
    """Python's own reference documentation (about 460 kB of English), wherever CPython is."""
    from pydoc_data import topics
    return "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))

def read_text(path):
    """A local text file as UTF-8; missing, undecodable or empty is an error that names it."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {raw[e.start:e.end]!r});"
                         " convert it first, e.g. iconv -t utf-8") from None
    if not text.strip():
        raise ValueError(f"the corpus is empty: {path}")
    return text

@contextmanager
def bad_input():
    """A ValueError or OSError loading what the user named is the input's: one line, no trace."""
    try:
        yield
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None

class RunLog:
    """out_dir/log.jsonl; a resumed run keeps the lines before its step: none is written twice."""

    def __init__(self, out_dir, step=0):
        self.path = os.path.join(out_dir, "log.jsonl")
        os.makedirs(out_dir, exist_ok=True)
        kept = []
        if step and os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if json.loads(line).get("step", 0) < step]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def __call__(self, **row):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

def pyplot(plot):
    """matplotlib.pyplot if --plot asks; without matplotlib a note now, before any work."""
    if not plot:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("note: --plot needs matplotlib (pip install matplotlib): no PNG will be written")
        return None

def plot_curves(plt, log, keys, path):
    """The log's keys against its steps, a line each, as a PNG at path."""
    with open(log.path) as f:
        rows = [json.loads(line) for line in f]
    for key in keys:
        plt.plot(*zip(*[(r["step"], r[key]) for r in rows if key in r]), label=key)
    plt.xlabel("step")
    plt.legend()
    plt.savefig(path, dpi=120)
    plt.close()
    print(f"plot: {path}")

def rng_state(*generators):
    """The global RNGs and the given torch.Generators, for a bit-exact --resume."""
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": [g.get_state() for g in generators]}

def set_rng_state(state, *generators):
    """The inverse of rng_state; states loaded onto a GPU (map_location) come back to the CPU."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for g, s in zip(generators, state["generators"]):
        g.set_state(s.cpu())

def check_resume(path, ckpt, cfg, free=("resume", "stop_after", "plot", "device", "out_dir")):
    """Refuse another script's checkpoint, or one saved with settings other than the free ones."""
    saved = ckpt.get("config") or {}
    if set(saved) != {f.name for f in dataclasses.fields(cfg)}:
        raise ValueError(f"{path} was not saved by this script: cannot resume from it")
    changed = [f"--{k}={v}" for k, v in saved.items() if k not in free and getattr(cfg, k) != v]
    if changed:
        raise ValueError(f"{path} was saved with {' '.join(changed)}: resume with those settings")

# ----------------------------------------------------------------------------- the instruction task
# Not the lecture: the task that sft.py, dpo.py and evaluate.py share, and the tiny base model.
# One-line instructions over a word or a number, with answers a program can check.

TASKS = {  # name: (instruction template, answer), over a word or (parity) a number
    "count": ("count the letters: {}", lambda w: str(len(w))),
    "vowels": ("count the vowels: {}", lambda w: str(sum(c in "aeiou" for c in w))),
    "first": ("first letter: {}", lambda w: w[0]),
    "last": ("last letter: {}", lambda w: w[-1]),
    "parity": ("even or odd: {}", lambda n: "odd" if int(n) % 2 else "even"),
}

def make_task(n_train, n_eval, seed):
    """(train, held-out) lists of (task, instruction, answer); held-out words, numbers unseen."""
    rng = random.Random(seed)
    words = sorted(set(re.findall(r"\b[a-z]{3,8}\b", embedded_corpus())))
    numbers = [str(n) for n in range(1000)]
    rng.shuffle(words)
    rng.shuffle(numbers)
    cut = len(words) // 10
    pools = {"train": (words[cut:], numbers[100:]), "eval": (words[:cut], numbers[:100])}

    def draw(split, n):
        out = []
        for _ in range(n):
            name = rng.choice(list(TASKS))
            template, answer = TASKS[name]
            arg = rng.choice(pools[split][name == "parity"])
            out.append((name, template.format(arg), answer(arg)))
        return out
    return draw("train", n_train), draw("eval", n_eval)

def chat(instruction, answer=None):
    turns = [{"role": "user", "content": instruction}]
    return turns + ([{"role": "assistant", "content": answer}] if answer else [])

def chat_answers(model, tok, instructions, batch_size=256, max_new_tokens=16):
    """Greedy answers to instructions: the tokens the model writes before its <|end|>."""
    end = tok.special("<|end|>")
    out = []
    for i in range(0, len(instructions), batch_size):
        prompts = [render_chat(chat(x), tok, True) for x in instructions[i:i + batch_size]]
        new = model.generate(prompts, max_new_tokens, temperature=0, stop_tokens=(end,))
        out += [ids[:-1] if ids and ids[-1] == end else ids for ids in new]
    return out

def evaluate_instructions(model, tok, examples):
    """(exact-match accuracy, mean NLL per answer token, the answers) on (task, instr., answer)."""
    predicted = [tok.decode(ids) for ids in chat_answers(model, tok, [x for _, x, _ in examples])]
    accuracy = sum(p == a for p, (_, _, a) in zip(predicted, examples)) / len(examples)
    prompts = [render_chat(chat(x), tok, add_generation_prompt=True) for _, x, _ in examples]
    completions = [tok.encode(a) + [tok.special("<|end|>")] for _, _, a in examples]
    with evaluating(model):
        nll = completion_loss(model, prompts, completions).item()
    return accuracy, nll, predicted

def base_model(steps, device):
    """(model, tokenizer): a byte-level 4x128 GPT (6x384 on CUDA) trained here."""
    text = embedded_corpus()
    tok = Tokenizer.from_spec("byte", text)
    wide = str(device).startswith("cuda")
    cfg = GPTConfig(vocab_size=tok.model_vocab_size, block_size=128, n_layer=6 if wide else 4,
                    n_head=6 if wide else 4, n_embd=384 if wide else 128)
    return train_tiny(cfg, text, tok, steps or (2000 if wide else 300), device), tok

def train_tiny(cfg, text, tokenizer, steps, device, batch=16, lr=3e-3):
    """A few hundred AdamW steps on random windows: just enough for the demos."""
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in tqdm(range(steps), desc=f"tiny {cfg.n_layer}x{cfg.n_embd}", leave=False):
        i = torch.randint(len(data) - cfg.block_size, (batch,), generator=g)
        x = torch.stack([data[j:j + cfg.block_size] for j in i]).to(device)
        y = torch.stack([data[j + 1:j + 1 + cfg.block_size] for j in i]).to(device)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()

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
    main(parse_args(SampleConfig))
