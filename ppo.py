"""PPO for RLHF: a reward model learned from preferences, then a policy tuned against it.

Reward model: a GPT backbone with a scalar head read at the last real token, trained on pairs
(y_w preferred to y_l) with the Bradley-Terry loss -log sigma(r(x, y_w) - r(x, y_l)).
PPO (Schulman et al. 2017; Ziegler et al. 2019; Ouyang et al. 2022): each completion token is an
action; the per-token reward is -beta * (log pi(a_t) - log pi_ref(a_t)), plus the reward model's
score on the last token. A value head gives V(s_t); GAE (Schulman et al. 2016) turns rewards
into advantages A_t = sum_l (gamma*lambda)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t;
the policy maximises min(rho A, clip(rho, 1-eps, 1+eps) A) with an entropy bonus, and the value
head regresses onto the returns with a clipped loss. Best-of-N, which samples N completions
from the reference and keeps the one the reward model likes best, is the baseline.

    python ppo.py                  # reward model, then PPO, then a table against Best-of-N
    python ppo.py --beta=0.0       # no KL penalty: watch the policy drift from the reference
    python ppo.py --init=out/sft/ckpt.pt --max_new_tokens=34   # sft.py's byte-level model
    python ppo.py --plot           # reward-model score, KL and true score as out/ppo/log.png

On CPU (about a minute on 2 cores) you see the reward model's held-out pairwise accuracy, a tqdm
bar of PPO rollouts with reward and KL, and a table of reward-model score, KL and the true
preference score on held-out prompts, before and after PPO, against Best-of-N.
Left out: human labels (a known scoring rule stands in for them), any task but three-word
prompts and short reviews, and the papers' sizes (the default policy has 0.13M parameters).
"""
import copy
import itertools
import math
import os
import random
import re
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import gpt

@dataclass
class Config:
    init: str = ""  # checkpoint to start from (e.g. out/sft/ckpt.pt); empty = a tiny GPT made here
    base_steps: int = 300  # SFT steps that teach the base policy to write reviews
    rm_pairs: int = 2000  # sampled pairs labelled by the true preference (ties dropped)
    rm_steps: int = 300  # Bradley-Terry steps, 32 pairs each
    rm_lr: float = 1e-3  # reward-model learning rate
    iters: int = 60  # PPO rollouts
    rollout_size: int = 64  # completions per rollout, one per prompt
    epochs: int = 4  # passes over each rollout
    minibatch: int = 16  # completions per PPO gradient step
    lr: float = 3e-4  # policy and value learning rate
    beta: float = 0.1  # weight of the per-token KL penalty to the reference
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda: 1 = Monte Carlo returns, 0 = one-step TD
    clip_eps: float = 0.2  # policy ratio clip: rho in [1 - eps, 1 + eps]
    value_clip: float = 0.2  # the new value may move at most this far from the rollout's value
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.01  # weight of the entropy bonus
    target_kl: float = 0.05  # end a rollout's epochs once the approximate KL to pi_old passes this
    max_new_tokens: int = 12  # completion budget (a review of 3 adjectives is 7 tokens)
    best_of: int = 64  # the largest N of the Best-of-N rows (N = 4, 16, 64, 256)
    eval_prompts: int = 64  # held-out prompts for the table
    n_layer: int = 2  # depth of policy, reward and value models (without --init)
    n_embd: int = 64  # width (without --init)
    plot: bool = False  # reward-model score, KL and true score per rollout as out_dir/log.png
    out_dir: str = "out/ppo"  # log.jsonl (one line per rollout) and the PPO policy's ckpt.pt
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # for data, weights and sampling

    def __post_init__(self):  # every field checked before any work: a typo fails in a second
        rules = [(("base_steps", "rm_pairs", "rm_steps", "iters", "rollout_size", "epochs",
                   "minibatch", "max_new_tokens", "eval_prompts", "n_layer", "n_embd"),
                  lambda v: v >= 1, "at least 1"),
                 (("rm_lr", "lr", "clip_eps", "value_clip", "target_kl"), lambda v: v > 0, "> 0"),
                 (("beta", "vf_coef", "ent_coef"), lambda v: v >= 0, "0 or more (0 = off)"),
                 (("gamma", "lam"), lambda v: 0 <= v <= 1, "in [0, 1]"),
                 (("n_embd",), lambda v: v % 8 == 0, "a multiple of 8 (4 heads of even width)"),
                 (("best_of",), lambda v: v >= 4, "at least 4, the smallest Best-of-N row"),
                 (("max_new_tokens",), lambda v: self.init or v <= BLOCK_SIZE - 3,
                  f"at most {BLOCK_SIZE - 3}, the tiny model's context less the prompt")]
        for names, ok, rule in rules:  # NaN fails every comparison, so it is caught too
            for name in names:
                if not ok(getattr(self, name)):
                    raise ValueError(f"{name}={getattr(self, name)}: --{name} must be {rule}")

GPU = dict(iters=200, n_embd=256)  # the defaults that change on a CUDA device

# ----------------------------------------------------------------------------- the task

NOUNS = ["food", "service", "room", "staff", "view", "price", "bed", "music", "coffee", "wifi",
         "pool", "menu"]
TRAIN_NOUNS = NOUNS[:8]
HELD_OUT_NOUNS = NOUNS[8:]  # PPO never sees these prompts
SENTIMENT = {"great": 1, "lovely": 1, "superb": 1, "clean": 1, "friendly": 1, "good": 1,
             "awful": -1, "dirty": -1, "rude": -1, "slow": -1, "noisy": -1, "bad": -1, "okay": 0,
             "small": 0}
BLOCK_SIZE = 32  # the models' context: a 3-token prompt "the <noun> was" and the completion
REVIEW = re.compile(r" (\w+)(?:(?:, (\w+))? and (\w+))?\.")  # " a." | " a and b." | " a, b and c."

def review(adjs):
    return " " + (adjs[0] if len(adjs) == 1 else ", ".join(adjs[:-1]) + " and " + adjs[-1]) + "."

def make_review(rng, nouns):
    """A prompt "the <noun> was" and a completion of 1-3 adjectives drawn uniformly."""
    adjs = [rng.choice(list(SENTIMENT)) for _ in range(rng.randint(1, 3))]
    return f"the {rng.choice(nouns)} was", review(adjs)

def true_score(text):
    """The preference we pretend people have, so we can check: +1 per positive adjective, -1 per
    negative one, and -3 for anything that is not a well-formed review of 1-3 known adjectives."""
    m = REVIEW.fullmatch(text)
    if m is None or any(w is not None and w not in SENTIMENT for w in m.groups()):
        return -3.0
    return float(sum(SENTIMENT[w] for w in m.groups() if w is not None))

# ----------------------------------------------------------------------------- models

def join(prompts, completions, pad_id, device):
    """Rows [pad.. prompt completion ..pad] as gpt.completion_logprobs lays them out: ids and
    attention mask (B, W + Tc), the completion mask (B, Tc) and the prompt width W."""
    W, Tc = max(len(p) for p in prompts), max(max(len(c) for c in completions), 1)
    idx, valid = gpt.pad_left(prompts, pad_id, device, W)
    # completions left-aligned: pad_left's rows of the reversed completions, flipped
    reversed_rows = gpt.pad_left([c[::-1] for c in completions], pad_id, device, Tc)
    comp, mask = (t.flip(1) for t in reversed_rows)  # (B, Tc) each
    return torch.cat([idx, comp], 1), torch.cat([valid, mask], 1), mask, W

class ScalarModel(nn.Module):
    """A GPT backbone and a zero-initialised linear head: one scalar per position. As a reward
    model it is read at the last real token, r(x, y); as a value model at every state, V(s_t)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx, attn_mask=None):  # (B, T) -> (B, T)
        return self.head(self.backbone.hidden(idx, attn_mask)).squeeze(-1)

def reward_scores(rm, prompts, completions, pad_id):
    """r(x, y): (B,), the head's output on each row's last real token (EOS included)."""
    idx, valid, mask, W = join(prompts, completions, pad_id, rm.head.weight.device)
    last = W + mask.sum(1) - 1  # (B,) index of the last completion token in each row
    return rm(idx, valid).gather(1, last[:, None]).squeeze(1)

def pair_scores(rm, pairs, pad_id):
    """r(x, y_w) and r(x, y_l), (B,) each, for (prompt, chosen, rejected) triples."""
    prompts, chosen, rejected = zip(*pairs)
    return reward_scores(rm, prompts, chosen, pad_id), reward_scores(rm, prompts, rejected, pad_id)

def bradley_terry_loss(r_chosen, r_rejected):
    """-log sigma(r_w - r_l), averaged over pairs: the chosen should out-score the rejected."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()

def policy_outputs(policy, value, prompts, completions, pad_id):
    """Per completion token: log pi(a_t | s_t), the policy's entropy H(pi(. | s_t)) and V(s_t),
    each (B, Tc), plus the mask. s_t is the prompt and the tokens before a_t."""
    idx, valid, mask, W = join(prompts, completions, pad_id, policy.lm_head.weight.device)
    logits = gpt.upcast(policy(idx, attn_mask=valid)[0][:, W - 1:-1])  # (B, Tc, vocab)
    logp_all = F.log_softmax(logits, -1)
    logp = logp_all.gather(-1, idx[:, W:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = value(idx, valid)[:, W - 1:-1]
    return logp * mask, entropy, values * mask, mask

# ----------------------------------------------------------------------------- PPO

def gae(rewards, values, mask, gamma, lam):
    """Generalised advantage estimation over (B, T) right-padded rows:
    delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last token),
    A_t = delta_t + gamma lam A_{t+1}. Returns (advantages, returns = A + V)."""
    advantages = torch.zeros_like(rewards)
    next_value, next_adv = torch.zeros_like(rewards[:, 0]), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        live = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_adv) * live
        next_value, next_adv = values[:, t] * live, advantages[:, t]
    return advantages, (advantages + values) * mask

def whiten(x, mask, eps=1e-8):
    """(x - mean) / std over the real tokens only."""
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * mask

def per_token_rewards(logp, ref_logp, scores, mask, beta):
    """r_t = -beta (log pi(a_t) - log pi_ref(a_t)), plus the reward model's score on the last."""
    rewards = -beta * (logp - ref_logp) * mask
    last = mask.sum(1) - 1
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))

def clipped_value_loss(values, old_values, returns, mask, clip):
    """0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2): the critic may not jump."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return (loss * mask).sum() / mask.sum()

def ppo_loss(logp, old_logp, advantages, entropy, values, old_values, returns, mask, cfg):
    """Clipped policy loss + vf_coef * clipped value loss - ent_coef * entropy, over real tokens."""
    n = mask.sum()
    ratio = torch.exp(logp - old_logp)  # rho_t = pi / pi_old
    clipped_ratio = ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)
    policy_loss = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    policy_loss = (policy_loss * mask).sum() / n
    value_loss = clipped_value_loss(values, old_values, returns, mask, cfg.value_clip)
    mean_entropy = (entropy * mask).sum() / n
    with torch.no_grad():
        approx_kl = (((ratio - 1) - (logp - old_logp)) * mask).sum() / n  # k3 of KL(pi_old || pi)
        clipped = ((ratio - 1).abs() > cfg.clip_eps) & mask
        stats = dict(approx_kl=float(approx_kl), clipfrac=float(clipped.sum() / n),
                     entropy=float(mean_entropy), value_loss=float(value_loss))
    return policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * mean_entropy, stats

def rollout(policy, ref, rm, value, prompts, tok, cfg, generator):
    """Sample one completion per prompt and score it: everything PPO's epochs need, no grad."""
    pad = tok.eot_id
    completions = policy.generate(prompts, cfg.max_new_tokens, temperature=1.0, stop_tokens=(pad,),
                                  generator=generator, pad_id=pad)
    with gpt.evaluating(policy, ref, rm, value):
        logp, _, values, mask = policy_outputs(policy, value, prompts, completions, pad)
        ref_logp, _ = gpt.completion_logprobs(ref, prompts, completions, pad)
        scores = reward_scores(rm, prompts, completions, pad)
    rewards = per_token_rewards(logp, ref_logp, scores, mask, cfg.beta)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    return dict(prompts=prompts, completions=completions, logp=logp, values=values, mask=mask,
                advantages=whiten(advantages, mask), returns=returns, scores=scores,
                kl=((logp - ref_logp) * mask).sum(1), pad=pad)

def ppo_update(policy, value, opt, batch, cfg, generator):
    """Shuffled minibatches over one rollout, cfg.epochs times, until the k3 KL passes target_kl."""
    params = [p for group in opt.param_groups for p in group["params"]]
    n = len(batch["prompts"])
    # each epoch's shuffle is drawn as the epoch starts: an early stop draws no more
    orders = (torch.randperm(n, generator=generator).tolist() for _ in range(cfg.epochs))
    stats = []
    for rows in (o[i:i + cfg.minibatch] for o in orders for i in range(0, n, cfg.minibatch)):
        prompts, completions = ([batch[k][i] for i in rows] for k in ("prompts", "completions"))
        logp, entropy, values, mask = policy_outputs(policy, value, prompts, completions,
                                                     batch["pad"])
        T = mask.size(1)  # this minibatch's longest completion
        old = {k: batch[k][rows, :T] for k in ("logp", "advantages", "values", "returns")}
        loss, s = ppo_loss(logp, old["logp"], old["advantages"], entropy, values, old["values"],
                           old["returns"], mask, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        stats.append(s)
        if s["approx_kl"] > cfg.target_kl:  # the rollout has taught all it safely can
            break
    return {k: sum(x[k] for x in stats) / len(stats) for k in stats[0]} | {"updates": len(stats)}

# ----------------------------------------------------------------------------- the pipeline

def review_prompts(tok, nouns, n, rng):
    return [tok.encode(f"the {rng.choice(nouns)} was") for _ in range(n)]

def decode(tok, completion):
    return tok.decode(completion[:-1] if completion[-1:] == [tok.eot_id] else completion)

def start_model(cfg, rng):
    """(model, tokenizer) from --init, or a tiny GPT with a BPE whose every word is one token."""
    if cfg.init:
        return gpt.load_model(cfg.init)[:2]
    corpus = " ".join(p + c for p, c in (make_review(rng, NOUNS) for _ in range(500)))
    tok = gpt.Tokenizer.from_spec("bpe", corpus, vocab_size=512)
    return gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=BLOCK_SIZE,
                                 n_layer=cfg.n_layer, n_head=4, n_embd=cfg.n_embd)), tok

def check_fits(model, tok, cfg):
    """Say at load, not after minutes of training, that a review or prompt does not fit."""
    reviews = [review(adjs) for n in (1, 2, 3) for adjs in itertools.product(SENTIMENT, repeat=n)]
    longest = max(len(tok.encode(text)) for text in reviews) + 1
    if longest > cfg.max_new_tokens:
        raise ValueError(f"this tokenizer spells the longest review in {longest} tokens with its"
                         f" end: use --max_new_tokens={longest} or more")
    prompt = max(len(tok.encode(f"the {noun} was")) for noun in NOUNS)
    gpt.check_chat_model(model, tok, prompt + cfg.max_new_tokens)

def train_base_policy(model, tok, cfg):
    """Fine-tune on reviews with uniformly random adjectives: the SFT model PPO starts from."""
    rng = random.Random(cfg.seed)
    reviews = [make_review(rng, NOUNS) for _ in range(4000)]
    pairs = [(tok.encode(p), tok.encode(c) + [tok.eot_id]) for p, c in reviews]
    gpt.finetune(model, pairs, cfg.base_steps, lr=3e-3, batch_size=32, seed=cfg.seed,
                 desc="base policy (SFT)")
    return model

def preference_pairs(policy, tok, nouns, n, rng, generator, max_new_tokens):
    """(prompt, chosen, rejected): two samples per prompt ranked by true_score, ties dropped."""
    prompts = review_prompts(tok, nouns, n, rng)
    a, b = (policy.generate(prompts, max_new_tokens, stop_tokens=(tok.eot_id,), generator=generator,
                            pad_id=tok.eot_id) for _ in range(2))
    pairs = []
    for p, x, y in zip(prompts, a, b):
        sx, sy = true_score(decode(tok, x)), true_score(decode(tok, y))
        if sx != sy:
            pairs.append((p, x, y) if sx > sy else (p, y, x))
    return pairs

def train_reward_model(base, pairs, cfg, pad_id):
    """Bradley-Terry on (prompt, chosen, rejected) triples, from a copy of the base policy."""
    if not pairs:
        raise ValueError("no preference pairs: every pair of samples tied on the true score; train"
                         " the base policy longer (--base_steps) or draw more pairs (--rm_pairs)")
    rm = ScalarModel(copy.deepcopy(base).requires_grad_(True)).train()  # base: the frozen pi_ref
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.rm_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.rm_steps), desc="reward model", leave=False)
    for _ in bar:
        batch = [pairs[i] for i in torch.randint(len(pairs), (32,), generator=g).tolist()]
        loss = bradley_terry_loss(*pair_scores(rm, batch, pad_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return rm.eval().requires_grad_(False)

@gpt.inference
def evaluate(policy, ref, rm, tok, prompts, cfg, generator, n=1):
    """Best-of-n (n=1: sampling): RM score, KL to the reference (for n > 1 the bound log n -
    (n-1)/n, exact without ties on the RM: Beirami et al. 2024), true score and an example."""
    pad = tok.eot_id
    repeated = [p for p in prompts for _ in range(n)]
    samples = policy.generate(repeated, cfg.max_new_tokens, stop_tokens=(pad,), generator=generator,
                              pad_id=pad)
    scores = reward_scores(rm, repeated, samples, pad).view(-1, n)  # (prompts, n)
    chosen = [samples[i * n + int(b)] for i, b in enumerate(scores.argmax(1))]
    if n == 1:
        logp, _ = gpt.completion_logprobs(policy, prompts, chosen, pad)
        ref_logp, _ = gpt.completion_logprobs(ref, prompts, chosen, pad)
        kl = float((logp - ref_logp).sum(1).mean())  # E_pi[log pi/pi_ref] over whole completions
    else:
        kl = math.log(n) - (n - 1) / n
    return {"rm score": float(scores.max(1).values.mean()), "KL": kl,
            "true score": sum(true_score(decode(tok, c)) for c in chosen) / len(chosen),
            "example": tok.decode(prompts[0]) + decode(tok, chosen[0])}

def train_ppo(policy, ref, rm, tok, cfg, rng, generator, log):
    """The RLHF loop: roll out, score, GAE, then a few epochs of clipped updates, cfg.iters times.
    The value model starts as a copy of the reward model, as in InstructGPT."""
    value = copy.deepcopy(rm).requires_grad_(True).train()
    policy.requires_grad_(True).train()
    params = list(policy.parameters()) + list(value.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    bar = tqdm(range(cfg.iters), desc="PPO")
    for it in bar:
        prompts = review_prompts(tok, TRAIN_NOUNS, cfg.rollout_size, rng)
        with gpt.autocast(generator.device):  # bf16 on CUDA; log-probs and losses upcast to fp32
            batch = rollout(policy, ref, rm, value, prompts, tok, cfg, generator)
            stats = ppo_update(policy, value, opt, batch, cfg, generator)
        true = sum(true_score(decode(tok, c)) for c in batch["completions"]) / len(prompts)
        row = dict(step=it + 1, rm_score=float(batch["scores"].mean()),
                   kl=float(batch["kl"].mean()), true_score=true, **stats)
        log(**row)
        bar.set_postfix(score=f"{row['rm_score']:.2f}", kl=f"{row['kl']:.2f}", true=f"{true:.2f}",
                        updates=stats["updates"])
    return policy.eval()

def main(cfg):
    device = gpt.pick_device(cfg.device)
    plt = gpt.pyplot(cfg.plot)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    g = torch.Generator(device).manual_seed(cfg.seed)
    t0 = time.time()
    with gpt.bad_input():  # a missing, garbage or too small checkpoint: one line, before any work
        model, tok = start_model(cfg, rng)
        check_fits(model, tok, cfg)
    ref = train_base_policy(model.to(device), tok, cfg).eval().requires_grad_(False)
    pairs = preference_pairs(ref, tok, TRAIN_NOUNS, cfg.rm_pairs, rng, g, cfg.max_new_tokens)
    test_pairs = preference_pairs(ref, tok, HELD_OUT_NOUNS, 500, rng, g, cfg.max_new_tokens)
    rm = train_reward_model(ref, pairs, cfg, tok.eot_id)
    prompts = review_prompts(tok, TRAIN_NOUNS, 256, rng)
    samples = ref.generate(prompts, cfg.max_new_tokens, stop_tokens=(tok.eot_id,), generator=g,
                           pad_id=tok.eot_id)
    with torch.no_grad():  # rescale the head so that the reference's own samples score mean 0
        # and std 1 (as InstructGPT did): beta then means the same whatever scale the RM learned
        scores = reward_scores(rm, prompts, samples, tok.eot_id)
        mean, std = scores.mean(), scores.std()
        rm.head.weight.div_(std)
        rm.head.bias.sub_(mean).div_(std)
        r_w, r_l = pair_scores(rm, test_pairs, tok.eot_id)
    print(f"reward model: {len(pairs)} pairs, held-out pairwise accuracy "
          f"{float((r_w > r_l).float().mean()):.1%} ({time.time() - t0:.0f}s)")
    eval_prompts = review_prompts(tok, HELD_OUT_NOUNS, cfg.eval_prompts, rng)
    rows = [("reference (SFT)", 1, evaluate(ref, ref, rm, tok, eval_prompts, cfg, g))]
    rows += [(f"Best-of-{n}", n, evaluate(ref, ref, rm, tok, eval_prompts, cfg, g, n))
             for n in (4, 16, 64, 256) if n <= cfg.best_of]
    log = gpt.RunLog(cfg.out_dir)
    policy = train_ppo(copy.deepcopy(ref), ref, rm, tok, cfg, rng, g, log)
    rows.append(("PPO", 1, evaluate(policy, ref, rm, tok, eval_prompts, cfg, g)))
    gpt.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), policy, tok, step=cfg.iters,
                        config=cfg)
    if plt:
        gpt.plot_curves(plt, log, ["rm_score", "kl", "true_score"],
                        os.path.join(cfg.out_dir, "log.png"))
    print(f"held-out prompts: {len(eval_prompts)} reviews of {', '.join(HELD_OUT_NOUNS)} (PPO"
          f" trained on other nouns); true score from -3 (malformed) to +3. PPO drew"
          f" {cfg.iters * cfg.rollout_size} samples in training.")
    print(f"{'policy':<16} {'samples/prompt':>14} {'RM score':>9} {'KL':>6} {'true score':>10}"
          "  example")
    for name, n, r in rows:
        kl = ("<=" if n > 1 else "") + f"{r['KL']:.2f}"  # Best-of-N: the bound, not a measurement
        print(f"{name:<16} {n:>14} {r['rm score']:>9.2f} {kl:>6} {r['true score']:>10.2f}  "
              f"{r['example']!r}")
    print("Best-of-N KL: the upper bound log N - (N-1)/N, exact only if no two of the N samples"
          " tie on the reward model (equal completions always do)")
    print(f"total {time.time() - t0:.0f}s")
    return {name: r for name, _, r in rows}

if __name__ == "__main__":
    main(gpt.parse_args(Config, gpu=GPU))
