"""Supervised fine-tuning: teach a pretrained GPT to follow instructions, fully or with LoRA/QLoRA.

A chat template wraps each turn in special tokens, and the loss is the next-token cross-entropy
on the assistant's tokens only: L = -sum_t m_t log p(x_t | x_<t) / sum_t m_t. Short examples
are packed into full rows with a block-diagonal attention mask. LoRA (Hu et al. 2021) freezes W
and learns a low-rank update, W' = W + (alpha/r) B A with B = 0 at the start; QLoRA (Dettmers et
al. 2023) also stores the frozen W in 4-bit NormalFloat (NF4) with blockwise absmax scales that
are themselves quantised to 8-bit floats (double quantisation).

    python sft.py                             # tiny base trained here, then full / LoRA / QLoRA
    python sft.py --init=out/train/ckpt.pt    # fine-tune the model `python train.py` wrote
    python sft.py --methods=lora --lora_r=4 --plot   # out/sft/log.png: the training loss
    python sft.py --resume                    # finish an interrupted run where it stopped
    torchrun --nproc_per_node=2 sft.py        # DDP: each process takes a slice of every batch

On CPU you see a tiny base pretrained for a minute, then three fine-tunes on one-line
instructions (count the letters or the vowels of a word, its first or last letter, the parity
of a number), and held-out exact match before and after, per method and per task, with
trainable parameters and weight memory. Each method is saved in out/sft/ as a plain GPT for
`dpo.py --init`: ckpt.pt (full), ckpt_lora.pt and ckpt_qlora.pt (adapters merged into W).
Left out: QLoRA's paged optimizers, gradient checkpointing, adapter-only checkpoints (each is
saved merged, as a plain GPT), and real or multi-turn instruction data (the task is synthetic).
"""
import copy
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
from tqdm import tqdm

import gpt

@dataclass
class SFTConfig:
    init: str = ""  # checkpoint to fine-tune (e.g. out/train/ckpt.pt); empty = pretrain a tiny base
    base_steps: int = 300  # pretraining steps of that tiny base
    methods: str = "full,lora,qlora"  # comma-separated, from full | lora | qlora, in this order
    steps: int = 200  # fine-tuning steps per method
    batch_size: int = 16  # packed rows per step, over all processes
    lr: float = 3e-3  # peak AdamW learning rate of full fine-tuning (cosine decay to 0)
    lora_lr: float = 5e-3  # peak learning rate of LoRA and QLoRA, whose adapters start at zero
    lora_r: int = 8  # LoRA rank r
    lora_alpha: float = 16.0  # LoRA alpha: the update is (alpha / r) B A
    lora_targets: str = "c_attn,c_proj,c_fc"  # Linear layers in each block that get adapters
    n_train: int = 4000  # training instructions
    n_eval: int = 200  # held-out instructions, over words and numbers never seen in training
    ckpt_interval: int = 50  # steps between checkpoints of the method in training
    stop_after: int = 0  # stop after this many steps over all methods, as if pre-empted; 0 = never
    resume: bool = False  # keep the finished methods in out_dir, continue the one that stopped
    plot: bool = False  # out_dir/log.png: each method's training loss (needs matplotlib)
    out_dir: str = "out/sft"  # ckpt.pt, ckpt_lora.pt, ckpt_qlora.pt, log.jsonl (and base.pt)
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # data, initialisation and batch order

    def __post_init__(self):
        self.method_list = [m for m in self.methods.split(",") if m]
        for name in ("base_steps", "steps", "batch_size", "lora_r", "n_train", "n_eval",
                     "ckpt_interval", "lr", "lora_lr", "lora_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name}={getattr(self, name)}: must be positive")
        if self.stop_after < 0:
            raise ValueError(f"--stop_after={self.stop_after}: use 0 (never) or a step count")
        if set(self.method_list) - {"full", "lora", "qlora"} or not self.method_list:
            raise ValueError(f"--methods={self.methods}: a comma-separated list of full,lora,qlora")
        if set(self.lora_targets.split(",")) - {"c_attn", "c_proj", "c_fc"}:
            raise ValueError(f"--lora_targets={self.lora_targets}: choose among c_attn,c_proj,c_fc")

GPU = dict(base_steps=2000, steps=1000)  # the defaults that change on a CUDA device

# ----------------------------------------------------------------------------- packing

def pack(examples, block_size):
    """Next-fit packing of (ids, mask) examples into rows (inputs, targets, doc) of at most
    block_size inputs; doc numbers each position's example, for the block-diagonal mask."""
    rows, row = [], ([], [], [])
    for n, (ids, mask) in enumerate(examples):
        if len(ids) - 1 > block_size:
            raise ValueError(f"example {n} has {len(ids)} tokens, more than block_size={block_size}"
                             " + 1: shorten it or fine-tune a model with a longer context")
        if len(row[0]) + len(ids) - 1 > block_size:
            rows.append(row)
            row = ([], [], [])
        row[0].extend(ids[:-1])  # x_t; the last token only ever appears as a target
        row[1].extend(t if m else -1 for t, m in zip(ids[1:], mask[1:]))  # y_t = x_{t+1} if m_{t+1}
        row[2].extend([n] * (len(ids) - 1))
    return rows + ([row] if row[0] else [])

def collate(rows, device):
    """(idx, targets, doc), each (B, T) for T the longest row; padding has target -1 and doc -1."""
    T = max(len(r[0]) for r in rows)
    return tuple(torch.tensor([r[i] + [fill] * (T - len(r[i])) for r in rows], device=device)
                 for i, fill in ((0, 0), (1, -1), (2, -1)))

class PackedGPT(nn.Module):
    """A GPT on packed rows, each example getting exactly the logits it would get alone: attention
    stays inside it and positions restart. gpt.GPT.hidden takes only a (B, T) padding mask."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, doc):  # idx, doc: (B, T) -> logits (B, T, vocab)
        m, cfg = self.model, self.model.config
        t = torch.arange(idx.size(1), device=idx.device)
        first = F.pad(doc[:, 1:] != doc[:, :-1], (1, 0), value=True)  # (B, T): an example starts
        positions = t - torch.where(first, t, 0).cummax(-1).values  # (B, T): 0, 1, 2.. per example
        # (B, T, T): block-diagonal and causal
        mask = (doc[:, :, None] == doc[:, None, :]) & (t[:, None] >= t[None, :])
        x = m.transformer.wte(idx)  # (B, T, n_embd)
        rope = None
        if cfg.pos == "rope":
            rope = gpt.rope_angles(positions, cfg.n_embd // cfg.n_head, cfg.rope_base)
        else:
            x = x + m.transformer.wpe(positions)
        x = m.transformer.drop(x)
        for layer, block in enumerate(m.transformer.h):
            x = block(x, rope, mask[:, None], False, None, layer)
        return m.lm_head(m.transformer.ln_f(x))

# ----------------------------------------------------------------------------- LoRA and QLoRA

def nf4_levels():
    """The 16 NF4 values: quantiles of N(0, 1) scaled to [-1, 1], 8 positive and 7 negative so 0
    is exact; each code gets about equal mass of normal weights; delta keeps the ends finite."""
    delta = 0.5 * (1 / 32 + 1 / 30)
    positive = torch.special.ndtri(torch.linspace(1 - delta, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(1 - delta, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]) / positive.max()
    return levels.sort().values.float()

NF4 = nf4_levels()
NF4_BLOCK = 64  # weights per absmax scale
ABSMAX_BLOCK = 256  # absmax scales per second-level (fp32) scale in the double quantisation
E4M3_MAX = 448.0  # the largest float8_e4m3fn value: each block of constants is scaled to fill it

def quantize_nf4(w):
    """Blockwise NF4: each block of 64 weights over its absmax c, each value the index of its
    nearest level, two 4-bit codes per byte. The constants c are double-quantised: c - mean(c) to
    e4m3 floats in blocks of 256 with an fp32 scale each (0.127 bit per weight, not 0.5); e4m3
    errs by 2^-4 of each constant, where int8's even steps would swamp the small ones."""
    flat = w.detach().float().flatten()
    blocks = F.pad(flat, (0, -flat.numel() % NF4_BLOCK)).view(-1, NF4_BLOCK)  # (n_blocks, 64)
    absmax = blocks.abs().amax(1)  # c_b
    midpoints = (NF4[1:] + NF4[:-1]).to(w.device) / 2
    # the nearest level of each weight
    codes = torch.bucketize(blocks / absmax.clamp(min=1e-12)[:, None], midpoints).to(torch.uint8)
    mean = absmax.mean()
    centred = F.pad(absmax - mean, (0, -absmax.numel() % ABSMAX_BLOCK)).view(-1, ABSMAX_BLOCK)
    scale = centred.abs().amax(1).clamp(min=1e-12) / E4M3_MAX  # (n_blocks / 256,) fp32 s_k
    absmax_codes = (centred / scale[:, None]).to(torch.float8_e4m3fn).flatten()[:absmax.numel()]
    return dict(codes=codes[:, 0::2] << 4 | codes[:, 1::2], absmax_codes=absmax_codes,
                absmax_scale=scale, absmax_mean=mean, shape=torch.tensor(w.shape))

def dequantize_nf4(q):
    """The float32 weight back from quantize_nf4: w ~ NF4[code] * c', c' = e4m3 * scale + mean."""
    n_blocks = q["absmax_codes"].numel()
    centred = F.pad(q["absmax_codes"].float(), (0, -n_blocks % ABSMAX_BLOCK)).view(-1, ABSMAX_BLOCK)
    absmax = (centred * q["absmax_scale"][:, None]).flatten()[:n_blocks] + q["absmax_mean"]  # c'
    codes = torch.stack([q["codes"] >> 4, q["codes"] & 15], -1).view(n_blocks, NF4_BLOCK)
    w = NF4.to(absmax.device)[codes.long()] * absmax[:, None]  # (n_blocks, 64)
    return w.flatten()[:int(q["shape"].prod())].view(q["shape"].tolist())

class LoRALinear(nn.Module):
    """y = x W^T + b + (alpha/r) x A^T B^T, W and b frozen, B zero at the start. With quantize, W
    is kept only in NF4 and dequantised at each forward (QLoRA); autograd then holds that W for
    the backward pass, where bitsandbytes would dequantise a second time instead."""

    def __init__(self, base, r, alpha, quantize=False):
        super().__init__()
        self.scale = alpha / r
        self.merged = False
        self.quantized = quantize
        if quantize:
            for name, t in quantize_nf4(base.weight).items():
                self.register_buffer(f"nf4_{name}", t)
            self.register_parameter("weight", None)
        else:
            self.weight = base.weight.requires_grad_(False)
        self.bias = None if base.bias is None else base.bias.requires_grad_(False)
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **like))  # (r, in)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **like))  # (out, r)

    def base_weight(self):
        if not self.quantized:
            return self.weight
        q = {name.removeprefix("nf4_"): t for name, t in self.named_buffers()}
        return dequantize_nf4(q).to(self.lora_A.dtype)

    def delta(self):
        return self.scale * self.lora_B @ self.lora_A  # (alpha/r) B A: (out, in), rank <= r

    def forward(self, x):
        y = F.linear(x, self.base_weight(), self.bias)
        if self.merged:
            return y
        return y + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)  # never forms B A

def apply_lora(model, r, alpha, targets=("c_attn", "c_proj", "c_fc"), quantize=False):
    """Freeze the model, then put a LoRALinear (W in NF4 if quantize) on each target Linear."""
    model.requires_grad_(False)
    for block in model.transformer.h:
        for parent in block.modules():
            for name, child in list(parent.named_children()):
                if name in targets and isinstance(child, nn.Linear):
                    setattr(parent, name, LoRALinear(child, r, alpha, quantize))
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError(f"no Linear layer named one of {targets} in the blocks: try c_attn")
    return model

class NewTokenRows(nn.Module):
    """W with the given tokens' rows trainable, the rest frozen (PEFT's trainable_token_indices)."""

    def __init__(self, weight, ids):
        super().__init__()
        self.register_buffer("ids", torch.tensor(ids, device=weight.device))
        self.rows = nn.Parameter(weight.detach()[self.ids].clone())  # (len(ids), n_embd)

    def forward(self, weight):
        return weight.index_put((self.ids,), self.rows)

@torch.no_grad()
def merge_lora(model, unmerge=False):
    """W <- W + (alpha/r) B A: inference costs nothing extra; unmerge takes it back out of W."""
    for layer in [m for m in model.modules() if isinstance(m, LoRALinear)]:
        if layer.quantized:
            raise ValueError("cannot merge into a 4-bit NF4 weight: keep QLoRA adapters apart")
        if layer.merged == unmerge:
            layer.weight += -layer.delta() if unmerge else layer.delta()
            layer.merged = not unmerge
    return model

@torch.no_grad()
def merged_state(model):
    """A plain gpt.GPT's state dict equal to the model: W' = W + (alpha/r) B A, W dequantised."""
    with torch.device("meta"):
        names = gpt.GPT(model.config).state_dict()
    state = {}
    for name in names:
        parent, _, attr = name.rpartition(".")
        layer = model.get_submodule(parent)
        if isinstance(layer, LoRALinear) and attr == "weight":
            state[name] = layer.base_weight() + (0 if layer.merged else layer.delta())
        else:
            state[name] = getattr(layer, attr)
    return state

def trainable_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

def weight_bytes(model):
    """Bytes of every parameter and buffer, tied weights counted once."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())

def prepare(base, method, cfg, tok):
    """A copy of the base: all of it trainable, or adapters plus the special tokens' rows."""
    model = copy.deepcopy(base)
    if method != "full":
        targets = tuple(cfg.lora_targets.split(","))
        apply_lora(model, cfg.lora_r, cfg.lora_alpha, targets, quantize=method == "qlora")
        # pretraining encoded ordinary text only: the chat tokens' rows were never fed in (and as
        # outputs only learned never to be said), so they learn too; the rest of W stays frozen
        special = [tok.special(name) for name in gpt.SPECIAL_TOKENS]
        shared = {}
        for module in (model.transformer.wte, model.lm_head):  # a tied head shares its rows
            rows = shared.setdefault(id(module.weight), NewTokenRows(module.weight, special))
            parametrize.register_parametrization(module, "weight", rows)
    return model

# ----------------------------------------------------------------------------- training

def train_sft(model, rows, opt, g, cfg, start, device, after_step, rank=0, world=1, desc="sft"):
    """Cosine lr on the packed loss from step start to cfg.steps; after_step(step, loss) -> stop?
    Returns the steps done. Each process keeps its slice of the same global batch and divides its
    summed loss by the global token count: the DDP mean of gradients is one process's."""
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} does not split evenly over {world} ranks")
    packed = PackedGPT(model)
    if world > 1:
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        packed = nn.parallel.DistributedDataParallel(packed, device_ids=ids)
    lr = opt.defaults["lr"]
    done = start
    model.train()
    for step in tqdm(range(start, cfg.steps), desc=desc, leave=False, disable=rank != 0):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        batch = [rows[i] for i in torch.randint(len(rows), (cfg.batch_size,), generator=g).tolist()]
        n_targets = sum(t != -1 for row in batch for t in row[1])  # over the global batch
        idx, targets, doc = collate(batch[rank::world], device)
        with gpt.autocast(device):
            logits = packed(idx, doc)
        nll = F.cross_entropy(gpt.upcast(logits).flatten(0, 1), targets.flatten(),
                              ignore_index=-1, reduction="sum")
        loss = nll * world / n_targets  # the mean over the global batch, once DDP averages
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        shown = loss.detach() / world  # this process's share of the global mean
        if world > 1:
            dist.all_reduce(shown)
        done = step + 1
        if after_step(done, shown.item()):
            break
    model.eval()
    return done

# ----------------------------------------------------------------------------- main

def main(cfg):
    rank, world, device = gpt.setup_distributed(cfg.device)
    master = rank == 0
    say = print if master else (lambda *a, **k: None)  # rank 0 prints and logs, the others not
    plt = gpt.pyplot(cfg.plot and master)
    torch.manual_seed(cfg.seed)
    train_set, eval_set = gpt.make_task(cfg.n_train, cfg.n_eval, cfg.seed)
    with gpt.bad_input():  # a missing, garbage or mismatched checkpoint: one line, before any work
        ckpts = resumable(cfg) if cfg.resume else {}
        base, tok = load_base(cfg, device, train_set + eval_set)
    say(f"base model: {cfg.init or 'a tiny byte-level GPT pretrained here (out_dir/base.pt)'}")
    if base is None:
        base, tok = gpt.base_model(cfg.base_steps, device)
        if master:  # what --resume starts from, rather than pretraining again
            gpt.save_checkpoint(os.path.join(cfg.out_dir, "base.pt"), base, tok)
    examples = [(gpt.render_chat(gpt.chat(x, a), tok), gpt.loss_mask(gpt.chat(x, a), tok))
                for _, x, a in train_set]
    T = base.config.block_size
    rows = pack(examples, T)
    n_tokens = sum(len(ids) - 1 for ids, _ in examples)
    longest = max(len(ids) - 1 for ids, _ in examples)
    say(f"{gpt.count_params(base) / 1e6:.2f}M parameters; {len(examples)} instructions packed into"
        f" {len(rows)} rows of {T} ({n_tokens / (len(rows) * T):.0%} full; one example per row"
        f" would be {n_tokens / (len(examples) * longest):.0%} full)")
    say("e.g. " + repr(tok.decode(examples[0][0])))
    done = [i * cfg.steps + ckpts[m]["step"] for i, m in enumerate(cfg.method_list) if m in ckpts]
    log = gpt.RunLog(cfg.out_dir, step=max(done) + 1 if cfg.resume else 0) if master else say
    results = []
    outputs = {}
    acc0, nll0, outputs["base"] = gpt.evaluate_instructions(base, tok, eval_set)
    for i, method in enumerate(cfg.method_list):
        ckpt = ckpts.get(method)
        path = ckpt_path(cfg, method)
        if ckpt and "result" in ckpt:  # finished before this --resume
            results.append(ckpt["result"])
            outputs[method] = ckpt["outputs"]
            continue
        if 0 < cfg.stop_after <= i * cfg.steps:
            break
        torch.manual_seed(cfg.seed)  # every method starts alike, whichever ran before it
        model = prepare(base, method, cfg, tok)
        before = (acc0, nll0)
        if method == "qlora":  # NF4 rounding moves the base
            before = gpt.evaluate_instructions(model, tok, eval_set)[:2]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                lr=cfg.lr if method == "full" else cfg.lora_lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(cfg.seed)
        t0 = time.perf_counter()
        if ckpt:  # --resume: this method stopped at ckpt["step"]
            model.load_state_dict(ckpt["trainable"] or ckpt["model"], strict=False)
            opt.load_state_dict(ckpt["optimizer"])
            gpt.set_rng_state(ckpt["rng"], g)
            t0 -= ckpt["seconds"]

        def after_step(step, loss):
            done = i * cfg.steps + step  # over the whole run
            log(step=done, **{f"loss_{method}": loss})
            if master and (done == cfg.stop_after or step % cfg.ckpt_interval == 0):
                save(path, model, tok, method, step, opt, g, cfg, seconds=time.perf_counter() - t0)
            return done == cfg.stop_after
        start = ckpt["step"] if ckpt else 0
        if train_sft(model, rows, opt, g, cfg, start, device, after_step, rank, world,
                     desc=method) < cfg.steps:
            break
        seconds = time.perf_counter() - t0
        acc, nll, outputs[method] = gpt.evaluate_instructions(model, tok, eval_set)
        trainable = trainable_params(model)
        weights = weight_bytes(model)
        result = dict(method=method, trainable=trainable, weight_bytes=weights,
                      train_bytes=weights + 3 * 4 * trainable,  # + fp32 grads and two Adam moments
                      acc_before=before[0], acc_after=acc, nll_before=before[1], nll_after=nll,
                      seconds=seconds)
        if method == "lora":  # merging folds B A into W: same answers, no adapter cost at inference
            merged = gpt.evaluate_instructions(merge_lora(model), tok, eval_set[:50])[2]
            same = sum(m == o for m, o in zip(merged, outputs["lora"]))
            say(f"LoRA merged into W: {same}/{len(merged)} answers unchanged")
        if master:
            log(step=(i + 1) * cfg.steps, **result)
            save(path, model, tok, method, cfg.steps, opt, g, cfg, seconds=seconds, result=result,
                 outputs=outputs[method])
            say(f"saved {path} (a plain GPT{'' if method == 'full' else ', adapters merged'})")
        results.append(result)
    if plt:
        gpt.plot_curves(plt, log, [f"loss_{m}" for m in cfg.method_list],
                        os.path.join(cfg.out_dir, "log.png"))
    if len(results) < len(cfg.method_list):
        say(f"stopped after {cfg.stop_after} steps: python sft.py --resume continues")
    elif master:
        report(results, outputs, eval_set, gpt.count_params(base))
    if dist.is_initialized():
        dist.destroy_process_group()
    return results

def report(results, outputs, eval_set, n_params):
    print(f"\nheld-out exact match over {len(eval_set)} instructions"
          f" ({n_params / 1e6:.2f}M-parameter base)")
    print(f"{'method':<7} {'trainable':>15} {'weights':>9} {'+grads+Adam':>12} {'answer NLL':>13} "
          f"{'accuracy':>13} {'time':>6}")
    for r in results:
        print(f"{r['method']:<7} {r['trainable']:>8,} ({r['trainable'] / n_params:>4.0%}) "
              f"{r['weight_bytes'] / 2**20:>7.2f}MB {r['train_bytes'] / 2**20:>10.2f}MB "
              f"{r['nll_before']:>5.2f} -> {r['nll_after']:<5.2f} "
              f"{r['acc_before']:>4.0%} -> {r['acc_after']:<5.0%} {r['seconds']:>5.0f}s")
    print("(weights: every parameter and buffer, NF4 codes and scales included; +grads+Adam: 12"
          " bytes per trainable parameter, LoRA's being its adapters and the special tokens' rows)")
    print("\naccuracy by task  " + "".join(f"{name:>8}" for name in gpt.TASKS))
    for method, predicted in outputs.items():
        right = [[p == a for p, (t, _, a) in zip(predicted, eval_set) if t == name]
                 for name in gpt.TASKS]
        print(f"{method:<17} " + "".join(f"{sum(r) / max(len(r), 1):>8.0%}" for r in right))

# ----------------------------------------------------------------------------- --resume
# The workflow rather than the lecture: each method's checkpoint, and the run that --resume goes on.

def ckpt_path(cfg, method):
    return os.path.join(cfg.out_dir, "ckpt.pt" if method == "full" else f"ckpt_{method}.pt")

def save(path, model, tok, method, step, opt, g, cfg, **extra):
    """A plain GPT (adapters merged) for any script; trained tensors, optimizer, RNGs to resume."""
    lora = method != "full"
    trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    gpt.save_checkpoint(path, model, tok, step=step, config=cfg, optimizer=opt.state_dict(),
                        model_state=merged_state(model) if lora else None,
                        trainable=trained if lora else None, rng=gpt.rng_state(g), **extra)

def resumable(cfg):
    """{method: its checkpoint} of the run that --resume continues, saved with these settings."""
    paths = {m: ckpt_path(cfg, m) for m in cfg.method_list}
    ckpts = {m: gpt.load_checkpoint(p) for m, p in paths.items() if os.path.exists(p)}
    if not ckpts:
        raise ValueError(f"--resume, but {cfg.out_dir} holds no checkpoint: run without it")
    for m, ckpt in ckpts.items():  # all but these flags as saved
        gpt.check_resume(paths[m], ckpt, cfg, ("resume", "stop_after", "plot", "device",
                                               "ckpt_interval"))
    return ckpts

def load_base(cfg, device, examples):
    """The --init checkpoint, or on --resume out_dir/base.pt, checked for the chat tokens and
    context; (None, None) when the tiny base is to be pretrained here."""
    if not cfg.init and not cfg.resume:
        return None, None
    model, tok, _ = gpt.load_model(cfg.init or os.path.join(cfg.out_dir, "base.pt"), device)
    prompt = max(len(gpt.render_chat(gpt.chat(x), tok, True)) for _, x, _ in examples)
    gpt.check_chat_model(model, tok, prompt + 16)  # evaluation lets the model write 16 tokens
    return model.eval(), tok

if __name__ == "__main__":
    main(gpt.parse_args(SFTConfig, gpu=GPU))
