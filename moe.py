"""Mixture of experts: many feed-forward networks per layer, each token uses only k of them.

A router scores token x against E experts, keeps the top k, and mixes their outputs:
    y = sum_{i in TopK(s)} g_i(x) E_i(x)  (+ shared experts that see every token),
    g = softmax over the k chosen logits (k > 1), or the raw probability p_i (k = 1).
Parameters grow with E while compute per token grows with k. Left alone, the router collapses
onto a few experts; the Switch load-balancing loss alpha * E * sum_i f_i P_i (f_i: share of the
token-to-expert assignments, P_i: mean router probability; exactly alpha when routing is
uniform, whatever k) or a selection-only bias (DeepSeek-V3) spreads the load.
Papers: Shazeer et al. 2017 (noisy top-k), Lepikhin et al. 2020 (GShard, capacity),
Fedus et al. 2021 (Switch), Zoph et al. 2022 (ST-MoE, z-loss), Gale et al. 2022 (MegaBlocks,
dropless), Dai et al. 2024 (DeepSeekMoE, shared experts), Wang et al. 2024 (aux-loss-free).

    python moe.py                         # dense vs MoE (8 experts, top-2) vs MoE without balancing
    python moe.py --aux_free=true         # add a 4th run balanced by the DeepSeek-V3 bias instead
    python moe.py --capacity_factor=1.25  # train with token dropping instead of dropless
    python moe.py --bench                 # layer fwd+bwd: naive loop vs sorted dispatch vs dense

On CPU (about 3 minutes) you see three tqdm bars, then a table of val loss at equal steps with
total vs active parameters, the val loss when each MoE is squeezed to capacity factor 1.25, and
a text histogram of expert load: even with the balancing loss, skewed without it.
"""
import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

try:  # only the MoE-GPT and the demo need gpt.py: the layer above them stands alone
    import gpt
except ImportError:
    gpt = None


@dataclass
class MoEConfig:
    n_embd: int = 128  # model width: the layer maps (B, T, n_embd) to (B, T, n_embd)
    n_expert: int = 8  # routed experts E
    top_k: int = 2  # experts per token k
    expert_hidden: int = 176  # SwiGLU hidden width of one expert (a dense MLP's hidden / top_k keeps compute equal)
    n_shared: int = 0  # always-active shared experts, each expert_hidden wide (DeepSeekMoE)
    capacity_factor: float = 0.0  # 0 = dropless; else an expert takes at most ceil(cf * k * N / E) of N tokens
    aux_loss_coef: float = 0.01  # alpha of the Switch load-balancing loss; 0 = off
    z_loss_coef: float = 1e-3  # weight of the router z-loss (ST-MoE); 0 = off
    noisy_gating: bool = False  # add learned Gaussian noise to the router logits in training (Shazeer 2017)
    bias_update_rate: float = 0.0  # gamma of aux-loss-free balancing (DeepSeek-V3, 1e-3 there); 0 = off
    grouped_mm: bool = True  # run all experts in one torch._grouped_mm where this torch/device has it

    def __post_init__(self):
        if not 1 <= self.top_k <= self.n_expert:
            raise ValueError(f"top_k={self.top_k} must lie in 1..n_expert={self.n_expert}")
        if min(self.n_embd, self.expert_hidden) < 1 or self.n_shared < 0:
            raise ValueError("n_embd and expert_hidden must be positive, n_shared >= 0")
        if min(self.capacity_factor, self.aux_loss_coef, self.z_loss_coef, self.bias_update_rate) < 0:
            raise ValueError("capacity_factor, aux_loss_coef, z_loss_coef and bias_update_rate cannot be negative")


# ----------------------------------------------------------------------------- the router and its losses

def upcast(x):
    """At least float32 (bf16 and fp16 go up; float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class Router(nn.Module):
    """Scores every token against every expert in (at least) float32 and picks the top k."""

    def __init__(self, cfg):
        super().__init__()
        self.top_k = cfg.top_k
        self.gate = nn.Linear(cfg.n_embd, cfg.n_expert, bias=False)  # W_g
        nn.init.normal_(self.gate.weight, std=0.02)
        self.noise = nn.Linear(cfg.n_embd, cfg.n_expert, bias=False) if cfg.noisy_gating else None  # W_noise
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)  # as Shazeer et al.: start at noise std softplus(0)
        self.register_buffer("bias", torch.zeros(cfg.n_expert))  # b: steers selection only (aux-loss-free)

    def forward(self, x):
        """x (N, n_embd) -> logits (N, E), probs (N, E), expert_index (N, k), gates (N, k)."""
        with torch.autocast(x.device.type, enabled=False):  # bf16 logits would flip near-ties
            x = upcast(x)
            logits = F.linear(x, self.gate.weight.to(x.dtype))  # h(x) = x W_g
            if self.noise is not None and self.training:  # H(x) = x W_g + eps * softplus(x W_noise)
                logits = logits + torch.randn_like(logits) * F.softplus(F.linear(x, self.noise.weight.to(x.dtype)))
            probs = logits.softmax(-1)  # p_i = exp(h_i) / sum_j exp(h_j)
            expert_index = (probs + self.bias).topk(self.top_k, dim=-1).indices  # b moves the choice only
            gates = probs.gather(-1, expert_index)  # (N, k): the unbiased p_i of the chosen
            if self.top_k > 1:  # p_i / sum_{j in TopK} p_j = softmax over the k chosen logits
                gates = gates / gates.sum(-1, keepdim=True)
        return logits, probs, expert_index, gates  # k = 1 keeps raw p_i: renormalised it is 1, no gradient


def expert_load(expert_index, n_expert):
    """f_i: the share of the N*k token-to-expert assignments that chose expert i (sums to 1)."""
    counts = torch.bincount(expert_index.flatten(), minlength=n_expert)
    return counts.float() / expert_index.numel()


def load_balancing_loss(router_probs, expert_index, n_expert, alpha=1.0):
    """Switch Transformer: alpha * E * sum_i f_i P_i, P_i = mean_n p_i(x_n). Our f_i divides the
    counts by N*k, so uniform routing gives exactly alpha for any k (Mixtral's form gives k*alpha).
    Only P carries a gradient; f comes from a top-k and is a constant."""
    P = upcast(router_probs).mean(0)  # (E,)
    return alpha * n_expert * (expert_load(expert_index, n_expert).to(P.dtype) * P).sum()


def router_z_loss(router_logits):
    """ST-MoE: (1/N) sum_n (log sum_i exp h_ni)^2 keeps the logits small, so the softmax stays exact."""
    return torch.logsumexp(upcast(router_logits), dim=-1).square().mean()


# ----------------------------------------------------------------------------- the experts and dispatch

@functools.cache
def grouped_mm_runs(device_type, dtype):
    """Does torch._grouped_mm (a private op: recent torch on CPU and on Hopper GPUs) work here?"""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a, w = torch.ones(4, 16, device=device_type, dtype=dtype), torch.ones(2, 16, 16, device=device_type, dtype=dtype)
        torch._grouped_mm(a, w.transpose(1, 2), offs=torch.tensor([2, 4], dtype=torch.int32, device=device_type))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def matmul_dtype(x):
    """The dtype matmuls run in: autocast's (bf16 on CUDA) when it is on, else x's own."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class Experts(nn.Module):
    """E SwiGLU experts stacked into 3D weights, E_e(x) = (SiLU(x W_gate,e) * x W_up,e) W_down,e,
    so one grouped matmul can run them all. Weights are (E, out, in), nn.Linear's layout."""

    def __init__(self, n_expert, n_embd, hidden):
        super().__init__()
        self.w_in = nn.Parameter(0.02 * torch.randn(n_expert, 2 * hidden, n_embd))  # [W_gate; W_up]
        self.w_out = nn.Parameter(0.02 * torch.randn(n_expert, n_embd, hidden))  # W_down

    def expert(self, e, x):  # one expert on x (M, n_embd)
        gate, up = F.linear(x, self.w_in[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.w_out[e])

    def forward(self, x, counts, grouped):
        """x (M, n_embd) sorted by expert, counts (E,) rows per expert: expert e owns a contiguous slice."""
        if not grouped:  # the fallback: a loop over the slices
            return torch.cat([self.expert(e, xe) for e, xe in enumerate(x.split(counts.tolist()))])
        dtype, offs = matmul_dtype(x), counts.cumsum(0).to(torch.int32)  # offs: where each slice ends
        h = torch._grouped_mm(x.to(dtype), self.w_in.to(dtype).transpose(1, 2), offs=offs)  # (M, 2*hidden)
        gate, up = h.chunk(2, dim=-1)
        return torch._grouped_mm(F.silu(gate) * up, self.w_out.to(dtype).transpose(1, 2), offs=offs)


def sort_by_expert(expert_index, n_expert, capacity=0):
    """The token-to-expert assignments sorted by expert -> (token (M,), choice (M,), counts (E,)).
    Assignments are listed choice-major (all first choices, then all second ...), so the stable
    sort queues an expert's first-choice tokens before its second-choice ones, earlier tokens
    first (GShard's priority). With a capacity, each queue keeps its first `capacity` entries:
    the rest are dropped, and those tokens pass through the residual stream unchanged."""
    N = expert_index.size(0)
    flat = expert_index.t().reshape(-1)  # (k*N,) assignment a = choice * N + token
    order = flat.argsort(stable=True)  # (k*N,) grouped by expert, priority order within each
    counts = torch.bincount(flat, minlength=n_expert)  # (E,)
    if capacity:
        starts = counts.cumsum(0) - counts  # (E,) where each expert's queue begins
        place = torch.arange(len(order), device=order.device) - starts[flat[order]]  # place in its queue
        order, counts = order[place < capacity], counts.clamp(max=capacity)
    return order % N, order // N, counts


def dispatch_sorted(x, expert_index, gates, experts, capacity=0, grouped=False):
    """Gather the tokens sorted by expert, run each expert on its contiguous slice, scatter back:
    y_n = sum_j g_nj E_{e_nj}(x_n) over the kept assignments. x (N, d) -> (y (N, d) float32+, kept (E,))."""
    token, choice, counts = sort_by_expert(expert_index, experts.w_in.size(0), capacity)
    out = experts(x[token], counts, grouped)  # (M, d)
    weighted = upcast(out) * gates[token, choice, None]  # (M, d) g * E(x), gates already float32+
    return torch.zeros_like(upcast(x)).index_add_(0, token, weighted), counts


def dispatch_loop(x, expert_index, gates, experts, capacity=0):
    """The naive baseline (as in most first MoE implementations): per expert, a mask finds its
    tokens in priority order, it runs on them, and the weighted result is added back."""
    y = torch.zeros_like(upcast(x))
    for e in range(experts.w_in.size(0)):
        choice, token = torch.where(expert_index.t() == e)  # row-major: first choices first
        if capacity:
            choice, token = choice[:capacity], token[:capacity]
        if len(token):
            y.index_add_(0, token, upcast(experts.expert(e, x[token])) * gates[token, choice, None])
    return y


def dispatch_dense(x, expert_index, gates, experts):
    """Every expert on every token, weighted by the gates (zero for the unchosen): E times the compute."""
    all_out = torch.stack([experts.expert(e, x) for e in range(experts.w_in.size(0))], dim=1)  # (N, E, d)
    G = torch.zeros(len(x), all_out.size(1), dtype=gates.dtype, device=x.device).scatter(1, expert_index, gates)
    return (G[..., None] * upcast(all_out)).sum(1)  # (N, d)


class MoE(nn.Module):
    """The sparse MoE feed-forward layer: (B, T, n_embd) -> (B, T, n_embd), a drop-in for an MLP.
    After each forward: .aux_loss (add it to the training loss) and .stats (expert load, dropped)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.capacity_factor = cfg, cfg.capacity_factor
        self.router = Router(cfg)
        self.experts = Experts(cfg.n_expert, cfg.n_embd, cfg.expert_hidden)
        self.shared = Experts(1, cfg.n_embd, cfg.n_shared * cfg.expert_hidden) if cfg.n_shared else None
        self.aux_loss, self.stats = None, {}

    def forward(self, x):
        cfg, shape = self.cfg, x.shape
        x = x.reshape(-1, shape[-1])  # (N, d), N = B*T tokens
        logits, probs, expert_index, gates = self.router(x)
        capacity = math.ceil(self.capacity_factor * cfg.top_k * len(x) / cfg.n_expert) if self.capacity_factor else 0
        grouped = cfg.grouped_mm and cfg.n_embd % 8 == 0 and cfg.expert_hidden % 8 == 0 \
            and grouped_mm_runs(x.device.type, matmul_dtype(x))  # 16-byte aligned rows, a kernel here
        y, kept = dispatch_sorted(x, expert_index, gates, self.experts, capacity, grouped)
        if self.shared is not None:  # n_shared experts = one SwiGLU n_shared times as wide
            y = y + upcast(self.shared.expert(0, x))
        self.aux_loss = cfg.aux_loss_coef * load_balancing_loss(probs, expert_index, cfg.n_expert) \
            + cfg.z_loss_coef * router_z_loss(logits)
        with torch.no_grad():
            load = expert_load(expert_index, cfg.n_expert)  # (E,) f_i
            self.stats = {"load": load, "dropped": 1 - kept.sum() / expert_index.numel()}
            if self.training and cfg.bias_update_rate:  # b_i += gamma * sign(mean load - load_i)
                self.router.bias += cfg.bias_update_rate * torch.sign(1 / cfg.n_expert - load)
        return y.to(x.dtype).view(shape)


# ----------------------------------------------------------------------------- the MoE-GPT

def moe_gpt(gpt_cfg, moe_cfg):
    """A gpt.GPT whose every block's MLP is an MoE layer."""
    if gpt is None:
        raise ImportError("moe_gpt needs gpt.py next to moe.py (the MoE layer itself does not)")
    if moe_cfg.n_embd != gpt_cfg.n_embd:
        raise ValueError(f"MoEConfig.n_embd={moe_cfg.n_embd} must equal GPTConfig.n_embd={gpt_cfg.n_embd}")
    model = gpt.GPT(gpt_cfg)
    for block in model.transformer.h:
        block.mlp = MoE(moe_cfg)  # like gpt's c_proj: residual projections scaled by 1/sqrt(2L)
        nn.init.normal_(block.mlp.experts.w_out, std=0.02 / math.sqrt(2 * gpt_cfg.n_layer))
    return model


def moe_layers(model):
    return [m for m in model.modules() if isinstance(m, MoE)]


def aux_loss(model):
    """The sum of every MoE layer's auxiliary loss from the last forward (0 for a dense model)."""
    return sum(m.aux_loss for m in moe_layers(model))


def active_params(model):
    """Parameters one token uses: all of them, less the (E - k) routed experts it skips per layer."""
    skipped = sum(p.numel() * (m.cfg.n_expert - m.cfg.top_k) // m.cfg.n_expert
                  for m in moe_layers(model) for p in m.experts.parameters())
    return sum(p.numel() for p in model.parameters()) - skipped


# ----------------------------------------------------------------------------- demo: dense vs MoE

@dataclass
class DemoConfig:
    data: str = "embedded"  # embedded (Python's docs, 465 kB) | the path of a local text file
    steps: int = 0  # optimizer steps per model; 0 = 800 on CPU, 1500 on CUDA
    batch_size: int = 16  # sequences per step
    block_size: int = 0  # context length in bytes; 0 = 128 on CPU, 256 on CUDA
    n_layer: int = 4  # transformer blocks
    n_embd: int = 0  # width; 0 = 64 on CPU, 128 on CUDA
    n_expert: int = 8  # routed experts per layer
    top_k: int = 2  # experts per token; the dense twin's MLP is top_k experts wide
    aux_loss_coef: float = 0.01  # load-balancing alpha of the balanced MoE
    capacity_factor: float = 0.0  # 0 = train dropless; e.g. 1.25 trains with token dropping
    eval_capacity: float = 1.25  # the capacity factor of the squeezed val evaluation
    aux_free: bool = False  # also train an MoE balanced by the DeepSeek-V3 bias (no aux loss)
    lr: float = 3e-3  # peak AdamW learning rate (warmup, then cosine to a tenth)
    eval_batches: int = 8  # val batches per estimate
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # model init and batch order (the same batches for every model)
    out_dir: str = "out/moe"  # log.jsonl goes here
    bench: bool = False  # time the MoE layer: naive loop vs sorted dispatch vs dense, then exit


def resolve(cfg, device):
    """Fill the 0 = auto fields with one if on the device. The embedded text is small: a bigger GPU
    model would only memorise it, so pass a larger --data before you scale n_embd up."""
    cuda = device.startswith("cuda")
    return dataclasses.replace(cfg, steps=cfg.steps or (1500 if cuda else 800),
                               block_size=cfg.block_size or (256 if cuda else 128),
                               n_embd=cfg.n_embd or (128 if cuda else 64))


def get_batch(ids, starts, block_size, device):
    x = torch.stack([ids[s:s + block_size] for s in starts.tolist()])
    y = torch.stack([ids[s + 1:s + 1 + block_size] for s in starts.tolist()])
    return x.to(device), y.to(device)


def evaluate(model, val, cfg, device):
    """Mean val loss over fixed evenly spaced windows, and each MoE layer's load (E,) on them."""
    starts = torch.linspace(0, len(val) - cfg.block_size - 2, cfg.eval_batches * cfg.batch_size).long()
    losses, loads, dropped = [], [], []
    with gpt.evaluating(model), gpt.autocast(device):
        for chunk in starts.split(cfg.batch_size):
            _, loss = model(*get_batch(val, chunk, cfg.block_size, device))
            losses.append(loss.item())
            loads.append(torch.stack([m.stats["load"] for m in moe_layers(model)]) if moe_layers(model) else None)
            dropped += [m.stats["dropped"].item() for m in moe_layers(model)]
    load = torch.stack(loads).mean(0).cpu() if moe_layers(model) else None  # (n_layer, E)
    return sum(losses) / len(losses), load, sum(dropped) / max(1, len(dropped))


def train(model, data, cfg, device, name):
    """AdamW on loss = cross-entropy + the MoE auxiliary losses; the same batches for every model."""
    train_ids, val = data
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    warmup = max(1, cfg.steps // 20)
    model.train()
    t0, bar = time.perf_counter(), tqdm(range(cfg.steps), desc=name)
    for step in bar:  # warmup, then cosine from lr to lr/10
        decay = 0.5 * (1 + math.cos(math.pi * max(0, step - warmup) / max(1, cfg.steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min((step + 1) / warmup, 0.1 + 0.9 * decay)
        x, y = get_batch(train_ids, torch.randint(len(train_ids) - cfg.block_size - 1, (cfg.batch_size,), generator=g),
                         cfg.block_size, device)
        with gpt.autocast(device):
            _, loss = model(x, y)
            total = loss + aux_loss(model)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:  # per-step stats: the busiest expert's share of the assignments
            load = max((m.stats["load"].max().item() for m in moe_layers(model)), default=None)
            bar.set_postfix(loss=f"{loss.item():.3f}", **({"max_load": f"{load:.0%}"} if load else {}))
    return 1000 * (time.perf_counter() - t0) / cfg.steps


def load_histogram(loads, percent_per_mark=2.0):
    """loads {name: (n_layer, E)} -> a text histogram of each load rank's share, busiest expert first,
    averaged over layers (each layer sorted on its own, so collapse onto different experts shows)."""
    ranked = {name: load.sort(dim=-1, descending=True).values.mean(0).tolist() for name, load in loads.items()}
    lines = ["rank  " + "".join(f"{name:<36}" for name in loads)]
    for r in range(len(next(iter(ranked.values())))):
        lines.append(f"{r + 1:>4}  " + "".join(f"{100 * v[r]:5.1f}% {'#' * round(100 * v[r] / percent_per_mark):<29}"
                                              for v in ranked.values()))
    busiest = [" ".join(f"{100 * m:.0f}%" for m in load.max(-1).values.tolist()) for load in loads.values()]
    lines.append("busiest expert in each layer: " + " | ".join(busiest))
    return "\n".join(lines)


def run(name, model, data, cfg, device):
    """Train one model, then measure it: val loss, and for an MoE its load and its squeezed loss."""
    ms = train(model, data, cfg, device, name)
    loss, load, _ = evaluate(model, data[1], cfg, device)
    result = {"model": name, "params": sum(p.numel() for p in model.parameters()), "active": active_params(model),
              "val_loss": loss, "ms_per_step": ms, "load": load}
    if moe_layers(model):  # the same model with each expert's queue cut at eval_capacity
        for m in moe_layers(model):
            m.capacity_factor = cfg.eval_capacity
        result["squeezed_loss"], _, result["dropped"] = evaluate(model, data[1], cfg, device)
    return result


def main(cfg):
    device = gpt.pick_device(cfg.device)
    if cfg.bench:
        return bench(device)
    cfg = resolve(cfg, device)
    if cfg.data != "embedded" and not os.path.isfile(cfg.data):
        raise SystemExit(f"error: --data={cfg.data} is neither 'embedded' nor a readable text file")
    text = gpt.embedded_corpus() if cfg.data == "embedded" else open(cfg.data, encoding="utf-8").read()
    tok = gpt.Tokenizer.from_spec("byte", text)  # bytes: spelling words out is work that rewards capacity
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    data = (ids[:-len(ids) // 10], ids[-len(ids) // 10:])  # the last tenth is validation
    hidden = 16 * math.ceil(8 * cfg.n_embd / 3 / cfg.top_k / 16)  # per expert; the dense MLP is top_k times wider
    gpt_cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                            n_head=max(2, cfg.n_embd // 64), n_embd=cfg.n_embd, mlp_hidden=cfg.top_k * hidden)
    moe_cfg = MoEConfig(n_embd=cfg.n_embd, n_expert=cfg.n_expert, top_k=cfg.top_k, expert_hidden=hidden,
                        capacity_factor=cfg.capacity_factor, aux_loss_coef=cfg.aux_loss_coef)
    runs = {"dense": lambda: gpt.GPT(gpt_cfg),
            f"MoE {cfg.n_expert}x top-{cfg.top_k}": lambda: moe_gpt(gpt_cfg, moe_cfg),
            "MoE, no balancing loss": lambda: moe_gpt(gpt_cfg, dataclasses.replace(moe_cfg, aux_loss_coef=0.0))}
    if cfg.aux_free:
        runs["MoE, aux-free bias"] = lambda: moe_gpt(gpt_cfg, dataclasses.replace(moe_cfg, aux_loss_coef=0.0,
                                                                                   bias_update_rate=1e-3))
    print(f"{len(data[0])} train / {len(data[1])} val bytes; {cfg.steps} steps of {cfg.batch_size}x"
          f"{cfg.block_size} tokens per model, {device}")
    results = []
    os.makedirs(cfg.out_dir, exist_ok=True)
    for name, make in runs.items():
        torch.manual_seed(cfg.seed)
        results.append(run(name, make().to(device), data, cfg, device))
        with open(os.path.join(cfg.out_dir, "log.jsonl"), "a") as f:
            r = results[-1]
            f.write(json.dumps({**r, "load": r["load"].tolist() if r["load"] is not None else None}) + "\n")
    print(f"\n{'model':<24} {'params':>8} {'active':>8} {'val loss':>9} {f'@ cf {cfg.eval_capacity}':>10} "
          f"{'dropped':>8} {'ms/step':>8}")
    for r in results:
        squeezed = f"{r['squeezed_loss']:>10.3f} {r['dropped']:>8.1%}" if "dropped" in r else f"{'-':>10} {'-':>8}"
        print(f"{r['model']:<24} {r['params'] / 1e6:>7.2f}M {r['active'] / 1e6:>7.2f}M {r['val_loss']:>9.3f} "
              f"{squeezed} {r['ms_per_step']:>8.0f}")
    print(f"\nexpert load on val, busiest first: share of the top-{cfg.top_k} assignments, mean over "
          f"{cfg.n_layer} layers (even = {100 / cfg.n_expert:.1f}%, one # per 2%)")
    print(load_histogram({r["model"]: r["load"] for r in results if r["load"] is not None}))


# ----------------------------------------------------------------------------- benchmark

def time_fwd_bwd(fn, x, device, reps):
    """The fastest of reps forward + backward passes, in milliseconds (the least disturbed by other load)."""
    times = []
    for i in range(reps + 1):  # the first call warms up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(x).square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times[1:])


def bench(device):
    """The MoE layer's dispatch (router excluded, the same routing for all) forward + backward."""
    cuda = device.startswith("cuda")
    d, E, k, reps = (1024, 8, 2, 10) if cuda else (256, 8, 2, 3)
    h = 16 * math.ceil(8 * d / 3 / k / 16)
    torch.manual_seed(0)
    experts = Experts(E, d, h).to(device)
    dense_mlp = Experts(1, d, k * h).to(device)  # a SwiGLU MLP with the same active parameters
    router = Router(MoEConfig(n_embd=d, n_expert=E, top_k=k)).to(device)
    grouped = grouped_mm_runs(torch.device(device).type, torch.bfloat16 if cuda else torch.float32)
    print(f"MoE layer fwd+bwd, d={d}, {E} SwiGLU experts of {h}, top-{k}, {device}"
          f"{', bf16 autocast' if cuda else ''}; ratios are speed-ups over the naive loop")
    print(f"{'tokens':>7} {'naive loop':>11} {'sorted+loop':>16} {'sorted+grouped':>16} {'all experts':>16} "
          f"{'dense MLP':>16}")
    for n in ((4096, 16384, 65536) if cuda else (512, 2048, 8192)):
        x = torch.randn(n, d, device=device, requires_grad=True)
        with torch.no_grad():
            _, _, idx, gates = router(x)
        variants = {"naive": lambda x: dispatch_loop(x, idx, gates, experts),
                    "sorted": lambda x: dispatch_sorted(x, idx, gates, experts)[0],
                    "grouped": lambda x: dispatch_sorted(x, idx, gates, experts, grouped=True)[0],
                    "all": lambda x: dispatch_dense(x, idx, gates, experts),
                    "dense": lambda x: dense_mlp.expert(0, x)}
        if not grouped:
            del variants["grouped"]
        with gpt.autocast(device):
            ms = {name: time_fwd_bwd(fn, x, device, reps) for name, fn in variants.items()}
        row = [f"{ms[v]:7.1f}ms {ms['naive'] / ms[v]:5.2f}x" if v in ms else f"{'n/a':>16}"
               for v in ("sorted", "grouped", "all", "dense")]
        print(f"{n:>7} {ms['naive']:9.1f}ms " + " ".join(row))


if __name__ == "__main__":
    main(gpt.parse_args(DemoConfig))
