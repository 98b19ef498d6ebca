"""dpo.py against independent references: the losses and their gradients written out with the
math module, ln 2 at the start, and log-probs computed one pair at a time in float64."""
import copy
import dataclasses
import json
import math
import os
import sys

import pytest
import torch

import dpo
import gpt


@pytest.fixture(scope="module")
def tok():
    return gpt.Tokenizer.from_spec("byte", "a")


@pytest.fixture
def model(tok):
    torch.manual_seed(0)
    cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=48, n_layer=2, n_head=4,
                        n_kv_head=2, n_embd=32)
    return gpt.GPT(cfg).double().eval()


def make_pairs(tok):
    """(prompt, chosen, rejected) token lists of different lengths, so batches need padding."""
    data = [("reverse cat", "tac", "cta"), ("count abcdefg", "7", "6"),
            ("sort dcab", "abcd", "abdc"), ("what number comes after 199?", "200", "1100")]
    end = tok.special("<|end|>")
    return [(tok.encode(f"<|user|>{x}<|end|><|assistant|>", allow_special=True),
             tok.encode(w) + [end], tok.encode(l) + [end]) for x, w, l in data]


def batch(pairs):
    return [list(column) for column in zip(*pairs)]


def test_loss_is_ln2_when_the_policy_is_the_reference(model, tok):
    prompts, chosen, rejected = batch(make_pairs(tok))
    policy_logps = dpo.sequence_logps(model, prompts, chosen, rejected)
    ref_logps = dpo.sequence_logps(copy.deepcopy(model), prompts, chosen, rejected)
    for smoothing in (0.0, 0.2):  # -(1 - e) log sigma(0) - e log sigma(0) = ln 2 for any e
        losses, r_w, r_l = dpo.dpo_loss(*policy_logps, *ref_logps, beta=0.1,
                                        label_smoothing=smoothing)
        torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)), rtol=0, atol=1e-12)
        assert (r_w == 0).all() and (r_l == 0).all()


def test_worked_examples_for_dpo_ipo_and_label_smoothing():
    """pi_w = -1, pi_l = -3, ref_w = -2, ref_l = -2.5, beta = 0.5:
    h = (-1 + 2) - (-3 + 2.5) = 1.5."""
    logps = [torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.5)]
    h, beta = 1.5, 0.5
    sigmoid, r_w, r_l = dpo.dpo_loss(*logps, beta)
    # -log sigma(0.75) = 0.3873
    assert sigmoid.item() == pytest.approx(math.log(1 + math.exp(-beta * h)), abs=1e-12)
    assert (r_w.item(), r_l.item()) == pytest.approx((0.5, -0.25), abs=1e-12)  # beta (pi - ref)
    smoothed = dpo.dpo_loss(*logps, beta, label_smoothing=0.1)[0]
    expected = 0.9 * math.log(1 + math.exp(-0.75)) + 0.1 * math.log(1 + math.exp(0.75))  # 0.4617
    assert smoothed.item() == pytest.approx(expected, abs=1e-12)
    ipo = dpo.dpo_loss(*logps, beta, loss_type="ipo")[0]
    # (h - 1/(2 beta))^2 = 0.25
    assert ipo.item() == pytest.approx((1.5 - 1 / (2 * 0.5)) ** 2, abs=1e-12)
    with pytest.raises(ValueError, match="loss_type"):
        dpo.dpo_loss(*logps, beta, loss_type="kto")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_gradients_match_the_formulas(loss_type):
    """dL/d log pi(y_w) = -beta sigma(-beta h) for DPO and 2 (h - 1/(2 beta)) for IPO; the
    rejected side gets the opposite, and the reference gets none (it is a constant)."""
    pi_w = torch.tensor([-4.0, -1.0], dtype=torch.float64, requires_grad=True)
    pi_l = torch.tensor([-2.0, -3.0], dtype=torch.float64, requires_grad=True)
    ref_w = torch.tensor([-3.0, -2.0], dtype=torch.float64)
    ref_l = torch.tensor([-2.5, -2.0], dtype=torch.float64)
    beta = 0.3
    dpo.dpo_loss(pi_w, pi_l, ref_w, ref_l, beta, loss_type)[0].sum().backward()
    h = [(pw - rw) - (pl - rl)
         for pw, pl, rw, rl in zip([-4.0, -1.0], [-2.0, -3.0], [-3.0, -2.0], [-2.5, -2.0])]
    if loss_type == "sigmoid":
        expected = [-beta / (1 + math.exp(beta * x)) for x in h]
    else:
        expected = [2 * (x - 1 / (2 * beta)) for x in h]
    assert pi_w.grad.tolist() == pytest.approx(expected, abs=1e-12)
    assert pi_l.grad.tolist() == pytest.approx([-e for e in expected], abs=1e-12)


def test_a_gradient_step_moves_chosen_up_relative_to_rejected(model, tok):
    prompts, chosen, rejected = batch(make_pairs(tok))
    ref_w, ref_l = [x.detach() for x in dpo.sequence_logps(model, prompts, chosen, rejected)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pi_w, pi_l = dpo.sequence_logps(model, prompts, chosen, rejected)
    dpo.dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.5)[0].mean().backward()
    opt.step()
    new_w, new_l = dpo.sequence_logps(model, prompts, chosen, rejected)
    margin_before, margin_after = (pi_w - pi_l).detach(), (new_w - new_l).detach()
    assert margin_after.mean() > margin_before.mean() + 1e-3
    assert (margin_after > margin_before).all()


def test_padding_does_not_change_the_logps(model, tok):
    """A pair scored alone, in a batch with a much longer pair, and with 9 extra pad columns on
    the prompt side gives the same summed log-probs."""
    pairs = make_pairs(tok)
    alone = [dpo.sequence_logps(model, [p], [w], [l]) for p, w, l in pairs]
    alone_w, alone_l = torch.cat([a[0] for a in alone]), torch.cat([a[1] for a in alone])
    together_w, together_l = dpo.sequence_logps(model, *batch(pairs))
    torch.testing.assert_close(together_w, alone_w, rtol=0, atol=1e-10)
    torch.testing.assert_close(together_l, alone_l, rtol=0, atol=1e-10)
    prompts, chosen, _ = batch(pairs)
    width = max(map(len, prompts)) + 9
    logp, mask = gpt.completion_logprobs(model, prompts, chosen, prompt_width=width)
    torch.testing.assert_close(logp.sum(-1), alone_w, rtol=0, atol=1e-10)
    cached_w, cached_l = dpo.all_logps(model, pairs, batch_size=3)  # batches of 3 then 1
    torch.testing.assert_close(cached_w, alone_w, rtol=0, atol=1e-10)
    torch.testing.assert_close(cached_l, alone_l, rtol=0, atol=1e-10)


def test_bf16_autocast_policy_equal_to_reference_has_margin_0(tmp_path, tok, monkeypatch):
    """gpt.autocast is bf16 on CUDA; CPU bf16 autocast stands in for it here. With lr = 0 the
    policy stays equal to the reference, so every implicit reward, in training and held out, is
    exactly 0 and every loss is ln 2: the reference must be scored as the policy is (the old code
    scored a bf16 policy against an fp32 reference, a margin of bf16 rounding noise at step 0)."""
    monkeypatch.setattr(gpt, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    seen, dpo_loss = [], dpo.dpo_loss

    def recording(*args, **kwargs):
        seen.append(dpo_loss(*args, **kwargs))
        return seen[-1]
    monkeypatch.setattr(dpo, "dpo_loss", recording)
    init = str(tmp_path / "init.pt")
    torch.manual_seed(0)
    cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, n_layer=2, n_head=2, n_embd=32)
    gpt.save_checkpoint(init, gpt.GPT(cfg), tok)
    dpo.main(dpo.DPOConfig(init=init, steps=1, batch_size=4, lr=0.0, rpo_alpha=0, n_train=8,
                           n_eval=4, eval_interval=1, out_dir=str(tmp_path / "out"), device="cpu"))
    assert len(seen) == 3  # held out at step 0, the training step, held out at step 1
    for losses, r_w, r_l in seen:
        assert (r_w == 0).all() and (r_l == 0).all()  # beta (log pi - log ref), exactly
        torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)), rtol=0, atol=0)


def test_rpo_loss_matches_the_formula_with_padding(model, tok):
    """batch_loss with policy != reference over pairs of different lengths (so rows are padded)
    equals the formula computed one pair at a time, unpadded, in float64:
        L = mean_i -log sigma(beta h_i) + alpha mean_i (-log pi(y_w,i|x_i) / |y_w,i|),
    the NLL term of Pang et al. 2024 (RPO): each chosen answer's NLL divided by its own length
    (here 4, 2, 5 and 4 tokens, <|end|> included), not by the padded width or the batch's tokens."""
    torch.manual_seed(1)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the policy has moved away from the reference
    pairs = make_pairs(tok)

    def logp(m, prompt, completion):  # sum_t log pi(c_t | prompt, c_<t) from one unpadded row
        logits, _ = m(torch.tensor([prompt + completion]))
        logprobs = torch.log_softmax(logits[0, len(prompt) - 1:-1].double(), -1)
        return logprobs.gather(1, torch.tensor(completion)[:, None]).sum().item()
    cfg = dpo.DPOConfig(beta=0.3, rpo_alpha=0.7)
    expected_dpo, expected_nll = [], []
    for p, w, l in pairs:
        h = (logp(model, p, w) - logp(ref, p, w)) - (logp(model, p, l) - logp(ref, p, l))
        expected_dpo.append(math.log(1 + math.exp(-cfg.beta * h)))  # -log sigma(beta h)
        expected_nll.append(-logp(model, p, w) / len(w))
    assert len({len(w) for _, w, _ in pairs}) > 2  # padding and distinct lengths really occur
    expected = sum(expected_dpo) / len(pairs) + cfg.rpo_alpha * sum(expected_nll) / len(pairs)
    loss, losses, _, _ = dpo.batch_loss(model, ref, *batch(pairs), cfg)
    assert losses.tolist() == pytest.approx(expected_dpo, abs=1e-10)
    assert loss.item() == pytest.approx(expected, abs=1e-10)
    no_nll = dpo.batch_loss(model, ref, *batch(pairs), dataclasses.replace(cfg, rpo_alpha=0))[0]
    assert no_nll.item() == pytest.approx(sum(expected_dpo) / len(pairs), abs=1e-10)


def test_corrupt_gives_a_plausible_wrong_answer():
    import random
    rng = random.Random(0)
    for answer in ("0", "3", "12", "even", "odd", "p", "a"):
        wrong = dpo.corrupt(answer, rng)
        assert wrong != answer
        if answer.isdigit():
            assert abs(int(wrong) - int(answer)) == 1
        elif answer in ("even", "odd"):
            assert {wrong, answer} == {"even", "odd"}
        else:
            assert len(wrong) == 1 and wrong.isalpha()


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="sigmoid"):
        dpo.DPOConfig(loss="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="loss="):
        dpo.DPOConfig(loss="orpo")


@pytest.mark.parametrize("argv, field", [
    (["--steps=0"], "--steps=0"), (["--base_steps=0"], "--base_steps"), (["--lr=-1"], "--lr"),
    (["--sft_steps=0"], "--sft_steps"), (["--beta=0"], "--beta"), (["--n_eval=0"], "--n_eval"),
    (["--batch_size=0"], "--batch_size"), (["--n_train=0"], "--n_train"),
    (["--loss=kto"], "--loss"),
    (["--eval_interval=0"], "--eval_interval"), (["--rpo_alpha=-1"], "--rpo_alpha"),
    (["--stop_after=-2"], "--stop_after"), (["--label_smoothing=0.5"], "--label_smoothing"),
    (["--device=cuda"], "only cpu")])
def test_every_field_is_checked_before_any_work(argv, field, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(SystemExit) as error:
        gpt.parse_args(dpo.DPOConfig, argv, gpu=dpo.GPU)
    assert error.value.code == 2 and field in capsys.readouterr().err


@pytest.fixture
def init(tmp_path, tok):
    """A random 2-layer byte-level GPT whose 48-token context holds the task: the longest prompt,
    '<|user|>count the letters: ' and 8 letters then '<|end|><|assistant|>', is 30 byte tokens,
    and a rejected answer may be the model's own 16 tokens and <|end|>."""
    cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=48, n_layer=2, n_head=2,
                        n_embd=32)
    path = str(tmp_path / "init.pt")
    torch.manual_seed(0)
    gpt.save_checkpoint(path, gpt.GPT(cfg), tok)
    return path


def log_rows(cfg):
    with open(os.path.join(cfg.out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_main_smoke(tmp_path, init, monkeypatch):
    plots = []
    monkeypatch.setattr(gpt, "pyplot", lambda plot: "plt" if plot else None)  # matplotlib or not
    monkeypatch.setattr(gpt, "plot_curves", lambda plt, log, keys, path: plots.append((keys, path)))
    run = dpo.DPOConfig(init=init, steps=6, batch_size=4, lr=3e-3, n_train=16, n_eval=8,
                        eval_interval=3, plot=True, out_dir=str(tmp_path / "out"), device="cpu")
    histories = dpo.main(run)
    assert list(histories) == ["sigmoid", "sigmoid + 1 NLL"]  # pure DPO, then with the NLL term
    for history in histories.values():
        assert [row["step"] for row in history] == [0, 3, 6]
        assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert history[0]["reward_acc"] == 0.0
        assert history[-1]["loss"] < history[0]["loss"]
    rows = log_rows(run)  # both runs one after the other: the second starts again at step 6
    assert [(r["variant"], r["step"]) for r in rows] == [
        ("sigmoid", 0), ("sigmoid", 3), ("sigmoid", 6),
        ("sigmoid + 1 NLL", 6), ("sigmoid + 1 NLL", 9), ("sigmoid + 1 NLL", 12)]
    keys = ["reward_acc", "prefers_chosen", "greedy_acc"]
    assert plots == [(keys, os.path.join(run.out_dir, "log.png"))]
    for name in ("ckpt_pure.pt", "ckpt.pt"):  # each run's own policy, a plain GPT
        assert gpt.load_model(os.path.join(run.out_dir, name))[2]["step"] == 6


def test_resume_is_exact(tmp_path, init):
    """Both runs in one go equal a run stopped in the middle of the second (between two of its
    evaluations) and resumed: the finished first run is kept, the second goes on from its last
    checkpoint with its optimizer and RNG; both checkpoints bit for bit, and the same log rows."""
    cfg = dpo.DPOConfig(init=init, steps=4, batch_size=4, lr=3e-3, n_train=12, n_eval=4,
                        eval_interval=2, device="cpu")
    whole = dataclasses.replace(cfg, out_dir=str(tmp_path / "whole"))
    dpo.main(whole)
    split = dataclasses.replace(cfg, out_dir=str(tmp_path / "split"), stop_after=7)
    assert list(dpo.main(split)) == ["sigmoid", "sigmoid + 1 NLL"]
    assert gpt.load_checkpoint(os.path.join(split.out_dir, "ckpt.pt"))["step"] == 3
    with pytest.raises(SystemExit, match="saved with --beta=0.1"):  # another beta: another run
        dpo.main(dataclasses.replace(split, stop_after=0, resume=True, beta=0.2))
    histories = dpo.main(dataclasses.replace(split, stop_after=0, resume=True))
    assert [row["step"] for row in histories["sigmoid + 1 NLL"]] == [0, 2, 4]
    for name in ("ckpt_pure.pt", "ckpt.pt"):
        a, b = (gpt.load_checkpoint(os.path.join(c.out_dir, name)) for c in (whole, split))
        assert a["step"] == b["step"] == 4 and a["history"] == b["history"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert log_rows(split) == log_rows(whole)


def test_bad_init_or_resume_is_one_line_before_any_work(tmp_path, tok, init, capsys, monkeypatch):
    """A garbage file, a model without rows for the chat tokens, one whose context is shorter than
    the task needs (47 tokens, see the init fixture), nothing to resume: one line, before any
    work. The --plot note comes first of all, since it is a missing package, not bad input."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as in CI: the note, then the error
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    plain = dict(n_layer=1, n_head=2, n_embd=16)
    no_chat = str(tmp_path / "no_chat.pt")
    short = str(tmp_path / "short.pt")
    no_chat_cfg = gpt.GPTConfig(vocab_size=256, block_size=64, **plain)  # no rows from 256 on
    gpt.save_checkpoint(no_chat, gpt.GPT(no_chat_cfg), tok)
    short_cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=40, **plain)
    gpt.save_checkpoint(short, gpt.GPT(short_cfg), tok)
    cases = [(dict(init=str(garbage)), "not a readable checkpoint"),
             (dict(init=no_chat), "chat tokens"),
             (dict(init=short), "context is 40 tokens; this task needs 47"),
             (dict(init=init, resume=True), "holds no checkpoint")]
    for fields, message in cases:
        cfg = dpo.DPOConfig(**fields, plot=True, out_dir=str(tmp_path / "out"), device="cpu")
        with pytest.raises(SystemExit, match=message) as error:
            dpo.main(cfg)
        assert "\n" not in str(error.value) and not os.path.exists(cfg.out_dir)
        assert capsys.readouterr().out.startswith("note: --plot needs matplotlib")


def test_the_chain_train_sft_dpo(tiny_train_config, tmp_path):
    """python train.py -> python sft.py --init=out/train/ckpt.pt -> python dpo.py
    --init=out/sft/ckpt.pt, with tiny settings: a BPE tokenizer with the chat tokens carries
    through, and each stage starts from the last one's weights."""
    import sft
    import train
    pretrain = dataclasses.replace(tiny_train_config, tokenizer="bpe", vocab_size=300,
                                   block_size=48, max_iters=2, eval_interval=2,
                                   out_dir=str(tmp_path / "train"))
    train.main(pretrain)
    tuned = sft.SFTConfig(init=os.path.join(pretrain.out_dir, "ckpt.pt"), methods="full", steps=2,
                          batch_size=4, n_train=20, n_eval=4, out_dir=str(tmp_path / "sft"),
                          device="cpu")
    sft.main(tuned)
    preferred = dpo.DPOConfig(init=os.path.join(tuned.out_dir, "ckpt.pt"), steps=2, rpo_alpha=0,
                              batch_size=4, n_train=8, n_eval=4, eval_interval=2,
                              out_dir=str(tmp_path / "dpo"), device="cpu")
    dpo.main(preferred)
    stages = [gpt.load_model(os.path.join(c.out_dir, "ckpt.pt"))
              for c in (pretrain, tuned, preferred)]
    for _, tok, _ in stages:
        assert tok.name == "bpe" and tok.n_vocab == 300 + len(gpt.SPECIAL_TOKENS)
    for (before, _, _), (after, _, _) in zip(stages, stages[1:]):  # moved on from the last stage
        assert before.config == after.config
        assert not torch.equal(before.lm_head.weight, after.lm_head.weight)
