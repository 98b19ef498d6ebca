"""A masked diffusion language model, measured against its autoregressive twin.

Instead of writing left to right, start from [MASK] tokens and unmask a few positions per step,
in any order. Forward process: draw t ~ U(eps, 1) and mask each token independently with
probability t. A bidirectional transformer (gpt.py's blocks with the causal mask off) predicts
every masked token at once, never [MASK] itself (MDLM's zero masking). The loss
    L = E_t [ (1/t) * sum_i 1[x_t^i = MASK] * -log p(x_0^i | x_t) ] / (B * L)
(normalised by all B*L tokens, not by the number masked) is an upper bound on -log p(x_0) per
token (an ELBO), so exp(L) bounds the perplexity. Sahoo et al. 2024 (MDLM), Shi et al. 2024,
Nie et al. 2025 (LLaDA). Sampling commits the most confident (or random) predictions, optionally
block by block (semi-autoregressive), and infills between a prefix and a suffix.

    python diffusion_lm.py                  # train both models, then the steps/speed/quality table
    python diffusion_lm.py --resume --plot  # continue out/diffusion_lm/ckpt.pt exactly; loss.png
    python diffusion_lm.py --data=notes.txt --tokenizer=bpe --block_length=16 --temperature=0.8
    python bench/diffusion_lm.py            # tokens/s vs the AR twin at the closest sample quality

On CPU (a few minutes) both models train on the same batches, then a table of samplers (both
orders, one block or blocks of 8, several step counts) beside the AR twin, the ELBO bound beside
the AR validation NLL, one denoising trajectory, and infilling: a bound and an example.
Left out: other noise schedules, conditioning on t (the best p(x_0 | x_t) does not depend on it:
Ou et al. 2024), caching across steps, and models beyond about 1M parameters.
"""
import functools
import math
import os
import re
from collections import namedtuple
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import gpt

@dataclass
class DiffusionConfig:
    gen_length: int = 64  # tokens generated after a one-token prompt (windows of gen_length + 1)
    tokenizer: str = "byte"  # byte | bpe (trained on the corpus, vocab_size tokens)
    collapse_spaces: bool = True  # squeeze runs of spaces (else low-confidence writes only spaces)
    vocab_size: int = 512  # for tokenizer=bpe
    n_layer: int = 4  # both models: transformer blocks
    n_embd: int = 128  # both models: width
    n_head: int = 4  # both models: heads
    steps: int = 800  # training steps, each one update of each model on the same batch
    batch_size: int = 32  # sequences per step
    lr: float = 2e-3  # the AR twin's peak AdamW learning rate (cosine decay to 10%)
    diffusion_lr: float = 1e-3  # the diffusion model's: its 1/t-weighted loss is noisier
    eps: float = 1e-3  # t ~ U(eps, 1): keeps 1/t finite
    eval_interval: int = 100  # validate both models (and checkpoint them) every this many steps
    stop_after: int = 0  # end the run after this many steps, as if pre-empted (0 = never)
    resume: bool = False  # continue from out_dir/ckpt.pt exactly where it stopped
    plot: bool = False  # both models' training and validation curves as out_dir/loss.png
    step_counts: str = "8,16,32,64"  # diffusion sampling step counts compared in the table
    block_length: int = 8  # the table decodes both orders in one block and in blocks of this many
    temperature: float = 1.0  # sampling temperature for both models (0 = greedy)
    n_samples: int = 64  # samples per row of the table
    n_mc: int = 16  # Monte Carlo draws of t for the ELBO bound
    out_dir: str = "out/diffusion_lm"  # checkpoint of both models, log.jsonl, loss.png
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # data order, masking and sampling
    data: str = "embedded"  # embedded (Python's docs) | the path of a local UTF-8 text file

    @property
    def window(self):  # the one-token prompt plus the generated tokens
        return self.gen_length + 1

    def __post_init__(self):  # every field, before any work: a bad one would fail after training
        problems = [  # (bad, the one-line error), in the order they are reported
            (self.gen_length < 2, f"gen_length={self.gen_length} must be at least 2"),
            (self.tokenizer not in ("byte", "bpe"), f"tokenizer={self.tokenizer!r}: byte or bpe"),
            (self.vocab_size < 256, f"vocab_size={self.vocab_size} must be at least the 256 bytes"),
            *[(getattr(self, f) <= 0, f"{f}={getattr(self, f)} must be positive") for f in
              ("n_layer", "n_embd", "n_head", "steps", "batch_size", "eval_interval", "n_samples",
               "n_mc", "lr", "diffusion_lr")],
            (not 0 < self.eps < 1, f"eps={self.eps} must lie in (0, 1)"),
            (not 0 <= self.stop_after < self.steps,
             f"stop_after={self.stop_after} must be 0 (off) or below steps={self.steps}"),
            (self.block_length < 0 or self.block_length and self.gen_length % self.block_length,
             f"block_length={self.block_length} must divide gen_length={self.gen_length}, or be 0"),
            (self.temperature < 0, f"temperature={self.temperature} must be 0 (greedy) or more"),
            (not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device),
             f"device={self.device!r}: choose auto, cpu, cuda, cuda:N or mps"),
            (self.data != "embedded" and not os.path.isfile(self.data),
             f"data={self.data!r}: no such file; pass embedded or a local UTF-8 text file"),
            (os.path.isfile(self.out_dir), f"out_dir={self.out_dir!r} is a file: pass a directory"),
            (self.n_head > 0 and self.n_embd % (2 * self.n_head),  # RoPE rotates channel pairs
             f"n_head={self.n_head} must split n_embd={self.n_embd} in even widths")]
        for bad, error in problems:
            if bad:
                raise ValueError(error)
        n_blocks = self.gen_length // (self.block_length or self.gen_length)
        counts = self.step_counts.split(",")
        if not all(c.isdecimal() and int(c) > 0 and int(c) % n_blocks == 0 for c in counts):
            raise ValueError(f"step_counts={self.step_counts!r}: list multiples of the {n_blocks} "
                             f"blocks (gen_length / block_length), e.g. {n_blocks},{2 * n_blocks}")

GPU = dict(steps=5000)  # the defaults that change on CUDA

# ----------------------------------------------------------------------------- the process

def mask_id(model):
    """[MASK] is the last row of the (padded) vocabulary, a token the tokenizer never emits."""
    return model.config.vocab_size - 1

def forward_mask(x, t, mask, generator=None):
    """q(x_t | x_0): each token of x (B, L) becomes [MASK] with probability t (B,); x_t, mask."""
    masked = torch.rand(x.shape, generator=generator, device=x.device) < t[:, None]
    return torch.where(masked, torch.full_like(x, mask), x), masked

def denoiser_logits(model, x_t):
    """Logits of p(x_0 | x_t), (B, L, vocab), [MASK]'s at -inf in the loss, the bound and sampling:
    x_0 never holds it (MDLM's zero masking), so its tied embedding row needn't learn to be rare."""
    logits = gpt.upcast(model(x_t)[0])
    is_mask = torch.arange(logits.size(-1), device=logits.device) == mask_id(model)
    return logits.masked_fill(is_mask, -math.inf)

def diffusion_loss(model, x, t=None, eps=1e-3, generator=None, maskable=None):
    """L = sum over masked positions of -log p(x_0^i | x_t) / t, divided by B*L (every token,
    masked or not): an unbiased estimate of the ELBO's bound on -log p(x_0) per token.
    maskable (B, L) bool, optional: noise only these positions and divide by their count instead,
    which bounds -log p(those tokens | the rest) per token (infilling; LLaDA's SFT loss)."""
    B, L = x.shape
    if t is None:  # t ~ U(eps, 1), stratified across the batch: (u + b/B) mod 1 lowers the variance
        u = torch.rand((), generator=generator, device=x.device)
        u = (u + torch.arange(B, device=x.device) / B) % 1
        t = eps + (1 - eps) * u
    x_t, masked = forward_mask(x, t, mask_id(model), generator)
    if maskable is not None:
        masked &= maskable
        x_t = torch.where(masked, x_t, x)
    logits = denoiser_logits(model, x_t)  # (B, L, vocab): the model sees the whole noisy sequence
    nll = F.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="none").view(B, L)
    return (nll * masked / t[:, None]).sum() / (B * L if maskable is None else maskable.sum())

@torch.no_grad()
def elbo_nll(model, x, n_mc=16, eps=1e-3, generator=None, maskable=None):
    """The ELBO bound on -log p(x) per token (nats): diffusion_loss over n_mc draws of t,
    stratified over (eps, 1); with maskable, on -log p(x[maskable] | x[~maskable])."""
    total = 0.0
    for i in range(n_mc):  # one draw of u per stratum
        u = (i + torch.rand(x.size(0), generator=generator, device=x.device)) / n_mc
        t = eps + (1 - eps) * u
        total += diffusion_loss(model, x, t, generator=generator, maskable=maskable).item()
    return total / n_mc

# ----------------------------------------------------------------------------- sampling

def commit_schedule(n_tokens, steps):
    """How many tokens each step commits: as even as possible, summing to n_tokens."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    steps = min(steps, n_tokens)
    return [n_tokens // steps + (i < n_tokens % steps) for i in range(steps)]

@torch.no_grad()
def sample(model, length, steps, block_length=0, remasking="low_confidence", temperature=0.0,
           prefix=None, suffix=None, n=1, generator=None, history=None):
    """`length` tokens from all [MASK] between an optional prefix and suffix: each step predicts
    the current block's masked positions and commits the most confident (or random) few, for
    good. Returns (tokens (n, prefix + length + suffix), forward passes); history gets each step."""
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking={remasking!r}; choose low_confidence or random")
    prefix, suffix = list(prefix or []), list(suffix or [])
    block_length = block_length or length
    if length % block_length:
        raise ValueError(f"length={length} is not a multiple of block_length={block_length}")
    n_blocks = length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps={steps} must be a multiple of the number of blocks ({n_blocks})")
    MASK = mask_id(model)
    x = torch.tensor([prefix + [MASK] * length + suffix] * n, device=model.lm_head.weight.device)
    passes = 0
    with gpt.evaluating(model):
        for b in range(n_blocks):
            lo = len(prefix) + b * block_length  # this block spans [lo, lo + block_length)
            for k in commit_schedule(block_length, steps // n_blocks):
                logits = denoiser_logits(model, x).double()  # (n, T, vocab), float64 for Gumbel
                passes += 1
                x0, confidence = propose(logits, temperature, remasking, generator)
                confidence = confidence.masked_fill(x != MASK, -math.inf)  # the block's masked
                confidence[:, :lo], confidence[:, lo + block_length:] = -math.inf, -math.inf
                chosen = confidence.topk(k, dim=-1).indices  # (n, k) positions to commit now
                x.scatter_(1, chosen, x0.gather(1, chosen))
                if history is not None:
                    history.append((x.clone(), k))
    return x, passes

def propose(logits, temperature, remasking, generator):
    """A token per position (float64, so Gumbel keeps rare tokens) and a confidence to rank them."""
    if temperature > 0:  # Gumbel-max: argmax(z/T + g), g = -log(-log u), draws from softmax(z/T)
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
        x0 = (logits / temperature - torch.log(-torch.log(u.clamp_min(1e-300)))).argmax(-1)
    else:
        x0 = logits.argmax(-1)
    if remasking == "low_confidence":  # the model's probability of its own proposal
        confidence = F.softmax(logits, -1).gather(-1, x0[..., None])[..., 0]
    else:
        confidence = torch.rand(x0.shape, generator=generator, device=logits.device,
                                dtype=torch.float64)
    return x0, confidence

# ----------------------------------------------------------------------------- data and training

def load_data(cfg):
    """The corpus as bytes or BPE tokens: (tokenizer, train ids, val ids), a 90/10 split."""
    text = gpt.embedded_corpus() if cfg.data == "embedded" else gpt.read_text(cfg.data)
    if cfg.collapse_spaces:  # one space per run of spaces or tabs, at most one blank line
        text = re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+", " ", text))
    tok = gpt.Tokenizer.from_spec(cfg.tokenizer, text, cfg.vocab_size)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    if len(ids) < 10 * (cfg.window + 2):  # the 10% held out must hold a window and its target
        raise ValueError(f"--data={cfg.data} has {len(ids)} tokens, too few for windows of "
                         f"{cfg.window}: use a longer file or a smaller --gen_length")
    split = int(0.9 * len(ids))
    return tok, ids[:split], ids[split:]

def windows(ids, seq_len, batch, generator, device):
    starts = torch.randint(len(ids) - seq_len, (batch,), generator=generator)  # the last included
    return torch.stack([ids[s:s + seq_len + 1] for s in starts]).to(device)  # (B, seq_len + 1)

def val_windows(ids, seq_len, n):
    """n fixed, evenly spaced windows of the validation split."""
    starts = torch.linspace(0, len(ids) - seq_len - 1, n).long()
    return torch.stack([ids[s:s + seq_len] for s in starts])

def build(cfg, tok, causal, device):
    torch.manual_seed(cfg.seed)  # both models start from the same weights
    vocab = 64 * math.ceil((tok.n_vocab + 1) / 64)  # room for [MASK] in the last row
    return gpt.GPT(gpt.GPTConfig(vocab_size=vocab, block_size=cfg.window, n_layer=cfg.n_layer,
                                 n_head=cfg.n_head, n_embd=cfg.n_embd, causal=causal)).to(device)

@torch.no_grad()
def ar_nll(ar, x):
    """The AR twin's mean NLL per token of x (B, L), scoring tokens 2..L given their prefix."""
    return ar(x[:, :-1], x[:, 1:])[1].item()

def validation_nll(diffusion, ar, x, n_mc, eps, generator, lo=1, hi=None):
    """(diffusion bound, AR NLL) per token of x[:, lo:hi] given the rest, of which the AR twin sees
    x[:, :lo] only; lo >= 1, as the AR twin has no start token to predict the first from."""
    hi = hi or x.size(1)
    maskable = torch.zeros_like(x, dtype=torch.bool)
    maskable[:, lo:hi] = True
    with gpt.evaluating(diffusion, ar):
        logits = gpt.upcast(ar(x[:, :hi - 1])[0][:, lo - 1:])  # predicting positions lo .. hi-1
        nll = F.cross_entropy(logits.flatten(0, 1), x[:, lo:hi].flatten()).item()
        return elbo_nll(diffusion, x, n_mc, eps, generator, maskable=maskable), nll

def load_run(path, cfg=None):
    """A checkpoint of this script (both models, their optimizers, the RNG) and its config. With
    cfg (that of a --resume run), one saved with other settings is refused."""
    if cfg and not os.path.exists(path):
        raise FileNotFoundError(f"--resume: no {path} yet; start the run without --resume")
    ckpt = gpt.load_checkpoint(path)
    if "ar" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint of diffusion_lm.py: it holds no AR twin")
    if cfg:
        gpt.check_resume(path, ckpt, cfg)
        if 0 < cfg.stop_after < ckpt["step"]:
            raise ValueError(f"stop_after={cfg.stop_after}, but {path} is at step {ckpt['step']}")
    return ckpt, DiffusionConfig(**ckpt["config"])

def train_step(models, opts, xy, cfg, step, g_mask):
    """One update of each model on the same windows xy (B, window + 1); returns their losses."""
    warm = min(1.0, (step + 1) / 50)  # linear warm-up over 50 steps, then cosine decay to 10%
    decay = warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
    losses = {}
    for name, model in models.items():
        for group in opts[name].param_groups:
            group["lr"] = (cfg.diffusion_lr if name == "diffusion" else cfg.lr) * decay
        with gpt.autocast(xy.device):
            loss = (diffusion_loss(model, xy[:, :-1], eps=cfg.eps, generator=g_mask)
                    if name == "diffusion" else model(xy[:, :-1], xy[:, 1:])[1])
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opts[name].step()
        losses[f"{name}_loss"] = loss.item()
    return losses

def train_both(cfg, tok, train_ids, x_val, device, log, ckpt=None):
    """Both models, one AdamW update each per step on the same batch, validated and saved every
    eval_interval steps; returns them and the final (bound, AR NLL), or None if stopped early."""
    models = {"diffusion": build(cfg, tok, False, device), "ar": build(cfg, tok, True, device)}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
            for name, m in models.items()}
    g_data = torch.Generator().manual_seed(cfg.seed)
    g_mask = torch.Generator(device).manual_seed(cfg.seed)
    start = ckpt["step"] if ckpt else 0
    if ckpt:
        models["diffusion"].load_state_dict(ckpt["model"])
        models["ar"].load_state_dict(ckpt["ar"])
        for name, opt in opts.items():
            opt.load_state_dict(ckpt["optimizer"][name])
        gpt.set_rng_state(ckpt["rng"], g_data, g_mask)
    end = cfg.stop_after or cfg.steps
    for step in (bar := tqdm(range(start, end + 1), desc="diffusion and AR")):
        row = {}
        if step % cfg.eval_interval == 0 or step == cfg.steps:
            g = torch.Generator(device).manual_seed(cfg.seed)  # the same draws of t each time
            row["val_bound"], row["val_ar_nll"] = validation_nll(*models.values(), x_val,
                                                                 cfg.n_mc, cfg.eps, g)
        if row or step == end:
            gpt.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), models["diffusion"], tok,
                                step, cfg, {name: opt.state_dict() for name, opt in opts.items()},
                                ar=models["ar"].state_dict(), rng=gpt.rng_state(g_data, g_mask))
        if step < end:
            xy = windows(train_ids, cfg.window, cfg.batch_size, g_data, device)
            row.update(train_step(models, opts, xy, cfg, step, g_mask))
        if row:
            log(step=step, **row)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items()})
    if end < cfg.steps:
        return None
    return models["diffusion"].eval(), models["ar"].eval(), (row["val_bound"], row["val_ar_nll"])

# ----------------------------------------------------------------------------- the table, infilling

def entropy_bits(x):
    """Unigram entropy of x in bits: low flags the repetitive text a perplexity judge rewards."""
    p = torch.bincount(x.flatten()).float()
    p = p[p > 0] / p.sum()
    return abs((p * p.log2()).sum().item())

Row = namedtuple("Row", "name passes_per_token tokens_per_s tokens_per_s_alone ppl entropy")

def quality_table(diffusion, ar, cfg, device, repeats=1):
    """A Row per remasking, block schedule and step count, then the AR baseline; every sample
    continues a newline by gen_length tokens. Times: the best of `repeats`, all batched runs
    first, then all single ones (interleaved, the small runs timed unevenly)."""
    g = torch.Generator(device).manual_seed(cfg.seed)
    n = cfg.n_samples
    L = cfg.gen_length
    start = [ord("\n")]

    def ar_sampler(n):  # one forward pass per token
        out = ar.generate([start] * n, L, temperature=cfg.temperature, generator=g)
        return torch.tensor([start + o for o in out], device=device), L

    samplers = {}  # name: fn(n=batch) -> (tokens (batch, 1 + L), forward passes)
    # random: MDLM's ancestral order; low-confidence: LLaDA's. Each order under each block schedule,
    # so that two rows differ in one thing only (block_length = L is one block)
    for remasking in ("random", "low_confidence"):
        for block in sorted({0, cfg.block_length % L}):
            schedule = f"blocks of {block}" if block else "one block"
            for steps in [int(s) for s in cfg.step_counts.split(",")]:
                samplers[f"{remasking}, {schedule}, {steps} steps"] = functools.partial(
                    sample, diffusion, L, steps, block, remasking, cfg.temperature, prefix=start,
                    generator=g)
    samplers["autoregressive, KV cache"] = ar_sampler
    batched = {name: gpt.best_time(lambda: run(n=n), repeats) for name, run in samplers.items()}
    alone = {name: gpt.best_time(lambda: run(n=1), repeats)[1] for name, run in samplers.items()}
    return [Row(name, passes / L, n * L / secs, L / alone[name], math.exp(ar_nll(ar, x)),
                entropy_bits(x[:, 1:])) for name, ((x, passes), secs) in batched.items()]

def print_table(rows, data_ppl, data_entropy, n_samples):
    print(f"\n{'sampler':<38}{'passes/token':>13}{f'tok/s, {n_samples} at once':>20}"
          f"{'tok/s, 1 alone':>16}{'AR ppl of samples':>19}{'entropy (bits)':>16}")
    for r in rows:
        print(f"{r.name:<38}{r.passes_per_token:>13.3f}{r.tokens_per_s:>20.0f}"
              f"{r.tokens_per_s_alone:>16.0f}{r.ppl:>19.2f}{r.entropy:>16.2f}")
    print(f"{'held-out data':<38}{'':>13}{'':>20}{'':>16}{data_ppl:>19.2f}{data_entropy:>16.2f}")

def show_infilling(diffusion, ar, tok, val_ids, cfg, device):
    """The middle third of held-out windows given the others: the diffusion bound beside the AR
    twin's exact -log p(middle | prefix), which cannot use the suffix; one window filled."""
    q = cfg.window // 3
    x = val_windows(val_ids, 3 * q, 64).to(device)
    g = torch.Generator(device).manual_seed(cfg.seed)
    bound, ar_middle = validation_nll(diffusion, ar, x, cfg.n_mc, cfg.eps, g, lo=q, hi=2 * q)
    print(f"\ninfilling the middle {q} tokens of 64 held-out windows of {3 * q}: diffusion bound "
          f"on -log p(middle | prefix, suffix) <= {bound:.3f} nats/token; AR twin's "
          f"-log p(middle | prefix) = {ar_middle:.3f} (it cannot see the suffix)")
    prefix, suffix = x[0, :q].tolist(), x[0, 2 * q:].tolist()
    show = lambda ids: repr(tok.decode(ids))  # noqa: E731
    print(f"  {'original':<34}{show(prefix)} + {show(x[0, q:2 * q].tolist())} + {show(suffix)}")
    samplers = (("diffusion, low-confidence, greedy", "low_confidence", 0.0),
                (f"diffusion, random order, T={cfg.temperature:g}", "random", cfg.temperature))
    for name, remasking, temperature in samplers:
        out, _ = sample(diffusion, q, q, 0, remasking, temperature, prefix=prefix, suffix=suffix,
                        generator=g)
        print(f"  {name:<34}{show(prefix)} + {show(out[0, q:2 * q].tolist())} + {show(suffix)}")
    continuation = ar.generate([prefix], q, temperature=0.0)[0]
    print(f"  {'AR twin, greedy, prefix only':<34}{show(prefix)} + {show(continuation)}")
    return dict(infill_bound=bound, infill_ar_nll=ar_middle)

def main(cfg):
    plt = gpt.pyplot(cfg.plot)
    with gpt.bad_input():
        device = gpt.pick_device(cfg.device)
        tok, train_ids, val_ids = load_data(cfg)
        ckpt = load_run(os.path.join(cfg.out_dir, "ckpt.pt"), cfg)[0] if cfg.resume else None
    log = gpt.RunLog(cfg.out_dir, ckpt["step"] if ckpt else 0)
    x_val = val_windows(val_ids, cfg.window, 64).to(device)
    trained = train_both(cfg, tok, train_ids, x_val, device, log, ckpt)
    if trained is None:
        return print(f"stopped at step {cfg.stop_after} of {cfg.steps}: --resume continues")
    diffusion, ar, (bound, ar_val) = trained
    if plt:
        gpt.plot_curves(plt, log, ["diffusion_loss", "ar_loss", "val_bound", "val_ar_nll"],
                        os.path.join(cfg.out_dir, "loss.png"))
    print(f"{gpt.count_params(diffusion) / 1e6:.2f}M parameters each, {cfg.steps} steps of "
          f"{cfg.batch_size} x {cfg.window} tokens ({cfg.tokenizer})")
    print(f"\nvalidation NLL per token of the last {cfg.gen_length} given the first: diffusion "
          f"ELBO bound <= {bound:.3f} nats (ppl <= {math.exp(bound):.2f}, {cfg.n_mc} Monte Carlo "
          f"draws of t); autoregressive {ar_val:.3f} nats (ppl {math.exp(ar_val):.2f})")
    rows = quality_table(diffusion, ar, cfg, device)
    print_table(rows, math.exp(ar_val), entropy_bits(x_val[:, 1:]), cfg.n_samples)
    history = []  # greedy and most-confident-first: no random draw
    sample(diffusion, cfg.window, 8, temperature=0.0, history=history)
    print("\ndenoising one sample in 8 steps (_ = [MASK]):")
    for x, k in history:
        text = "".join("_" if t == mask_id(diffusion) else tok.decode([t]) for t in x[0].tolist())
        print(f"  +{k:>2} {text!r}")
    return dict(elbo=bound, ar_nll=ar_val, rows=rows,
                **show_infilling(diffusion, ar, tok, val_ids, cfg, device))

if __name__ == "__main__":
    main(gpt.parse_args(DiffusionConfig, gpu=GPU))
