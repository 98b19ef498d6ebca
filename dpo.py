"""Direct preference optimisation: learn from (prompt, chosen, rejected) pairs without a reward model.

DPO (Rafailov et al. 2023) shows that the KL-regularised RLHF objective has the closed-form
optimum pi*(y|x) ~ pi_ref(y|x) exp(r(x, y) / beta), so the policy itself defines an implicit
reward r = beta log(pi / pi_ref), and the Bradley-Terry likelihood of the preferences becomes
    L = -log sigma(beta [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))]).
Options: IPO (Azar et al. 2023), (h - 1/(2 beta))^2, which does not push the margin h to
infinity; conservative DPO (Mitchell 2023), which assumes a fraction of the labels are flipped;
and RPO (Pang et al. 2024), which adds the NLL of the chosen answer so its likelihood cannot fall.

    python dpo.py                                  # tiny SFT model made here, then DPO and DPO + NLL
    python dpo.py --init=out/sft/ckpt.pt           # start from `python sft.py`'s full fine-tune
    python dpo.py --loss=ipo --beta=0.5
    python dpo.py --label_smoothing=0.1 --rpo_alpha=0

On CPU you see a briefly fine-tuned model (so it still makes mistakes), preference pairs whose
rejected answers are its own wrong answers, then two runs from it, with held-out implicit-reward
accuracy, margin, chosen/rejected log-probs and greedy accuracy as they train. Pure DPO raises
the preference accuracy, but on this tiny model it lowers log p(chosen) too and greedy accuracy
falls (likelihood displacement); with the NLL term both rise.
"""
import copy
import dataclasses
import json
import math
import os
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import gpt


@dataclass
class DPOConfig:
    init: str = ""  # SFT checkpoint to start from (e.g. out/sft/ckpt.pt); empty = pretrain and SFT a tiny model here
    base_steps: int = 0  # pretraining steps of that tiny base; 0 = sft.py's default
    sft_steps: int = 0  # its SFT steps; 0 = 150 on CPU, 600 on CUDA: short, so it still makes mistakes
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo
    beta: float = 0.1  # strength of the KL pull to the reference; the implicit reward is beta log(pi / ref)
    label_smoothing: float = 0.0  # conservative DPO: the assumed fraction of flipped labels (sigmoid only)
    rpo_alpha: float = 1.0  # a 2nd run adds alpha * NLL of the chosen answers per token (RPO); 0 = no 2nd run
    steps: int = 0  # DPO steps; 0 = 120 on CPU, 600 on CUDA
    batch_size: int = 32  # preference pairs per step
    lr: float = 1e-3  # peak AdamW learning rate (cosine decay to 0)
    n_train: int = 2000  # training preference pairs
    n_eval: int = 200  # held-out pairs, over words and numbers never seen in training
    eval_interval: int = 0  # steps between held-out evaluations; 0 = steps / 4
    out_dir: str = "out/dpo"  # ckpt.pt and log.jsonl
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # data, pairs and batch order

    def __post_init__(self):
        if self.loss not in ("sigmoid", "ipo"):
            raise ValueError(f"loss={self.loss!r}; choose sigmoid or ipo")
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError("label_smoothing applies to the sigmoid (DPO) loss only; set --label_smoothing=0")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing={self.label_smoothing} must lie in [0, 0.5)")
        if self.beta <= 0 or min(self.batch_size, self.n_train, self.n_eval) < 1:
            raise ValueError("beta must be positive; batch_size, n_train and n_eval at least 1")


# ----------------------------------------------------------------------------- the loss

def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
             loss_type="sigmoid", label_smoothing=0.0):
    """Per-pair losses (B,) and the implicit rewards beta log(pi/ref) of chosen and rejected (B,).
    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)), the log-ratio margin."""
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    if loss_type == "sigmoid":  # -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":  # (h - 1/(2 beta))^2: regress the margin to a finite target
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type={loss_type!r}; choose sigmoid or ipo")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def sequence_logps(model, prompts, chosen, rejected):
    """Summed log pi(y|x) of chosen and rejected completions, (B,) each, from one forward pass
    over the 2B rows. Masks come from lengths (gpt.completion_logprobs), so padding is inert.
    Policy and reference both pass here, so both get the same autocast: a bf16 policy against
    an fp32 reference would start from a margin of rounding noise instead of 0."""
    with gpt.autocast(next(model.parameters()).device):
        logp, _ = gpt.completion_logprobs(model, prompts + prompts, chosen + rejected)  # (2B, Tc)
    total = logp.sum(-1)
    return total[:len(prompts)], total[len(prompts):]


def batch_loss(policy, ref, prompts, chosen, rejected, cfg):
    """The training loss on one batch, and its per-pair DPO losses and implicit rewards. The
    frozen reference is scored on the same rows in the same way, so only the weights differ
    between the two passes: at step 0 (without dropout) the margin is exactly 0, bf16 or not."""
    pi_w, pi_l = sequence_logps(policy, prompts, chosen, rejected)
    with torch.no_grad():
        ref_w, ref_l = sequence_logps(ref, prompts, chosen, rejected)
    losses, r_w, r_l = dpo_loss(pi_w, pi_l, ref_w, ref_l, cfg.beta, cfg.loss, cfg.label_smoothing)
    n_w = torch.tensor([len(c) for c in chosen], device=pi_w.device)  # |y_w|, <|end|> included
    # RPO: + alpha * (-log pi(y_w|x) / |y_w|), each chosen answer's NLL per token (Pang et al. 2024)
    return losses.mean() - cfg.rpo_alpha * (pi_w / n_w).mean(), losses, r_w, r_l


def all_logps(model, pairs, batch_size=64):
    """Summed log-probs of every pair's chosen and rejected answers, (N,) each, in eval mode and
    without autograd: the frozen reference's held-out ones are computed once this way."""
    with gpt.evaluating(model):
        out = [sequence_logps(model, *map(list, zip(*pairs[i:i + batch_size])))
               for i in range(0, len(pairs), batch_size)]
    return torch.cat([c for c, _ in out]), torch.cat([r for _, r in out])


# ----------------------------------------------------------------------------- the preference task

def corrupt(answer, rng):
    """A plausible wrong answer of the same kind: a count off by one, the other parity, another letter."""
    if answer.isdigit():
        return str(int(answer) + (1 if answer == "0" else rng.choice([-1, 1])))
    if answer in ("even", "odd"):
        return "odd" if answer == "even" else "even"
    return rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != answer])


def make_pairs(model, tok, examples, seed):
    """(prompt ids, chosen ids, rejected ids) for (task, instruction, answer) examples: chosen is the
    right answer; rejected is the model's own greedy answer when that is wrong (the mistakes DPO
    should unlearn), else a plausible corruption of the right one. Returns the pairs and the
    fraction of rejected answers that are the model's own."""
    rng, end = random.Random(seed), tok.special("<|end|>")
    pairs, own = [], 0
    for (_, instruction, answer), guess in zip(examples, gpt.chat_answers(model, tok, [x for _, x, _ in examples])):
        mistake = bool(guess) and tok.decode(guess) != answer
        rejected = guess if mistake else tok.encode(corrupt(answer, rng))  # ids as generated: no re-encoding
        own += mistake
        prompt = gpt.render_chat(gpt.chat(instruction), tok, add_generation_prompt=True)
        pairs.append((prompt, tok.encode(answer) + [end], rejected + [end]))
    return pairs, own / len(examples)


# ----------------------------------------------------------------------------- training and evaluation

def evaluate(policy, pairs, ref_logps, cfg):
    """Held-out DPO loss, implicit-reward accuracy and margin, mean log-probs of chosen and
    rejected, and how often the policy itself gives the chosen answer the higher likelihood."""
    chosen, rejected = all_logps(policy, pairs)
    losses, r_w, r_l = dpo_loss(chosen, rejected, *ref_logps, cfg.beta, cfg.loss, cfg.label_smoothing)
    return dict(loss=losses.mean().item(), reward_acc=(r_w > r_l).float().mean().item(),
                margin=(r_w - r_l).mean().item(), logp_chosen=chosen.mean().item(),
                logp_rejected=rejected.mean().item(), prefers_chosen=(chosen > rejected).float().mean().item())


def train_dpo(policy, ref, pairs, cfg, steps, on_eval):
    """AdamW with a cosine lr on batch_loss over random batches of pairs. on_eval(step) runs
    every eval_interval steps."""
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    interval = cfg.eval_interval or max(1, steps // 4)
    bar = tqdm(range(steps), desc=f"dpo ({cfg.loss})", leave=False)
    for step in bar:
        if step % interval == 0:
            on_eval(step)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        rows = torch.randint(len(pairs), (cfg.batch_size,), generator=g)
        prompts, chosen, rejected = map(list, zip(*[pairs[i] for i in rows.tolist()]))
        policy.train()
        loss, losses, r_w, r_l = batch_loss(policy, ref, prompts, chosen, rejected, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{losses.mean().item():.3f}", acc=f"{(r_w > r_l).float().mean().item():.2f}",
                        margin=f"{(r_w - r_l).mean().item():.2f}")
    on_eval(steps)
    policy.eval()


# ----------------------------------------------------------------------------- demo

def sft_model(cfg, device, train_set):
    """(model, tokenizer): the SFT checkpoint at cfg.init, or a tiny base fine-tuned briefly here."""
    if cfg.init:
        model, tok, _ = gpt.load_model(cfg.init, device)
        return model.eval(), tok
    model, tok = gpt.base_model("", cfg.base_steps, device)
    end = tok.special("<|end|>")
    pairs = [(gpt.render_chat(gpt.chat(x), tok, add_generation_prompt=True), tok.encode(a) + [end])
             for _, x, a in train_set]
    steps = cfg.sft_steps or (600 if str(device).startswith("cuda") else 150)
    gpt.finetune(model, pairs, steps, lr=3e-3, batch_size=32, seed=cfg.seed, desc="sft")
    return model, tok


def main(cfg):
    """Pure DPO, then (if rpo_alpha > 0) DPO with the NLL term, each from the same SFT model."""
    device = gpt.pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    steps = cfg.steps or (600 if device.startswith("cuda") else 120)
    train_set, eval_set = gpt.make_task(cfg.n_train, cfg.n_eval, cfg.seed + 1)
    print(f"policy: {cfg.init or 'a tiny base pretrained and briefly fine-tuned here'}")
    start, tok = sft_model(cfg, device, train_set)
    pairs, own = make_pairs(start, tok, train_set, cfg.seed)
    eval_pairs, _ = make_pairs(start, tok, eval_set, cfg.seed + 1)
    print(f"{len(pairs)} preference pairs; {own:.0%} of the rejected answers are the model's own mistakes")
    ref = copy.deepcopy(start).requires_grad_(False).eval()  # frozen pi_ref
    ref_eval = all_logps(ref, eval_pairs)  # in the batches evaluate() scores the policy in
    os.makedirs(cfg.out_dir, exist_ok=True)
    histories = {}
    for alpha in [0.0] + ([cfg.rpo_alpha] if cfg.rpo_alpha else []):
        name = f"{cfg.loss} + {alpha:g} NLL" if alpha else cfg.loss
        policy, history = copy.deepcopy(start), []
        tqdm.write(f"\n{name}, beta={cfg.beta}: held-out pairs and instructions during training")
        tqdm.write(f"{'step':>5} {'loss':>6} {'reward acc':>10} {'margin':>7} {'log p(y_w)':>10} {'log p(y_l)':>10} "
                   f"{'greedy acc':>10}")

        def on_eval(step):
            row = dict(variant=name, step=step, **evaluate(policy, eval_pairs, ref_eval, cfg),
                       greedy_acc=gpt.evaluate_instructions(policy, tok, eval_set)[0])
            history.append(row)
            tqdm.write(f"{step:>5} {row['loss']:>6.3f} {row['reward_acc']:>10.0%} {row['margin']:>7.2f} "
                       f"{row['logp_chosen']:>10.2f} {row['logp_rejected']:>10.2f} {row['greedy_acc']:>10.0%}")
            with open(os.path.join(cfg.out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")

        train_dpo(policy, ref, pairs, dataclasses.replace(cfg, rpo_alpha=alpha), steps, on_eval)
        histories[name] = history
    gpt.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), policy, tok, step=steps, config=cfg)
    report(histories)
    return histories


def report(histories):
    first = next(iter(histories.values()))[0]
    print(f"\nheld-out, before -> after ({len(histories)} run(s) from the same SFT model; reward acc is 0% at the"
          " start, where every implicit reward is 0)")
    print(f"{'':<22} {'prefers y_w':>11} {'reward acc':>10} {'greedy acc':>10} {'log p(y_w)':>10} {'log p(y_l)':>10}")
    for name, row in [("SFT model", first)] + [(name, h[-1]) for name, h in histories.items()]:
        print(f"{name:<22} {row['prefers_chosen']:>11.0%} {row['reward_acc']:>10.0%} {row['greedy_acc']:>10.0%} "
              f"{row['logp_chosen']:>10.2f} {row['logp_rejected']:>10.2f}")


if __name__ == "__main__":
    main(gpt.parse_args(DPOConfig))
