"""ppo.py against brute force and worked examples: GAE as an explicit discounted sum, the reward
model's score on the last real token, the Bradley-Terry loss at init, KL and ratio at init, the
clipped value and PPO losses by hand, early stop on the k3 KL, log-probs and entropy against
gpt.py's helper, config validation, and a smoke run."""
import copy
import dataclasses
import json
import math
import random
import sys

import pytest
import torch
import torch.nn.functional as F

import gpt
import ppo


def tiny_model(cfg, seed=0):
    torch.manual_seed(seed)
    return gpt.GPT(cfg).eval()


def random_rows(n, vocab, seed=0):
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, vocab) for _ in range(rng.randint(2, 6))] for _ in range(n)]
    completions = [[rng.randrange(1, vocab) for _ in range(rng.randint(1, 7))] for _ in range(n)]
    return prompts, completions


def test_gae_equals_the_brute_force_discounted_sum():
    torch.manual_seed(0)
    B, T, gamma, lam = 4, 6, 0.9, 0.8
    lengths = [6, 3, 1, 5]
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    rewards, values = torch.randn(B, T, dtype=torch.float64) * mask, torch.randn(B, T, dtype=torch.float64) * mask
    advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
    for b, L in enumerate(lengths):
        V = values[b, :L].tolist() + [0.0]  # the state after the last token is terminal
        delta = [rewards[b, t].item() + gamma * V[t + 1] - V[t] for t in range(L)]
        for t in range(L):
            expected = sum((gamma * lam) ** l * delta[t + l] for l in range(L - t))
            assert advantages[b, t].item() == pytest.approx(expected, abs=1e-12)
            assert returns[b, t].item() == pytest.approx(expected + V[t], abs=1e-12)
        assert (advantages[b, L:] == 0).all() and (returns[b, L:] == 0).all()
    # lambda = 1 makes A_t + V_t the plain discounted return sum_l gamma^l r_{t+l}
    advantages, returns = ppo.gae(rewards, values, mask, gamma, 1.0)
    L = lengths[0]
    for t in range(L):
        assert returns[0, t].item() == pytest.approx(sum(gamma ** l * rewards[0, t + l].item() for l in range(L - t)))


def test_reward_score_is_read_on_the_last_real_token(tiny_gpt_config):
    rm = ppo.ScalarModel(tiny_model(tiny_gpt_config)).eval()
    torch.nn.init.normal_(rm.head.weight)
    prompts, completions = random_rows(5, tiny_gpt_config.vocab_size)
    with torch.no_grad():
        scores = ppo.reward_scores(rm, prompts, completions, pad_id=0)
        for i, (p, c) in enumerate(zip(prompts, completions)):  # each row alone, unpadded
            alone = rm(torch.tensor([p + c]))[0, -1]
            assert scores[i].item() == pytest.approx(alone.item(), abs=1e-5)


def test_reward_model_loss_starts_at_ln2_with_a_zero_head(tiny_gpt_config):
    rm = ppo.ScalarModel(tiny_model(tiny_gpt_config))
    prompts, chosen = random_rows(6, tiny_gpt_config.vocab_size, seed=1)
    _, rejected = random_rows(6, tiny_gpt_config.vocab_size, seed=2)
    loss = ppo.bradley_terry_loss(ppo.reward_scores(rm, prompts, chosen, 0), ppo.reward_scores(rm, prompts, rejected, 0))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    # -log sigma(1 - 0) = log(1 + e^-1)
    assert ppo.bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(math.log1p(math.exp(-1)))


def test_reward_model_trains_its_backbone_even_from_a_frozen_reference(tiny_gpt_config):
    base = tiny_model(tiny_gpt_config).requires_grad_(False)  # main() passes the frozen pi_ref
    prompts, chosen = random_rows(4, tiny_gpt_config.vocab_size, seed=1)
    _, rejected = random_rows(4, tiny_gpt_config.vocab_size, seed=2)
    rm = ppo.train_reward_model(base, list(zip(prompts, chosen, rejected)), ppo.Config(rm_steps=2), 0)
    moved = [not torch.equal(p, q) for p, q in zip(rm.backbone.parameters(), base.parameters())]
    assert sum(moved) > len(moved) // 2  # not only the head: the backbone learned too
    assert not any(p.requires_grad for p in base.parameters())  # and the reference is untouched


def test_policy_outputs_match_completion_logprobs_and_a_brute_force_entropy(tiny_gpt_config):
    policy = tiny_model(tiny_gpt_config)
    value = ppo.ScalarModel(tiny_model(tiny_gpt_config, seed=1))
    prompts, completions = random_rows(4, tiny_gpt_config.vocab_size)
    with torch.no_grad():
        logp, entropy, values, mask = ppo.policy_outputs(policy, value, prompts, completions, pad_id=0)
        reference, ref_mask = gpt.completion_logprobs(policy, prompts, completions, pad_id=0)
        torch.testing.assert_close(logp, reference, rtol=1e-5, atol=1e-6)
        assert torch.equal(mask, ref_mask)
        p, c = prompts[2], completions[2]  # brute force on one unpadded row
        probs = F.softmax(policy(torch.tensor([p + c]))[0][0, len(p) - 1:-1], -1)
        torch.testing.assert_close(entropy[2, :len(c)], -(probs * probs.log()).sum(-1), rtol=1e-5, atol=1e-6)


def test_kl_is_zero_and_ratio_one_at_init(tiny_gpt_config):
    torch.manual_seed(0)
    base = tiny_model(tiny_gpt_config)
    policy, rm = copy.deepcopy(base), ppo.ScalarModel(copy.deepcopy(base))
    value = copy.deepcopy(rm)
    tok = type("Tok", (), {"eot_id": 1})()
    cfg = ppo.Config(beta=0.1, max_new_tokens=5)
    prompts, _ = random_rows(6, tiny_gpt_config.vocab_size)
    batch = ppo.rollout(policy, base, rm, value, prompts, tok, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(batch["kl"], torch.zeros(6))
    policy.train()  # dropout is 0: training mode computes the same function
    logp, *_ = ppo.policy_outputs(policy, value, prompts, batch["completions"], 1)
    assert torch.equal(torch.exp(logp - batch["logp"]), torch.ones_like(logp))


def test_per_token_rewards_put_the_score_on_the_last_token():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    logp, ref = torch.tensor([[-1.0, -2.0, -1.0], [-3.0, 0, 0]]), torch.tensor([[-1.5, -1.0, -1.0], [-2.0, 0, 0]])
    rewards = ppo.per_token_rewards(logp, ref, torch.tensor([2.0, -1.0]), mask, beta=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.25, 0.5, 2.0], [0.5 - 1.0, 0, 0]]))


def test_clipped_value_loss_matches_its_formula():
    mask = torch.ones(1, 3, dtype=torch.bool)
    old = torch.zeros(1, 3)
    values = torch.tensor([[0.5, 0.5, 0.1]], requires_grad=True)
    returns = torch.tensor([[1.0, 0.0, 1.0]])
    # token 0: max((0.5-1)^2, (0.2-1)^2) = 0.64; token 1: max(0.25, 0.04) = 0.25; token 2: inside the clip, 0.81
    loss = ppo.clipped_value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.25 + 0.81) / 3)
    loss.backward()
    # the clipped branch of token 0 does not depend on V; the others give (V - R) / 3
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.5 / 3, -0.9 / 3]]))


def test_whiten_uses_real_tokens_only():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    w = ppo.whiten(x, mask)
    real = w[mask]
    assert real.mean().abs() < 1e-6 and real.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=1e-4)
    assert w[0, 2] == 0


def test_ppo_loss_worked_example():
    # By hand, eps = 0.2: ratios 1.5, 0.6, 1 (and a padding token that must count for nothing)
    # with A = 1, -1, 2: min(rho A, clip(rho) A) = min(1.5, 1.2), min(-0.6, -0.8), 2 = 1.2, -0.8, 2
    # so the policy loss is -(1.2 - 0.8 + 2) / 3 = -0.8. Value: V = V_old = 0, R = 1, 0, -1 gives
    # 0.5 (1 + 0 + 1) / 3 = 1/3. Entropy mean (0.5 + 1 + 1.5) / 3 = 1, a bonus: minus ent_coef.
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    logp = torch.tensor([[math.log(1.5), math.log(0.6), 0.0, 5.0]], **f64)
    entropy = torch.tensor([[0.5, 1.0, 1.5, 9.0]], **f64)
    zeros = torch.zeros(1, 4, dtype=torch.float64)
    A, R = torch.tensor([[1.0, -1.0, 2.0, 10.0]]), torch.tensor([[1.0, 0.0, -1.0, 7.0]])
    cfg = ppo.Config(clip_eps=0.2, vf_coef=0.5, ent_coef=0.01)
    loss, stats = ppo.ppo_loss(logp, zeros, A, entropy, zeros, zeros, R, mask, cfg)
    assert loss.item() == pytest.approx(-0.8 + 0.5 / 3 - 0.01 * 1.0, rel=1e-12)
    # approximate KL(pi_old || pi), k3 per token (rho - 1) - log rho (Schulman 2020): 0.5 - log 1.5,
    # -0.4 - log 0.6 and 0 (k1 = -mean log rho would give (-log 1.5 - log 0.6) / 3 instead)
    k3 = (0.5 - math.log(1.5) - 0.4 - math.log(0.6)) / 3
    assert stats["approx_kl"] == pytest.approx(k3, rel=1e-12)
    assert stats["clipfrac"] == pytest.approx(2 / 3)  # |rho - 1| > eps for 1.5 and 0.6, not for 1
    assert stats["entropy"] == pytest.approx(1.0) and stats["value_loss"] == pytest.approx(1 / 3)
    loss.backward()
    # clipped tokens pass no gradient; the third gives -rho A / 3; padding nothing
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -2 / 3, 0.0]], dtype=logp.dtype))
    # the entropy term is a bonus: raising entropy lowers the loss
    expected = torch.tensor([[-0.01 / 3] * 3 + [0.0]], dtype=logp.dtype)
    torch.testing.assert_close(entropy.grad, expected)


def test_ppo_update_stops_once_the_k3_estimate_passes_target_kl(tiny_gpt_config):
    # one minibatch of every row, two epochs: the first step sees a policy already moved from
    # pi_old by X = mean_t (rho_t - 1) - log rho_t, which the test computes on its own in float64.
    # target_kl just under X stops after 1 update, just over lets the second epoch run: a
    # different estimator (k1 = -mean log rho, k2 = mean (log rho)^2 / 2, reverse KL) fails.
    cfg64 = dataclasses.replace(tiny_gpt_config, pos="learned")  # RoPE's tables are float32
    old = tiny_model(cfg64).double()
    policy, value = copy.deepcopy(old), ppo.ScalarModel(copy.deepcopy(old)).double()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    prompts, completions = random_rows(8, tiny_gpt_config.vocab_size)
    with torch.no_grad():
        logp_old, mask = gpt.completion_logprobs(old, prompts, completions)
        logp_new, _ = gpt.completion_logprobs(policy, prompts, completions)
        _, _, values, _ = ppo.policy_outputs(old, value, prompts, completions, 0)
    log_rho = (logp_new - logp_old)[mask]
    X = float((log_rho.exp() - 1 - log_rho).mean())
    assert X > 1e-3  # the policy really moved
    batch = dict(prompts=prompts, completions=completions, logp=logp_old, values=values, pad=0,
                 advantages=ppo.whiten(torch.randn_like(logp_old), mask), returns=values)
    for target, updates in [(X * (1 - 1e-6), 1), (X * (1 + 1e-6), 2)]:  # float64: X to ~1e-14
        moved = copy.deepcopy(policy)
        opt = torch.optim.AdamW(list(moved.parameters()) + list(value.parameters()), lr=1e-3)
        cfg = ppo.Config(epochs=2, minibatch=8, target_kl=target)
        stats = ppo.ppo_update(moved, value, opt, batch, cfg, torch.Generator().manual_seed(0))
        assert stats["updates"] == updates, (target, X)


@pytest.mark.parametrize("field, value", [
    ("rollout_size", 0), ("epochs", 0), ("minibatch", -1), ("rm_pairs", 0), ("base_steps", 0),
    ("lr", 0.0), ("rm_lr", -1e-3), ("target_kl", float("nan")), ("clip_eps", 0.0), ("iters", 0),
    ("n_embd", 0),
    ("beta", -0.1), ("gamma", 1.5), ("lam", -0.1), ("n_embd", 100), ("best_of", 2),
    ("max_new_tokens", 0), ("max_new_tokens", 40), ("eval_prompts", 0), ("n_layer", 0)])
def test_config_rejects_bad_values_before_any_work(field, value, capsys):
    with pytest.raises(ValueError, match=f"^{field}="):  # one line that names the field
        ppo.Config(**{field: value})
    with pytest.raises(SystemExit):
        gpt.parse_args(ppo.Config, [f"--{field}={value}"])
    assert f"--{field}" in capsys.readouterr().err.splitlines()[-1]  # and says which flag to change


def test_true_score_worked_examples():
    assert ppo.true_score(" great.") == 1
    assert ppo.true_score(" great and rude.") == 0
    assert ppo.true_score(" superb, clean and okay.") == 2
    assert ppo.true_score(" great great great.") == -3  # not a review
    assert ppo.true_score(" tasty.") == -3  # unknown word
    rng = random.Random(0)
    for _ in range(50):  # every review the task writes parses, and scores the sum of its words
        _, completion = ppo.make_review(rng, ppo.NOUNS)
        words = completion.strip(" .").replace(",", "").split(" ")
        assert ppo.true_score(completion) == sum(ppo.SENTIMENT[w] for w in words if w != "and")


def tiny_run(out_dir, **changes):
    return ppo.Config(**{**dict(out_dir=str(out_dir), base_steps=100, rm_pairs=40, rm_steps=3,
                                iters=2, rollout_size=8, minibatch=4, epochs=1, eval_prompts=4,
                                best_of=4, n_layer=1, n_embd=64, device="cpu"), **changes})


def test_main_smoke(tmp_path, capsys):
    rows = ppo.main(tiny_run(tmp_path))
    assert set(rows) == {"reference (SFT)", "Best-of-4", "PPO"}
    out = capsys.readouterr().out
    assert "true score" in out
    # Best-of-N's log N - (N-1)/N is a bound, exact only without reward ties (Beirami et al. 2024)
    assert "<=" in next(line for line in out.splitlines() if line.startswith("Best-of-4"))
    assert "upper bound" in out
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]  # one line per rollout
    model, _, _ = gpt.load_model(str(tmp_path / "ckpt.pt"))
    assert model.config.n_embd == 64


def test_cuda_defaults_come_from_the_gpu_dict(monkeypatch):
    cpu = gpt.parse_args(ppo.Config, [], gpu=ppo.GPU)  # this machine: no CUDA
    assert (cpu.iters, cpu.n_embd) == (60, 64)
    monkeypatch.setattr(gpt, "pick_device", lambda name: "cuda")
    cuda = gpt.parse_args(ppo.Config, ["--iters=7"], gpu=ppo.GPU)
    assert (cuda.iters, cuda.n_embd) == (7, 256)  # what the command line sets wins


def byte_checkpoint(path, block_size=64, vocab_size=None):
    """A tiny byte-level GPT of this project, as train.py or sft.py would save it."""
    tok = gpt.Tokenizer.from_spec("byte", "abc")
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=vocab_size or tok.model_vocab_size,
                                  block_size=block_size, n_layer=1, n_head=2, n_embd=32))
    gpt.save_checkpoint(str(path), model, tok)
    return model, tok


# byte-level, the longest review is " friendly, friendly and friendly." (33 bytes) and its end
LONGEST = len(" friendly, friendly and friendly.") + 1


def test_init_starts_from_a_checkpoint_with_its_own_tokenizer(tmp_path, monkeypatch):
    base, tok = byte_checkpoint(tmp_path / "base.pt")
    started = []
    finetune = gpt.finetune
    monkeypatch.setattr(gpt, "finetune", lambda model, *a, **k: started.append(
        {n: p.clone() for n, p in model.state_dict().items()}) or finetune(model, *a, **k))
    monkeypatch.setattr(ppo, "true_score", len)  # an untrained model's samples seldom tie on it
    ppo.main(tiny_run(tmp_path / "run", init=str(tmp_path / "base.pt"), max_new_tokens=LONGEST,
                      base_steps=2))
    assert all(torch.equal(started[0][k], v) for k, v in base.state_dict().items())
    ckpt = gpt.load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert ckpt["tokenizer"] == tok.state_dict() and ckpt["model_args"]["n_embd"] == 32


@pytest.mark.parametrize("problem, message", [
    ("short budget", f"--max_new_tokens={LONGEST} or more"),
    ("short context", f"context is 40 tokens; this task needs {15 + LONGEST}"),  # the service was
    ("no chat tokens", "no rows for the chat tokens"),
    ("garbage", "not a readable checkpoint"),
    ("missing", "no checkpoint at")])
def test_a_bad_init_is_one_line_before_any_work(tmp_path, problem, message, monkeypatch):
    path = tmp_path / "init.pt"
    if problem in ("short budget", "short context"):
        byte_checkpoint(path, block_size=40)
    elif problem == "no chat tokens":
        byte_checkpoint(path, vocab_size=256)  # bytes only: <|endoftext|> has no row to stop on
    elif problem == "garbage":
        path.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(gpt, "finetune", lambda *a, **k: pytest.fail("work started"))
    budget = LONGEST - 1 if problem == "short budget" else LONGEST
    with pytest.raises(SystemExit, match=f"^error: .*{message}"):
        ppo.main(tiny_run(tmp_path, init=str(path), max_new_tokens=budget))


def test_plot_without_matplotlib_is_a_note_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import fails
    monkeypatch.setattr(ppo, "start_model", lambda *a: pytest.fail("work started"))
    with pytest.raises(pytest.fail.Exception, match="work started"):
        ppo.main(tiny_run(tmp_path, plot=True))
    assert capsys.readouterr().out.startswith("note: --plot needs matplotlib")


def test_plot_draws_the_curves(tmp_path):
    pytest.importorskip("matplotlib")  # not installed in CI: the note above is tested there
    ppo.main(tiny_run(tmp_path, plot=True))
    assert (tmp_path / "log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
