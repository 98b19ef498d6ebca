"""GRPO: reinforcement learning with verifiable rewards, and its Dr. GRPO and DAPO variants.

For each prompt q, sample a group of G completions o_1..o_G from the old policy, score each with
a rule (is the <answer> right? is the <think>...</think><answer>...</answer> format kept?), and
use the group itself as the baseline: A_i = (r_i - mean(r)) / (std(r) + eps), no value network.
Maximise the clipped surrogate min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), rho = pi/pi_old,
minus beta * KL(pi || pi_ref) by the k3 estimator exp(ref - logp) - (ref - logp) - 1.
Papers: Shao et al. 2024 (DeepSeekMath, GRPO), Liu et al. 2025 (Dr. GRPO), Yu et al. 2025
(DAPO), Chen et al. 2021 (the unbiased pass@k estimator).

    python grpo.py                   # SFT warm-up on a few examples, then GRPO on arithmetic
    python grpo.py --loss=dr_grpo    # no std scaling, constant normaliser: rows x token budget
    python grpo.py --loss=dapo       # token-level normaliser, clip-higher, dynamic sampling
    python grpo.py --init=out/sft/ckpt.pt --max_new_tokens=49   # warm up and tune sft.py's model
    python grpo.py --resume --plot   # continue out/grpo/ckpt.pt; reward curves in out/grpo/log.png

On CPU you see a tiny model trained from nothing learn the answer format from 48 worked examples,
a tqdm bar of GRPO steps (reward, accuracy, zero-std groups, KL, clipped fraction, length,
truncation), held-out greedy accuracy every 10 steps (80% first at step 150) and a before/after
table on 100 held-out problems: greedy 44% -> 86% (pass@1, pass@8, format rate, length beside).
Problems are posed in the chat template: `python gpt.py --ckpt=out/grpo/ckpt.pt --chat` works.
Left out: a value network (GRPO needs none), the papers' large models and free-form reasoning
(the default policy has 0.26M parameters), any task but two-digit + one-digit sums.
"""
import copy
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import gpt

@dataclass
class Config:
    loss: str = "grpo"  # grpo | dr_grpo | dapo
    init: str = ""  # checkpoint to start from (e.g. out/sft/ckpt.pt); empty = a tiny GPT made here
    steps: int = 300  # GRPO steps
    prompts_per_step: int = 16  # distinct problems per rollout batch
    group_size: int = 8  # G completions per problem
    updates_per_rollout: int = 2  # optimizer steps per rollout batch (mu); >1 makes the clip matter
    epochs: int = 2  # passes over each rollout batch: the ratio clip makes reusing samples safe
    micro_batch: int = 0  # sequences per forward/backward, gradients accumulated (0 = minibatch)
    lr: float = 3e-4  # AdamW learning rate for GRPO
    warmup: int = 20  # steps of linear lr warm-up: Adam's first steps on noisy gradients are large
    beta: float = -1.0  # weight of the k3 KL penalty to pi_ref (-1 = 0 for dapo, 0.01 otherwise)
    eps_low: float = 0.2  # clip ratio below: rho >= 1 - eps_low
    eps_high: float = 0.0  # clip ratio above: rho <= 1 + eps_high (0 = 0.28 for dapo, else eps_low)
    temperature: float = 1.0  # sampling temperature for rollouts and pass@k
    max_new_tokens: int = 32  # completion budget; longer completions are truncated
    overlong_cache: int = 3  # dapo: the length penalty ramps in over the budget's last this many
    # tokens (a right answer has up to 28 with its <|end|>: an earlier ramp would punish it)
    max_resample: int = 4  # dapo: rollout rounds to refill groups dropped for zero reward variance
    format_reward: float = 0.1  # reward for a well-formed completion, on top of 1.0 if it is right
    sft_examples: int = 48  # worked examples in the format-teaching warm-up
    sft_steps: int = 300  # SFT warm-up steps (0 skips it: an --init that knows the format already)
    sft_lr: float = 3e-3  # SFT warm-up learning rate
    n_layer: int = 2  # model depth (without --init)
    n_embd: int = 96  # model width (without --init)
    n_head: int = 4  # attention heads (without --init)
    eval_problems: int = 100  # held-out problems, never used for SFT or GRPO
    pass_k: int = 8  # samples per held-out problem for pass@1 and pass@k
    eval_every: int = 10  # steps between held-out greedy evaluations in log.jsonl, and checkpoints
    stop_after: int = 0  # end after this many steps, as if pre-empted (0 = run to the end)
    resume: bool = False  # continue bit for bit from out_dir/ckpt.pt, with the same settings
    plot: bool = False  # reward and accuracy curves as out_dir/log.png (needs matplotlib)
    out_dir: str = "out/grpo"  # log.jsonl and the policy's ckpt.pt
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # for problems, initial weights and sampling

    def __post_init__(self):  # every field checked before any work; NaN fails every comparison
        self.eps_high = self.eps_high or (0.28 if self.loss == "dapo" else self.eps_low)
        if self.beta == -1:  # DAPO drops the KL term: a reasoning policy must move far from pi_ref
            self.beta = 0.0 if self.loss == "dapo" else 0.01
        rows = self.prompts_per_step * self.group_size
        rules = [(("loss",), lambda v: v in ("grpo", "dr_grpo", "dapo"), "grpo, dr_grpo or dapo"),
                 (("steps", "prompts_per_step", "updates_per_rollout", "epochs", "warmup",
                   "max_new_tokens", "overlong_cache", "max_resample", "sft_examples", "n_layer",
                   "n_head", "n_embd", "eval_problems", "pass_k", "eval_every"),
                  lambda v: v >= 1, "at least 1"),
                 (("micro_batch", "beta", "format_reward", "sft_steps", "stop_after"),
                  lambda v: v >= 0, "0 or more"),
                 (("lr", "sft_lr", "eps_low", "eps_high", "temperature"), lambda v: v > 0,
                  "above 0 (temperature too: GRPO needs sampled groups)"),
                 (("group_size",), lambda v: v >= 2, "at least 2, to have a baseline"),
                 (("updates_per_rollout",), lambda v: rows % v == 0,
                  f"a divisor of prompts_per_step x group_size = {rows}: equal minibatches"),
                 (("n_embd",), lambda v: v % self.n_head == 0, "a multiple of n_head"),
                 (("eval_problems",), lambda v: v + self.sft_examples <= 900,
                  "at most 900 - sft_examples: there are 900 problems")]
        for names, ok, rule in rules:
            for name in names:
                if not ok(getattr(self, name)):
                    raise ValueError(f"{name}={getattr(self, name)!r}: --{name} must be {rule}")

GPU = dict(steps=1000)  # the defaults that change on a CUDA device

# ----------------------------------------------------------------------------- the task

THINK_ANSWER = re.compile(r"<think>(.*?)</think><answer>(.*?)</answer>", re.S)

def make_problem(a, b):
    """(question, answer, thinking) for a + b, worked by columns: ones, then tens plus the carry."""
    ones = a % 10 + b
    return f"{a}+{b}", a + b, f"{a % 10}+{b}={ones},{a // 10}+{ones // 10}={a // 10 + ones // 10}"

def make_problems(n, rng, exclude=(), distinct=True):
    """n problems (distinct ones: there are 900) whose questions are not in exclude."""
    seen = set(exclude)
    out = []
    while len(out) < n:  # Config keeps n within the 900 - len(exclude) left
        problem = make_problem(rng.randrange(10, 100), rng.randrange(10))
        if problem[0] not in seen:
            out.append(problem)
            if distinct:
                seen.add(problem[0])
    return out

def task_tokenizer():
    """Bytes plus 11 merges: the tags cost 12 tokens instead of 33, each digit stays one token."""
    tok = gpt.Tokenizer.from_spec("bpe", "<think>0</think><answer>0</answer>", vocab_size=512)
    assert tok.n_vocab == 256 + 11 + len(gpt.SPECIAL_TOKENS), tok.n_vocab
    return tok

def prompt_ids(tok, question):
    return gpt.render_chat(gpt.chat(question + "="), tok, add_generation_prompt=True)

def worked_ids(tok, problem):
    _, answer, thinking = problem
    text = f"<think>{thinking}</think><answer>{answer}</answer>"
    return tok.encode(text) + [tok.special("<|end|>")]

def answer_text(tok, completion):
    end = tok.special("<|end|>")
    return tok.decode(completion[:-1] if completion and completion[-1] == end else completion)

def check_fits(model, tok, cfg):
    """Say at load, not after minutes of training, that a worked answer or prompt does not fit."""
    problems = [make_problem(a, b) for a in range(10, 100) for b in range(10)]
    longest = max(len(worked_ids(tok, p)) for p in problems)
    ramp = cfg.overlong_cache if cfg.loss == "dapo" else 0  # DAPO's length penalty must spare it
    if longest + ramp > cfg.max_new_tokens:
        raise ValueError(f"this tokenizer spells the longest worked answer in {longest} tokens:"
                         f" use --max_new_tokens={longest + ramp} or more")
    prompt = max(len(prompt_ids(tok, q)) for q, _, _ in problems)
    gpt.check_chat_model(model, tok, prompt + cfg.max_new_tokens)

def reward(text, answer, format_reward):
    """1 for the right answer inside well-formed tags, plus format_reward for the format itself."""
    m = THINK_ANSWER.fullmatch(text)
    if m is None:
        return 0.0, False
    correct = m.group(2).strip() == str(answer)
    return float(correct) + format_reward, correct

# ----------------------------------------------------------------------------- the loss

def group_advantages(rewards, G, scale="group", eps=1e-4):
    """A_i = (r_i - mean(r)) / (std(r) + eps) in each group of G contiguous rewards (N,), without
    the std for scale="none" (Dr. GRPO). A group of equal rewards carries no signal: A = 0."""
    if rewards.dim() != 1 or rewards.numel() % G:
        raise ValueError(f"rewards {tuple(rewards.shape)} do not split into groups of G={G}")
    r = rewards.view(-1, G)  # (N/G, G)
    centred = r - r.mean(1, keepdim=True)
    if scale == "group":
        centred = centred / (r.std(1, keepdim=True) + eps)
    elif scale != "none":
        raise ValueError(f"scale={scale!r}; choose 'group' or 'none'")
    flat = (r == r[:, :1]).all(1, keepdim=True)  # rounding in the mean must not leak through
    return centred.masked_fill(flat, 0.0).view(-1)

def token_weights(mask, loss_type, max_len=None):
    """w (B, T) such that the loss is sum_t w_t * l_t, i.e. each variant's normaliser:
    grpo    1 / (|o_i| * B)        the mean over each sequence, then over sequences
    dr_grpo 1 / (B * max_len)      a constant: no bias towards short correct/long wrong answers
    dapo    1 / sum_i |o_i|        every token of the batch counts the same
    B is the minibatch's rows and max_len the completion budget, as in Liu et al.'s code: each
    completion's token sum over generate_max_length, then the mean over the minibatch."""
    mask = mask.float()
    if loss_type == "grpo":
        return mask / (mask.sum(1, keepdim=True).clamp(min=1) * mask.size(0))
    if loss_type == "dr_grpo":
        if not max_len:  # the batch's own width would make the normaliser vary batch to batch
            raise ValueError("dr_grpo divides by the token budget: pass max_len=max_new_tokens")
        return mask / (mask.size(0) * max_len)
    if loss_type == "dapo":
        return mask / mask.sum().clamp(min=1)
    raise ValueError(f"loss_type={loss_type!r}; choose grpo, dr_grpo or dapo")

def grpo_loss(logp, old_logp, ref_logp, advantages, mask, loss_type="grpo", eps_low=0.2,
              eps_high=0.2, beta=0.0, weights=None):
    """(loss, stats): the clipped surrogate plus beta k3 per token (B, T), advantages (B,);
    weights: the whole minibatch's token_weights, sliced for gradient accumulation."""
    if weights is None:
        weights = token_weights(mask, loss_type)
    A = advantages[:, None]  # (B, 1): every token of a completion shares its sequence's advantage
    ratio = torch.exp(logp - old_logp)  # rho_t = pi_theta / pi_old
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    surrogate = torch.minimum(ratio * A, clipped * A)  # never gain from leaving the trust region
    log_r = ref_logp - logp
    kl = torch.exp(log_r) - log_r - 1  # k3: unbiased, always >= 0 (Schulman 2020)
    loss = (weights * (-surrogate + beta * kl)).sum()
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        was_clipped = ((ratio < 1 - eps_low) & (A < 0)) | ((ratio > 1 + eps_high) & (A > 0))
        stats = dict(kl=float((kl * mask).sum() / n), clipped=float((was_clipped & mask).sum() / n))
    return loss, stats

def overlong_penalty(lengths, max_len, cache):
    """DAPO's soft length penalty: 0 up to max_len - cache tokens, then a ramp to -1 at max_len."""
    return ((max_len - cache - lengths.float()) / cache).clamp(-1.0, 0.0)

def pass_at_k(n, c, k):
    """Unbiased pass@k, 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i), stably."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))

# ----------------------------------------------------------------------------- rollouts

def check_groups(prompts, G):
    """Group-relative advantages assume the G completions of a prompt sit together in the batch."""
    for start in range(0, len(prompts), G):
        if any(p != prompts[start] for p in prompts[start:start + G]):
            raise AssertionError(f"rows {start}..{start + G - 1} are not one prompt's group")

def rollout(policy, tok, problems, cfg, generator):
    """G sampled completions per problem, contiguous. Returns a dict of lists and (N,) tensors."""
    end = tok.special("<|end|>")
    prompts = [prompt_ids(tok, q) for q, _, _ in problems for _ in range(cfg.group_size)]
    check_groups(prompts, cfg.group_size)
    completions = policy.generate(prompts, cfg.max_new_tokens, temperature=cfg.temperature,
                                  stop_tokens=(end,), generator=generator, pad_id=end)
    answers = [ans for _, ans, _ in problems for _ in range(cfg.group_size)]
    texts = [answer_text(tok, c) for c in completions]
    scored = [reward(t, a, cfg.format_reward) for t, a in zip(texts, answers)]
    lengths = torch.tensor([len(c) for c in completions])
    rewards = torch.tensor([s for s, _ in scored])
    if cfg.loss == "dapo":
        rewards = rewards + overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_cache)
    return dict(prompts=prompts, completions=completions, rewards=rewards, lengths=lengths,
                truncated=torch.tensor([not c or c[-1] != end for c in completions]),
                correct=torch.tensor([c for _, c in scored], dtype=torch.float))

def select_groups(batch, keep, G):
    rows = [i for g, k in enumerate(keep.tolist()) if k for i in range(g * G, (g + 1) * G)]
    return {k: ([v[i] for i in rows] if isinstance(v, list) else v[rows]) for k, v in batch.items()}

def merge(a, b):
    return {k: (a[k] + b[k] if isinstance(a[k], list) else torch.cat([a[k], b[k]])) for k in a}

def dynamic_rollout(policy, tok, sample_problems, cfg, generator):
    """DAPO's dynamic sampling: drop groups all right or all wrong (on accuracy, not the shaped
    reward), and refill the batch with new problems for at most max_resample rounds."""
    batch = None
    stats = None
    for _ in range(cfg.max_resample):
        new = rollout(policy, tok, sample_problems(cfg.prompts_per_step), cfg, generator)
        stats = stats or new  # the first round's statistics are the policy's honest ones
        c = new["correct"].view(-1, cfg.group_size)
        new = select_groups(new, (c != c[:, :1]).any(1), cfg.group_size)
        batch = new if batch is None else merge(batch, new)
        if len(batch["prompts"]) >= cfg.prompts_per_step * cfg.group_size:
            break
    n = cfg.prompts_per_step * cfg.group_size
    return {k: v[:n] for k, v in batch.items()}, stats

# ----------------------------------------------------------------------------- training

def logprobs(model, batch, rows, cfg):
    """log pi_T(o_t | q, o_<t) (n, T) and the mask, at the sampling T: else the ratio is off."""
    return gpt.completion_logprobs(model, batch["prompts"][rows], batch["completions"][rows],
                                   batch["pad"], temperature=cfg.temperature)

def score_batch(policy, ref, batch, cfg, start=0):
    """Add advantages (N,), ref_logp, mask and old_logp (N, T), before any update; rows before
    start are left for the first minibatch to fill from its own forward (pi_old = pi_theta)."""
    scale = "none" if cfg.loss == "dr_grpo" else "group"
    batch["advantages"] = group_advantages(batch["rewards"], cfg.group_size, scale)
    with gpt.evaluating(policy, ref):
        batch["ref_logp"], batch["mask"] = logprobs(ref, batch, slice(None), cfg)
        batch["old_logp"] = torch.zeros_like(batch["ref_logp"])
        if start < len(batch["prompts"]):
            logp, _ = logprobs(policy, batch, slice(start, None), cfg)
            batch["old_logp"][start:, :logp.size(1)] = logp
    return batch

def minibatch_backward(policy, batch, rows, cfg, first=False):
    """Backpropagate grpo_loss over rows, micro_batch sequences at a time: one pass's gradient.
    first (before any step): old_logp is this very forward, detached, so the ratio is exactly 1."""
    weights = token_weights(batch["mask"][rows], cfg.loss, cfg.max_new_tokens)  # (n, T)
    n = weights.size(0)
    micro = cfg.micro_batch or n
    stats = []
    for m in range(0, n, micro):
        r = slice(rows.start + m, rows.start + min(m + micro, n))
        logp, _ = logprobs(policy, batch, r, cfg)
        T = logp.size(1)  # this micro-batch's longest completion; the rest of the row is padding
        if first:
            batch["old_logp"][r, :T] = logp.detach()
        loss, s = grpo_loss(logp, batch["old_logp"][r, :T], batch["ref_logp"][r, :T],
                            batch["advantages"][r], batch["mask"][r, :T], cfg.loss, cfg.eps_low,
                            cfg.eps_high, cfg.beta, weights[m:m + micro, :T])
        loss.backward()
        stats.append(s)
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}

def policy_update(policy, ref, opt, batch, cfg):
    """updates_per_rollout steps per epoch, on minibatches within one row of each other in size."""
    N = len(batch["prompts"])
    bounds = [N * i // cfg.updates_per_rollout for i in range(cfg.updates_per_rollout + 1)]
    score_batch(policy, ref, batch, cfg, start=bounds[1])
    stats = []
    policy.train()
    minibatches = [b for _ in range(cfg.epochs) for b in zip(bounds, bounds[1:])]
    for i, (start, end) in enumerate(minibatches):
        opt.zero_grad(set_to_none=True)
        stats.append(minibatch_backward(policy, batch, slice(start, end), cfg, first=i == 0))
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
    policy.eval()
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}

def evaluate(model, tok, problems, cfg, generator, sampled=True):
    """Greedy accuracy; with sampled, pass@1, pass@k, format rate and length of pass_k samples."""
    end = tok.special("<|end|>")
    k = cfg.pass_k
    prompts = [prompt_ids(tok, q) for q, _, _ in problems]
    greedy = model.generate(prompts, cfg.max_new_tokens, temperature=0, stop_tokens=(end,),
                            pad_id=end)
    right = [reward(answer_text(tok, c), ans, 0)[1] for c, (_, ans, _) in zip(greedy, problems)]
    if not sampled:
        return {"accuracy": sum(right) / len(problems)}
    samples = model.generate([p for p in prompts for _ in range(k)], cfg.max_new_tokens,
                             temperature=cfg.temperature, stop_tokens=(end,), generator=generator,
                             pad_id=end)
    texts = [answer_text(tok, c) for c in samples]
    counts = [sum(reward(t, ans, 0)[1] for t in texts[i * k:(i + 1) * k])  # right per problem
              for i, (_, ans, _) in enumerate(problems)]
    return {"accuracy": sum(right) / len(problems),
            "pass@1": sum(pass_at_k(k, c, 1) for c in counts) / len(problems),
            f"pass@{k}": sum(pass_at_k(k, c, k) for c in counts) / len(problems),
            "format": sum(THINK_ANSWER.fullmatch(t) is not None for t in texts) / len(texts),
            "length": sum(len(c) for c in samples) / len(samples)}

def train_grpo(policy, ref, opt, tok, cfg, run):
    """Roll out and update from step run["step"] + 1; eval and checkpoint every eval_every."""
    end = min(cfg.steps, cfg.stop_after or cfg.steps)

    def sample_problems(n):  # fresh training problems, never a held-out question
        return make_problems(n, run["problems"], run["exclude"], distinct=False)

    bar = tqdm(range(run["step"] + 1, end + 1), initial=run["step"], total=cfg.steps,
               desc=f"GRPO ({cfg.loss})")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / cfg.warmup)
        stats = dict(kl=0.0, clipped=0.0)
        with gpt.autocast(run["generator"].device):  # bf16 on CUDA for rollouts and update
            if cfg.loss == "dapo":
                batch, seen = dynamic_rollout(policy, tok, sample_problems, cfg, run["generator"])
            else:
                batch = seen = rollout(policy, tok, sample_problems(cfg.prompts_per_step), cfg,
                                       run["generator"])
            batch["pad"] = tok.special("<|end|>")
            if len(batch["prompts"]) >= cfg.updates_per_rollout * cfg.group_size:  # dapo: signal?
                stats = policy_update(policy, ref, opt, batch, cfg)
        r = seen["rewards"].view(-1, cfg.group_size)
        row = dict(step=step, reward=float(seen["rewards"].mean()),
                   acc=float(seen["correct"].mean()),
                   zero_std=float((r == r[:, :1]).all(1).float().mean()),
                   length=float(seen["lengths"].float().mean()),
                   truncated=float(seen["truncated"].float().mean()), **stats)
        if step % cfg.eval_every == 0:  # greedy only: cheap enough to watch the curve closely
            held_out = evaluate(policy, tok, run["held_out"], cfg, None, sampled=False)
            row["held_out_accuracy"] = held_out["accuracy"]
            tqdm.write(f"step {step}: held-out greedy accuracy {row['held_out_accuracy']:.0%}")
        run["log"](**row)
        if step % cfg.eval_every == 0 or step == end:
            run["save"](step)
        shown = ("reward", "acc", "zero_std", "kl", "clipped", "length", "truncated")
        bar.set_postfix({k: f"{row[k]:.3g}" for k in shown})
    return end

def start_policy(cfg, path):
    """(policy, tokenizer, checkpoint or None) to resume, from --init, or made here; on the CPU,
    where RNG states must stay."""
    if cfg.resume:
        policy, tok, ckpt = gpt.load_model(path)
        gpt.check_resume(path, ckpt, cfg, free=("resume", "stop_after", "steps", "plot", "device"))
        return policy, tok, ckpt
    if cfg.init:
        return *gpt.load_model(cfg.init)[:2], None
    tok = task_tokenizer()
    mcfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=48, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, pos="learned")
    return gpt.GPT(mcfg), tok, None

def report(policy, tok, cfg, held_out, before, after):
    k = cfg.pass_k
    print(f"\n{len(held_out)} held-out problems (two-digit + one-digit, never in SFT or GRPO); "
          f"loss={cfg.loss}, {cfg.steps} steps x {cfg.prompts_per_step} problems"
          f" x G={cfg.group_size}")
    print(f"{'':<34}{'before GRPO':>12}{'after GRPO':>12}")
    for key, name in [("accuracy", "greedy accuracy"),
                      ("pass@1", f"pass@1 (T={cfg.temperature:g}, {k} samples)"),
                      (f"pass@{k}", f"pass@{k}"), ("format", "well-formed completions")]:
        print(f"{name:<34}{before[key]:>12.1%}{after[key]:>12.1%}")
    print(f"{'mean completion tokens':<34}{before['length']:>12.1f}{after['length']:>12.1f}")
    q = held_out[0][0]
    reply = gpt.chat_answers(policy, tok, [q + "="], max_new_tokens=cfg.max_new_tokens)[0]
    print(f"example: {q}= {tok.decode(reply)}")

def main(cfg):
    device = gpt.pick_device(cfg.device)
    plt = gpt.pyplot(cfg.plot)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    with gpt.bad_input():  # a missing, garbage or mismatched checkpoint: one line, before any work
        policy, tok, ckpt = start_policy(cfg, path)
        check_fits(policy, tok, cfg)
    policy.to(device)
    held_out = make_problems(cfg.eval_problems, random.Random(cfg.seed + 1))
    run = dict(held_out=held_out, exclude={q for q, _, _ in held_out}, step=0,
               problems=random.Random(cfg.seed + 3),
               generator=torch.Generator(device).manual_seed(cfg.seed))
    if ckpt is None:  # from nothing, a few worked examples teach the format well, sums partly
        examples = make_problems(cfg.sft_examples, random.Random(cfg.seed + 2), run["exclude"])
        pairs = [(prompt_ids(tok, p[0]), worked_ids(tok, p)) for p in examples]
        gpt.finetune(policy, pairs, cfg.sft_steps, lr=cfg.sft_lr, batch_size=16, seed=cfg.seed,
                     desc="SFT warm-up")  # sets eval mode, even for --sft_steps=0
        before = evaluate(policy, tok, held_out, cfg, run["generator"])
    ref = copy.deepcopy(policy).eval().requires_grad_(False)  # frozen pi_ref for the KL term
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    if ckpt is not None:
        ref.load_state_dict(ckpt["ref"])
        opt.load_state_dict(ckpt["optimizer"])
        before = ckpt["before"]
        run["step"] = ckpt["step"]
        run["problems"].setstate(ckpt["problems"])
        gpt.set_rng_state(ckpt["rng"], run["generator"])
    t_sft = time.time() - t0
    run["log"] = gpt.RunLog(cfg.out_dir, step=run["step"] + 1 if cfg.resume else 0)  # keeps 1..step
    run["save"] = lambda step: gpt.save_checkpoint(
        path, policy, tok, step=step, config=cfg, optimizer=opt.state_dict(), ref=ref.state_dict(),
        before=before, problems=run["problems"].getstate(), rng=gpt.rng_state(run["generator"]))
    steps = train_grpo(policy, ref, opt, tok, cfg, run)
    if plt:
        gpt.plot_curves(plt, run["log"], ["reward", "acc", "held_out_accuracy"],
                        os.path.join(cfg.out_dir, "log.png"))
    if steps < cfg.steps:
        print(f"stopped after step {steps}: python grpo.py --resume continues from {path}")
        return before, None
    after = evaluate(policy, tok, held_out, cfg, run["generator"])
    report(policy, tok, cfg, held_out, before, after)
    with open(os.path.join(cfg.out_dir, "log.jsonl")) as f:
        hit = [r["step"] for r in map(json.loads, f) if r.get("held_out_accuracy", 0) >= 0.8]
    print(f"held-out greedy accuracy first reached 80% at step {(hit or ['none'])[0]}")
    print(f"SFT warm-up {t_sft:.0f}s, GRPO {time.time() - t0 - t_sft:.0f}s; log and checkpoint in "
          f"{cfg.out_dir}/")
    return before, after

if __name__ == "__main__":
    main(gpt.parse_args(Config, gpu=GPU))
