"""Pretraining a GPT: next-token prediction on a corpus, L = -(1/N) sum_t log p(x_t | x_<t).

The loop every LLM is born in: tokenise the corpus once into a memmap, draw random windows,
AdamW (or Muon for the 2D weights, Jordan et al. 2024) with warmup then cosine or
warmup-stable-decay, gradient clipping and accumulation, bf16 autocast on CUDA, data parallelism
under torchrun (DDP, or FSDP for ZeRO-3 style sharding), exact resume, and a report of tokens/s,
MFU and the Chinchilla view (Hoffmann et al. 2022: ~20 tokens per parameter, C = 6ND).

    python train.py                                # CPU: a 3.5M model on the embedded corpus
    python train.py --data=shakespeare --plot      # tiny-shakespeare, downloaded once to data/
    python train.py --data=notes.txt --tokenizer=byte --optimizer=muon --schedule=wsd
    python train.py --stop_after=200; python train.py --resume     # stop, then go on bit for bit
    torchrun --nproc_per_node=8 train.py           # CUDA: GPT-2 small's shape, DDP; --fsdp shards
    python train.py --data=fineweb --compile       # CUDA: FineWeb as GPT-2 token shards
    python bench/train_vs_nanogpt.py --nanogpt=PATH    # side by side with nanoGPT (see README)

On CPU (a few minutes on 2 cores) val loss falls from 7.0 to about 3.5, printed with a sample
every 100 steps, then the report. out/train/ holds ckpt.pt (for `python gpt.py --ckpt=` and
`python sft.py --init=`), log.jsonl and, with --plot, loss.png.
Left out: tensor and pipeline parallelism, activation checkpointing, batches that respect
document boundaries (windows cross them), and anything larger than GPT-2 small.
"""
import hashlib
import math
import os
import shutil
import time
import urllib.request
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import numpy as np
from tqdm import tqdm

import gpt

@dataclass
class TrainConfig:
    data: str = "embedded"  # embedded | shakespeare | fineweb (GPT-2 tokens) | a text file | a URL
    tokenizer: str = "bpe"  # bpe (trained on the data) | byte | gpt2 (fineweb's) | a .tiktoken file
    vocab_size: int = 1024  # BPE vocabulary, for tokenizer=bpe
    val_frac: float = 0.1  # this fraction of the tokens, at the end, is the validation split
    cache_dir: str = "data"  # downloads, tokenizers and token memmaps are cached here
    depth: int = 4  # transformer blocks
    n_embd: int = 256  # width
    n_head: int = 4  # query heads
    n_kv_head: int = 0  # key/value heads: 0 = n_head (MHA), fewer for GQA
    mlp_hidden: int = 0  # MLP hidden width: 0 = gpt.GPTConfig's (8/3 n_embd for SwiGLU)
    block_size: int = 128  # context length
    dropout: float = 0.0  # dropout in attention and residual branches
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_iters: int = 500  # optimizer steps
    stop_after: int = 0  # quit at this step as if pre-empted (schedule spans max_iters); 0 = off
    optimizer: str = "adamw"  # adamw | muon (Muon for 2D block weights, AdamW for the rest)
    lr: float = 2e-3  # peak AdamW learning rate
    muon_lr: float = 0.02  # peak Muon learning rate
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay)
    warmup_frac: float = 0.05  # fraction of max_iters spent warming up linearly
    decay_frac: float = 0.2  # wsd: fraction of max_iters spent decaying linearly at the end
    min_lr_frac: float = 0.1  # the schedule ends at min_lr_frac * peak
    weight_decay: float = 0.1  # AdamW decay on matrices and embeddings, not on norms or biases
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # clip the global gradient norm; 0 = off
    eval_interval: int = 100  # steps between evals and checkpoints
    eval_iters: int = 10  # batches per eval estimate
    sample_tokens: int = 64  # tokens sampled at each eval; 0 = none
    out_dir: str = "out/train"  # ckpt.pt, log.jsonl and loss.png go here
    resume: bool = False  # continue from out_dir/ckpt.pt exactly where it stopped
    device: str = "auto"  # auto | cpu | cuda | mps
    compile: bool = False  # torch.compile the model
    fsdp: bool = False  # under torchrun: shard parameters, grads and optimizer state (FSDP2)
    seed: int = 1337  # model init and data order
    plot: bool = False  # write out_dir/loss.png (needs matplotlib)

    def __post_init__(self):
        named = ("embedded", "shakespeare", "fineweb")
        if self.data not in named and "://" not in self.data and not os.path.isfile(self.data):
            raise ValueError(f"data={self.data!r}: no such file; use a text file, a URL or {named}")
        if self.tokenizer not in ("bpe", "byte", "gpt2") and not os.path.isfile(self.tokenizer):
            raise ValueError(f"tokenizer={self.tokenizer!r}: use bpe, byte, gpt2 or a .tiktoken")
        rules = [("optimizer", lambda v: v in ("adamw", "muon"), "adamw or muon"),
                 ("schedule", lambda v: v in ("cosine", "wsd"), "cosine or wsd"),
                 ("vocab_size", lambda v: v >= 256, ">= 256, the bytes BPE starts from"),
                 ("depth n_embd n_head block_size batch_size grad_accum max_iters eval_interval"
                  " eval_iters", lambda v: v >= 1, ">= 1"),
                 ("n_kv_head mlp_hidden stop_after sample_tokens weight_decay grad_clip",
                  lambda v: v >= 0, ">= 0"),
                 ("lr muon_lr", lambda v: v > 0, "> 0"),
                 ("warmup_frac decay_frac min_lr_frac", lambda v: 0 <= v <= 1, "in [0, 1]"),
                 ("dropout beta1 beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
                 ("val_frac", lambda v: 0 < v < 1, "in (0, 1)")]
        for names, ok, rule in rules:
            for name in names.split():
                if not ok(getattr(self, name)):
                    raise ValueError(f"{name}={getattr(self, name)!r} must be {rule}")
        if self.fsdp and self.optimizer == "muon":
            raise ValueError("--optimizer=muon does not support --fsdp (Muon needs whole matrices)")
        self.model_config(256)  # the shape's own checks (heads divide the width...) before any work
        gpt.pick_device(self.device)

    def model_config(self, vocab_size):
        return gpt.GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.depth,
                             n_head=self.n_head, n_kv_head=self.n_kv_head, n_embd=self.n_embd,
                             mlp_hidden=self.mlp_hidden, dropout=self.dropout)

GPU = dict(depth=12, n_embd=768, n_head=12, block_size=1024, batch_size=32, max_iters=5000, lr=6e-4,
           eval_interval=1000)  # the defaults that change on CUDA: GPT-2 small's shape and recipe

# ----------------------------------------------------------------------------- optimisation

def newton_schulz(G, steps=5, eps=1e-7):
    """Approximately U V^T for G = U S V^T: a quintic iteration X <- aX + b(XX^T)X + c(XX^T)^2 X
    whose coefficients push every singular value towards 1 in a few steps (to ~[0.7, 1.2])."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(0) > X.size(1)
    X = X.T if tall else X  # iterate on the smaller Gram matrix
    X = X / (X.norm() + eps)  # the Frobenius norm bounds the spectral norm: every sigma <= 1
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return (X.T if tall else X).to(G.dtype)

class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz (Jordan et al. 2024), for 2D weights:
    B <- mu B + g; U = g + mu B (Nesterov); W <- W(1 - lr wd) - lr sqrt(max(1, rows/cols)) NS(U)."""

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.0, ns_steps=5):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # --resume: set_optimizer_state_dict calls step(closure=None)
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(mu).add_(p.grad)
                update = newton_schulz(p.grad.add(buf, alpha=mu), group["ns_steps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)

def make_optimizers(model, cfg):
    """AdamW, decaying matrices and embeddings only; optimizer=muon: Muon for blocks' 2D weights."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    muon = {n: p for n, p in params.items()
            if cfg.optimizer == "muon" and ".h." in n and p.dim() == 2}
    decay = [p for n, p in params.items() if p.dim() >= 2 and n not in muon]
    no_decay = [p for n, p in params.items() if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    # fused: one kernel for the whole update; on CPU torch would otherwise loop over the tensors
    optimizers = [torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)]
    if muon:
        optimizers.append(Muon(list(muon.values()), lr=cfg.muon_lr, weight_decay=cfg.weight_decay))
    return optimizers

def lr_factor(step, cfg):
    """Factor on the peak lr: linear warmup, then cosine to min_lr_frac, or (wsd) flat, linear."""
    warmup = max(1, int(cfg.warmup_frac * cfg.max_iters))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, cfg.max_iters - warmup))
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = cfg.max_iters * (1 - cfg.decay_frac)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, cfg.max_iters - decay_start))
    return 1.0 - (1 - cfg.min_lr_frac) * progress

# ----------------------------------------------------------------------------- data

def prepare_data(cfg, rank=0):
    """(train ids, val ids, tokenizer): tokenised once, by rank 0, to a memmap later runs reuse."""
    shards = load_fineweb(cfg) if cfg.data == "fineweb" else None
    if shards:
        return shards
    name, text = load_text(cfg)
    key = hashlib.sha1(f"{cfg.tokenizer}|{cfg.vocab_size}|".encode() + text.encode()).hexdigest()
    folder = os.path.join(cfg.cache_dir, f"{name}-{os.path.basename(cfg.tokenizer)}-{key[:10]}")
    if rank == 0 and not os.path.exists(folder):
        tok = gpt.Tokenizer.from_spec(cfg.tokenizer, text, cfg.vocab_size)
        ids = np.array(tok.encode(text), dtype=np.uint16 if tok.n_vocab < 2 ** 16 else np.uint32)
        tmp = f"{folder}.tmp{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        np.save(os.path.join(tmp, "ids.npy"), ids)
        torch.save(tok.state_dict(), os.path.join(tmp, "tokenizer.pt"))
        os.replace(tmp, folder)  # the whole cache appears at once, or not at all
    if dist.is_initialized():
        dist.barrier()
    tok = gpt.Tokenizer.from_state_dict(torch.load(f"{folder}/tokenizer.pt", weights_only=True))
    ids = np.load(os.path.join(folder, "ids.npy"), mmap_mode="r")
    split = int(len(ids) * (1 - cfg.val_frac))
    if min(split, len(ids) - split) < cfg.block_size + 1:
        raise ValueError(f"{split:,} train and {len(ids) - split:,} val tokens are too few for"
                         f" block_size={cfg.block_size}: use more text or a smaller --block_size")
    return ids[:split], ids[split:], tok

def get_batch(ids, starts, block_size, device):
    """Inputs x and next-token targets y, (B, block_size) each, from windows at `starts`."""
    x = torch.from_numpy(np.stack([ids[s:s + block_size] for s in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([ids[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64))
    return x.to(device), y.to(device)

def step_starts(n_tokens, cfg, generator, world):
    """Window starts of one optimizer step, (grad_accum, world, batch_size). Every process draws
    the same global batch and keeps its slice: any world size or grad_accum is the same run."""
    count = cfg.grad_accum * world * cfg.batch_size
    starts = torch.randint(n_tokens - cfg.block_size, (count,), generator=generator)  # s + T < n
    return starts.view(cfg.grad_accum, world, cfg.batch_size).numpy()

# ----------------------------------------------------------------------------- distributed, resume

def wrap(model, cfg, device, world):
    """DDP or FSDP2 when distributed, then optionally torch.compile."""
    if world > 1 and cfg.fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel
        ids = [torch.device(device).index] if "cuda" in device else None
        model = DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if cfg.compile else model

def state_options(cfg):
    """FSDP: gather whole tensors on the CPU, so the checkpoint does not depend on the sharding."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    full = cfg.fsdp and dist.is_initialized()
    return StateDictOptions(full_state_dict=True, cpu_offload=True) if full else None

def save_state(path, raw, optimizers, tok, cfg, step, generator):
    """What --resume needs: weights, optimizer moments, the step, the RNGs (the data order's)."""
    from torch.distributed.checkpoint import state_dict
    model_state = state_dict.get_model_state_dict(raw, options=state_options(cfg))
    opt_states = [state_dict.get_optimizer_state_dict(raw, opt, options=state_options(cfg))
                  for opt in optimizers]
    if not dist.is_initialized() or dist.get_rank() == 0:
        gpt.save_checkpoint(path, raw, tok, step=step, config=cfg, optimizer=opt_states,
                            model_state=model_state, rng=gpt.rng_state(generator))

# what --resume may change: where the run goes and how it is watched, not what it computes
RESUME_MAY_CHANGE = ("resume", "stop_after", "out_dir", "cache_dir", "device", "compile", "fsdp",
                     "eval_interval", "eval_iters", "sample_tokens", "plot")

def load_state(ckpt, raw, optimizers, cfg, generator):
    """Weights, optimizer moments and RNG states back from ckpt; returns its step."""
    from torch.distributed.checkpoint import state_dict
    state_dict.set_model_state_dict(raw, ckpt["model"], options=state_options(cfg))
    for opt, state in zip(optimizers, ckpt["optimizer"]):
        state_dict.set_optimizer_state_dict(raw, opt, state, options=state_options(cfg))
    gpt.set_rng_state(ckpt["rng"], generator)
    return ckpt["step"]

# ----------------------------------------------------------------------------- eval and report

@gpt.inference
def estimate_loss(model, train, val, cfg, device, rank, world):
    """Mean loss over the same eval_iters batches each time (a fixed generator): evals compare."""
    losses = {}
    for split, ids in (("train", train), ("val", val)):
        g = torch.Generator().manual_seed(cfg.seed + 1)
        total = torch.zeros((), device=device)
        for _ in range(cfg.eval_iters):
            for starts in step_starts(len(ids), cfg, g, world)[:, rank]:  # the whole global batch
                x, y = get_batch(ids, starts, cfg.block_size, device)
                with gpt.autocast(device):
                    total += model(x, y)[1].float()
        if world > 1:
            dist.all_reduce(total)
        losses[f"{split}_loss"] = total.item() / (cfg.eval_iters * cfg.grad_accum * world)
    return losses

def sample_text(raw, tok, cfg, device):
    """A sample from <|endoftext|>, on its own generator: sampling never changes the run."""
    g = torch.Generator(device).manual_seed(cfg.seed)
    if cfg.fsdp and dist.is_initialized():
        raw.unshard()  # FSDP2: gather the root's own weights; every rank samples the same tokens
    with gpt.autocast(device):
        out = raw.generate([[tok.eot_id]], min(cfg.sample_tokens, cfg.block_size - 1),
                           temperature=0.8, top_k=50, generator=g)
    if cfg.fsdp and dist.is_initialized():
        raw.reshard()
    return tok.decode(out[0])

# Dense bf16 tensor-core peaks from NVIDIA's data sheets, which print twice these "with sparsity"
# (V100 has no bf16: its fp16 peak). The A10G (AWS only) has no data sheet: 70 is the quoted figure.
PEAK_FLOPS = {"H200": 989e12, "H200 NVL": 835e12, "H100": 989e12, "H100 PCIE": 756e12,
              "H100 NVL": 835e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
              "A10": 125e12, "A10G": 70e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12,
              "V100 PCIE": 112e12}

def peak_flops(name):
    """The peak of the longest key whose words are all words of the device name, so that
    "NVIDIA H100 PCIe" is not the SXM part (named "NVIDIA H100 80GB HBM3") and "L40" is no L4."""
    words = set(name.upper().replace("-", " ").split())
    keys = [key for key in PEAK_FLOPS if set(key.split()) <= words]
    return PEAK_FLOPS[max(keys, key=len)] if keys else None

def report(raw, cfg, tokens_seen, train_seconds, peak, world):
    """Parameters, tokens, Chinchilla ratio, compute, throughput, MFU (peak: FLOP/s per device)."""
    n_params = gpt.count_params(raw)
    flops = raw.flops_per_token(cfg.block_size)
    tok_s = tokens_seen / max(train_seconds, 1e-9)
    mfu = f"{flops * tok_s / world / peak:.1%} of {peak / 1e12:.0f} TFLOP/s per device" if peak \
        else "n/a (no known peak for this device)"
    lines = [f"parameters        {n_params / 1e6:.2f}M",
             f"tokens seen       {tokens_seen / 1e6:.2f}M",
             f"tokens/parameter  {tokens_seen / n_params:.2f} (Chinchilla-optimal is ~20)",
             f"compute C = 6ND   {6 * n_params * tokens_seen:.3g} FLOPs"
             f" ({flops * tokens_seen:.3g} with attention)",
             f"throughput        {tok_s:,.0f} tokens/s ({train_seconds:.0f} s of training)",
             f"MFU               {mfu}"]
    return "\n".join(lines), dict(params=n_params, tokens=tokens_seen, tok_per_s=tok_s)

# ----------------------------------------------------------------------------- training

def train_step(model, optimizers, train_ids, cfg, data_gen, step, device, rank, world):
    """One optimizer step over grad_accum micro-batches; returns the mean micro-batch loss."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = (cfg.muon_lr if isinstance(opt, Muon) else cfg.lr) * lr_factor(step, cfg)
    starts = step_starts(len(train_ids), cfg, data_gen, world)
    total = 0.0
    for micro in range(cfg.grad_accum):
        last = micro == cfg.grad_accum - 1
        x, y = get_batch(train_ids, starts[micro, rank], cfg.block_size, device)
        if cfg.fsdp and world > 1:
            model.set_requires_gradient_sync(last)
        sync = model.no_sync() if world > 1 and not cfg.fsdp and not last else nullcontext()
        with sync, gpt.autocast(device):
            _, loss = model(x, y)
        (loss / cfg.grad_accum).backward()  # the mean over all micro-batches
        total += loss.item() / cfg.grad_accum
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return total

def train(cfg):
    """Train, evaluate, checkpoint; returns a dict with the eval history and the report."""
    rank, world, device = gpt.setup_distributed(cfg.device)
    master = rank == 0
    plt = gpt.pyplot(cfg.plot) if master else None
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    with gpt.bad_input():  # the checkpoint and data the user named: one line, before any work
        ckpt = gpt.load_checkpoint(ckpt_path) if cfg.resume else None
        if ckpt:
            gpt.check_resume(ckpt_path, ckpt, cfg, free=RESUME_MAY_CHANGE)
        train_ids, val_ids, tok = prepare_data(cfg, rank)
    torch.manual_seed(cfg.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    raw = gpt.GPT(cfg.model_config(tok.model_vocab_size)).to(device)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    model = wrap(raw, cfg, device, world)
    optimizers = make_optimizers(raw, cfg)
    start = load_state(ckpt, raw, optimizers, cfg, data_gen) if ckpt else 0
    log = gpt.RunLog(cfg.out_dir, step=start) if master else None
    tokens_per_step = cfg.grad_accum * world * cfg.batch_size * cfg.block_size
    if master:
        print(f"{gpt.count_params(raw) / 1e6:.2f}M parameters, {len(train_ids):,} train tokens,"
              f" vocab {tok.n_vocab}, {world} x {device}, {tokens_per_step:,} tokens/step"
              + (f", resuming at step {start}" if start else ""))
    end = min(cfg.max_iters, cfg.stop_after or cfg.max_iters)
    history = []
    train_seconds = 0.0
    loss_value = float("nan")
    bar = tqdm(range(start, end + 1), initial=start, total=end + 1, disable=not master)
    for step in bar:
        if step % cfg.eval_interval == 0 or step == end:
            losses = estimate_loss(model, train_ids, val_ids, cfg, device, rank, world)
            sample = sample_text(raw, tok, cfg, device) if cfg.sample_tokens else ""
            row = dict(step=step, **losses, lr=optimizers[0].param_groups[0]["lr"],
                       tokens=step * tokens_per_step, time=train_seconds)
            history.append(row)
            if master:
                bar.write(f"step {step}: train loss {row['train_loss']:.4f},"
                          f" val loss {row['val_loss']:.4f}")
                bar.write(f"  sample: {sample[:200]!r}")
                log(**row)
            if step > start or step == end:
                save_state(ckpt_path, raw, optimizers, tok, cfg, step, data_gen)
        if step == end:
            break
        t0 = time.perf_counter()
        loss_value = train_step(model, optimizers, train_ids, cfg, data_gen, step, device, rank,
                                world)
        train_seconds += time.perf_counter() - t0
        tok_s = (step + 1 - start) * tokens_per_step / train_seconds
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:,.0f}")
    bar.close()
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.startswith("cuda") else None
    text, stats = report(raw, cfg, (end - start) * tokens_per_step, train_seconds, peak, world)
    if master:
        print(text)
        if len(history) > 1:
            print(f"val loss {history[0]['val_loss']:.3f} -> {history[-1]['val_loss']:.3f};"
                  f" checkpoint: {ckpt_path}")
        if plt:
            png = os.path.join(cfg.out_dir, "loss.png")
            gpt.plot_curves(plt, log, ["train_loss", "val_loss"], png)
    return dict(history=history, final_train_loss=loss_value, config=cfg, **stats)

def main(cfg):
    try:
        return train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

# ----------------------------------------------------------------------------- real data
# Not the lecture: a GPU run wants more text, so --data also takes a local file, a URL
# (tiny-shakespeare by name) or FineWeb (Penedo et al. 2024) as GPT-2 token shards, cached in
# cache_dir/downloads; offline, the run says so and falls back to the embedded corpus.

SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                   "tinyshakespeare/input.txt")
FINEWEB_URL = ("https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main/"
               "fineweb_{split}_{index:06d}.bin")  # shard 0 is validation, 1.. are training
SHARD_MAGIC = 20240520  # a shard: 256 int32 (magic, version 1, token count), then uint16 ids

def load_text(cfg):
    """(name, text) of the corpus that cfg.data names."""
    path = cfg.data
    if cfg.data in ("shakespeare", "fineweb") or "://" in cfg.data:
        path = download(cfg.data if "://" in cfg.data else SHAKESPEARE_URL, cfg.cache_dir)
    if cfg.data == "embedded" or path is None:
        return "embedded", gpt.embedded_corpus()
    return os.path.splitext(os.path.basename(path))[0], gpt.read_text(path)

def download(url, cache_dir):
    """The cached copy of url, downloading it once; None when offline."""
    path = os.path.join(cache_dir, "downloads", os.path.basename(url.rstrip("/")))
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                with open(path + ".part", "wb") as f:
                    shutil.copyfileobj(response, f)
        except OSError as e:  # urllib's URLError included: offline
            print(f"could not download {url} ({e}): falling back to the embedded corpus")
            return None
        os.replace(path + ".part", path)
    return path

def read_shard(path):
    """Token ids of one FineWeb shard, memory-mapped past its header."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    if len(header) < 3 or header[0] != SHARD_MAGIC or header[1] != 1:
        raise ValueError(f"{path} is not a GPT-2 token shard (bad magic number or version)")
    ids = np.memmap(path, dtype=np.uint16, mode="r", offset=256 * 4)
    if len(ids) != header[2]:
        raise ValueError(f"{path} is truncated: its header says {header[2]}, it has {len(ids)}")
    return ids

def load_fineweb(cfg):
    """(train ids, val ids, tokenizer) from shards 1 and 0, or None when offline."""
    paths = [download(FINEWEB_URL.format(split=s, index=i), cfg.cache_dir)
             for s, i in (("train", 1), ("val", 0))]
    if None in paths:
        return None
    tok = gpt.Tokenizer.from_spec(cfg.tokenizer if cfg.tokenizer.endswith(".tiktoken") else "gpt2")
    return read_shard(paths[0]), read_shard(paths[1]), tok

if __name__ == "__main__":
    main(gpt.parse_args(TrainConfig, gpu=GPU))
