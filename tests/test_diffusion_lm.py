"""diffusion_lm.py: the ELBO loss against a hand computation, and the sampler's invariants
(commit counts, committed tokens frozen, no [MASK] emitted, prefix and suffix kept); a resumed
run against an uninterrupted one, the log, the plot, bad input, and bench/diffusion_lm.py."""
import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import diffusion_lm as dlm
import gpt

SPEC = importlib.util.spec_from_file_location(
    "bench_diffusion_lm", os.path.join(os.path.dirname(__file__), "..", "bench", "diffusion_lm.py"))
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


@pytest.fixture
def model():
    torch.manual_seed(0)
    cfg = gpt.GPTConfig(vocab_size=32, block_size=40, n_layer=2, n_head=2, n_embd=32, causal=False)
    return gpt.GPT(cfg).double().eval()


class SetLogits(torch.nn.Module):
    """A stand-in model whose logits (T, V) are set by hand, whatever its input; it records each
    input and, given targets, returns gpt.GPT's next-token loss (row i scores targets[:, i])."""

    def __init__(self, logits):
        super().__init__()
        self.config = types.SimpleNamespace(vocab_size=logits.size(-1))  # [MASK] = V - 1
        self.lm_head = torch.nn.Linear(1, 1)  # sample() reads the device from lm_head
        self.logits, self.inputs = logits, []

    def forward(self, idx, targets=None):
        self.inputs.append(idx.clone())
        logits = self.logits[:idx.size(1)].expand(idx.size(0), -1, -1)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def test_loss_weights_masked_tokens_by_one_over_t_and_divides_by_all_tokens(model):
    x = torch.randint(0, 31, (3, 10))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    loss = dlm.diffusion_loss(model, x, t=t, generator=torch.Generator().manual_seed(7))
    x_t, masked = dlm.forward_mask(x, t, 31, torch.Generator().manual_seed(7))  # the same draw
    logits = model(x_t)[0][..., :31]  # float64, the [MASK] column (31) dropped: x_0 never holds it
    logp = torch.log_softmax(logits, -1).gather(-1, x[..., None])[..., 0]
    by_hand = 0.0
    for b in range(3):
        for i in range(10):
            if masked[b, i]:
                by_hand += -logp[b, i].item() / t[b].item()
    assert masked.any() and not masked.all()
    assert loss.item() == pytest.approx(by_hand / 30, rel=1e-12)  # B * L = 30, not those masked


def test_maskable_noises_only_those_positions_and_divides_by_their_count(model):
    """The infilling bound: only the middle may be masked; the rest is seen as it is, and the sum
    is divided by the number of maskable tokens (B * 4 = 12), by hand."""
    x = torch.randint(0, 31, (3, 10))
    t = torch.tensor([0.3, 0.6, 0.95], dtype=torch.float64)
    maskable = torch.zeros(3, 10, dtype=torch.bool)
    maskable[:, 3:7] = True
    draw = lambda: torch.Generator().manual_seed(5)  # noqa: E731 (the same draw each time)
    loss = dlm.diffusion_loss(model, x, t=t, generator=draw(), maskable=maskable)
    _, masked = dlm.forward_mask(x, t, 31, torch.Generator().manual_seed(5))  # the same draw
    masked &= maskable
    x_t = torch.where(masked, torch.full_like(x, 31), x)
    logp = torch.log_softmax(model(x_t)[0][..., :31], -1).gather(-1, x[..., None])[..., 0]
    by_hand = sum(-logp[b, i].item() / t[b].item()
                  for b in range(3) for i in range(10) if masked[b, i])
    assert masked.any() and not masked[:, 3:7].all()
    assert not masked[:, :3].any() and not masked[:, 7:].any()
    assert loss.item() == pytest.approx(by_hand / 12, rel=1e-12)
    everything = torch.ones_like(maskable)  # all maskable: the plain loss
    plain = dlm.diffusion_loss(model, x, t=t, generator=draw()).item()
    assert dlm.diffusion_loss(model, x, t=t, generator=draw(), maskable=everything).item() \
        == pytest.approx(plain, rel=1e-12)


def test_forward_mask_rate_is_t():
    x = torch.zeros(4, 20_000, dtype=torch.long)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    x_t, masked = dlm.forward_mask(x, t, 99, torch.Generator().manual_seed(0))
    rate = masked.float().mean(1)
    assert torch.allclose(rate, t, atol=0.01)  # 4 sigma of a binomial with n = 20,000 is < 0.015
    assert (x_t[masked] == 99).all() and (x_t[~masked] == 0).all()


def test_no_inf_or_nan_near_t_zero_or_with_nothing_masked(model):
    x = torch.randint(0, 31, (2, 8))
    tiny = dlm.diffusion_loss(model, x, t=torch.tensor([1e-6, 1e-6], dtype=torch.float64))
    assert torch.isfinite(tiny) and tiny.item() == 0.0  # at t = 1e-6 nothing is masked here
    loss = dlm.diffusion_loss(model, x, eps=1e-3, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_uniform_model_elbo_is_log_vocab(model):
    """A model uniform over the V tokens it may predict pays log V per masked token, so
    E_t[(1/t) * (t L log V)] / L = log V exactly in expectation: the 1/t weighting undoes the
    masking rate. 64 stratified draws of t over 8 sequences of 32 tokens come close."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    x = torch.randint(0, 31, (8, 32))
    bound = dlm.elbo_nll(model, x, n_mc=64, eps=1e-3, generator=torch.Generator().manual_seed(0))
    assert bound == pytest.approx(math.log(31), rel=0.05)  # 32 rows less [MASK]


def test_validation_bound_and_ar_nll_average_over_the_same_tokens():
    """Both models pay the same hand-set cost c_i = -log p(x_i) at each position i >= 1, so both
    figures must be mean(c[1:]) (AR exactly; the bound in expectation, as the 1/t weight undoes
    the masking rate). The first token costs about 30 nats to the diffusion model: averaged in,
    as the AR twin cannot score it, it would add about 0.5. MC error: each masked token adds
    c_i / t with variance about c_i^2 log(1/eps), so over 64 * 64 tokens and 16 draws of t the
    relative sd is under 1.5%; 6% is 4 sd."""
    x = (torch.arange(65) % 7).repeat(64, 1)  # 64 windows of 65 tokens; [MASK] = 7 never occurs
    logits = 3 * torch.rand(65, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits[0, 0] = -30.0  # the first token, 0, is all but impossible for the diffusion model
    cost = -torch.log_softmax(logits[:, :7], -1)[torch.arange(65), x[0]]  # c_i, [MASK] dropped
    ar_twin = SetLogits(logits[1:, :7])  # the same 7 tokens, so the same costs
    bound, ar = dlm.validation_nll(SetLogits(logits), ar_twin, x, n_mc=16, eps=1e-3,
                                   generator=torch.Generator().manual_seed(0))
    assert ar == pytest.approx(cost[1:].mean().item(), rel=1e-12)  # row i of the AR twin: x_{i+1}
    assert bound == pytest.approx(cost[1:].mean().item(), rel=0.06)


def test_windows_draw_every_start_the_last_included():
    """A window of seq_len + 1 tokens fits at starts 0 .. len - seq_len - 1: on 100 tokens with
    seq_len 16 that is 0 .. 83, so the last token can be a target. 84 starts in 2,000 draws: the
    chance that one is missed is under 84 * (83/84)^2000 < 1e-8."""
    x = dlm.windows(torch.arange(100), 16, 2000, torch.Generator().manual_seed(0), "cpu")
    assert x.shape == (2000, 17) and set(x[:, 0].tolist()) == set(range(84))
    assert (x[:, 1:] - x[:, :-1] == 1).all()  # contiguous windows of the array


def test_each_model_steps_at_its_own_peak_lr():
    """At step 0 the warm-up is 1/50 of the way and the cosine at its peak, so AdamW's lr is
    peak / 50: diffusion_lr for the diffusion model, lr for the AR twin, on the same batch."""
    cfg = dlm.DiffusionConfig(lr=3e-3, diffusion_lr=5e-4)
    tok = gpt.Tokenizer.from_spec("byte", "x")
    models = {name: dlm.build(cfg, tok, name == "ar", "cpu") for name in ("diffusion", "ar")}
    opts = {name: torch.optim.AdamW(m.parameters()) for name, m in models.items()}
    xy = torch.randint(0, 256, (2, cfg.window + 1))
    dlm.train_step(models, opts, xy, cfg, 0, torch.Generator().manual_seed(0))
    assert opts["diffusion"].param_groups[0]["lr"] == pytest.approx(5e-4 / 50, rel=1e-12)
    assert opts["ar"].param_groups[0]["lr"] == pytest.approx(3e-3 / 50, rel=1e-12)


def test_commit_schedule_sums_to_length():
    assert dlm.commit_schedule(10, 4) == [3, 3, 2, 2]
    assert dlm.commit_schedule(8, 20) == [1] * 8  # never more steps than tokens
    with pytest.raises(ValueError, match="steps=0"):
        dlm.commit_schedule(8, 0)


@pytest.mark.parametrize("remasking,temperature,block", [("low_confidence", 0.0, 0),
                                                         ("random", 1.0, 0),
                                                         ("low_confidence", 0.7, 4)])
def test_sampler_invariants(model, remasking, temperature, block):
    history = []
    prefix, suffix = [1, 2, 3], [4, 5]
    x, passes = dlm.sample(model, 12, 6, block_length=block, remasking=remasking,
                           temperature=temperature, prefix=prefix, suffix=suffix, n=3,
                           generator=torch.Generator().manual_seed(0),
                           history=history)
    mask = dlm.mask_id(model)
    assert passes == 6 == len(history)
    before = torch.full_like(x, mask)
    before[:, :3], before[:, -2:] = torch.tensor(prefix), torch.tensor(suffix)
    for step, (seq, k) in enumerate(history):
        assert ((before != mask) <= (seq == before)).all()  # what was committed never changes
        newly = (before == mask) & (seq != mask)
        assert newly.sum(1).tolist() == [k] * 3 == [2] * 3  # 12 tokens in 6 steps: 2 a step
        if block:  # semi-autoregressive: step s only touches block s // (steps per block)
            lo = 3 + (step // (6 // (12 // block))) * block
            assert not newly[:, :lo].any() and not newly[:, lo + block:].any()
        before = seq
    assert not (x == mask).any()
    assert x[:, :3].tolist() == [prefix] * 3 and x[:, -2:].tolist() == [suffix] * 3


@pytest.mark.parametrize("block", [0, 4])
def test_low_confidence_commits_the_most_confident_positions(block):
    """Greedy low-confidence decoding of 8 tokens after a 1-token prefix in 4 steps commits, at
    each step, the 2 masked positions (of the current block) whose top probability is highest,
    ranked here by hand from the softmax of logits set by hand ([MASK] excluded)."""
    logits = 3 * torch.randn(9, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    history = []
    x, _ = dlm.sample(SetLogits(logits), 8, 4, block_length=block, prefix=[0], history=history)
    confidence, token = torch.softmax(logits[:, :5], -1).max(-1)  # [MASK] = 5 is never proposed
    blocks = [range(1, 9)] if not block else [range(1, 5), range(5, 9)]
    ranked = [sorted(b, key=lambda i: -confidence[i].item()) for b in blocks]
    expected = [set(r[j:j + 2]) for r in ranked for j in range(0, len(r), 2)]
    before = torch.tensor([[0] + [5] * 8])
    for (seq, _), positions in zip(history, expected, strict=True):
        assert set(((before == 5) & (seq != 5))[0].nonzero()[:, 0].tolist()) == positions
        before = seq
    assert x[0, 1:].tolist() == token[1:].tolist()  # greedy: each position's argmax


def test_stratified_t_puts_one_draw_in_each_stratum_and_weights_by_one_over_t():
    """t = eps + (1 - eps) * ((u + b/B) mod 1): sorted, the B draws are (1 - eps)/B apart. Each row
    masks a fraction ~ t_b of its 20,000 tokens (binomial sd <= 0.0035, so 0.02 is > 4 sd on a
    difference). A model uniform over V = 8 rows, [MASK] excluded, pays log 7 per masked token, so
    the 1/t-weighted loss is log 7 in expectation; with t >= eps = 0.2 each row's m_b / (t_b L)
    has relative sd <= sqrt(0.8 / (0.2 * 20,000)) = 0.014; 5% is > 5 sd of the mean of 4 rows."""
    model = SetLogits(torch.zeros(20_000, 8, dtype=torch.float64))
    x = torch.zeros(4, 20_000, dtype=torch.long)
    loss = dlm.diffusion_loss(model, x, eps=0.2, generator=torch.Generator().manual_seed(0))
    rate = (model.inputs[-1] == 7).double().mean(1).sort().values  # ~ the sorted t_b
    assert rate[0] > 0.2 - 0.02
    assert torch.allclose(rate.diff(), torch.full((3,), 0.2, dtype=torch.float64), atol=0.02)
    assert loss.item() == pytest.approx(math.log(7), rel=0.05)


def test_gumbel_sampling_draws_from_the_softmax():
    logits = torch.tensor([[[1.0, 0.0, -1.0, 0.5]]], dtype=torch.float64)
    logits = logits.expand(1, 20_000, 4).clone()
    x0, _ = dlm.propose(logits, 0.8, "random", torch.Generator().manual_seed(0))
    freq = torch.bincount(x0.flatten(), minlength=4).double() / 20_000
    assert torch.allclose(freq, torch.softmax(logits[0, 0] / 0.8, -1), atol=0.012)


def test_bad_sampler_arguments(model):
    with pytest.raises(ValueError, match="multiple of block_length"):
        dlm.sample(model, 10, 5, block_length=4)
    with pytest.raises(ValueError, match="remasking='lowest'"):
        dlm.sample(model, 8, 4, remasking="lowest")


TINY = dict(gen_length=24, n_layer=1, n_embd=32, n_head=2, steps=15, batch_size=8,
            step_counts="6,24", n_samples=2, n_mc=2, device="cpu")
FAST = {**TINY, "step_counts": "3"}  # 3 blocks of 8, one step each: the table's cheapest rows


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """40 kB of the embedded corpus: each run below tokenises it in a tenth of the whole's time."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(gpt.embedded_corpus()[:40_000], encoding="utf-8")
    return str(path)


def test_main_smoke(tmp_path, capsys, monkeypatch, small_corpus):
    """The default run at a tiny size: the table, the validation and infilling figures, and with
    --plot both models' curves from the run's own log (the plot itself is recorded, so the test
    needs no matplotlib). A stale log from an earlier run is replaced, not appended to."""
    plots = []
    monkeypatch.setattr(gpt, "pyplot", lambda plot: "plt" if plot else None)
    monkeypatch.setattr(gpt, "plot_curves", lambda *args: plots.append(args))
    (tmp_path / "log.jsonl").write_text('{"step": 99, "ar_loss": 0.0}\n')
    cfg = dlm.DiffusionConfig(**TINY, data=small_corpus, eval_interval=5, out_dir=str(tmp_path),
                              plot=True)
    result = dlm.main(cfg)
    out = capsys.readouterr().out
    assert "ELBO bound" in out and "infilling" in out and "autoregressive, KV cache" in out
    assert len(result["rows"]) == 9 and math.isfinite(result["elbo"])  # 2 x 2 x 2 step counts, AR
    assert math.isfinite(result["infill_bound"]) and math.isfinite(result["infill_ar_nll"])
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in rows] == list(range(16))  # 15 updates, then the final validation
    assert [r["step"] for r in rows if "val_bound" in r] == [0, 5, 10, 15]
    assert (rows[-1]["val_bound"], rows[-1]["val_ar_nll"]) == (result["elbo"], result["ar_nll"])
    (_, log, keys, png), = plots
    assert log.path == str(tmp_path / "log.jsonl") and png == str(tmp_path / "loss.png")
    assert set(keys) == set(rows[0]) - {"step"}  # both training losses, both validation figures


def test_plot_without_matplotlib_says_so_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SystemExit):  # the empty corpus stops the run before any training
        dlm.main(dlm.DiffusionConfig(data=str(tmp_path / "empty.txt"), plot=True,
                                     out_dir=str(tmp_path / "out")))
    assert capsys.readouterr().out.startswith("note: --plot needs matplotlib")


def final_state(out_dir):
    ckpt = gpt.load_checkpoint(os.path.join(out_dir, "ckpt.pt"))
    log = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]
    return ckpt, log


def test_resume_is_exact(tmp_path, small_corpus):
    """12 steps in one go equal 5 steps, a stop, --resume and 7 more, bit for bit: both models,
    both optimizers' moments, the step, the log (losses and validations) and the samples' quality
    columns of the table. The stop falls between two validations, so the resumed run must draw
    the same next batch and masks without validating again."""
    cfg = dlm.DiffusionConfig(**{**FAST, "steps": 12}, data=small_corpus, eval_interval=4)
    whole = dlm.main(dataclasses.replace(cfg, out_dir=str(tmp_path / "whole")))
    split = dataclasses.replace(cfg, out_dir=str(tmp_path / "split"), stop_after=5)
    assert dlm.main(split) is None
    assert gpt.load_checkpoint(os.path.join(split.out_dir, "ckpt.pt"))["step"] == 5
    resumed = dlm.main(dataclasses.replace(split, stop_after=0, resume=True))
    (a, log_a), (b, log_b) = final_state(tmp_path / "whole"), final_state(tmp_path / "split")
    assert a["step"] == b["step"] == 12
    for key in ("model", "ar"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for name in ("diffusion", "ar"):
        pairs = zip(a["optimizer"][name]["state"].values(), b["optimizer"][name]["state"].values())
        assert all(torch.equal(x[m], y[m]) for x, y in pairs for m in ("exp_avg", "exp_avg_sq"))
    assert log_a == log_b and [r["step"] for r in log_b] == list(range(13))
    assert [r.ppl for r in resumed["rows"]] == [r.ppl for r in whole["rows"]]
    assert resumed["elbo"] == whole["elbo"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, small_corpus):
    """A run of 6 steps stopped after 3: out_dir holds its checkpoint and log."""
    cfg = dlm.DiffusionConfig(**{**FAST, "steps": 6}, data=small_corpus, stop_after=3,
                              out_dir=str(tmp_path_factory.mktemp("stopped")))
    dlm.main(cfg)
    return cfg


@pytest.mark.parametrize("change,error", [
    (dict(lr=1e-3), "saved with --lr=0.002"),
    (dict(gen_length=16, step_counts="4"), "--gen_length=24"),
    (dict(garbage=True), "is not a readable checkpoint"),
    (dict(not_ours=True), "is not a checkpoint of diffusion_lm.py"),
    (dict(stop_after=2), "stop_after=2, but"),
    (dict(missing=True), "start the run without --resume")])
def test_resume_refuses_another_run_before_any_work(stopped_run, tmp_path, change, error):
    """A resume whose settings differ from the checkpoint's, or whose checkpoint is garbage or
    another script's, is one line naming the problem, and the checkpoint is left as it was."""
    cfg = dataclasses.replace(stopped_run, out_dir=str(tmp_path / "run"), stop_after=0,
                              resume=True)
    shutil.copytree(stopped_run.out_dir, cfg.out_dir)
    path = tmp_path / "run" / "ckpt.pt"
    if change.pop("garbage", False):
        path.write_bytes(b"not a checkpoint")
    if change.pop("not_ours", False):
        model = gpt.GPT(gpt.GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16))
        gpt.save_checkpoint(str(path), model, gpt.Tokenizer.from_spec("byte", "x"))
    if change.pop("missing", False):
        path.unlink()
    before = path.read_bytes() if path.exists() else None
    with pytest.raises(SystemExit, match=rf"^error: [^\n]*{re.escape(error)}[^\n]*$"):
        dlm.main(dataclasses.replace(cfg, **change))
    assert (path.read_bytes() if path.exists() else None) == before


def test_bench_smoke(tmp_path, capsys, small_corpus):
    """bench/diffusion_lm.py: the timed table on a run's checkpoint, and --budgets, whose two
    figures for a budget are those of diffusion_lm.py's own run of that many steps."""
    run = dlm.DiffusionConfig(**{**FAST, "steps": 4}, data=small_corpus,
                              out_dir=str(tmp_path / "run"))
    alone = dlm.main(run)
    capsys.readouterr()
    bench.main(bench.BenchConfig(ckpt=str(tmp_path / "run" / "ckpt.pt"), repeats=1, device="cpu"))
    out = capsys.readouterr().out
    assert "autoregressive, KV cache" in out and "closest quality" in out
    budgets = bench.BenchConfig(budgets="2,4", device="cpu")
    gap = bench.gap(budgets, dataclasses.replace(run, out_dir=str(tmp_path / "budgets")))
    assert len(gap) == 2 and gap[1] == (alone["elbo"], alone["ar_nll"])
    assert "ratio" in capsys.readouterr().out


def test_table_compares_both_orders_under_each_block_schedule(monkeypatch):
    """One change at a time: random and low-confidence each run with one block and with blocks of
    block_length, at every step count, and each row's name says which (the samples are stubbed:
    only the arguments each row decodes with are checked)."""
    calls = []

    def fake_sample(model, length, steps, block_length, remasking, *args, n=1, **kwargs):
        calls.append((remasking, block_length, steps))
        return torch.zeros(n, 1 + length, dtype=torch.long), steps

    monkeypatch.setattr(dlm, "sample", fake_sample)
    cfg = dlm.DiffusionConfig(gen_length=16, step_counts="4,16", block_length=4, n_samples=2)
    ar = gpt.GPT(gpt.GPTConfig(vocab_size=64, block_size=17, n_layer=1, n_head=2, n_embd=16))
    rows = dlm.quality_table(None, ar, cfg, "cpu")
    grid = {(r, b, s) for r in ("random", "low_confidence") for b in (0, 4) for s in (4, 16)}
    assert set(calls) == grid and len(calls) == 2 * len(grid)  # batched, then one sample alone
    names = [row.name for row in rows[:-1]]
    assert len(set(names)) == 8 and sum("one block" in n for n in names) == 4
    assert sum("blocks of 4" in n for n in names) == 4


def test_bench_verdict_skips_degenerate_rows_and_says_when_quality_is_not_matched():
    ar = dlm.Row("autoregressive", 1.0, 1000.0, 100.0, 3.0, 4.5)
    collapsed = dlm.Row("low_confidence, 64 steps", 1.0, 500.0, 50.0, 3.1, 0.8)  # all spaces
    far = dlm.Row("random, 64 steps", 1.0, 250.0, 50.0, 30.0, 4.6)
    near = dlm.Row("random, 16 steps", 0.25, 800.0, 400.0, 3.2, 4.4)
    verdict = bench.verdict([collapsed, far], ar, data_entropy=4.5)
    assert "random, 64 steps" in verdict and "NOT matched (10.0x" in verdict
    assert "0.25x the AR twin's tokens/s in a batch and 0.50x for one sample alone" in verdict
    verdict = bench.verdict([collapsed, far, near], ar, data_entropy=4.5)
    assert "random, 16 steps" in verdict and "at matched quality diffusion runs at 0.80x" in verdict
    assert "4.00x" in verdict
    assert "degenerate" in bench.verdict([collapsed], ar, data_entropy=4.5)


def test_bench_without_checkpoints_says_which_run_makes_them(tmp_path):
    with pytest.raises(ValueError, match="train both models first with python diffusion_lm.py"):
        bench.BenchConfig(ckpt=str(tmp_path / "ckpt.pt"))


@pytest.mark.parametrize("field,value", [
    ("step_counts", "8,x"), ("step_counts", "8,12"), ("step_counts", "0,8"), ("step_counts", ""),
    ("gen_length", 1), ("block_length", 5), ("block_length", -8), ("tokenizer", "gpt2"),
    ("vocab_size", 100), ("n_layer", 0), ("n_embd", 0), ("n_head", 3), ("steps", 0),
    ("steps", -1), ("eval_interval", 0), ("stop_after", 800), ("stop_after", -1),
    ("batch_size", 0), ("lr", 0.0), ("diffusion_lr", -1e-3), ("eps", 1.0), ("temperature", -0.5),
    ("n_samples", 0), ("n_mc", 0), ("device", "gpu"), ("data", "no/such/file.txt"),
    ("out_dir", __file__)])
def test_every_field_is_checked_before_any_work(field, value):
    """A bad value stops the run when the config is built from the command line, in one line
    that names the field, instead of after 800 training steps (as --step_counts=8,x did)."""
    with pytest.raises(ValueError, match=rf"^[^\n]*\b{field}=[^\n]*$"):
        dlm.DiffusionConfig(**{field: value})


def test_data_reads_a_local_text_file_and_names_it_when_empty_or_not_utf8(tmp_path):
    """A local file is read as it is; an empty, non-UTF-8 or too short one stops the run in one
    line naming the file, before anything is written to out_dir."""
    path = tmp_path / "notes.txt"
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))
    path.write_text(text, encoding="utf-8")
    tok, train_ids, val_ids = dlm.load_data(dlm.DiffusionConfig(data=str(path), gen_length=8))
    assert tok.decode(train_ids.tolist() + val_ids.tolist()) == text  # the file, bytes for bytes
    for content in (b"", b"caf\xe9 au lait\n" * 100, b"too short\n"):  # empty; Latin-1; short
        path.write_bytes(content)
        cfg = dlm.DiffusionConfig(data=str(path), out_dir=str(tmp_path / "out"))
        with pytest.raises(SystemExit, match=rf"^error: [^\n]*{re.escape(str(path))}[^\n]*$"):
            dlm.main(cfg)
        assert not os.path.exists(cfg.out_dir)


def test_a_device_that_is_not_there_is_an_argparse_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpt.parse_args(dlm.DiffusionConfig, ["--device=cuda"], gpu=dlm.GPU)
    assert "--device=cuda, but this machine has only" in capsys.readouterr().err


def test_collapse_spaces_squeezes_runs_and_keeps_words(corpus_file):  # 40 kB of the corpus
    _, kept, kept_val = dlm.load_data(dlm.DiffusionConfig(data=corpus_file, collapse_spaces=False))
    tok, squeezed, _ = dlm.load_data(dlm.DiffusionConfig(data=corpus_file))
    text, original = tok.decode(squeezed.tolist()), tok.decode(kept.tolist() + kept_val.tolist())
    assert "  " in original and "  " not in text and "\t" not in text and "\n\n\n" not in text
    words = text.split()[:-1]  # the 90% split can cut the last word
    assert words == original.split()[:len(words)]  # the same words in the same order
