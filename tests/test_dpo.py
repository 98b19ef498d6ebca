"""dpo.py against independent references: the losses and their gradients written out with the
math module, ln 2 at the start, and log-probs computed one pair at a time in float64."""
import copy
import dataclasses
import math
import os

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
    cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    return gpt.GPT(cfg).double().eval()


def make_pairs(tok):
    """(prompt, chosen, rejected) token lists of different lengths, so batches need padding."""
    data = [("reverse cat", "tac", "cta"), ("count abcdefg", "7", "6"), ("sort dcab", "abcd", "abdc"),
            ("what number comes after 199?", "200", "1100")]
    end = tok.special("<|end|>")
    return [(tok.encode(f"<|user|>{x}<|end|><|assistant|>", allow_special=True), tok.encode(w) + [end],
             tok.encode(l) + [end]) for x, w, l in data]


def batch(pairs):
    return [list(column) for column in zip(*pairs)]


def test_loss_is_ln2_when_the_policy_is_the_reference(model, tok):
    prompts, chosen, rejected = batch(make_pairs(tok))
    policy_logps = dpo.sequence_logps(model, prompts, chosen, rejected)
    ref_logps = dpo.sequence_logps(copy.deepcopy(model), prompts, chosen, rejected)
    for smoothing in (0.0, 0.2):  # -(1 - e) log sigma(0) - e log sigma(0) = ln 2 for any e
        losses, r_w, r_l = dpo.dpo_loss(*policy_logps, *ref_logps, beta=0.1, label_smoothing=smoothing)
        torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)), rtol=0, atol=1e-12)
        assert (r_w == 0).all() and (r_l == 0).all()


def test_worked_examples_for_dpo_ipo_and_label_smoothing():
    """pi_w = -1, pi_l = -3, ref_w = -2, ref_l = -2.5, beta = 0.5: h = (-1 + 2) - (-3 + 2.5) = 1.5."""
    logps = [torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.5)]
    h, beta = 1.5, 0.5
    sigmoid, r_w, r_l = dpo.dpo_loss(*logps, beta)
    assert sigmoid.item() == pytest.approx(math.log(1 + math.exp(-beta * h)), abs=1e-12)  # -log sigma(0.75) = 0.3873
    assert (r_w.item(), r_l.item()) == pytest.approx((0.5, -0.25), abs=1e-12)  # beta (pi - ref)
    smoothed = dpo.dpo_loss(*logps, beta, label_smoothing=0.1)[0]
    expected = 0.9 * math.log(1 + math.exp(-0.75)) + 0.1 * math.log(1 + math.exp(0.75))  # 0.4617
    assert smoothed.item() == pytest.approx(expected, abs=1e-12)
    ipo = dpo.dpo_loss(*logps, beta, loss_type="ipo")[0]
    assert ipo.item() == pytest.approx((1.5 - 1 / (2 * 0.5)) ** 2, abs=1e-12)  # (h - 1/(2 beta))^2 = 0.25
    with pytest.raises(ValueError, match="loss_type"):
        dpo.dpo_loss(*logps, beta, loss_type="kto")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_gradients_match_the_formulas(loss_type):
    """dL/d log pi(y_w) = -beta sigma(-beta h) for DPO and 2 (h - 1/(2 beta)) for IPO; the
    rejected side gets the opposite, and the reference gets none (it is a constant)."""
    pi_w = torch.tensor([-4.0, -1.0], dtype=torch.float64, requires_grad=True)
    pi_l = torch.tensor([-2.0, -3.0], dtype=torch.float64, requires_grad=True)
    ref_w, ref_l = torch.tensor([-3.0, -2.0], dtype=torch.float64), torch.tensor([-2.5, -2.0], dtype=torch.float64)
    beta = 0.3
    dpo.dpo_loss(pi_w, pi_l, ref_w, ref_l, beta, loss_type)[0].sum().backward()
    h = [(pw - rw) - (pl - rl) for pw, pl, rw, rl in zip([-4.0, -1.0], [-2.0, -3.0], [-3.0, -2.0], [-2.5, -2.0])]
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
    logp, mask = gpt.completion_logprobs(model, prompts, chosen, prompt_width=max(map(len, prompts)) + 9)
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


def test_main_smoke(tmp_path, tok):
    cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
    init = str(tmp_path / "init.pt")
    torch.manual_seed(0)
    gpt.save_checkpoint(init, gpt.GPT(cfg), tok)
    run = dpo.DPOConfig(init=init, steps=6, batch_size=4, lr=3e-3, n_train=16, n_eval=8, eval_interval=3,
                        out_dir=str(tmp_path / "out"), device="cpu")
    histories = dpo.main(run)
    assert list(histories) == ["sigmoid", "sigmoid + 1 NLL"]  # pure DPO, then with the NLL term
    for history in histories.values():
        assert [row["step"] for row in history] == [0, 3, 6]
        assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and history[0]["reward_acc"] == 0.0
        assert history[-1]["loss"] < history[0]["loss"]
    assert os.path.exists(os.path.join(run.out_dir, "ckpt.pt"))
