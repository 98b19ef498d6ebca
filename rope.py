"""Position encodings: how a transformer knows where each token is, and how far it can stretch.

Attention alone is blind to order: permute the tokens and the outputs permute with them. Absolute
encodings add a vector per position to the input: learned (GPT-2, BERT) or sinusoidal (Vaswani et
al. 2017). Relative ones change the score of query i against key j by their distance: RoPE
rotates q and k so that <R(m) q, R(n) k> = <q, R(n - m) k> depends on m - n only (Su et al. 2021),
ALiBi adds -m_h |i - j| (Press et al. 2022), T5 adds a learned bias per distance bucket (Raffel et
al. 2020). To run RoPE past its training length: position interpolation (Chen et al. 2023),
NTK-aware base scaling (bloc97 2023) and YaRN (Peng et al. 2023).

    python rope.py                          # the RoPE checks, then the length-extrapolation table
    python rope.py --train_len=64 --k=12    # a longer training context, a farther lookup
    python rope.py --encodings=rope,alibi   # only some rows
    python rope.py --plot                   # and accuracy vs length as out/rope/accuracy.png

On CPU (under two minutes) you see <R(m)q, R(n)k> printed for pairs with the same m - n (equal)
and the long-term decay curve, then one tiny model per encoding trained to output the token k
steps back, and its accuracy at 1x, 2x and 4x the training length (RoPE also with each scaling).
Left out: fine-tuning at the longer length (the scalings are shown without it), xPos and FIRE,
and real text: the task needs only a fixed relative offset ("none" is NoPE).
"""
import argparse
import dataclasses
import inspect
import math
import os
import re
import sys
import typing
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

ENCODINGS = ("none", "learned", "sinusoidal", "rope", "alibi", "t5")

@dataclass
class Config:
    encodings: str = ",".join(ENCODINGS)  # comma-separated: which encodings to train and compare
    train_len: int = 32  # L: training sequence length; evaluated at L, 2L and 4L
    k: int = 8  # the task: at every position t >= k, output the token seen k steps earlier
    vocab: int = 16  # random tokens the sequences are made of
    d_model: int = 64  # model width
    n_head: int = 4  # attention heads (head dim = d_model / n_head)
    n_layer: int = 2  # transformer blocks
    steps: int = 600  # training steps per encoding
    batch_size: int = 32  # sequences per step
    lr: float = 3e-3  # AdamW peak learning rate, cosine-decayed to 10%
    n_eval: int = 200  # fresh sequences per evaluation length
    rope_base: float = 10000.0  # RoPE's base in theta_i = base^(-2i/d)
    plot: bool = False  # also draw accuracy against length as out/rope/accuracy.png
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # initialisation and data

    def __post_init__(self):
        for name in "vocab d_model n_head n_layer steps batch_size lr n_eval".split():
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        unknown = sorted(set(self.encodings.split(",")) - set(ENCODINGS))
        for name, ok, fix in [
                ("encodings", not unknown, f"unknown {unknown}; choose from {','.join(ENCODINGS)}"),
                ("k", 0 < self.k < self.train_len,
                 f"use 1 to {self.train_len - 1} (below train_len)"),
                ("d_model", self.d_model % (2 * self.n_head) == 0,
                 f"use a multiple of 2 * n_head = {2 * self.n_head} (RoPE needs even head sizes)"),
                ("rope_base", self.rope_base > 1, "use a base above 1, e.g. 10000")]:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)}: {fix}")

GPU = dict(steps=2000)  # on CUDA: train each encoding longer

# ----------------------------------------------------------------------------- absolute positions

def sinusoidal_positions(T, d_model, base=10000.0):
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)): (T, d_model)
    float32. PE(pos + k) is a fixed rotation of PE(pos): what lets attention read offsets."""
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    angles = pos * base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (T, d/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).float()

class LearnedPositions(nn.Module):
    """A trained vector per position, added to the token embedding (GPT-2, BERT). Positions past
    max_len have no row, and rows never reached in training stay at their random init."""

    def __init__(self, max_len, d_model):
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, positions):
        if int(positions.max()) >= self.table.num_embeddings:
            raise ValueError(f"position {int(positions.max())} is past max_len="
                             f"{self.table.num_embeddings}: learned positions cannot extrapolate; "
                             "build the table longer or use a relative encoding")
        return self.table(positions)

# ----------------------------------------------------------------------------- RoPE

def rope_frequencies(head_dim, base=10000.0, scaling=None):
    """theta_i = base^(-2i/d) for i < d/2 (float64: never bf16), and the attention factor to
    multiply q and k by. scaling = {"type": "linear" | "ntk" | "yarn", "factor": s,
    "original_len": L (yarn), "beta_fast": 32, "beta_slow": 1 (yarn), "ramp": "paper" (yarn: the
    paper's ramp, not the released one)} stretches the context s times."""
    if head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of dimensions: head_dim={head_dim} must be even")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim  # 2i/d
    theta = base ** -exponent
    if scaling is None:
        return theta, 1.0
    kind = scaling["type"]
    s = float(scaling["factor"])
    if kind == "linear":  # position interpolation: position m is read as m / s
        return theta / s, 1.0
    if kind == "ntk":  # base' = base * s^(d/(d-2)): theta_0 = 1 unchanged, the slowest one / s
        return (base * s ** (head_dim / (head_dim - 2))) ** -exponent, 1.0
    if kind == "yarn":
        # r_i = L theta_i / 2 pi: the turns pair i makes over the original context L. Fast pairs
        # (r > beta_fast) resolve nearby tokens and are kept; slow ones (r < beta_slow) never saw a
        # full turn and are interpolated; a linear ramp gamma blends those in between.
        L = scaling["original_len"]
        fast = scaling.get("beta_fast", 32)
        slow = scaling.get("beta_slow", 1)
        if scaling.get("ramp") == "paper":  # Peng et al., "NTK-by-parts": gamma linear in r_i
            gamma = ((L * theta / (2 * math.pi) - slow) / (fast - slow)).clamp(0, 1)
        else:  # the released code (the authors', HF's "yarn"), which YaRN models were tuned with:
            # linear in the index i between the pairs turning beta_fast and beta_slow times (bounds
            # rounded outwards; a width of 1e-3 when they meet, as theirs)
            def pair(r):  # i(r) = d ln(L / (2 pi r)) / (2 ln base): the pair turning r times over L
                return head_dim * math.log(L / (2 * math.pi * r)) / (2 * math.log(base))
            low = max(math.floor(pair(fast)), 0)
            high = min(math.ceil(pair(slow)), head_dim - 1)
            i = torch.arange(head_dim // 2, dtype=torch.float64)
            gamma = 1 - ((i - low) / ((high - low) or 1e-3)).clamp(0, 1)
        # sqrt(1/t) = 0.1 ln(s) + 1 on q and k each: softmax temperature for the longer context
        return theta / s * (1 - gamma) + theta * gamma, 0.1 * math.log(s) + 1
    raise ValueError(f"unknown RoPE scaling type {kind!r}; choose linear, ntk or yarn")

def apply_rope(x, positions, theta, layout="half", attention_factor=1.0):
    """Rotate pairs of x (B, H, T, d) by positions (T,) or (B, T) * theta_i: "half" (GPT-NeoX, HF
    Llama) pairs x_i, x_{i + d/2}; "interleaved" (RoFormer, GPT-J, Meta's Llama) x_{2i}, x_{2i+1}.
    Angles in float64, the rotation in at least float32, whatever the autocast."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    exact = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    angles = positions.to(exact)[..., None] * theta.to(x.device, exact)  # (T | B, T, d/2)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, T, d/2): broadcast over heads
    cos = (angles.cos() * attention_factor).to(dtype)
    sin = (angles.sin() * attention_factor).to(dtype)
    if layout == "half":
        x1, x2 = x.to(dtype).chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
    if layout == "interleaved":
        x1, x2 = x.to(dtype).unflatten(-1, (-1, 2)).unbind(-1)  # x_{2i}, x_{2i+1}
        rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return rotated.flatten(-2).to(x.dtype)
    raise ValueError(f"layout={layout!r}; choose half or interleaved")

def rope_permutation(head_dim):
    """Indices p with x_half = x_interleaved[..., p]: pair (2i, 2i+1) moves to (i, i + d/2)."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])

def interleaved_to_half(weight, n_head):
    """Reorder the rows of a W_q or W_k (n_head * head_dim, d_in) trained with interleaved RoPE so
    that the half layout gives the same scores (how Meta's Llama weights become Hugging Face's)."""
    head_dim = weight.size(0) // n_head
    return weight.view(n_head, head_dim, -1)[:, rope_permutation(head_dim)].reshape(weight.shape)

# ----------------------------------------------------------------------------- attention biases

def alibi_slopes(n_head):
    """m_h = 2^(-8h/n) for h = 1..n when n is a power of two. Otherwise (Press et al.'s rule): the
    slopes for the largest power of two n' < n, then every other slope of 2n' (2^(-8h/2n') for odd
    h = 1, 3, 5, ...) until there are n."""
    def powers(n):
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]
    closest = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(powers(closest) + powers(2 * closest)[0::2][:n_head - closest])

def alibi_bias(n_head, T_q, T_k=None):
    """(n_head, T_q, T_k) bias -m_h |i - j| added to the scores; the queries are the last T_q of
    T_k positions (KV-cache decoding). Not learned, so it applies at any length."""
    T_k = T_q if T_k is None else T_k
    i = torch.arange(T_k - T_q, T_k)[:, None]
    j = torch.arange(T_k)[None, :]
    return -alibi_slopes(n_head)[:, None, None] * (i - j).abs()

def t5_bucket(relative, num_buckets=32, max_distance=128, bidirectional=False):
    """T5's bucket of relative position j - i: distances below num_buckets/2 get one each, longer
    ones share logarithmically wider buckets up to max_distance, farther ones the last."""
    offset = 0
    if bidirectional:  # half the buckets for keys ahead of the query, half for keys behind
        num_buckets //= 2
        offset = (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # causal: only keys behind the query matter
    max_exact = num_buckets // 2
    log_ratio = (torch.log(distance.clamp(min=max_exact).float() / max_exact)
                 / math.log(max_distance / max_exact))
    far = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return offset + torch.where(distance < max_exact, distance, far)

class T5RelativeBias(nn.Module):
    """b_h(i, j) = B[bucket(j - i), h]: learned per head and bucket, shared by all layers (T5)."""

    def __init__(self, n_head, num_buckets=32, max_distance=128):
        super().__init__()
        self.max_distance = max_distance
        self.bias = nn.Embedding(num_buckets, n_head)

    def forward(self, T_q, T_k=None):  # -> (n_head, T_q, T_k), queries at the last T_q positions
        T_k = T_q if T_k is None else T_k
        device = self.bias.weight.device
        i = torch.arange(T_k - T_q, T_k, device=device)[:, None]
        relative = torch.arange(T_k, device=device)[None, :] - i
        buckets = t5_bucket(relative, self.bias.num_embeddings, self.max_distance)
        return self.bias(buckets).permute(2, 0, 1)

# ----------------------------------------------------------------------------- a tiny model

class Block(nn.Module):
    """Pre-norm: x = x + Attn(LN(x)); x = x + MLP(LN(x)); RoPE in attention, biases on scores."""

    def __init__(self, d_model, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x, rope, bias, cache=None):  # cache: [k, v] of earlier calls, grown in place
        B, T, C = x.shape
        qkv = self.qkv(self.ln1(x)).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, n_head, T, head_dim) each
        if rope is not None:  # rope = (positions, theta, attention_factor)
            positions, theta, factor = rope
            q = apply_rope(q, positions, theta, attention_factor=factor)
            k = apply_rope(k, positions, theta, attention_factor=factor)
        if cache:  # earlier keys were rotated at their own positions: they are kept as they are
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        if cache is not None:
            cache[:] = [k, v]
        # the T queries are the last of T_k positions: query i sees keys up to T_k - T + i
        causal = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(k.size(2) - T)
        mask = causal if bias is None else bias.to(q.dtype).masked_fill(~causal, -math.inf)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))

class TinyLM(nn.Module):
    """A causal transformer whose only difference from its siblings is the position encoding."""

    def __init__(self, encoding, vocab, d_model, n_head, n_layer, max_len, rope_base=10000.0):
        super().__init__()
        self.encoding = encoding
        self.n_head = n_head
        self.rope_base = rope_base
        self.head_dim = d_model // n_head
        self.embed = nn.Embedding(vocab, d_model)
        if encoding == "learned":
            self.positions = LearnedPositions(max_len, d_model)
        if encoding == "t5":
            self.t5 = T5RelativeBias(n_head, num_buckets=16, max_distance=64)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx, rope_scaling=None, cache=None):
        """idx (B, T) -> logits (B, T, vocab). cache: None, or one list per block ([] at first)
        keeping the keys and values of earlier calls; idx then continues where they stopped."""
        start = cache[0][0].size(2) if cache and cache[0] else 0
        T = idx.size(1)
        positions = torch.arange(start, start + T, device=idx.device)
        x = self.embed(idx)  # (B, T, d_model)
        rope = bias = None
        if self.encoding == "learned":
            x = x + self.positions(positions)
        elif self.encoding == "sinusoidal":
            x = x + sinusoidal_positions(start + T, x.size(-1))[start:].to(x.device)
        elif self.encoding == "rope":
            rope = (positions, *rope_frequencies(self.head_dim, self.rope_base, rope_scaling))
        elif self.encoding == "alibi":
            bias = alibi_bias(self.n_head, T, start + T).to(x.device)
        elif self.encoding == "t5":
            bias = self.t5(T, start + T)
        for block, block_cache in zip(self.blocks, cache or [None] * len(self.blocks)):
            x = block(x, rope, bias, block_cache)
        return self.head(self.ln_f(x))

# ----------------------------------------------------------------------------- the k-back task

def k_back_batch(batch, T, k, vocab, generator, device):
    """Random tokens x (B, T); targets y_t = x_{t-k} for t >= k, and -1 (ignored) before."""
    x = torch.randint(0, vocab, (batch, T), generator=generator)
    y = torch.full_like(x, -1)
    y[:, k:] = x[:, :-k]
    return x.to(device), y.to(device)

def train_one(encoding, cfg, device):
    torch.manual_seed(cfg.seed)
    model = TinyLM(encoding, cfg.vocab, cfg.d_model, cfg.n_head, cfg.n_layer, 4 * cfg.train_len,
                   cfg.rope_base).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    amp = torch.autocast("cuda", torch.bfloat16) if device.startswith("cuda") else nullcontext()
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.steps), desc=f"train {encoding:<10}", leave=False)
    for step in bar:
        decay = 0.5 * (1 + math.cos(math.pi * step / cfg.steps))  # cosine, from 1 to 0
        opt.param_groups[0]["lr"] = cfg.lr * (0.1 + 0.9 * decay)  # down to 10% of lr
        x, y = k_back_batch(cfg.batch_size, cfg.train_len, cfg.k, cfg.vocab, g, device)
        with amp:
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()

@torch.no_grad()
def accuracy(model, cfg, T, device, rope_scaling=None):
    """Fraction of positions t >= k whose argmax is x_{t-k}, over n_eval fresh sequences."""
    g = torch.Generator().manual_seed(cfg.seed + T)  # every model sees the same test sequences
    x, y = k_back_batch(cfg.n_eval, T, cfg.k, cfg.vocab, g, device)
    pred = model(x, rope_scaling).argmax(-1)
    return (pred == y)[y >= 0].float().mean().item()

# ----------------------------------------------------------------------------- demos

def show_rope_properties(head_dim=64, base=10000.0):
    """<R(m) q, R(n) k> depends only on m - n for RoPE, not for an added absolute encoding; and for
    q = k = (1, ..., 1), cos(R(m) q, R(n) k) = mean_i cos((m - n) theta_i) shrinks (with ripples)
    as the distance grows: far tokens interact less (Su et al., section 3.4.3)."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, head_dim, generator=g, dtype=torch.float64)
    theta, _ = rope_frequencies(head_dim, base)
    pe = sinusoidal_positions(5010, head_dim).double()
    print(f"RoPE's relative property, random q and k, head_dim={head_dim}:")
    print(f"{'m':>6} {'n':>6} {'m-n':>5} {'<R(m)q, R(n)k>':>15} {'<q+PE(m), k+PE(n)>':>19}")
    for m, n in [(3, 0), (10, 7), (100, 97), (5003, 5000), (0, 3), (5000, 5003), (7, 0)]:
        rq = apply_rope(q.view(1, 1, 1, -1), torch.tensor([m]), theta).flatten()
        rk = apply_rope(k.view(1, 1, 1, -1), torch.tensor([n]), theta).flatten()
        absolute = float((q + pe[m]) @ (k + pe[n]))
        print(f"{m:>6} {n:>6} {m - n:>5} {float(rq @ rk):>15.6f} {absolute:>19.6f}")
    ones = torch.ones(1, 1, 1, head_dim, dtype=torch.float64)
    print(f"\nlong-term decay, q = k = 1, head_dim={head_dim}, base={base:g}:")
    for distance in [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]:
        rotated = apply_rope(ones, torch.tensor([distance]), theta)
        cosine = float((rotated * ones).sum() / head_dim)
        print(f"  m - n = {distance:>5}  {cosine:+.3f}  " + "#" * round(max(cosine, 0) * 40))

def unseen_angle_pairs(cfg, scaling):
    """RoPE pairs meeting angles at 4L never seen in training (below L * theta_i, unless a pair
    turned a full circle within L), and the fastest pair's speed (1 = nearby offsets as trained)."""
    head_dim = cfg.d_model // cfg.n_head
    L = cfg.train_len
    theta, _ = rope_frequencies(head_dim, cfg.rope_base)
    scaled, _ = rope_frequencies(head_dim, cfg.rope_base, scaling)
    unseen = ((4 * L - 1) * scaled > L * theta) & (L * theta < 2 * math.pi)
    return f"{int(unseen.sum())}/{head_dim // 2}", float(scaled[0] / theta[0])

def pyplot(plot):
    """gpt.pyplot: matplotlib.pyplot for --plot, else None; if it is missing, a one-line note."""
    if not plot:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("note: --plot needs matplotlib (pip install matplotlib): no PNG will be written")

def plot_accuracy(plt, table, lengths, chance, path):
    """Accuracy against evaluation length, a line per row of the table (scalings dashed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for name, accuracies in table.items():
        plt.plot(list(accuracies), list(accuracies.values()), "--" if "+" in name else "-o",
                 label=name.strip())
    plt.axhline(chance, color="grey", lw=0.5)
    plt.xscale("log", base=2)
    plt.xticks(lengths, [f"{T // lengths[0]}L = {T}" for T in lengths])
    plt.ylabel("accuracy (grey: chance)")
    plt.legend(fontsize=7)
    plt.savefig(path, dpi=120, bbox_inches="tight")
    plt.close()
    print(f"plot: {path}")

def main(cfg):
    plt = pyplot(cfg.plot)
    device = pick_device(cfg.device)
    show_rope_properties()
    L = cfg.train_len
    lengths = (L, 2 * L, 4 * L)
    scaling = lambda kind, s: kind and {"type": kind, "factor": s, "original_len": L}  # noqa: E731
    scalings = [("  + position interpolation", "linear"), ("  + NTK-aware", "ntk"),
                ("  + YaRN", "yarn")]  # RoPE's rows: (name, scaling type)
    print(f"\ntask: output the token {cfg.k} steps back; {cfg.n_layer} layers, "
          f"d_model={cfg.d_model}, {cfg.steps} steps at length L={L}; accuracy on fresh sequences "
          f"(chance = {1 / cfg.vocab:.0%}):")
    print(f"{'encoding':<24}" + "".join(f"{f'{T // L}L = {T}':>10}" for T in lengths)
          + "   RoPE pairs with unseen angles at 4L, fastest pair's speed")
    table = {}  # row name -> {length: accuracy}; a scaling by s = T / L only past L
    for encoding in cfg.encodings.split(","):
        model = train_one(encoding, cfg, device)
        for name, kind in [(encoding, None)] + (scalings if encoding == "rope" else []):
            table[name] = {T: accuracy(model, cfg, T, device, scaling(kind, T / L))
                           for T in lengths if T > L or not kind}
            row = f"{name:<24}" + "".join(f"{table[name][T]:>10.1%}" if T in table[name]
                                          else " " * 10 for T in lengths)
            if encoding == "rope":
                row += "   {:>5} {:>6.2f}".format(*unseen_angle_pairs(cfg, scaling(kind, 4)))
            print(row, flush=True)
    # Learned rows past L never get a gradient; ALiBi favours recent tokens but cannot single out
    # exactly k back; plain RoPE holds up as the task needs only the fast pairs, which turned full
    # circles within L. The scalings (no fine-tuning here, unlike in practice) slow the rotations,
    # blurring the exact offset; YaRN's released ramp keeps only the fastest pair at this L.
    if plt:
        plot_accuracy(plt, table, lengths, 1 / cfg.vocab, "out/rope/accuracy.png")

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
