"""Diffusion against its autoregressive twin: sampling speed at matched quality, and the gap.

The first bench times diffusion_lm.py's samplers on the checkpoint of a training run (both
models), and finds the diffusion row whose quality (the AR twin's perplexity of its samples)
comes closest to the AR twin's own samples. The second (--budgets) trains both models at
several step counts and prints the validation bound beside the AR NLL: does the gap close?

    python diffusion_lm.py && python bench/diffusion_lm.py   # the table, each time the best of 5
    python bench/diffusion_lm.py --budgets=200,400,800,1600 --plot

Prints the table of diffusion_lm.py with times from --repeats runs and the speed ratio at the
closest quality; or, with --budgets, steps, bound, AR NLL and their ratio for each budget.
"""
import math
import os
import sys
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import diffusion_lm as dlm  # noqa: E402
import gpt  # noqa: E402


@dataclass
class BenchConfig:
    ckpt: str = "out/diffusion_lm/ckpt.pt"  # both models, as saved by python diffusion_lm.py
    repeats: int = 5  # timed runs of each sampler; the fastest counts
    budgets: str = ""  # instead of timing: train both at each of these step counts, e.g.
    # 200,400,800,1600, with diffusion_lm.py's other defaults
    plot: bool = False  # with --budgets: bound and NLL against steps, as out_dir/gap.png
    out_dir: str = "out/bench_diffusion_lm"  # with --budgets: a checkpoint and log per budget
    device: str = "auto"  # auto | cpu | cuda | mps

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats} must be at least 1")
        if self.budgets and not all(b.isdecimal() and int(b) > 0 for b in self.budgets.split(",")):
            raise ValueError(f"budgets={self.budgets!r}: positive step counts, comma-separated")
        if not self.budgets and not os.path.isfile(self.ckpt):
            raise ValueError(f"ckpt={self.ckpt}: no such file; train both models first with "
                             "python diffusion_lm.py (its out_dir/ckpt.pt)")


def verdict(diffusion_rows, ar_row, data_entropy):
    """The speed ratios (batched and alone) at the closest non-degenerate quality, and whether it
    is matched. Rows whose unigram entropy is below 90% of the data's are degenerate (repetition
    scores well on perplexity) and are not matched. Quality counts as matched within 10% of the
    AR samples' perplexity."""
    healthy = [r for r in diffusion_rows if r.entropy >= 0.9 * data_entropy]
    if not healthy:
        return "\nevery diffusion row is degenerate (entropy below 90% of the data's): no match"
    row = min(healthy, key=lambda r: abs(math.log(r.ppl / ar_row.ppl)))
    gap = row.ppl / ar_row.ppl
    speed = (f"{row.tokens_per_s / ar_row.tokens_per_s:.2f}x the AR twin's tokens/s in a batch "
             f"and {row.tokens_per_s_alone / ar_row.tokens_per_s_alone:.2f}x for one sample alone")
    head = (f"\nclosest quality: {row.name} (AR ppl of samples {row.ppl:.2f} vs {ar_row.ppl:.2f} "
            "for the AR twin's own)")
    if abs(math.log(gap)) <= math.log(1.1):
        return f"{head}\nat matched quality diffusion runs at {speed}"
    return (f"{head}\nquality NOT matched ({gap:.1f}x the perplexity): diffusion runs at {speed} "
            "here, an upper bound on its speed at equal quality, if it can reach it at all")


def speed(cfg, device):
    """The table of diffusion_lm.py on the checkpoint's models and settings, then the verdict."""
    with gpt.bad_input():
        ckpt, run = dlm.load_run(cfg.ckpt)
        tok, _, val_ids = dlm.load_data(run)
    diffusion, ar = (dlm.build(run, tok, causal, device).eval() for causal in (False, True))
    diffusion.load_state_dict(ckpt["model"])
    ar.load_state_dict(ckpt["ar"])
    x_val = dlm.val_windows(val_ids, run.window, 64).to(device)
    rows = dlm.quality_table(diffusion, ar, run, device, repeats=cfg.repeats)
    data_entropy = dlm.entropy_bits(x_val[:, 1:])
    dlm.print_table(rows, math.exp(dlm.ar_nll(ar, x_val)), data_entropy, run.n_samples)
    print(verdict(rows[:-1], rows[-1], data_entropy))


def bound_and_nll(run, steps):
    """Train both models for `steps` steps (the schedule spans them) under run's other settings;
    the validation (diffusion bound, AR NLL) per token."""
    run = replace(run, steps=steps, eval_interval=steps, stop_after=0, resume=False,
                  out_dir=os.path.join(run.out_dir, f"steps_{steps}"))
    device = gpt.pick_device(run.device)
    tok, train_ids, val_ids = dlm.load_data(run)
    x_val = dlm.val_windows(val_ids, run.window, 64).to(device)
    return dlm.train_both(run, tok, train_ids, x_val, device, gpt.RunLog(run.out_dir))[2]


def gap(cfg, run):
    """bound_and_nll at each budget: a table, and a plot when asked."""
    plt = gpt.pyplot(cfg.plot)
    budgets = [int(b) for b in cfg.budgets.split(",")]
    results = [bound_and_nll(run, steps) for steps in budgets]
    print(f"{'steps':>6} {'diffusion bound':>16} {'AR NLL':>8} {'ratio':>6}  (nats per token)")
    for steps, (bound, nll) in zip(budgets, results):
        print(f"{steps:>6} {bound:>16.3f} {nll:>8.3f} {bound / nll:>6.2f}")
    if plt:
        for i, label in enumerate(("diffusion ELBO bound", "AR NLL")):
            plt.plot(budgets, [r[i] for r in results], "o-", label=label)
        plt.xscale("log")
        plt.xlabel("training steps")
        plt.ylabel("validation nats per token")
        plt.legend()
        plt.savefig(os.path.join(run.out_dir, "gap.png"), dpi=120)
        print(f"plot: {os.path.join(run.out_dir, 'gap.png')}")
    return results


def main(cfg):
    if cfg.budgets:
        return gap(cfg, dlm.DiffusionConfig(out_dir=cfg.out_dir, device=cfg.device))
    speed(cfg, gpt.pick_device(cfg.device))


if __name__ == "__main__":
    main(gpt.parse_args(BenchConfig))
