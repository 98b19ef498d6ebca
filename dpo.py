"""Direct preference optimisation: learn from (prompt, chosen, rejected) pairs, no reward model.

DPO (Rafailov et al. 2023) shows that the KL-regularised RLHF objective has the closed-form
optimum pi*(y|x) ~ pi_ref(y|x) exp(r(x, y) / beta), so the policy itself defines an implicit
reward r = beta log(pi / pi_ref), and the Bradley-Terry likelihood of the preferences becomes
    L = -log sigma(beta [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))]).
Options: IPO (Azar et al. 2023), (h - 1/(2 beta))^2, which does not push the margin h to
infinity; conservative DPO (Mitchell 2023), which assumes a fraction of the labels are flipped;
and RPO (Pang et al. 2024), which adds the NLL of the chosen answer so its likelihood cannot fall.

    python dpo.py                            # tiny SFT model made here, then DPO and DPO + NLL
    python dpo.py --init=out/sft/ckpt.pt     # start from `python sft.py`'s full fine-tune
    python dpo.py --loss=ipo --beta=0.5 --plot   # out/dpo/log.png: accuracies over the steps
    python dpo.py --label_smoothing=0.1 --rpo_alpha=0
    python dpo.py --resume                   # finish an interrupted run where it stopped

On CPU you see a briefly fine-tuned model (so it still makes mistakes), preference pairs whose
rejected answers are its own wrong answers, then two runs from it, with held-out implicit-reward
accuracy, margin, chosen/rejected log-probs and greedy accuracy as they train. Pure DPO raises
the preference accuracy, but on this tiny model it lowers log p(chosen) too and greedy accuracy
falls (likelihood displacement); with the NLL term both rise. The runs are saved in out/dpo/:
ckpt_pure.pt (DPO alone) and ckpt.pt (the last run, with the NLL term), for `grpo.py --init`.
Left out: online and iterative DPO (the pairs are made once, from the starting model), human
preference data (a wrong answer is the rejected one), and the other losses (KTO, ORPO, SimPO).
"""
import copy
import dataclasses
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
    init: str = ""  # SFT checkpoint to start from (e.g. out/sft/ckpt.pt); empty = make one here
    base_steps: int = 300  # pretraining steps of the tiny base made here
    sft_steps: int = 150  # its SFT steps: short, so it still makes mistakes
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo
    beta: float = 0.1  # strength of the KL pull to the reference; the reward is beta log(pi / ref)
    label_smoothing: float = 0.0  # conservative DPO: the assumed fraction of flipped labels
    rpo_alpha: float = 1.0  # a 2nd run adds alpha * NLL of the chosen answers per token (RPO);
    #   0 = no 2nd run
    steps: int = 120  # DPO steps of each run
    batch_size: int = 32  # preference pairs per step
    lr: float = 1e-3  # peak AdamW learning rate (cosine decay to 0)
    n_train: int = 2000  # training preference pairs
    n_eval: int = 200  # held-out pairs, over words and numbers never seen in training
    eval_interval: int = 30  # steps between held-out evaluations, each saving a checkpoint
    stop_after: int = 0  # stop after this many steps over both runs, as if pre-empted; 0 = never
    resume: bool = False  # keep a finished run in out_dir, continue the one that stopped
    plot: bool = False  # out_dir/log.png: held-out accuracies over the steps (needs matplotlib)
    out_dir: str = "out/dpo"  # ckpt_pure.pt, ckpt.pt, log.jsonl (and sft.pt, if made here)
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # data, pairs and batch order

    def __post_init__(self):
        if self.loss not in ("sigmoid", "ipo"):
            raise ValueError(f"--loss={self.loss}: choose sigmoid or ipo")
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError("--label_smoothing applies to the sigmoid (DPO) loss only: use 0")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"--label_smoothing={self.label_smoothing}: must lie in [0, 0.5)")
        for name in ("base_steps", "sft_steps", "steps", "batch_size", "n_train", "n_eval",
                     "eval_interval", "beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name}={getattr(self, name)}: must be positive")
        if min(self.rpo_alpha, self.stop_after, self.lr) < 0:
            raise ValueError("--rpo_alpha, --stop_after and --lr cannot be negative (0 = off)")

GPU = dict(base_steps=2000, sft_steps=600, steps=600, eval_interval=150)  # the defaults on CUDA

# ----------------------------------------------------------------------------- the loss

def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta, loss_type="sigmoid", label_smoothing=0.0):
    """Per-pair losses (B,) and the implicit rewards beta log(pi/ref) of chosen and rejected (B,).
    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)), the log-ratio margin."""
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    if loss_type == "sigmoid":  # -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
                  - label_smoothing * F.logsigmoid(-beta * h))
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
    """A plausible wrong answer of the same kind: a count off by one, the other parity, a letter."""
    if answer.isdigit():
        return str(int(answer) + (1 if answer == "0" else rng.choice([-1, 1])))
    if answer in ("even", "odd"):
        return "odd" if answer == "even" else "even"
    return rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != answer])

def make_pairs(model, tok, examples, seed):
    """(prompt, chosen, rejected) ids, and the fraction of rejected answers that are the model's:
    its greedy answer when wrong (the mistakes DPO should unlearn), else a corrupted right one."""
    rng = random.Random(seed)
    end = tok.special("<|end|>")
    pairs = []
    own = 0
    guesses = gpt.chat_answers(model, tok, [x for _, x, _ in examples])
    for (_, instruction, answer), guess in zip(examples, guesses):
        mistake = bool(guess) and tok.decode(guess) != answer
        rejected = guess if mistake else tok.encode(corrupt(answer, rng))  # ids as generated
        own += mistake
        prompt = gpt.render_chat(gpt.chat(instruction), tok, add_generation_prompt=True)
        pairs.append((prompt, tok.encode(answer) + [end], rejected + [end]))
    return pairs, own / len(examples)

# ----------------------------------------------------------------------------- training

def evaluate(policy, pairs, ref_logps, cfg):
    """Held-out DPO loss, implicit-reward accuracy and margin, mean log-probs of chosen and
    rejected, and how often the policy itself gives the chosen answer the higher likelihood."""
    chosen, rejected = all_logps(policy, pairs)
    losses, r_w, r_l = dpo_loss(chosen, rejected, *ref_logps, cfg.beta, cfg.loss,
                                cfg.label_smoothing)
    return dict(loss=losses.mean().item(), reward_acc=(r_w > r_l).float().mean().item(),
                margin=(r_w - r_l).mean().item(), logp_chosen=chosen.mean().item(),
                logp_rejected=rejected.mean().item(),
                prefers_chosen=(chosen > rejected).float().mean().item())

def train_dpo(policy, ref, pairs, cfg, stop, checkpoint, ckpt=None):
    """AdamW, cosine lr, batch_loss on random batches up to step stop, from the start or ckpt;
    checkpoint(step, opt, g) at the start, every eval_interval steps and at stop."""
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if ckpt:
        opt.load_state_dict(ckpt["optimizer"])
        gpt.set_rng_state(ckpt["rng"], g)
        start = ckpt["step"]
    else:
        checkpoint(0, opt, g)
    bar = tqdm(range(start, stop), desc=f"dpo ({cfg.loss})", leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        rows = torch.randint(len(pairs), (cfg.batch_size,), generator=g)
        prompts, chosen, rejected = map(list, zip(*[pairs[i] for i in rows.tolist()]))
        policy.train()
        loss, losses, r_w, r_l = batch_loss(policy, ref, prompts, chosen, rejected, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{losses.mean().item():.3f}",
                        acc=f"{(r_w > r_l).float().mean().item():.2f}",
                        margin=f"{(r_w - r_l).mean().item():.2f}")
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == stop:
            checkpoint(step + 1, opt, g)
    policy.eval()

# ----------------------------------------------------------------------------- main

def main(cfg):
    """Pure DPO, then (if rpo_alpha > 0) DPO with the NLL term, each from the same SFT model."""
    device = gpt.pick_device(cfg.device)
    plt = gpt.pyplot(cfg.plot)
    torch.manual_seed(cfg.seed)
    train_set, eval_set = gpt.make_task(cfg.n_train, cfg.n_eval, cfg.seed + 1)
    alphas = [0.0] + ([cfg.rpo_alpha] if cfg.rpo_alpha else [])
    paths = [os.path.join(cfg.out_dir, "ckpt.pt" if j == len(alphas) - 1 else "ckpt_pure.pt")
             for j in range(len(alphas))]  # the last run is ckpt.pt, what grpo.py --init takes
    with gpt.bad_input():  # a missing, garbage or mismatched checkpoint: one line, before any work
        ckpts = resumable(cfg, paths) if cfg.resume else [None] * len(alphas)
        start, tok = load_start(cfg, device, train_set + eval_set)
    print(f"policy: {cfg.init or 'a tiny base pretrained and briefly fine-tuned here (sft.pt)'}")
    if start is None:
        start, tok = sft_model(cfg, device, train_set)
    pairs, own = make_pairs(start, tok, train_set, cfg.seed)
    eval_pairs, _ = make_pairs(start, tok, eval_set, cfg.seed + 1)
    print(f"{len(pairs)} preference pairs; {own:.0%} of the rejected answers are the model's own"
          " mistakes")
    ref = copy.deepcopy(start).requires_grad_(False).eval()  # frozen pi_ref
    ref_eval = all_logps(ref, eval_pairs)  # in the batches evaluate() scores the policy in
    done = [j * cfg.steps + c["step"] for j, c in enumerate(ckpts) if c]
    log = gpt.RunLog(cfg.out_dir, step=max(done) + 1 if cfg.resume else 0)
    histories = {}
    for j, (alpha, path, ckpt) in enumerate(zip(alphas, paths, ckpts)):
        name = f"{cfg.loss} + {alpha:g} NLL" if alpha else cfg.loss
        if ckpt and ckpt["step"] == cfg.steps:  # finished before this --resume
            histories[name] = ckpt["history"]
            continue
        stop = cfg.steps  # this run's last step here: cfg.steps, or where stop_after falls
        if cfg.stop_after:
            stop = min(cfg.steps, max(0, cfg.stop_after - j * cfg.steps))
        torch.manual_seed(cfg.seed)  # both runs start alike, whichever ran before
        policy = copy.deepcopy(start)
        history = ckpt["history"] if ckpt else []
        if ckpt:  # --resume: this run stopped at ckpt["step"]
            policy.load_state_dict(ckpt["model"])
        tqdm.write(f"\n{name}, beta={cfg.beta}: held-out pairs and instructions during training")
        tqdm.write(f"{'step':>5} {'loss':>6} {'reward acc':>10} {'margin':>7} {'log p(y_w)':>10}"
                   f" {'log p(y_l)':>10} {'greedy acc':>10}")

        def checkpoint(step, opt, g):
            if step % cfg.eval_interval == 0 or step == cfg.steps:
                row = dict(variant=name, step=step, **evaluate(policy, eval_pairs, ref_eval, cfg),
                           greedy_acc=gpt.evaluate_instructions(policy, tok, eval_set)[0])
                history.append(row)
                tqdm.write(f"{step:>5} {row['loss']:>6.3f} {row['reward_acc']:>10.0%}"
                           f" {row['margin']:>7.2f} {row['logp_chosen']:>10.2f}"
                           f" {row['logp_rejected']:>10.2f} {row['greedy_acc']:>10.0%}")
                log(**dict(row, step=j * cfg.steps + step))  # the steps of both runs in a row
            gpt.save_checkpoint(path, policy, tok, step=step, config=cfg, history=history,
                                optimizer=opt.state_dict(), rng=gpt.rng_state(g))

        run_cfg = dataclasses.replace(cfg, rpo_alpha=alpha)
        train_dpo(policy, ref, pairs, run_cfg, stop, checkpoint, ckpt)
        histories[name] = history
        if stop < cfg.steps:
            print(f"stopped after {cfg.stop_after} steps: python dpo.py --resume continues")
            break
    else:  # every run finished
        report(histories)
    if plt:
        gpt.plot_curves(plt, log, ["reward_acc", "prefers_chosen", "greedy_acc"],
                        os.path.join(cfg.out_dir, "log.png"))
    return histories

def report(histories):
    first = next(iter(histories.values()))[0]
    print(f"\nheld-out, before -> after ({len(histories)} run(s) from the same SFT model; reward"
          " acc is 0% at the start, where every implicit reward is 0)")
    print(f"{'':<22} {'prefers y_w':>11} {'reward acc':>10} {'greedy acc':>10} {'log p(y_w)':>10}"
          f" {'log p(y_l)':>10}")
    for name, row in [("SFT model", first)] + [(name, h[-1]) for name, h in histories.items()]:
        print(f"{name:<22} {row['prefers_chosen']:>11.0%} {row['reward_acc']:>10.0%}"
              f" {row['greedy_acc']:>10.0%} {row['logp_chosen']:>10.2f}"
              f" {row['logp_rejected']:>10.2f}")

# ----------------------------------------------------------------------------- start, --resume
# The workflow rather than the lecture: where the run starts, and the run that --resume goes on.

def sft_model(cfg, device, train_set):
    """A tiny base pretrained and briefly fine-tuned here, saved as out_dir/sft.pt for --resume."""
    model, tok = gpt.base_model(cfg.base_steps, device)
    end = tok.special("<|end|>")
    pairs = [(gpt.render_chat(gpt.chat(x), tok, add_generation_prompt=True), tok.encode(a) + [end])
             for _, x, a in train_set]
    gpt.finetune(model, pairs, cfg.sft_steps, lr=3e-3, batch_size=32, seed=cfg.seed, desc="sft")
    gpt.save_checkpoint(os.path.join(cfg.out_dir, "sft.pt"), model, tok)
    return model, tok

def load_start(cfg, device, examples):
    """The --init checkpoint, or on --resume out_dir/sft.pt, checked for the chat tokens and
    context; (None, None) when the SFT model is to be made here."""
    if not cfg.init and not cfg.resume:
        return None, None
    model, tok, _ = gpt.load_model(cfg.init or os.path.join(cfg.out_dir, "sft.pt"), device)
    prompt = max(len(gpt.render_chat(gpt.chat(x), tok, True)) for _, x, _ in examples)
    gpt.check_chat_model(model, tok, prompt + 17)  # a rejected answer: 16 tokens and <|end|>
    return model.eval(), tok

def resumable(cfg, paths):
    """Each run's checkpoint (None if it never started), saved with these settings."""
    ckpts = [gpt.load_checkpoint(p) if os.path.exists(p) else None for p in paths]
    if not any(ckpts):
        raise ValueError(f"--resume, but {cfg.out_dir} holds no checkpoint: run without it")
    for path, ckpt in [(p, c) for p, c in zip(paths, ckpts) if c]:
        gpt.check_resume(path, ckpt, cfg, ("resume", "stop_after", "plot", "device"))
    return ckpts

if __name__ == "__main__":
    main(gpt.parse_args(DPOConfig, gpu=GPU))
