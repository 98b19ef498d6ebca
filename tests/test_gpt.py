"""gpt.py against independent references: a float64 re-derivation of the forward pass, brute
force over small vocabularies, exact distributions, and worked examples."""
import collections
import copy
import dataclasses
import importlib.util
import io
import itertools
import json
import math
import os
import random
import struct
import sys

import pytest
import torch
import torch.nn.functional as F

import gpt

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def make_model(cfg, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = gpt.GPT(cfg).to(dtype).eval()
    with torch.no_grad():  # norms start at exactly 1; perturb them so a dropped gain would show
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


# ----------------------------------------------------------------------------- the forward pass

def reference_forward(sd, cfg, idx):
    """The model written out from the equations, in float64: RMSNorm, RoPE as complex rotation,
    explicit per-head softmax attention with K/V heads repeated for GQA, SwiGLU."""
    W = {k: v.double() for k, v in sd.items()}
    hd = cfg.n_embd // cfg.n_head
    T = idx.size(1)

    def rms(x, g):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * g

    def rope(x):  # x (T, hd): pairs (x_i, x_{i+hd/2}) rotate by pos * base^(-2i/hd)
        theta = cfg.rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        angle = torch.arange(T)[:, None] * theta
        z = torch.complex(x[:, :hd // 2], x[:, hd // 2:]) * torch.exp(1j * angle)
        return torch.cat([z.real, z.imag], -1)

    x = W["transformer.wte.weight"][idx[0]]
    for l in range(cfg.n_layer):
        p = f"transformer.h.{l}."
        h = rms(x, W[p + "ln_1.weight"])
        qkv = h @ W[p + "attn.c_attn.weight"].T
        q, k, v = qkv.split([cfg.n_head * hd, cfg.n_kv_head * hd, cfg.n_kv_head * hd], -1)
        heads = []
        for i in range(cfg.n_head):
            j = i // (cfg.n_head // cfg.n_kv_head)  # the K/V head this query head shares
            qi = rope(q[:, i * hd:(i + 1) * hd])
            kj = rope(k[:, j * hd:(j + 1) * hd])
            vj = v[:, j * hd:(j + 1) * hd]
            scores = qi @ kj.T / math.sqrt(hd)
            future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
            scores = scores.masked_fill(future, -math.inf)
            heads.append(torch.softmax(scores, -1) @ vj)
        x = x + torch.cat(heads, -1) @ W[p + "attn.c_proj.weight"].T
        h = rms(x, W[p + "ln_2.weight"]) @ W[p + "mlp.c_fc.weight"].T
        gate, up = h.chunk(2, -1)
        x = x + (gate * torch.sigmoid(gate) * up) @ W[p + "mlp.c_proj.weight"].T
    return rms(x, W["transformer.ln_f.weight"]) @ W["lm_head.weight"].T


def test_forward_matches_float64_reference(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    idx = torch.randint(0, 64, (1, 20))
    logits, _ = model(idx)
    expected = reference_forward(model.state_dict(), tiny_gpt_config, idx)
    torch.testing.assert_close(logits[0], expected, rtol=1e-10, atol=1e-10)


def test_loss_is_cross_entropy_and_ignores_minus_one(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    idx = torch.randint(0, 64, (2, 10))
    targets = torch.randint(0, 64, (2, 10))
    targets[0, :4] = -1
    logits, loss = model(idx, targets)
    keep = targets != -1
    expected = -torch.log_softmax(logits, -1)[keep].gather(-1, targets[keep][:, None]).mean()
    torch.testing.assert_close(loss, expected)


def test_causal_mask_future_tokens_do_not_change_the_past(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    idx = torch.randint(0, 64, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 64
    a = model(idx)[0]
    b = model(changed)[0]
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3
    bidirectional = make_model(gpt.GPTConfig(**{**tiny_gpt_config.__dict__, "causal": False}))
    assert (bidirectional(idx)[0][:, :10] - bidirectional(changed)[0][:, :10]).abs().max() > 1e-3


def test_left_padding_changes_nothing(tiny_gpt_config):
    """Positions come from the padding: a padded row gives the unpadded row's logits."""
    model = make_model(tiny_gpt_config)
    seq = [5, 9, 2, 7, 3]
    idx, valid = gpt.pad_left([seq, [1] * 9], pad_id=0)
    padded = model(idx, attn_mask=valid)[0][0, -5:]
    torch.testing.assert_close(padded, model(torch.tensor([seq]))[0][0], rtol=1e-12, atol=1e-12)


def test_flops_per_token_by_hand():
    cfg = gpt.GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, mlp="gelu")
    model = gpt.GPT(cfg)
    # per layer: qkv 32*96 + proj 32*32 + fc 32*128 + proj 128*32 = 12,288; head 32*64 = 2,048
    n = 2 * 12_288 + 2_048
    assert model.flops_per_token() == 6 * n + 12 * 2 * 16 * 32


# ----------------------------------------------------------------------------- generation

def test_cached_generation_equals_uncached_with_left_padding(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    cached = model.generate(prompts, 20, temperature=0)
    uncached = model.generate(prompts, 20, temperature=0, use_cache=False)
    one_by_one = [model.generate([p], 20, temperature=0)[0] for p in prompts]
    assert cached == uncached == one_by_one
    assert all(len(c) == 20 for c in cached)


def test_sampling_with_a_seeded_generator_is_reproducible_and_cache_independent(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    runs = [model.generate([[1, 2], [3]], 12, temperature=1.0, top_k=10,
                           generator=torch.Generator().manual_seed(3), use_cache=c)
            for c in (True, False)]
    assert runs[0] == runs[1]


def test_stop_tokens_end_each_row_independently(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    prompts = [[1, 2, 3], [7, 8]]
    free = model.generate(prompts, 15, temperature=0)
    stop = free[0][4]  # the fifth token of row 0 becomes a stop token
    stopped = model.generate(prompts, 15, temperature=0, stop_tokens=[stop])
    for full, cut in zip(free, stopped):
        first = full.index(stop) if stop in full else len(full) - 1
        assert cut == full[:first + 1]


def test_allowed_token_mask_is_obeyed(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    allowed = torch.zeros(64, dtype=torch.bool)
    allowed[[3, 17, 40]] = True
    seen = []

    def only_three(generated):
        seen.append(generated.shape)
        return allowed.expand(generated.size(0), -1)
    out = model.generate([[1, 2], [5]], 10, temperature=1.0,
                         generator=torch.Generator().manual_seed(0), allowed_tokens=only_three)
    assert all(t in (3, 17, 40) for row in out for t in row)
    assert seen[0] == (2, 0) and seen[-1] == (2, 9)  # every step, with what was generated so far


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_an_allowed_mask_that_leaves_a_row_no_token_is_an_error(tiny_gpt_config, temperature):
    model = make_model(tiny_gpt_config)

    def empty_row_1_at_step_2(generated):
        allowed = torch.ones(generated.size(0), 64, dtype=torch.bool)
        allowed[1] = generated.size(1) != 2
        return allowed
    with pytest.raises(ValueError, match="row 1 at step 2"):
        model.generate([[1, 2], [5]], 6, temperature=temperature, generator=torch.Generator(),
                       allowed_tokens=empty_row_1_at_step_2)


def test_the_constraint_never_sees_a_finished_row(tiny_gpt_config):
    """A finished row is not passed to allowed_tokens (a parser-like constraint could fail on the
    tokens after a stop); the other rows still get it, in batch order, and decode as alone."""
    model = make_model(tiny_gpt_config)
    prompts = [[1, 2, 3], [7, 8], [4]]
    free = model.generate(prompts, 12, temperature=0)
    stop = next(t for t in free[0] if t not in free[1][:8] + free[2][:8])
    seen = []

    def everything(generated):
        assert not torch.isin(generated, torch.tensor([stop])).any(), "a finished row was consulted"
        seen.append(generated.size(0))
        return torch.ones(generated.size(0), 64, dtype=torch.bool)
    out = model.generate(prompts, 12, temperature=0, stop_tokens=[stop], allowed_tokens=everything)
    assert out == [model.generate([p], 12, temperature=0, stop_tokens=[stop])[0] for p in prompts]
    assert seen[0] == 3 and seen[-1] < 3  # row 0 stopped, and the callback got fewer rows after


def test_top_p_keeps_exactly_the_smallest_nucleus():
    torch.manual_seed(0)
    logits = torch.randn(200, 12) * 2
    for top_p in (0.1, 0.5, 0.9, 0.99):
        probs = gpt.next_token_probs(logits, top_p=top_p)
        full = torch.softmax(logits, -1)
        for row in range(len(logits)):
            ranked = sorted(range(12), key=lambda i: -full[row, i].item())
            total = 0.0
            nucleus = set()
            for i in ranked:  # brute force: add the most likely tokens until the mass reaches top_p
                nucleus.add(i)
                total += full[row, i].item()
                if total >= top_p:
                    break
            assert set(torch.nonzero(probs[row]).flatten().tolist()) == nucleus
            kept = torch.tensor(sorted(nucleus))
            torch.testing.assert_close(probs[row, kept], full[row, kept] / full[row, kept].sum())


def test_top_k_temperature_and_greedy():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    assert torch.nonzero(gpt.next_token_probs(logits, top_k=2)[0]).flatten().tolist() == [1, 2]
    torch.testing.assert_close(gpt.next_token_probs(logits, temperature=0.5),
                               torch.softmax(logits / 0.5, -1))
    assert gpt.next_token_probs(logits, temperature=0).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert gpt.sample_next(logits, temperature=0).tolist() == [1]


def test_beam_size_one_equals_greedy(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    for prompt in ([1, 2, 3], [9]):
        greedy = model.generate([prompt], 12, temperature=0)[0]
        assert model.beam_search(prompt, beam_size=1, max_new_tokens=12) == greedy
        stop = greedy[5]
        assert model.beam_search(prompt, beam_size=1, max_new_tokens=12, stop_tokens=[stop]) == \
            model.generate([prompt], 12, temperature=0, stop_tokens=[stop])[0]


def test_wide_beam_finds_the_most_probable_sequence():
    """With beam_size = V^2 the search over 3 tokens is exhaustive: it must return the argmax of
    the joint probability, found here by scoring all V^3 continuations."""
    cfg = gpt.GPTConfig(vocab_size=6, block_size=16, n_layer=1, n_head=2, n_embd=16,
                        tie_embeddings=False)
    model = make_model(cfg, seed=17)
    with torch.no_grad():
        model.lm_head.weight.mul_(5)  # sharper distributions; with this seed greedy is not optimal
    prompt = [1, 2]
    seqs = torch.cartesian_prod(*[torch.arange(6)] * 3)  # (216, 3)
    logp, _ = gpt.completion_logprobs(model, [prompt] * len(seqs), seqs.tolist())
    best = seqs[logp.sum(-1).argmax()].tolist()
    assert model.beam_search(prompt, beam_size=36, max_new_tokens=3) == best
    assert model.generate([prompt], 3, temperature=0)[0] != best  # search differs from greedy
    assert model.beam_search(prompt, beam_size=2, max_new_tokens=3) != best  # a narrow beam misses


def test_wide_beam_with_stop_token_and_length_penalty_matches_brute_force():
    """V=4 with stop token 0, 3 new tokens, beam 36 = 3^2 live beams x 4 tokens: every candidate
    of every step is kept, so the search is exact. The answer must be the best of all 40 possible
    hypotheses by log p / len^length_penalty: finished ones (ending in the stop token) and the
    ones still live at the length limit, ranked together as in Hugging Face's finalize."""
    V = 4
    N = 3
    stop = 0
    winners = set()
    hyps = [list(s) for n in range(1, N + 1) for s in itertools.product(range(V), repeat=n)
            if stop not in s[:-1] and (s[-1] == stop or n == N)]
    lengths = torch.tensor([len(h) for h in hyps], dtype=torch.float64)
    for seed in range(4):
        cfg = gpt.GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=16,
                            tie_embeddings=False)
        model = make_model(cfg, seed=seed)
        with torch.no_grad():
            model.lm_head.weight.mul_(5)
        logp, _ = gpt.completion_logprobs(model, [[1, 2]] * len(hyps), hyps)
        for length_penalty in (0.5, 2.0):
            best = hyps[(logp.sum(-1) / lengths ** length_penalty).argmax()]
            assert model.beam_search([1, 2], 36, N, [stop], length_penalty) == best
            winners.add("finished" if best[-1] == stop else "live")
    assert winners == {"finished", "live"}  # both kinds win somewhere, so both are compared


def test_speculative_greedy_equals_target_greedy(tiny_gpt_config):
    target = make_model(tiny_gpt_config, seed=0)
    draft = make_model(tiny_gpt_config, seed=1)
    for k in (1, 3, 5):
        out, stats = gpt.speculative_generate(target, draft, [1, 2, 3], 25, k=k, temperature=0)
        assert out == target.generate([[1, 2, 3]], 25, temperature=0)[0]
        assert 0 <= stats["accepted"] <= stats["drafted"]
    same, stats = gpt.speculative_generate(target, target, [1, 2, 3], 25, k=4, temperature=0)
    assert stats["acceptance"] == 1.0
    assert stats["target_calls"] == 5  # 4 drafted + 1 free token per call


def test_speculative_decoding_stops_at_an_accepted_stop_token(tiny_gpt_config):
    """Draft = target at temperature 0: every drafted token is accepted and each target call
    yields k drafted tokens + 1 free one. To emit tokens 0..j, where token j is the first stop,
    takes ceil((j + 1) / (k + 1)) calls and no more; the free token of the last call is not
    needed when the stop was drafted (j % (k + 1) != k)."""
    cfg = gpt.GPTConfig(**{**tiny_gpt_config.__dict__, "tie_embeddings": False})
    model = make_model(cfg, seed=1)
    k = 4
    with torch.no_grad():
        model.lm_head.weight.mul_(5)  # sharper, so greedy writes many distinct tokens, not one
    greedy = model.generate([[1, 2, 3]], 25, temperature=0)[0]
    firsts = [j for j, t in enumerate(greedy) if t not in greedy[:j]]
    assert any(j % (k + 1) != k for j in firsts[1:])  # some stop falls mid-block after call 1
    for j in firsts:
        out, stats = gpt.speculative_generate(model, model, [1, 2, 3], 25, k=k, temperature=0,
                                              stop_tokens=[greedy[j]])
        assert out == greedy[:j + 1]
        calls = math.ceil((j + 1) / (k + 1))
        free = calls if j % (k + 1) == k else calls - 1
        assert stats["target_calls"] == calls
        assert stats["drafted"] == stats["accepted"] == j + 1 - free


def exact_joint(model, prompt, n, V):
    """p(x_1..x_n | prompt) for every sequence, from the target alone."""
    seqs = torch.cartesian_prod(*[torch.arange(V)] * n)
    logp, _ = gpt.completion_logprobs(model, [prompt] * len(seqs), seqs.tolist())
    return {tuple(s.tolist()): p for s, p in zip(seqs, logp.sum(-1).exp().tolist())}


def chi_square(counts, probs, n):
    """Pearson's statistic and its degrees of freedom; the cells expected fewer than 5 times are
    pooled into one, the usual rule for the chi-square approximation to hold."""
    rare = [s for s, p in probs.items() if n * p < 5]
    cells = [[s] for s in probs if s not in rare] + ([rare] if rare else [])
    observed = [sum(counts.get(s, 0) for s in cell) for cell in cells]
    expected = [n * sum(probs[s] for s in cell) for cell in cells]
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected)), len(cells) - 1


def test_speculative_sampling_preserves_the_target_distribution():
    """Pearson's chi-square of 500 speculative samples of 3 tokens against the target's exact
    joint distribution. The draft is uniform, so it is rejected often and the residual
    norm(max(0, p - q)) is drawn from often. With the accept test u < p/q replaced by u < p or
    u < q/p, or the residual by p or q, or every draft token kept, the statistic exceeds the bound
    below (checked by hand: 53.7 and more); the draft's own samples must fail it too."""
    cfg = gpt.GPTConfig(vocab_size=3, block_size=16, n_layer=1, n_head=2, n_embd=16)
    target = make_model(cfg, seed=0)
    draft = make_model(cfg, seed=1)
    with torch.no_grad():
        target.lm_head.weight.mul_(6)  # peaked enough that p and norm(max(0, p - q)) differ
        draft.lm_head.weight.zero_()  # tied to wte: every logit is 0, q = 1/3
    prompt = [1, 2]
    n = 500
    exact = exact_joint(target, prompt, 3, 3)
    g = torch.Generator().manual_seed(0)
    counts = collections.Counter()
    accepted = 0
    drafted = 0
    for _ in range(n):
        out, stats = gpt.speculative_generate(target, draft, prompt, 3, k=2, temperature=1.0,
                                              generator=g)
        counts[tuple(out)] += 1
        accepted += stats["accepted"]
        drafted += stats["drafted"]
    assert 0.2 < accepted / drafted < 0.95, "the draft must be wrong often enough to reject"
    statistic, df = chi_square(counts, exact, n)
    assert df == 9 and statistic < 27.88  # chi2(9)'s 99.9% quantile, from standard tables
    draft_samples = draft.generate([prompt] * n, 3, generator=g)
    draft_statistic, _ = chi_square(collections.Counter(tuple(o) for o in draft_samples), exact, n)
    assert draft_statistic > 27.88


def test_generation_rejects_prompts_longer_than_the_context(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    with pytest.raises(ValueError, match="exceeds block_size=48"):
        model.generate([[1] * 40], 10)
    with pytest.raises(ValueError, match="longer than block_size=48"):
        model(torch.ones(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([[]], 3)


# ----------------------------------------------------------------------------- log-probs

def test_completion_logprobs_unchanged_by_left_padding_and_pad_equal_to_eos(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    eos = 7
    prompts, completions = [[1, 2, 3], [4], [5, 6]], [[8, 9, eos], [eos], [10, 11, 12, 13]]
    logp, mask = gpt.completion_logprobs(model, prompts, completions, pad_id=eos)
    wider, _ = gpt.completion_logprobs(model, prompts, completions, pad_id=eos, prompt_width=9)
    torch.testing.assert_close(logp, wider, rtol=1e-12, atol=1e-12)
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False], [True] * 4]
    for row, (p, c) in enumerate(zip(prompts, completions)):  # each pair alone, no padding at all
        logits, _ = model(torch.tensor([p + c]))
        logp_all = torch.log_softmax(logits[0, len(p) - 1:-1], -1)
        direct = logp_all.gather(-1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(logp[row, :len(c)], direct, rtol=1e-12, atol=1e-12)
        assert (logp[row, len(c):] == 0).all()


# ----------------------------------------------------------------------------- tokenizer

def test_train_bpe_worked_example():
    # "aaabdaaabac" is one chunk. (a,a) occurs 4 times -> 256 = "aa". Then (256,a) and (a,b) tie
    # at 2; ties go to the lexicographically greater pair of byte strings, ("aa","a") > ("a","b"),
    # -> 257 = "aaa". Then (257,b) x2 -> 258 = "aaab", leaving [258 d 258 a c], whose four pairs
    # occur once each: ("d","aaab") is the greatest, so 259 = "daaab". Ranking ties by token ids
    # instead would pick (258,d) = "aaabd", since 258 > every byte.
    ranks = gpt.train_bpe("aaabdaaabac", 260)
    new = sorted((r, b) for b, r in ranks.items() if r >= 256)
    assert new == [(256, b"aa"), (257, b"aaa"), (258, b"aaab"), (259, b"daaab")]
    tok = gpt.Tokenizer(ranks, gpt.SPLIT_PATTERN)
    assert tok.encode("aaabdaaabac") == [258, 259, 97, 99]


def test_bpe_round_trips_unicode_and_covers_every_byte():
    tok = gpt.Tokenizer(gpt.train_bpe(gpt.embedded_corpus()[:50_000], 400), gpt.SPLIT_PATTERN)
    rng = random.Random(0)
    pools = ["abc xyz", "éèàü ßñ", "日本語テキスト", "😀🚀👍🏽", "\t\n\r  \x00\x7f",
             "'s'll'VE 123_456 ..."]
    for _ in range(200):
        text = "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 40)))
        text += "".join(chr(rng.choice([rng.randint(32, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                        for _ in range(3))
        assert tok.decode(tok.encode(text)) == text
    for b in range(256):  # every single byte is a token, so any byte string can be produced
        assert tok.decode_bytes([tok.ranks[bytes([b])]]) == bytes([b])
    assert tok.n_vocab == 400 + len(gpt.SPECIAL_TOKENS)


def test_special_tokens_only_when_allowed():
    tok = gpt.Tokenizer.from_spec("byte", "hello")
    user = tok.special("<|user|>")
    assert tok.encode("<|user|>hi", allow_special=True) == [user, ord("h"), ord("i")]
    assert tok.encode("<|user|>hi") == list(b"<|user|>hi")  # text from users stays text
    assert tok.eot_id == 256 and tok.model_vocab_size == 320
    assert tok.decode([tok.special("<|assistant|>")]) == "<|assistant|>"


def test_tokenizer_state_dict_round_trip():
    tok = gpt.Tokenizer.from_spec("bpe", gpt.embedded_corpus()[:30_000], vocab_size=300)
    again = gpt.Tokenizer.from_state_dict(tok.state_dict())
    text = gpt.embedded_corpus()[30_000:32_000]
    assert again.encode(text) == tok.encode(text) and again.pattern == tok.pattern


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_DATA, "gpt2.tiktoken")),
                    reason="no shared gpt2.tiktoken")
def test_gpt2_ranks_file_matches_known_gpt2_ids():
    tok = gpt.Tokenizer.from_spec(os.path.join(SHARED_DATA, "gpt2.tiktoken"))
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's published ids for this string
    assert tok.eot_id == 50256


def test_unknown_tokenizer_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer"):
        gpt.Tokenizer.from_spec("sentencepiece")
    with pytest.raises(FileNotFoundError, match="missing.tiktoken"):
        gpt.Tokenizer.from_spec(str(tmp_path / "missing.tiktoken"))
    with pytest.raises(ValueError, match="corpus is empty"):
        gpt.Tokenizer.from_spec("bpe", "")


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path, tiny_gpt_config):
    model = make_model(tiny_gpt_config, dtype=torch.float32)
    tok = gpt.Tokenizer.from_spec("byte", "abc")
    path = str(tmp_path / "ckpt.pt")
    gpt.save_checkpoint(path, model, tok, step=7, config=tiny_gpt_config)
    loaded, tok2, ckpt = gpt.load_model(path)
    idx = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
    assert ckpt["step"] == 7 and tok2.encode("hi <|end|>") == tok.encode("hi <|end|>")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # the tie survives loading


def test_a_failed_save_never_clobbers_the_old_checkpoint(tmp_path, tiny_gpt_config, monkeypatch):
    model = make_model(tiny_gpt_config, dtype=torch.float32)
    tok = gpt.Tokenizer.from_spec("byte", "abc")
    path = str(tmp_path / "ckpt.pt")
    gpt.save_checkpoint(path, model, tok, step=1)
    before = open(path, "rb").read()

    def crash(obj, f):
        open(f, "wb").write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        gpt.save_checkpoint(path, model, tok, step=2)
    assert open(path, "rb").read() == before


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        gpt.load_checkpoint(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        gpt.load_checkpoint(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="lacks"):
        gpt.load_checkpoint(str(other))


# ----------------------------------------------------------------------------- GPT-2 weights

def gpt2_reference(sd, idx, n_head, eps):
    """GPT-2 from its paper and the Hugging Face layout, in float64: Conv1D is x @ W + b."""
    W = {k: v.double() for k, v in sd.items()}
    T = idx.size(1)

    def ln(x, p):
        return F.layer_norm(x, x.shape[-1:], W[p + ".weight"], W[p + ".bias"], eps)
    x = W["transformer.wte.weight"][idx[0]] + W["transformer.wpe.weight"][:T]
    n_layer = 1 + max(int(k.split(".")[2]) for k in W if ".h." in k)
    for l in range(n_layer):
        p = f"transformer.h.{l}."
        qkv = ln(x, p + "ln_1") @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]
        q, k, v = qkv.chunk(3, -1)
        hd = q.size(-1) // n_head
        q, k, v = (t.view(T, n_head, hd).transpose(0, 1) for t in (q, k, v))
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        att = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(future, -math.inf)
        y = (torch.softmax(att, -1) @ v).transpose(0, 1).reshape(T, -1)
        x = x + y @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = ln(x, p + "ln_2") @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"]
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))  # GELU
        x = x + h @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    return ln(x, "transformer.ln_f") @ W["transformer.wte.weight"].T


def gpt2_state_dict(C, V, T_max, L):
    """Random weights in the layout of Hugging Face's GPT2LMHeadModel.state_dict()."""
    torch.manual_seed(0)
    sd = {"transformer.wte.weight": torch.randn(V, C) * 0.1,
          "transformer.wpe.weight": torch.randn(T_max, C) * 0.1,
          "transformer.ln_f.weight": 1 + 0.1 * torch.randn(C),
          "transformer.ln_f.bias": 0.1 * torch.randn(C)}
    for l in range(L):
        p = f"transformer.h.{l}."
        for name, shape in [("ln_1", (C,)), ("ln_2", (C,))]:
            sd[p + name + ".weight"] = 1 + 0.1 * torch.randn(shape)
            sd[p + name + ".bias"] = 0.1 * torch.randn(shape)
        for name, (i, o) in [("attn.c_attn", (C, 3 * C)), ("attn.c_proj", (C, C)),
                             ("mlp.c_fc", (C, 4 * C)), ("mlp.c_proj", (4 * C, C))]:
            sd[p + name + ".weight"] = 0.05 * torch.randn(i, o)
            sd[p + name + ".bias"] = 0.05 * torch.randn(o)
        sd[p + "attn.bias"] = torch.tril(torch.ones(T_max, T_max))[None, None]  # HF's mask buffer
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


# (width, heads, epsilon): 64-wide heads as in every released GPT-2, then 32-wide heads, which a
# head count guessed from the width (n_embd / 64) would get wrong, with a non-default epsilon.
@pytest.mark.parametrize("C, n_head, eps", [(128, 2, 1e-5), (64, 2, 1e-3)])
def test_from_pretrained_gpt2_reproduces_gpt2(C, n_head, eps):
    V = 100
    T_max = 32
    L = 2
    sd = gpt2_state_dict(C, V, T_max, L)
    config = {"n_head": n_head, "n_layer": L, "n_embd": C, "n_positions": T_max, "vocab_size": V,
              "layer_norm_epsilon": eps}  # the fields of a GPT-2 config.json that shape the model
    model = gpt.from_pretrained_gpt2(sd, config).double().eval()
    assert model.config.n_head == n_head and model.config.block_size == T_max
    idx = torch.randint(0, V, (1, 20))
    expected = gpt2_reference(sd, idx, n_head, eps)
    torch.testing.assert_close(model(idx)[0][0], expected, rtol=1e-10, atol=1e-10)


def test_from_pretrained_gpt2_without_a_config_is_an_error():
    """The head count is not in the weights: loading must ask for config.json, never guess."""
    sd = gpt2_state_dict(64, 100, 32, 1)
    with pytest.raises(ValueError, match="config.json"):
        gpt.from_pretrained_gpt2(sd, None)
    with pytest.raises(ValueError, match="n_head"):
        gpt.from_pretrained_gpt2(sd, {"n_layer": 1, "n_embd": 64, "n_positions": 32,
                                      "vocab_size": 100, "layer_norm_epsilon": 1e-5})


# ----------------------------------------------------------------------------- config and CLI

def test_bad_model_configs_name_the_problem():
    with pytest.raises(ValueError, match="n_embd=100 is not divisible by n_head=3"):
        gpt.GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="n_head=6 is not divisible by n_kv_head=4"):
        gpt.GPTConfig(n_embd=96, n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="mlp='relu'"):
        gpt.GPTConfig(mlp="relu")


def test_parse_args(capsys, monkeypatch):
    """One behaviour for every script: --field=value, a bare boolean flag, hyphens or
    underscores, argparse's errors (exit 2), and --help with the purpose and every comment."""
    cfg = gpt.parse_args(gpt.SampleConfig, ["--max_new_tokens=5", "--chat=false", "--prompt=a=b"])
    assert (cfg.max_new_tokens, cfg.chat, cfg.prompt) == (5, False, "a=b")
    assert gpt.parse_args(gpt.SampleConfig, ["--top-p=0.5", "--chat", "--ckpt=gpt.py"]).chat
    for bad in (["--max_new=5"], ["--max_new_tokens=many"], ["--chat=maybe"], ["--top_p=0"],
                ["--chat"], ["--ckpt=/no/such/file.pt"]):
        with pytest.raises(SystemExit) as e:
            gpt.parse_args(gpt.SampleConfig, bad)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --max_new=5" in err and "invalid int value: 'many'" in err
    assert "--ckpt=/no/such/file.pt does not exist" in err
    with pytest.raises(SystemExit):
        gpt.parse_args(gpt.SampleConfig, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert gpt.__doc__.split("\n")[0] in out
    top_p_help = "sample from the smallest set of tokens holding this much mass (1 = all)"
    assert f"{top_p_help} (default: 1.0)" in out
    monkeypatch.setattr(gpt, "pick_device", lambda name: "cuda")  # the GPU defaults apply on CUDA
    assert gpt.parse_args(gpt.SampleConfig, [], gpu=dict(steps=9, top_k=5)).steps == 9
    assert gpt.parse_args(gpt.SampleConfig, ["--steps=3"], gpu=dict(steps=9)).steps == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_here_is_a_one_line_error():
    with pytest.raises(ValueError, match="--device=cuda, but this machine has only .*cpu"):
        gpt.pick_device("cuda")
    assert gpt.pick_device("cpu") == "cpu"


def tiny_checkpoint(path, block_size=96, steps=20):
    cfg = gpt.GPTConfig(vocab_size=320, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    text = gpt.embedded_corpus()[:20_000]
    tok = gpt.Tokenizer.from_spec("byte", text)
    model = gpt.train_tiny(cfg, text, tok, steps=steps, device="cpu")
    gpt.save_checkpoint(str(path), model, tok)
    return model, tok


def test_main_demo_smoke(capsys):
    """Without --ckpt: a tiny model and its draft, a sample from every decoding method."""
    gpt.main(gpt.SampleConfig(max_new_tokens=12, steps=4, device="cpu"))
    out = capsys.readouterr().out
    for name in ("greedy", "top-p 0.9", "beam search", "speculative", "only [a-z ] allowed",
                 "tok/s without the KV cache"):
        assert name in out


def test_main_samples_from_a_checkpoint_and_trains_nothing(tmp_path, capsys, monkeypatch):
    model, tok = tiny_checkpoint(tmp_path / "ckpt.pt")
    monkeypatch.setattr(gpt, "train_tiny", None)  # calling it would fail the test
    gpt.main(gpt.SampleConfig(ckpt=str(tmp_path / "ckpt.pt"), prompt="The ", num_samples=3,
                              max_new_tokens=10, temperature=0, device="cpu"))
    greedy = "The " + tok.decode(model.generate([tok.encode("The ")], 10, temperature=0)[0])
    assert capsys.readouterr().out.split("\n", 1)[1] == f"{greedy}\n---\n" * 3


def test_chat_reads_user_turns_from_stdin_and_keeps_the_history(tmp_path, capsys, monkeypatch):
    """Greedy replies, streamed, equal generate() on the conversation rendered by hand; the
    oldest exchange goes when the conversation outgrows the context."""
    model, tok = tiny_checkpoint(tmp_path / "ckpt.pt", block_size=64)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\nhow are you\n"))
    gpt.main(gpt.SampleConfig(ckpt=str(tmp_path / "ckpt.pt"), chat=True, max_new_tokens=8,
                              temperature=0, device="cpu"))
    lines = capsys.readouterr().out.splitlines()[1:]
    printed = [line.removeprefix("assistant: ") for line in lines]
    end = tok.special("<|end|>")
    history = []
    expected = []
    for turn in ("hi", "how are you"):
        history.append({"role": "user", "content": turn})
        prompt = gpt.render_chat(history, tok, add_generation_prompt=True)
        if len(prompt) + 8 > 64:  # 3 + 2 + 9 + 3 + 12 tokens and 8 to come: the first turns go
            history = history[2:]
            prompt = gpt.render_chat(history, tok, add_generation_prompt=True)
        reply = model.generate([prompt], 8, temperature=0, stop_tokens=(end,))[0]
        reply = tok.decode([t for t in reply if t != end])
        expected.append(reply)
        history.append({"role": "assistant", "content": reply})
    assert printed == expected


def test_on_token_sees_every_generated_token(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    seen = []
    out = model.generate([[1, 2, 3], [4]], 6, temperature=0, on_token=lambda t: seen.append(t))
    assert [o for o in out] == torch.stack(seen, 1).tolist()


def test_chat_needs_the_chat_tokens_and_enough_context():
    tok = gpt.Tokenizer.from_spec("byte", "abc")
    short = gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=16, n_embd=32))
    with pytest.raises(ValueError, match="context is 16 tokens; this task needs 64"):
        gpt.check_chat_model(short, tok, 64)
    no_rows = gpt.GPT(gpt.GPTConfig(vocab_size=256, block_size=64, n_embd=32))  # bytes only
    with pytest.raises(ValueError, match="no rows for the chat tokens"):
        gpt.check_chat_model(no_rows, tok, 64)


def test_a_garbage_checkpoint_is_our_one_line_error_alone(tmp_path, capsys):
    """torch's own message advises weights_only=False, unsafe and beside the point: not shown."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(SystemExit) as e:
        gpt.main(gpt.SampleConfig(ckpt=str(bad), device="cpu"))
    assert str(e.value).startswith("error: ") and "weights_only" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_read_text_names_the_file_and_the_fault(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text \(byte 3"):
        gpt.read_text(str(latin1))
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    with pytest.raises(ValueError, match="the corpus is empty: .*empty.txt"):
        gpt.read_text(str(empty))
    with pytest.raises(SystemExit, match="error: .*No such file"):
        with gpt.bad_input():
            gpt.read_text(str(tmp_path / "missing.txt"))
    (tmp_path / "ok.txt").write_text("héllo", encoding="utf-8")
    assert gpt.read_text(str(tmp_path / "ok.txt")) == "héllo"


def test_run_log_starts_fresh_and_a_resume_continues_its_own_lines(tmp_path):
    log = gpt.RunLog(str(tmp_path))
    for step in range(4):
        log(step=step, loss=1.0 / (step + 1))
    assert len(open(log.path).readlines()) == 4
    log = gpt.RunLog(str(tmp_path), step=2)  # resumed at step 2: steps 2 and 3 are redone
    log(step=2, loss=9.0)
    steps = [json.loads(line)["step"] for line in open(log.path)]
    assert steps == [0, 1, 2] and json.loads(open(log.path).readlines()[-1])["loss"] == 9.0
    gpt.RunLog(str(tmp_path))  # a fresh run: an empty log
    assert open(log.path).read() == ""


def test_plot_without_matplotlib_is_a_note_and_with_it_a_png(tmp_path, capsys, monkeypatch):
    assert gpt.pyplot(False) is None
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert gpt.pyplot(True) is None
    assert "--plot needs matplotlib" in capsys.readouterr().out
    calls = []

    class Recorder:  # stands in for matplotlib.pyplot: records what would be drawn
        def __getattr__(self, name):
            return lambda *args, **kwargs: calls.append((name, args))
    log = gpt.RunLog(str(tmp_path))
    log(step=0, loss=2.0)
    log(step=5, loss=1.0, acc=0.5)
    gpt.plot_curves(Recorder(), log, ["loss", "acc"], str(tmp_path / "x.png"))
    assert ("plot", ((0, 5), (2.0, 1.0))) in calls and ("plot", ((5,), (0.5,))) in calls
    assert ("savefig", (str(tmp_path / "x.png"),)) in calls


def test_rng_state_restores_every_generator():
    g = torch.Generator().manual_seed(3)
    state = gpt.rng_state(g)
    first = (random.random(), torch.rand(3), torch.rand(2, generator=g))
    gpt.set_rng_state(state, g)
    again = (random.random(), torch.rand(3), torch.rand(2, generator=g))
    assert first[0] == again[0]
    assert torch.equal(first[1], again[1])
    assert torch.equal(first[2], again[2])


# ------------------------------------------------------------------------ a Hugging Face folder

def write_safetensors(path, tensors):
    """The format as its specification gives it: an unsigned little-endian 8-byte header length,
    a JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}} and the bytes, each
    tensor's offsets counted from the start of the byte buffer."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.float64: "F64"}
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_read_safetensors_reads_every_dtype_and_shape(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(5).half(),
               "c": torch.randn(2, 2, 2).bfloat16(), "d": torch.arange(7),
               "e": torch.randn(1, 3).double()}
    write_safetensors(tmp_path / "x.safetensors", tensors)
    back = gpt.read_safetensors(str(tmp_path / "x.safetensors"))
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)


def byte_encoder_by_spec():
    """GPT-2's bytes_to_unicode, from its description: the printable bytes "!".."~", "¡".."¬" and
    "®".."ÿ" stand for themselves, every other byte for chr(256 + k), k counting them in order."""
    ascii_printable = "".join(map(chr, range(ord("!"), ord("~") + 1)))
    latin1_printable = "¡¢£¤¥¦§¨©ª«¬" + "".join(map(chr, range(ord("®"), ord("ÿ") + 1)))
    printable = [b for b in range(256) if chr(b) in ascii_printable + latin1_printable]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


def write_hf_gpt2_folder(folder, weights="safetensors"):
    """A tiny GPT-2 folder as Hugging Face lays it out: config.json, the weights, vocab.json (256
    byte tokens in GPT-2's order, then one token per merge) and merges.txt."""
    folder.mkdir()
    enc = byte_encoder_by_spec()
    order = sorted(range(256), key=lambda b: (enc[b] != chr(b), ord(enc[b])))
    vocab = {enc[b]: i for i, b in enumerate(order)}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {"n_head": 2, "n_layer": 2, "n_embd": 64, "n_positions": 32, "vocab_size": len(vocab),
              "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "n_inner": None}
    (folder / "config.json").write_text(json.dumps(config))
    sd = gpt2_state_dict(64, len(vocab), 32, 2)
    if weights == "safetensors":
        write_safetensors(folder / "model.safetensors", {k: v for k, v in sd.items()
                                                          if k != "lm_head.weight"})
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    return sd, config, vocab


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_from_pretrained_loads_a_hugging_face_folder(tmp_path, weights):
    sd, config, vocab = write_hf_gpt2_folder(tmp_path / "gpt2", weights)
    model, tok = gpt.from_pretrained(str(tmp_path / "gpt2"))
    reference = gpt.from_pretrained_gpt2(sd, config)
    idx = torch.randint(0, config["vocab_size"], (2, 12))
    torch.testing.assert_close(model(idx)[0], reference(idx)[0], rtol=0, atol=0)
    # "hello world": hello -> he + ll + o (merges 1, 2, 3 in order), " world" -> Ġw + or + l + d
    ids = [vocab[t] for t in ("hell", "o", "Ġw", "or", "l", "d")]
    assert tok.encode("hello world") == ids and tok.decode(ids) == "hello world"
    assert tok.eot_id == vocab["<|endoftext|>"]
    assert gpt.load_model(str(tmp_path / "gpt2"))[1].encode("hello") == ids[:2]


def test_a_folder_without_its_files_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="needs config.json, vocab.json, merges.txt"):
        gpt.from_pretrained(str(tmp_path / "empty"))


def test_input_embeddings_stand_in_for_tokens(tiny_gpt_config):
    """hidden(embeds=...) is the path a VLM uses to feed image patches; fed the token
    embeddings themselves it must equal the ordinary forward."""
    model = make_model(tiny_gpt_config)
    idx = torch.randint(0, 64, (2, 11))
    from_embeds = model.hidden(None, embeds=model.transformer.wte(idx))
    torch.testing.assert_close(from_embeds, model.hidden(idx), rtol=0, atol=0)


def test_completion_loss_is_the_masked_mean_nll(tiny_gpt_config):
    model = make_model(tiny_gpt_config)
    prompts, completions = [[1, 2], [3]], [[4, 5, 6], [7]]
    logp, mask = gpt.completion_logprobs(model, prompts, completions)
    expected = -(logp[0, 0] + logp[0, 1] + logp[0, 2] + logp[1, 0]) / 4  # 4 real completion tokens
    torch.testing.assert_close(gpt.completion_loss(model, prompts, completions), expected)


def test_finetune_learns_a_mapping(tiny_gpt_config):
    """Prompt [a, b] -> completion [(a + b) % 16, 0]: learnt to 100% greedy accuracy."""
    model = make_model(tiny_gpt_config, dtype=torch.float32)
    pairs = [([a + 16, b + 32], [(a + b) % 16, 0]) for a in range(8) for b in range(8)]
    gpt.finetune(model, pairs, steps=400, lr=1e-2, batch_size=32)
    out = model.generate([p for p, _ in pairs], 2, temperature=0)
    assert sum(o == c for o, (_, c) in zip(out, pairs)) == len(pairs)


def test_finetune_clips_the_gradient_norm_as_torch_does(tiny_gpt_config):
    """Two steps with grad_clip=0.05 against AdamW after torch's clip_grad_norm_ by hand (one
    pair, so every batch is known); the gradient's norm is far above 0.05, so clipping acts."""
    model = make_model(tiny_gpt_config, dtype=torch.float32)
    reference, unclipped = copy.deepcopy(model), copy.deepcopy(model)
    pairs = [([1, 2, 3], [4, 5])]
    gpt.finetune(model, pairs, steps=2, lr=1e-2, batch_size=4, grad_clip=0.05)
    gpt.finetune(unclipped, pairs, steps=2, lr=1e-2, batch_size=4)
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.0)
    norms = []
    for step in range(2):
        for group in opt.param_groups:
            group["lr"] = 1e-2 * 0.5 * (1 + math.cos(math.pi * step / 2))
        opt.zero_grad()
        gpt.completion_loss(reference, [[1, 2, 3]] * 4, [[4, 5]] * 4).backward()
        norms.append(torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05))
        opt.step()
    assert min(norms) > 0.5
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    # Adam's step ignores one overall scale, but not a different one at each step
    assert any(not torch.allclose(a, b) for a, b in zip(model.parameters(), unclipped.parameters()))


def test_best_time_runs_fn_repeats_times_and_returns_its_output_and_the_fastest_run():
    import time
    calls = []

    def fn():
        calls.append(None)
        time.sleep(0.02 if len(calls) == 1 else 0.0)  # the first run is the slow one
        return len(calls)
    out, seconds = gpt.best_time(fn, repeats=3)
    assert out == 3 and len(calls) == 3 and seconds < 0.015


def test_kv_cache_bench_smoke(capsys):
    """bench/gpt.py prints a row per length; both columns time the same greedy tokens."""
    spec = importlib.util.spec_from_file_location("bench_gpt", os.path.join(
        os.path.dirname(__file__), "..", "bench", "gpt.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(bench.BenchConfig(new_tokens="4,6", repeats=1, device="cpu"))
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["4", "6"] and all(r.endswith("x") for r in rows)


def test_finetune_resumes_bit_for_bit(tiny_gpt_config):
    """Stop after 7 of 15 steps, save what on_step offers, resume in a fresh model: the same
    weights as 15 steps in one go."""
    pairs = [([a + 16, b + 32], [(a + b) % 16, 0]) for a in range(8) for b in range(8)]
    whole = make_model(tiny_gpt_config, dtype=torch.float32)
    gpt.finetune(whole, pairs, steps=15, lr=1e-2, batch_size=8)
    part = make_model(tiny_gpt_config, dtype=torch.float32)
    saved = {}

    def stop_at_7(step, loss, state):
        if step == 7:
            saved.update(state(), weights={k: v.clone() for k, v in part.state_dict().items()})
            return True
    gpt.finetune(part, pairs, steps=15, lr=1e-2, batch_size=8, on_step=stop_at_7)
    fresh = make_model(tiny_gpt_config, dtype=torch.float32)
    fresh.load_state_dict(saved.pop("weights"))
    gpt.finetune(fresh, pairs, steps=15, lr=1e-2, batch_size=8, resume=saved)
    for k, v in whole.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_check_resume_refuses_other_scripts_and_other_settings():
    saved = {"config": dataclasses.asdict(gpt.SampleConfig(prompt="x", seed=3))}
    gpt.check_resume("ck.pt", saved, gpt.SampleConfig(prompt="x", seed=3, device="cpu"))
    with pytest.raises(ValueError,
                       match="ck.pt was saved with --prompt=x --seed=3: resume with those"):
        gpt.check_resume("ck.pt", saved, gpt.SampleConfig())
    with pytest.raises(ValueError, match="not saved by this script"):
        gpt.check_resume("ck.pt", {"config": {"lr": 1.0}}, gpt.SampleConfig())


def test_too_long_input_is_a_clear_error_even_with_a_bad_id(tiny_gpt_config):
    """The length check comes before the embedding lookup (on CUDA a bad id is a device assert)."""
    model = gpt.GPT(tiny_gpt_config)
    idx = torch.full((1, tiny_gpt_config.block_size + 1), tiny_gpt_config.vocab_size)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(idx)
