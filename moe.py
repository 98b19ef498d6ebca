"""Mixture of experts: many feed-forward networks per layer, each token uses only k of them.

A router scores token x against E experts, keeps the top k, and mixes their outputs:
    y = sum_{i in TopK(s)} g_i(x) E_i(x)  (+ shared experts that see every token),
    g = softmax over the k chosen logits (k > 1), or the raw probability p_i (k = 1).
Parameters grow with E, compute per token with k. Left alone, the router collapses onto a few
experts; the Switch loss alpha * E * sum_i f_i P_i (f_i: share of the assignments, P_i: mean
router probability) or a selection-only bias (DeepSeek-V3) spreads the load.
Papers: Shazeer et al. 2017 (noisy top-k), Lepikhin et al. 2020 (GShard, capacity),
Fedus et al. 2021 (Switch), Zoph et al. 2022 (ST-MoE, z-loss), Gale et al. 2022 (MegaBlocks,
dropless), Dai et al. 2024 (DeepSeekMoE, shared experts), Wang et al. 2024 (aux-loss-free).

    python moe.py                         # dense vs MoE (8 experts, top-2) vs MoE without balancing
    python moe.py --aux_free              # add a 4th run balanced by the DeepSeek-V3 bias instead
    python moe.py --capacity_factor=1.25  # train with token dropping instead of dropless
    python moe.py --resume --plot         # continue out/moe/ckpt.pt; curves and load as moe.png
    python bench/moe.py                   # layer fwd+bwd: naive loop vs sorted dispatch vs dense

On CPU (a few minutes): a table of val loss at equal steps, total vs active parameters and the
loss at capacity factor 1.25, then a histogram of expert load: even with the balancing loss,
skewed without it. The layer needs only torch; the demo's GPTs need gpt.py.
Left out: expert parallelism, fused dispatch kernels, models beyond 0.7M parameters.
"""
import dataclasses
import functools
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

try:  # only the MoE-GPT and the demo need gpt.py: the layer stands alone
    import gpt
except ImportError:
    gpt = None

@dataclasses.dataclass
class MoEConfig:
    n_embd: int = 128  # model width: the layer maps (B, T, n_embd) to (B, T, n_embd)
    n_expert: int = 8  # routed experts E
    top_k: int = 2  # experts per token k
    expert_hidden: int = 176  # SwiGLU width of one expert (dense MLP's / top_k: equal compute)
    n_shared: int = 0  # always-active shared experts, each expert_hidden wide (DeepSeekMoE)
    capacity_factor: float = 0.0  # 0 = dropless; else an expert takes <= ceil(cf * k * N / E)
    aux_loss_coef: float = 0.01  # alpha of the Switch load-balancing loss; 0 = off
    z_loss_coef: float = 1e-3  # weight of the router z-loss (ST-MoE); 0 = off
    noisy_gating: bool = False  # learned Gaussian noise on the router logits in training (Shazeer)
    bias_update_rate: float = 0.0  # gamma of aux-loss-free balancing (DeepSeek-V3: 1e-3); 0 = off

    def __post_init__(self):
        if not 1 <= self.top_k <= self.n_expert:
            raise ValueError(f"top_k={self.top_k} must lie in 1..n_expert={self.n_expert}")
        if min(self.n_embd, self.expert_hidden) < 1 or self.n_shared < 0:
            raise ValueError("n_embd and expert_hidden must be positive, n_shared >= 0")
        for name in ("capacity_factor", "aux_loss_coef", "z_loss_coef", "bias_update_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} cannot be negative")

@dataclasses.dataclass
class DemoConfig:
    data: str = "embedded"  # embedded (Python's docs, 465 kB) | the path of a local text file
    steps: int = 800  # optimizer steps per model
    batch_size: int = 16  # sequences per step
    block_size: int = 128  # context length in bytes
    n_layer: int = 4  # transformer blocks
    n_embd: int = 64  # width (max(2, n_embd // 64) heads)
    n_expert: int = 8  # routed experts per layer
    top_k: int = 2  # experts per token; the dense twin's MLP is top_k experts wide
    aux_loss_coef: float = 0.01  # load-balancing alpha of the balanced MoE
    capacity_factor: float = 0.0  # 0 = train dropless; e.g. 1.25 trains with token dropping
    eval_capacity: float = 1.25  # the capacity factor of the squeezed val evaluation
    aux_free: bool = False  # also train an MoE balanced by the DeepSeek-V3 bias (no aux loss)
    lr: float = 3e-3  # peak AdamW learning rate (warmup, then cosine to a tenth)
    eval_batches: int = 8  # val batches per estimate
    ckpt_every: int = 200  # steps between checkpoints (out_dir/ckpt.pt) that --resume continues
    stop_after: int = 0  # stop after this many steps of all models together, as if pre-empted
    resume: bool = False  # continue from out_dir/ckpt.pt exactly where it stopped
    plot: bool = False  # the loss curves and the expert load as out_dir/moe.png (needs matplotlib)
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # model init and batch order (the same batches for every model)
    out_dir: str = "out/moe"  # log.jsonl, ckpt.pt and moe.png go here

    def __post_init__(self):
        positive = ["steps", "batch_size", "block_size", "n_layer", "n_embd", "n_expert", "lr",
                    "eval_capacity", "eval_batches", "ckpt_every"]
        for name in positive + ["aux_loss_coef", "capacity_factor", "stop_after"]:
            value = getattr(self, name)
            if value < 0 or (value == 0 and name in positive):
                raise ValueError(f"{name}={value} must be {'> 0' if name in positive else '>= 0'}")
        if self.n_embd % (2 * max(2, self.n_embd // 64)):
            raise ValueError(f"n_embd={self.n_embd} must split into max(2, n_embd // 64) heads of"
                             " even width: use a multiple of 64")
        MoEConfig(n_embd=self.n_embd, n_expert=self.n_expert, top_k=self.top_k)  # checks top_k
        if self.data != "embedded" and not os.path.isfile(self.data):
            raise ValueError(f"data={self.data} is neither 'embedded' nor a text file")

GPU = dict(steps=1500, block_size=256, n_embd=128)  # wider only with a --data larger than 460 kB

# ----------------------------------------------------------------------------- the router

def upcast(x):  # at least float32: bf16 and fp16 go up, float64 stays
    return x.to(torch.promote_types(x.dtype, torch.float32))

class Router(nn.Module):
    """Scores every token against every expert in (at least) float32 and picks the top k."""

    def __init__(self, cfg):
        super().__init__()
        self.top_k = cfg.top_k
        self.gate = nn.Linear(cfg.n_embd, cfg.n_expert, bias=False)  # W_g
        nn.init.normal_(self.gate.weight, std=0.02)
        self.noise = nn.Linear(cfg.n_embd, cfg.n_expert, bias=False) if cfg.noisy_gating else None
        if self.noise is not None:  # W_noise, zero as in Shazeer et al.: noise std softplus(0)
            nn.init.zeros_(self.noise.weight)
        self.register_buffer("bias", torch.zeros(cfg.n_expert))  # b: steers selection only

    def forward(self, x):
        """x (N, n_embd) -> logits (N, E), probs (N, E), expert_index (N, k), gates (N, k)."""
        with torch.autocast(x.device.type, enabled=False):  # bf16 logits would flip near-ties
            x = upcast(x)
            logits = F.linear(x, self.gate.weight.to(x.dtype))  # h(x) = x W_g
            if self.noise is not None and self.training:  # H = x W_g + eps * softplus(x W_noise)
                noise_std = F.softplus(F.linear(x, self.noise.weight.to(x.dtype)))
                logits = logits + torch.randn_like(logits) * noise_std
            probs = logits.softmax(-1)  # p_i = exp(h_i) / sum_j exp(h_j)
            expert_index = (probs + self.bias).topk(self.top_k, dim=-1).indices  # b: choice only
            gates = probs.gather(-1, expert_index)  # (N, k): the unbiased p_i of the chosen
            if self.top_k > 1:  # p_i / sum_{j in TopK} p_j = softmax over the k chosen logits
                gates = gates / gates.sum(-1, keepdim=True)
        return logits, probs, expert_index, gates  # k = 1 keeps p_i: renormalised, 1 (no gradient)

def expert_load(expert_index, n_expert):
    """f_i: the share of the N*k token-to-expert assignments that chose expert i (sums to 1)."""
    counts = torch.bincount(expert_index.flatten(), minlength=n_expert)
    return counts.float() / expert_index.numel()

def load_balancing_loss(router_probs, expert_index, n_expert, alpha=1.0):
    """Switch Transformer: alpha * E * sum_i f_i P_i, P_i = mean_n p_i(x_n). Our f_i divides the
    counts by N*k, so uniform routing gives exactly alpha for any k (Mixtral's form: k*alpha).
    Only P carries a gradient; f comes from a top-k and is a constant."""
    P = upcast(router_probs).mean(0)  # (E,)
    return alpha * n_expert * (expert_load(expert_index, n_expert).to(P.dtype) * P).sum()

def router_z_loss(router_logits):
    """ST-MoE: (1/N) sum_n (log sum_i exp h_ni)^2 keeps logits small, so the softmax stays exact."""
    return torch.logsumexp(upcast(router_logits), dim=-1).square().mean()

# ----------------------------------------------------------------------------- experts, dispatch

@functools.cache
def grouped_mm_runs(device_type, dtype):
    """Does torch._grouped_mm (a private op: recent torch on CPU and on Hopper GPUs) work here?"""
    try:
        w = torch.ones(2, 16, 16, device=device_type, dtype=dtype)
        offs = torch.tensor([2, 4], dtype=torch.int32, device=device_type)
        torch._grouped_mm(w[0, :4], w.transpose(1, 2), offs=offs)  # 4 rows: 2 to each expert
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
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
        self.w_in = nn.Parameter(0.02 * torch.randn(n_expert, 2 * hidden, n_embd))  # [W_gate;W_up]
        self.w_out = nn.Parameter(0.02 * torch.randn(n_expert, n_embd, hidden))  # W_down

    def expert(self, e, x):  # one expert on x (M, n_embd)
        gate, up = F.linear(x, self.w_in[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.w_out[e])

    def forward(self, x, counts, grouped):
        """x (M, n_embd) sorted by expert, counts (E,) rows per expert, each a contiguous slice."""
        if not grouped:  # the fallback: a loop over the slices
            return torch.cat([self.expert(e, xe) for e, xe in enumerate(x.split(counts.tolist()))])
        dtype = matmul_dtype(x)
        offs = counts.cumsum(0).to(torch.int32)  # where each slice ends
        h = torch._grouped_mm(x.to(dtype), self.w_in.to(dtype).transpose(1, 2), offs=offs)
        gate, up = h.chunk(2, dim=-1)  # (M, hidden) each
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
        place = torch.arange(len(order), device=order.device) - starts[flat[order]]  # in its queue
        order, counts = order[place < capacity], counts.clamp(max=capacity)
    return order % N, order // N, counts

def dispatch_sorted(x, expert_index, gates, experts, capacity=0, grouped=False):
    """Gather the tokens sorted by expert, run each expert on its contiguous slice, scatter back:
    y_n = sum_j g_nj E_{e_nj}(x_n) over the kept assignments. x (N, d) -> y (N, d) in float32 or
    wider, and the kept count (E,) per expert."""
    token, choice, counts = sort_by_expert(expert_index, experts.w_in.size(0), capacity)
    out = experts(x[token], counts, grouped)  # (M, d)
    weighted = upcast(out) * gates[token, choice, None]  # (M, d) g * E(x); gates are float32+
    return torch.zeros_like(upcast(x)).index_add_(0, token, weighted), counts

class MoE(nn.Module):
    """The sparse MoE feed-forward layer: (B, T, n_embd) -> (B, T, n_embd), a drop-in for an MLP.
    After each forward: .aux_loss (add it to the training loss), .stats (expert load, dropped)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.router = Router(cfg)
        self.experts = Experts(cfg.n_expert, cfg.n_embd, cfg.expert_hidden)
        wide = cfg.n_shared * cfg.expert_hidden  # n_shared experts: one SwiGLU as wide as all
        self.shared = Experts(1, cfg.n_embd, wide) if cfg.n_shared else None

    def forward(self, x):
        cfg = self.cfg
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d), N = B*T tokens
        logits, probs, expert_index, gates = self.router(x)
        capacity = math.ceil(cfg.capacity_factor * cfg.top_k * len(x) / cfg.n_expert)  # 0: none
        grouped = cfg.n_embd % 8 == 0 and cfg.expert_hidden % 8 == 0 \
            and grouped_mm_runs(x.device.type, matmul_dtype(x))  # 16-byte aligned rows, a kernel
        y, kept = dispatch_sorted(x, expert_index, gates, self.experts, capacity, grouped)
        if self.shared is not None:
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
        raise ValueError(f"MoEConfig.n_embd={moe_cfg.n_embd} must equal GPTConfig.n_embd="
                         f"{gpt_cfg.n_embd}")
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
    """Parameters one token uses: all of them, less the E - k routed experts it skips per layer."""
    skipped = sum(p.numel() * (m.cfg.n_expert - m.cfg.top_k) // m.cfg.n_expert
                  for m in moe_layers(model) for p in m.experts.parameters())
    return sum(p.numel() for p in model.parameters()) - skipped

# ----------------------------------------------------------------------------- demo: dense vs MoE

def get_batch(ids, starts, block_size, device):
    xy = torch.stack([ids[s:s + block_size + 1] for s in starts.tolist()]).to(device)
    return xy[:, :-1], xy[:, 1:]  # inputs and next-token targets

def evaluate(model, val, cfg):
    """Val loss on fixed evenly spaced windows, each MoE layer's load (E,), the share dropped."""
    device = next(model.parameters()).device
    starts = torch.linspace(0, len(val) - cfg.block_size - 2, cfg.eval_batches * cfg.batch_size)
    layers = moe_layers(model)
    losses, loads, dropped = [], [], []
    with gpt.evaluating(model), gpt.autocast(device):
        for chunk in starts.long().split(cfg.batch_size):
            _, loss = model(*get_batch(val, chunk, cfg.block_size, device))
            losses.append(loss.item())
            loads.append(torch.stack([m.stats["load"] for m in layers]) if layers else None)
            dropped += [m.stats["dropped"].item() for m in layers]
    load = torch.stack(loads).mean(0).tolist() if layers else None  # (n_layer, E)
    return sum(losses) / len(losses), load, sum(dropped) / max(1, len(dropped))

def train(model, name, run, ids, cfg, save, log, state=None):
    """AdamW on cross-entropy + the MoE auxiliary losses, the same batches for every model. Model
    `run` owns global steps run * steps onwards; returns its ms per step, or None at stop_after."""
    device = next(model.train().parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    start = state["step"] - run * cfg.steps if state else 0
    if state and state["optimizer"]:  # not the checkpoint saved after the previous model
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gpt.set_rng_state(state["rng"], g)
    warmup = max(1, cfg.steps // 20)  # warmup, then cosine from lr to lr/10
    t0 = time.perf_counter()
    for step in (bar := tqdm(range(start, cfg.steps), desc=name)):
        done = run * cfg.steps + step  # steps of all models so far
        if 0 < cfg.stop_after == done or step > start and done % cfg.ckpt_every == 0:
            save(model, done, opt, g)
        if 0 < cfg.stop_after == done:
            return None
        decay = 0.5 * (1 + math.cos(math.pi * max(0, step - warmup) / max(1, cfg.steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min((step + 1) / warmup, 0.1 + 0.9 * decay)
        starts = torch.randint(len(ids) - cfg.block_size - 1, (cfg.batch_size,), generator=g)
        with gpt.autocast(device):
            _, loss = model(*get_batch(ids, starts, cfg.block_size, device))
            total = loss + aux_loss(model)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(1, cfg.steps // 100) == 0:  # about 100 points per curve
            log(step=done, model=name, loss=loss.item())
            load = max((m.stats["load"].max().item() for m in moe_layers(model)), default=0)
            bar.set_postfix(loss=f"{loss.item():.3f}", max_load=f"{load:.0%}")  # busiest expert
    return 1000 * (time.perf_counter() - t0) / max(1, cfg.steps - start)

def measure(model, name, val, cfg, ms):
    """Val loss; for an MoE also its load ranked per layer before the mean over layers (a collapse
    onto different experts in different layers still shows), and its loss at eval_capacity."""
    loss, load, _ = evaluate(model, val, cfg)
    result = dict(model=name, params=gpt.count_params(model), active=active_params(model),
                  val_loss=loss, ms_per_step=ms, load=load)
    if load:
        result["ranked"] = torch.tensor(load).sort(-1, descending=True).values.mean(0).tolist()
        for m in moe_layers(model):
            m.cfg = dataclasses.replace(m.cfg, capacity_factor=cfg.eval_capacity)
        result["squeezed_loss"], _, result["dropped"] = evaluate(model, val, cfg)
    return result

def print_load(moes, cfg):
    """A text histogram of the share of each load rank, a column per measured MoE."""
    print(f"\nexpert load on val, busiest first: share of the top-{cfg.top_k} assignments, mean"
          f" over {cfg.n_layer} layers (even = {100 / cfg.n_expert:.1f}%, one # per 2%)")
    lines = ["rank  " + "".join(f"{r['model']:<36}" for r in moes)]
    for rank, shares in enumerate(zip(*[r["ranked"] for r in moes]), start=1):
        lines.append(f"{rank:>4}  " + "".join(f"{100 * v:5.1f}% {'#' * round(50 * v):<29}"
                                              for v in shares))
    busiest = [" ".join(f"{100 * max(layer):.0f}%" for layer in r["load"]) for r in moes]
    print("\n".join(lines + ["busiest expert in each layer: " + " | ".join(busiest)]))

def plot(plt, log, results, cfg):
    """Each model's training loss, and each MoE's load by rank, side by side in out_dir/moe.png."""
    with open(log.path) as f:
        rows = [row for row in map(json.loads, f) if "loss" in row]  # the training points
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
    moes = [r for r in results if r["load"]]
    for r in results:  # a model's global steps, run * steps onwards, from its own 0
        curve = [(x["step"] % cfg.steps, x["loss"]) for x in rows if x["model"] == r["model"]]
        curves.plot(*zip(*curve), label=r["model"])
    for i, r in enumerate(moes):  # the bars of one rank side by side
        ranks = [e + (i + 0.5) / len(moes) - 0.5 for e in range(1, cfg.n_expert + 1)]
        bars.bar(ranks, [100 * v for v in r["ranked"]], 1 / len(moes), label=r["model"])
    curves.set(xlabel="step", ylabel="train loss")
    bars.set(xlabel="expert, busiest first", ylabel=f"% of top-{cfg.top_k} assignments on val")
    for ax in (curves, bars):
        ax.legend()
    fig.savefig(os.path.join(cfg.out_dir, "moe.png"), dpi=120)
    plt.close(fig)
    print(f"plot: {os.path.join(cfg.out_dir, 'moe.png')}")

def main(cfg):
    if gpt is None:
        raise SystemExit("error: the demo trains gpt.py models: put gpt.py next to moe.py")
    device = gpt.pick_device(cfg.device)
    plt = gpt.pyplot(cfg.plot)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    with gpt.bad_input():
        text = gpt.embedded_corpus() if cfg.data == "embedded" else gpt.read_text(cfg.data)
        if len(text.encode("utf-8")) < 10 * (cfg.block_size + 2):  # a tenth is val
            raise ValueError(f"{cfg.data} is too short: the demo needs {10 * (cfg.block_size + 2)}"
                             f" bytes or more for --block_size={cfg.block_size}")
        state = gpt.load_checkpoint(path) if cfg.resume else None
        if state:
            gpt.check_resume(path, state, cfg)
    tok = gpt.Tokenizer.from_spec("byte", text)  # bytes: spelling words out rewards capacity
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train_ids, val = ids[:-len(ids) // 10], ids[-len(ids) // 10:]  # the last tenth is val
    hidden = 16 * math.ceil(8 * cfg.n_embd / 3 / cfg.top_k / 16)  # the dense MLP: top_k times
    gpt_cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=cfg.block_size,
                            n_layer=cfg.n_layer, n_head=max(2, cfg.n_embd // 64), n_embd=cfg.n_embd,
                            mlp_hidden=cfg.top_k * hidden)
    moe_cfg = MoEConfig(n_embd=cfg.n_embd, n_expert=cfg.n_expert, top_k=cfg.top_k,
                        expert_hidden=hidden, capacity_factor=cfg.capacity_factor,
                        aux_loss_coef=cfg.aux_loss_coef)
    runs = {"dense": None, f"MoE {cfg.n_expert}x top-{cfg.top_k}": moe_cfg,
            "MoE, no balancing loss": dataclasses.replace(moe_cfg, aux_loss_coef=0.0)}
    if cfg.aux_free:
        runs["MoE, aux-free bias"] = dataclasses.replace(moe_cfg, aux_loss_coef=0.0,
                                                         bias_update_rate=1e-3)
    print(f"{len(train_ids)} train / {len(val)} val bytes; {cfg.steps} steps of"
          f" {cfg.batch_size}x{cfg.block_size} tokens per model, {device}")
    log = gpt.RunLog(cfg.out_dir, step=state["step"] if state else 0)
    results = state["results"] if state else []

    def save(model, step, opt=None, g=None):  # everything --resume needs
        gpt.save_checkpoint(path, model, tok, step=step, config=cfg, results=results,
                            optimizer=opt and opt.state_dict(), rng=g and gpt.rng_state(g))

    for run, (name, layer_cfg) in list(enumerate(runs.items()))[len(results):]:  # not measured
        torch.manual_seed(cfg.seed)
        model = gpt.GPT(gpt_cfg) if layer_cfg is None else moe_gpt(gpt_cfg, layer_cfg)
        ms = train(model.to(device), name, run, train_ids, cfg, save, log, state)
        if ms is None:
            return print(f"stopped after {cfg.stop_after} steps: {path} (--resume continues)")
        state = None
        results.append(measure(model, name, val, cfg, ms))
        save(model, (run + 1) * cfg.steps)
    print(f"\n{'model':<24} {'params':>8} {'active':>8} {'val loss':>9}"
          f" {f'@ cf {cfg.eval_capacity}':>10} {'dropped':>8} {'ms/step':>8}")
    for r in results:
        log(step=len(runs) * cfg.steps, **r)
        squeezed = f"{r['squeezed_loss']:>10.3f} {r['dropped']:>8.1%}" if r["load"] else \
            f"{'-':>10} {'-':>8}"
        print(f"{r['model']:<24} {r['params'] / 1e6:>7.2f}M {r['active'] / 1e6:>7.2f}M"
              f" {r['val_loss']:>9.3f} {squeezed} {r['ms_per_step']:>8.0f}")
    print_load([r for r in results if r["load"]], cfg)
    if plt:
        plot(plt, log, results, cfg)

if __name__ == "__main__":  # without gpt.py, main says what needs it
    main(gpt.parse_args(DemoConfig, gpu=GPU) if gpt else None)
