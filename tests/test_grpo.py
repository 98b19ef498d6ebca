"""grpo.py against hand-computed tensors, brute-force combinatorics and the full-batch gradient:
advantages, the three loss normalisers, gradient accumulation, the KL and ratio at init,
padding, group contiguity, DAPO's sampling and length shaping, pass@k, and a smoke run."""
import copy
import dataclasses
import itertools
import json
import math
import random
import sys

import pytest
import torch

import gpt
import grpo


def tiny_model(cfg, seed=0):
    torch.manual_seed(seed)
    return gpt.GPT(cfg).eval()


def float64_model(cfg):
    """RoPE's tables are float32 whatever the model: learned positions keep it all in float64."""
    return tiny_model(dataclasses.replace(cfg, pos="learned")).double()


def random_batch(n, vocab, seed=0, G=2):
    """n (prompt, completion) token lists of varied lengths, in contiguous groups of G prompts."""
    rng = random.Random(seed)
    prompts = [p for _ in range(n // G) for p in [[rng.randrange(1, vocab) for _ in range(rng.randint(2, 6))]] * G]
    completions = [[rng.randrange(1, vocab) for _ in range(rng.randint(1, 7))] for _ in range(n)]
    return prompts, completions


# ----------------------------------------------------------------------------- advantages

def test_zero_variance_groups_get_exactly_zero_advantage_and_no_nan():
    # group 0: 0.1 four times, whose float mean is not exactly 0.1; group 1: all correct
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.1, 1.1, 1.1, 1.1, 1.1, 0.0, 1.0, 0.0, 0.0])
    for scale in ("group", "none"):
        A = grpo.group_advantages(rewards, 4, scale)
        assert torch.isfinite(A).all()
        assert (A[:8] == 0).all()
    # group 2 by hand: mean 0.25, unbiased std sqrt((3 * 0.25^2 + 0.75^2) / 3) = 0.5
    A = grpo.group_advantages(rewards, 4, "group")
    expected = torch.tensor([-0.25, 0.75, -0.25, -0.25]) / (0.5 + 1e-4)
    torch.testing.assert_close(A[8:], expected)
    torch.testing.assert_close(grpo.group_advantages(rewards, 4, "none")[8:], torch.tensor([-0.25, 0.75, -0.25, -0.25]))


def test_advantages_need_whole_groups():
    with pytest.raises(ValueError, match="groups of G=4"):
        grpo.group_advantages(torch.zeros(6), 4)


# ----------------------------------------------------------------------------- the loss

def test_token_weights_are_each_variants_normaliser():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    # grpo: 1/|o_i| within a sequence, then 1/B over sequences
    torch.testing.assert_close(grpo.token_weights(mask, "grpo"),
                               torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0], [1 / 2, 0, 0, 0]]))
    # dr_grpo: a constant, B * max_len = 2 * 5
    torch.testing.assert_close(grpo.token_weights(mask, "dr_grpo", max_len=5),
                               torch.tensor([[0.1, 0.1, 0.1, 0], [0.1, 0, 0, 0]]))
    # dapo: one over all 4 active tokens of the batch
    torch.testing.assert_close(grpo.token_weights(mask, "dapo"),
                               torch.tensor([[0.25, 0.25, 0.25, 0], [0.25, 0, 0, 0]]))
    with pytest.raises(ValueError, match="loss_type"):
        grpo.token_weights(mask, "ppo")


def test_dr_grpo_divides_by_rows_times_the_budget_as_the_papers_code_does(tiny_gpt_config):
    # Liu et al. 2025's code (oat, critic_type="drgrpo") sums each completion's token losses,
    # divides by the constant generate_max_length, then takes the mean over the minibatch's
    # rows; TRL's loss_type="dr_grpo" divides by batch size x max_completion_length. Worked
    # example: 3 rows of 2, 4 and 1 real tokens, budget 9, rows x budget = 27 for every token.
    mask = torch.arange(5)[None] < torch.tensor([2, 4, 1])[:, None]
    torch.testing.assert_close(grpo.token_weights(mask, "dr_grpo", max_len=9), mask / 27.0)
    with pytest.raises(ValueError, match="max_len"):  # the batch's own width is not a constant
        grpo.token_weights(mask, "dr_grpo")
    # and the update uses it: minibatch_backward's gradient is that of the paper's formula
    model = float64_model(tiny_gpt_config)
    # budget 8 and 4 rows: the float32 token weight 1/32 is exact, so float64 agreement is too
    cfg = grpo.Config(loss="dr_grpo", group_size=2, prompts_per_step=4, beta=0.0, max_new_tokens=8)
    batch = scored_batch(model, cfg)
    rows = slice(2, 6)
    model.zero_grad()
    grpo.minibatch_backward(model, batch, rows, cfg)
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logp, mask = gpt.completion_logprobs(model, batch["prompts"][rows], batch["completions"][rows])
    ratio = torch.exp(logp - batch["old_logp"][rows, :logp.size(1)])
    per_token = -batch["advantages"][rows, None] * ratio * mask
    (per_token.sum(-1) / 8).mean().backward()  # sum over tokens / budget, mean over rows
    for p, g in zip(model.parameters(), ours):
        torch.testing.assert_close(g, p.grad, rtol=1e-9, atol=1e-12)


def test_loss_at_ratio_one_is_the_weighted_advantage_sum():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    logp = torch.full((2, 4), -1.0) * mask
    A = torch.tensor([2.0, -1.0])
    for loss_type, expected in [("grpo", -(2 * 3 / 6 - 1 / 2)), ("dr_grpo", -(2 * 3 - 1) / 8), ("dapo", -(2 * 3 - 1) / 4)]:
        weights = grpo.token_weights(mask, loss_type, max_len=4)  # dr_grpo: B * budget = 2 * 4
        loss, stats = grpo.grpo_loss(logp, logp, logp, A, mask, loss_type, weights=weights)
        assert loss.item() == pytest.approx(expected)
        assert stats["kl"] == 0 and stats["clipped"] == 0


def test_k3_kl_and_clipping_by_hand():
    mask = torch.ones(1, 3, dtype=torch.bool)
    old = torch.zeros(1, 3)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]], requires_grad=True)  # ratios 1.5, 0.5, 1
    ref = torch.tensor([[0.0, 0.0, -1.0]])
    loss, stats = grpo.grpo_loss(logp, old, ref, torch.tensor([1.0]), mask, "dapo", 0.2, 0.28, beta=0.5)
    # surrogate min(rho A, clip(rho) A) with A = 1: min(1.5, 1.28), min(0.5, 0.8), 1
    # k3 = exp(ref - logp) - (ref - logp) - 1 for ref - logp = -log 1.5, -log 0.5, -1
    k3 = [1 / 1.5 + math.log(1.5) - 1, 2 + math.log(0.5) - 1, math.exp(-1)]
    assert loss.item() == pytest.approx((-(1.28 + 0.5 + 1) + 0.5 * sum(k3)) / 3, rel=1e-6)
    assert stats["kl"] == pytest.approx(sum(k3) / 3, rel=1e-6)
    assert stats["clipped"] == pytest.approx(1 / 3)  # only token 0 left the trust region on the helpful side
    loss.backward()
    # clipped token: only the KL term's gradient remains, d/dlogp k3 = 1 - exp(ref - logp)
    assert logp.grad[0, 0].item() == pytest.approx(0.5 * (1 - 1 / 1.5) / 3, rel=1e-5)


def test_mixed_rewards_give_a_gradient_though_the_loss_is_zero(tiny_gpt_config):
    model = tiny_model(tiny_gpt_config)
    prompts = [[5, 6, 7]] * 4
    completions = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]  # equal lengths: the loss is exactly -mean(A)
    A = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    logp, mask = gpt.completion_logprobs(model, prompts, completions)
    loss, _ = grpo.grpo_loss(logp, logp.detach(), logp.detach(), A, mask, "grpo", beta=0.04)
    assert abs(loss.item()) < 1e-6  # advantages sum to zero within the group, the ratio is 1, KL is 0
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert grad.norm() > 1e-3  # yet the gradient pushes the rewarded completions up


# ----------------------------------------------------------------------------- the update

def scored_batch(model, cfg, G=2, n=8, seed=0):
    prompts, completions = random_batch(n, model.config.vocab_size, seed, G)
    rewards = torch.tensor([float(i % 3 == 0) for i in range(n)])
    batch = dict(prompts=prompts, completions=completions, rewards=rewards, pad=0)
    return grpo.score_batch(model, copy.deepcopy(model), batch, cfg)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batched_accumulation_equals_the_full_batch(tiny_gpt_config, loss_type):
    model = tiny_model(tiny_gpt_config).double()
    cfg = grpo.Config(loss=loss_type, group_size=2, prompts_per_step=4, beta=0.1, max_new_tokens=9)
    batch = scored_batch(model, cfg)
    with torch.no_grad():  # move the policy off the old/reference one so ratio and KL are not trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grads = []
    for micro in (0, 3):  # 3 does not divide 8: the last micro-batch is short
        model.zero_grad()
        grpo.minibatch_backward(model, batch, slice(0, 8), dataclasses.replace(cfg, micro_batch=micro))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].norm() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


def test_a_partly_refilled_batch_splits_into_fair_minibatches(monkeypatch):
    # 16 rows (DAPO refilled 4 of 6 groups of G=4) over updates_per_rollout=3: old code cut
    # minibatches of 16 // 3 = 5 rows and added a fourth optimizer step of 1 row
    cfg = grpo.Config(loss="dapo", group_size=4, prompts_per_step=6, updates_per_rollout=3)
    seen = []
    monkeypatch.setattr(grpo, "minibatch_backward",
                        lambda m, b, rows, c, first: seen.append(rows) or {})
    monkeypatch.setattr(grpo, "score_batch", lambda policy, ref, b, c, start: b)
    model = torch.nn.Linear(1, 1)
    batch = dict(prompts=[[1]] * 16)
    grpo.policy_update(model, None, torch.optim.SGD(model.parameters()), batch, cfg)
    sizes = [r.stop - r.start for r in seen]
    assert len(seen) == cfg.updates_per_rollout * cfg.epochs  # one optimizer step per minibatch
    assert max(sizes) - min(sizes) <= 1  # a fair share each: 5, 5 and 6 rows
    for epoch in (seen[:3], seen[3:]):  # every row once per epoch
        assert [i for r in epoch for i in range(r.start, r.stop)] == list(range(16))


def test_ratio_is_one_and_kl_zero_at_init(tiny_gpt_config):
    model = tiny_model(tiny_gpt_config)
    cfg = grpo.Config(group_size=2, prompts_per_step=4, beta=0.1)
    batch = scored_batch(model, cfg)
    model.train()  # dropout is 0: training mode computes the same function
    logp, mask = gpt.completion_logprobs(model, batch["prompts"], batch["completions"])
    assert torch.equal(torch.exp(logp - batch["old_logp"]), torch.ones_like(logp))
    assert torch.equal(batch["ref_logp"], batch["old_logp"])
    _, stats = grpo.grpo_loss(logp, batch["old_logp"], batch["ref_logp"], batch["advantages"], mask, "grpo", beta=0.1)
    assert stats["kl"] == 0.0 and stats["clipped"] == 0.0


def recorded_update(model, cfg, monkeypatch, seed=0):
    """policy_update on a fresh 8-row batch, recording each policy log-prob pass (rows, grad on?)
    and each grpo_loss call's ratio and loss."""
    passes, calls = [], []
    logprobs, loss_fn = grpo.logprobs, grpo.grpo_loss

    def spy_logprobs(m, batch, rows, c):
        if m is model:
            passes.append((rows.start or 0, rows.stop, torch.is_grad_enabled()))
        return logprobs(m, batch, rows, c)

    def spy_loss(logp, old_logp, *args):
        loss, stats = loss_fn(logp, old_logp, *args)
        calls.append((torch.exp(logp - old_logp).detach(), loss.item(), logp.detach()))
        return loss, stats
    monkeypatch.setattr(grpo, "logprobs", spy_logprobs)
    monkeypatch.setattr(grpo, "grpo_loss", spy_loss)
    prompts, completions = random_batch(8, model.config.vocab_size, seed, G=2)
    rewards = torch.tensor([float(i % 3 == 0) for i in range(8)])
    batch = dict(prompts=prompts, completions=completions, rewards=rewards, pad=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    grpo.policy_update(model, copy.deepcopy(model), opt, batch, cfg)
    return passes, calls


def test_the_first_minibatch_is_its_own_pi_old(tiny_gpt_config, monkeypatch):
    # before any step pi_old = pi_theta: the first minibatch's forward, detached, is old_logp, so
    # the policy scores only the other rows without grad and the first ratio is exactly 1
    cfg = grpo.Config(group_size=2, prompts_per_step=4, beta=0.1, max_new_tokens=9)
    passes, calls = recorded_update(tiny_model(tiny_gpt_config), cfg, monkeypatch)
    assert [p for p in passes if not p[2]] == [(4, None, False)]  # rows 4.. only, once
    assert [p[:2] for p in passes if p[2]] == [(0, 4), (4, 8), (0, 4), (4, 8)]  # 2 epochs x 2
    assert torch.equal(calls[0][0], torch.ones_like(calls[0][0]))


def test_bf16_autocast_covers_rollouts_and_the_update(tmp_path, tiny_gpt_config, monkeypatch):
    # issue 19: on CUDA gpt.autocast is bf16; here CPU bf16 stands in for it
    monkeypatch.setattr(gpt, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    seen = []
    for name in ("rollout", "policy_update"):
        fn = getattr(grpo, name)
        monkeypatch.setattr(grpo, name, lambda *a, fn=fn, name=name: seen.append(
            (name, torch.is_autocast_enabled("cpu"))) or fn(*a))
    grpo.main(tiny_run(tmp_path, steps=1))
    assert seen == [("rollout", True), ("policy_update", True)]
    # old and new log-probs under the same precision: the first minibatch's ratio is still
    # exactly 1 and its log-probs and loss are near float32's. bf16 keeps 8 significant bits
    # (rounding 2^-9 relative): log-probs near log(64) = 4.2 move by ~0.01 at most, within 0.05.
    # At ratio 1 the surrogate is -sum w A in both; only beta x k3 ~ 0.1 x 0.05^2 / 2 can differ.
    cfg = grpo.Config(group_size=2, prompts_per_step=4, beta=0.1, max_new_tokens=9)
    _, fp32 = recorded_update(tiny_model(tiny_gpt_config), cfg, monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, bf16 = recorded_update(tiny_model(tiny_gpt_config), cfg, monkeypatch)
    assert torch.equal(bf16[0][0], torch.ones_like(bf16[0][0]))
    torch.testing.assert_close(bf16[0][2], fp32[0][2], rtol=0, atol=0.05)
    assert bf16[0][1] == pytest.approx(fp32[0][1], abs=2e-4)


def test_log_probs_are_taken_at_the_sampling_temperature(tiny_gpt_config):
    model = float64_model(tiny_gpt_config)
    cfg = grpo.Config(group_size=2, prompts_per_step=4, temperature=0.6, max_new_tokens=9, beta=0.1)
    batch = scored_batch(model, cfg)
    for row, (p, c) in enumerate(zip(batch["prompts"], batch["completions"])):
        with torch.no_grad():  # the distribution the sampler draws from, row alone, unpadded
            logits = model(torch.tensor([p + c]))[0][0, len(p) - 1:-1]
            probs = gpt.next_token_probs(logits, temperature=0.6)
        expected = probs.log().gather(1, torch.tensor(c)[:, None]).squeeze(1)
        torch.testing.assert_close(batch["old_logp"][row, :len(c)], expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(batch["ref_logp"], batch["old_logp"], rtol=0, atol=0)
    # the new log-probs too: the unmoved policy has ratio 1 and KL 0 to the tempered reference
    stats = grpo.minibatch_backward(model, batch, slice(0, 8), cfg)
    assert stats["clipped"] == 0 and stats["kl"] < 1e-12
    with pytest.raises(ValueError, match="temperature=0"):  # greedy groups: log pi_0 is undefined
        grpo.Config(temperature=0)


def test_logprobs_ignore_left_padding_and_keep_eos_when_pad_is_eos(tiny_gpt_config):
    model = tiny_model(tiny_gpt_config)
    eos = 3
    prompts, completions = [[9, 8, 7, 6, 5, 4], [11, 12]], [[20, 21, eos], [22, eos]]
    logp, mask = gpt.completion_logprobs(model, prompts, completions, pad_id=eos)
    assert mask.sum(1).tolist() == [3, 2]  # the EOS that ends each completion is scored
    for row in range(2):  # each row alone has no padding at all
        alone, _ = gpt.completion_logprobs(model, prompts[row:row + 1], completions[row:row + 1], pad_id=eos)
        torch.testing.assert_close(logp[row, :len(completions[row])], alone[0], rtol=1e-5, atol=1e-6)
    wider, _ = gpt.completion_logprobs(model, prompts, completions, pad_id=eos, prompt_width=12)
    torch.testing.assert_close(wider, logp, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- rollouts

def test_rollout_groups_are_contiguous_and_checked(tiny_gpt_config):
    tok = grpo.task_tokenizer()
    cfg = dataclasses.replace(tiny_gpt_config, vocab_size=tok.model_vocab_size, pos="learned")
    model = tiny_model(cfg)
    problems = grpo.make_problems(3, random.Random(0))
    run = grpo.Config(group_size=4, max_new_tokens=6)
    batch = grpo.rollout(model, tok, problems, run, torch.Generator().manual_seed(0))
    # each problem a user turn of the chat template: <|user|> q= <|end|> <|assistant|>
    turn = lambda q: [tok.special("<|user|>"), *tok.encode(q + "="), tok.special("<|end|>"),  # noqa
                      tok.special("<|assistant|>")]
    assert batch["prompts"] == [turn(q) for q, _, _ in problems for _ in range(4)]
    assert len(batch["completions"]) == len(batch["rewards"]) == 12
    grpo.check_groups(batch["prompts"], 4)
    with pytest.raises(AssertionError, match="not one prompt's group"):
        grpo.check_groups([[1], [2], [1], [2]], 2)


def test_dynamic_sampling_keeps_only_groups_with_reward_variance(monkeypatch):
    cfg = grpo.Config(loss="dapo", group_size=2, prompts_per_step=2, max_resample=3)
    rounds = iter([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])

    def fake_rollout(policy, tok, problems, cfg, generator):
        r = torch.tensor(next(rounds))
        return dict(prompts=[[i] for i in range(4)], completions=[[7]] * 4, rewards=r, correct=r,
                    lengths=torch.ones(4), truncated=torch.zeros(4, dtype=torch.bool))
    monkeypatch.setattr(grpo, "rollout", fake_rollout)
    batch, first = grpo.dynamic_rollout(None, None, lambda n: [None] * n, cfg, None)
    assert batch["rewards"].tolist() == [0.0, 1.0, 1.0, 0.0]  # round 1's second group, round 3's first
    assert first["rewards"].tolist() == [1.0, 1.0, 0.0, 1.0]  # statistics come from the first round


def test_dapo_drops_the_kl_term_by_default():
    assert grpo.Config(loss="dapo").beta == 0.0  # Yu et al. 2025 remove the KL penalty
    assert grpo.Config().beta == grpo.Config(loss="dr_grpo").beta == 0.01
    assert grpo.Config(loss="dapo", beta=0.05).beta == 0.05


def test_dynamic_sampling_filters_on_accuracy_not_on_the_shaped_reward(monkeypatch):
    # Yu et al. 2025 keep a prompt only if 0 < |{correct outputs}| < G. Round 1: group 0 is
    # all right but the length penalty spreads its rewards; group 1 is mixed. Round 2: group 0
    # is mixed; group 1 is all wrong.
    cfg = grpo.Config(loss="dapo", group_size=2, prompts_per_step=2, max_resample=2)
    rounds = iter([([1.1, 0.6, 1.1, 0.1], [1, 1, 1, 0]), ([0.1, 1.1, 0.0, 0.1], [0, 1, 0, 0])])

    def fake_rollout(policy, tok, problems, cfg, generator):
        r, c = next(rounds)
        return dict(prompts=[[i] for i in range(4)], completions=[[7]] * 4, rewards=torch.tensor(r),
                    correct=torch.tensor(c, dtype=torch.float), lengths=torch.ones(4),
                    truncated=torch.zeros(4, dtype=torch.bool))
    monkeypatch.setattr(grpo, "rollout", fake_rollout)
    batch, _ = grpo.dynamic_rollout(None, None, lambda n: [None] * n, cfg, None)
    assert batch["correct"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert batch["rewards"].tolist() == pytest.approx([1.1, 0.1, 0.1, 1.1])


def test_overlong_penalty_ramps_over_the_cache():
    lengths = torch.tensor([4, 6, 8, 10, 12])
    # budget 10, cache 4: no penalty up to 6 tokens, then -(len - 6)/4, at most -1
    torch.testing.assert_close(grpo.overlong_penalty(lengths, 10, 4), torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))


def test_reward_checks_format_and_answer():
    assert grpo.reward("<think>7+5=12,2+1=3</think><answer>32</answer>", 32, 0.1) == (1.1, True)
    assert grpo.reward("<think>7+5=12,2+1=3</think><answer>31</answer>", 32, 0.1) == (0.1, False)
    assert grpo.reward("<answer>32</answer>", 32, 0.1) == (0.0, False)


# ----------------------------------------------------------------------------- evaluation

def test_pass_at_k_matches_brute_force_counting():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                draws = list(itertools.combinations([True] * c + [False] * (n - c), k))
                brute = sum(any(d) for d in draws) / len(draws)
                assert grpo.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert grpo.pass_at_k(200, 3, 100) == pytest.approx(1 - math.comb(197, 100) / math.comb(200, 100))


def tiny_run(out_dir, **changes):
    """A whole run in about a second: 1 layer, 2 problems x G=2 per step, 3 held-out problems."""
    return grpo.Config(**{**dict(steps=2, prompts_per_step=2, group_size=2, sft_examples=4,
                                 sft_steps=3, eval_problems=3, pass_k=2, n_layer=1, n_embd=32,
                                 eval_every=1, out_dir=str(out_dir), device="cpu"), **changes})


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "dapo"])
def test_main_smoke(tmp_path, capsys, loss):
    before, after = grpo.main(tiny_run(tmp_path, loss=loss))
    out = capsys.readouterr().out
    assert "before GRPO" in out and "after GRPO" in out and "greedy accuracy" in out
    assert set(before) == set(after) == {"accuracy", "pass@1", "pass@2", "format", "length"}
    rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and "held_out_accuracy" in rows[0]
    keys = ("reward", "acc", "zero_std", "kl", "length", "clipped", "truncated")
    assert all(k in rows[1] for k in keys)
    model, _, _ = gpt.load_model(str(tmp_path / "ckpt.pt"))
    assert model.config.n_layer == 1


# ----------------------------------------------------------------------------- the workflow

@pytest.mark.parametrize("field, value", [
    ("loss", "ppo"), ("steps", 0), ("prompts_per_step", 0), ("group_size", 1), ("epochs", 0),
    ("updates_per_rollout", 3), ("micro_batch", -1), ("lr", 0.0), ("warmup", 0), ("beta", -0.5),
    ("eps_low", float("nan")), ("temperature", 0.0), ("max_new_tokens", 0), ("overlong_cache", 0),
    ("max_resample", 0), ("format_reward", -1.0), ("sft_examples", 0), ("sft_steps", -1),
    ("sft_lr", -1e-3), ("n_layer", 0), ("n_embd", 90), ("n_head", 0), ("eval_problems", 853),
    ("pass_k", 0), ("eval_every", 0), ("stop_after", -1)])
def test_config_rejects_bad_values_before_any_work(field, value, capsys):
    # updates_per_rollout=3 does not divide 16 x 8 rows; n_embd=90 is not a multiple of 4 heads;
    # 853 held-out + 48 SFT problems are more than the 90 x 10 two-digit + one-digit ones
    with pytest.raises(ValueError, match=f"^{field}="):  # one line that names the field
        grpo.Config(**{field: value})
    with pytest.raises(SystemExit):
        gpt.parse_args(grpo.Config, [f"--{field}={value}"], gpu=grpo.GPU)
    assert f"--{field}" in capsys.readouterr().err.splitlines()[-1]  # and says which flag to change


def test_cuda_defaults_come_from_the_gpu_dict(monkeypatch):
    assert gpt.parse_args(grpo.Config, [], gpu=grpo.GPU).steps == 300  # this machine: no CUDA
    monkeypatch.setattr(gpt, "pick_device", lambda name: "cuda")
    assert gpt.parse_args(grpo.Config, [], gpu=grpo.GPU).steps == grpo.GPU["steps"] == 1000
    assert gpt.parse_args(grpo.Config, ["--steps=5"], gpu=grpo.GPU).steps == 5  # the user wins


def test_resume_is_exact(tmp_path, monkeypatch):
    """4 steps in one go equal 2 steps, a stop, --resume and 2 more: weights, reference, log
    rows and the held-out figures, bit for bit (same process, same kernels)."""
    # rewards that vary with the text, so a tiny untrained policy gets advantages and moves
    monkeypatch.setattr(grpo, "reward", lambda text, answer, fr: (len(text) % 3 / 2, len(text) % 2))
    whole = tiny_run(tmp_path / "whole", steps=4, eval_every=2)
    _, after = grpo.main(whole)
    split = dataclasses.replace(whole, out_dir=str(tmp_path / "split"), stop_after=2)
    assert grpo.main(split)[1] is None  # stopped: no final table
    assert gpt.load_checkpoint(str(tmp_path / "split" / "ckpt.pt"))["step"] == 2
    _, resumed = grpo.main(dataclasses.replace(split, stop_after=0, resume=True))
    a = gpt.load_checkpoint(str(tmp_path / "whole" / "ckpt.pt"))
    b = gpt.load_checkpoint(str(tmp_path / "split" / "ckpt.pt"))
    assert a["step"] == b["step"] == 4
    assert not all(torch.equal(a["model"][k], a["ref"][k]) for k in a["ref"])  # GRPO moved it
    for key in ("model", "ref"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    logs = [[json.loads(line) for line in open(tmp_path / run / "log.jsonl")]
            for run in ("whole", "split")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4] and logs[0] == logs[1]
    assert resumed == after


def test_resume_refuses_other_settings_or_no_checkpoint(tmp_path, capsys):
    cfg = tiny_run(tmp_path, steps=2, stop_after=1)
    with pytest.raises(SystemExit, match="no checkpoint at"):  # nothing to resume yet
        grpo.main(dataclasses.replace(cfg, resume=True))
    grpo.main(cfg)
    with pytest.raises(SystemExit, match="^error: .*saved with --lr=0.0003: resume with those"):
        grpo.main(dataclasses.replace(cfg, resume=True, lr=1e-3))
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 1  # the refusal wrote nothing


def byte_checkpoint(path, block_size=64, vocab_size=None):
    """A tiny byte-level GPT of this project, as train.py or sft.py would save it."""
    tok = gpt.Tokenizer.from_spec("byte", "0123456789")
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=vocab_size or tok.model_vocab_size,
                                  block_size=block_size, n_layer=1, n_head=2, n_embd=32))
    gpt.save_checkpoint(str(path), model, tok)
    return model, tok


def test_init_starts_from_a_checkpoint_with_its_own_tokenizer(tmp_path):
    base, tok = byte_checkpoint(tmp_path / "base.pt")
    # byte-level, the longest worked answer is its characters and <|end|>: 49 tokens
    longest = len("<think>9+9=18,9+1=10</think><answer>108</answer>") + 1
    cfg = tiny_run(tmp_path / "run", init=str(tmp_path / "base.pt"), max_new_tokens=longest,
                   steps=1, sft_steps=0)  # no warm-up: pi_ref is the checkpoint itself
    grpo.main(cfg)
    ckpt = gpt.load_checkpoint(str(tmp_path / "run" / "ckpt.pt"))
    assert ckpt["tokenizer"] == tok.state_dict() and ckpt["model_args"]["n_embd"] == 32
    assert all(torch.equal(ckpt["ref"][k], v) for k, v in base.state_dict().items())
    with pytest.raises(SystemExit, match=f"--max_new_tokens={longest} or more"):
        grpo.main(dataclasses.replace(cfg, max_new_tokens=32))
    with pytest.raises(SystemExit, match=f"--max_new_tokens={longest + 3} or more"):  # dapo's ramp
        grpo.main(dataclasses.replace(cfg, loss="dapo", overlong_cache=3))


@pytest.mark.parametrize("problem, message", [
    ("short context", "context is 40 tokens; this task needs 57"),  # 8-token prompt + 49
    ("no chat tokens", "no rows for the chat tokens"),
    ("garbage", "not a readable checkpoint"),
    ("missing", "no checkpoint at")])
def test_a_bad_init_is_one_line_before_any_work(tmp_path, problem, message, monkeypatch):
    path = tmp_path / "init.pt"
    if problem == "short context":
        byte_checkpoint(path, block_size=40)
    elif problem == "no chat tokens":
        byte_checkpoint(path, vocab_size=256)  # bytes only: <|endoftext|> and the rest have no row
    elif problem == "garbage":
        path.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(gpt, "finetune", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit, match=f"^error: .*{message}"):
        grpo.main(tiny_run(tmp_path, init=str(path), max_new_tokens=49))


def test_plot_without_matplotlib_is_a_note_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import fails
    monkeypatch.setattr(grpo, "start_policy", lambda *a: pytest.fail("work started"))
    with pytest.raises(pytest.fail.Exception, match="work started"):
        grpo.main(tiny_run(tmp_path, plot=True))
    assert capsys.readouterr().out.startswith("note: --plot needs matplotlib")


def test_plot_draws_the_curves(tmp_path):
    pytest.importorskip("matplotlib")  # not installed in CI: the note above is tested there
    grpo.main(tiny_run(tmp_path, plot=True, steps=1))
    assert (tmp_path / "log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
