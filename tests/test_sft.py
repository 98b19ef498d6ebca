"""sft.py against independent references: hand-written token strings for the chat template,
gpt.py's own forward pass and completion_loss for packing, the LoRA formula written out in
float64, the NF4 table published with QLoRA and a brute-force nearest-level search, and a
single process for DDP."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import gpt
import sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
    return gpt.Tokenizer.from_spec("byte", "a")  # bytes 0-255, then the special tokens


def make_model(cfg, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return gpt.GPT(cfg).to(dtype).eval()


def chat_example(tok, instruction, answer):
    messages = gpt.chat(instruction, answer)
    return gpt.render_chat(messages, tok), gpt.loss_mask(messages, tok)


# ----------------------------------------------------------------------------- chat template

def test_loss_mask_covers_exactly_the_assistant_tokens(tok):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "France? <|end|>"},
                {"role": "assistant", "content": "Paris"}, {"role": "user", "content": "Italy?"},
                {"role": "assistant", "content": "Rome"}]
    ids, mask = gpt.render_chat(messages, tok), gpt.loss_mask(messages, tok)
    assert len(ids) == len(mask)
    assert tok.decode(ids) == ("<|system|>Be brief.<|end|><|user|>France? <|end|><|end|>"
                               "<|assistant|>Paris<|end|><|user|>Italy?<|end|>"
                               "<|assistant|>Rome<|end|>")
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "Paris<|end|>Rome<|end|>"
    # the "<|end|>" the user typed is 7 ordinary bytes, not the special token: one real <|end|>
    # per message
    assert ids.count(tok.special("<|end|>")) == len(messages)
    prompt = gpt.render_chat(messages[:2], tok, add_generation_prompt=True)
    assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)])
    with pytest.raises(ValueError, match="role"):
        gpt.render_chat([{"role": "bot", "content": "hi"}], tok)


def test_pack_targets_are_the_next_assistant_tokens(tok):
    examples = [chat_example(tok, f"reverse {w}", w[::-1]) for w in ("cat", "horse", "ox", "zebra")]
    rows = sft.pack(examples, block_size=48)
    assert sum(len(r[0]) for r in rows) == sum(len(ids) - 1 for ids, _ in examples)
    assert all(len(r[0]) <= 48 for r in rows)
    inputs, targets, doc = rows[0]
    first = [t for t, d in zip(targets, doc) if d == 0 and t != -1]
    assert tok.decode(first) == "tac<|end|>"  # the answer "cat"[::-1] and its <|end|>, nothing else
    with pytest.raises(ValueError, match="block_size"):
        sft.pack(examples, block_size=10)


# ----------------------------------------------------------------------------- packing

@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_packing_does_not_leak_attention(tiny_gpt_config, tok, pos):
    """Example 2's logits in a packed row do not depend on example 1, and equal example 2 run
    alone through gpt.GPT.forward (positions restart, attention stays inside the example)."""
    cfg = dataclasses.replace(tiny_gpt_config, vocab_size=tok.model_vocab_size, pos=pos)
    model = make_model(cfg)
    second = chat_example(tok, "sort ab", "ab")
    logits_of_second = []
    for first in (chat_example(tok, "sort dcb", "bcd"),
                  chat_example(tok, "reverse hello", "olleh")):
        idx, _, doc = sft.collate(sft.pack([first, second], cfg.block_size), "cpu")
        assert idx.size(0) == 1  # both examples share one row
        logits = sft.PackedGPT(model)(idx, doc)
        logits_of_second.append(logits[0, doc[0] == 1])
    torch.testing.assert_close(logits_of_second[0], logits_of_second[1], rtol=0, atol=1e-12)
    alone, _ = model(torch.tensor([second[0][:-1]]))
    torch.testing.assert_close(logits_of_second[0], alone[0], rtol=0, atol=1e-12)


def test_packed_loss_equals_gpt_completion_loss(tiny_gpt_config, tok):
    """The packed assistant-token loss is gpt.completion_loss over the same examples unpacked."""
    model = make_model(dataclasses.replace(tiny_gpt_config, vocab_size=tok.model_vocab_size))
    data = [("reverse cat", "tac"), ("count abcd", "4"), ("upper ox", "OX")]
    idx, targets, doc = sft.collate(sft.pack([chat_example(tok, x, a) for x, a in data], 48), "cpu")
    logits = sft.PackedGPT(model)(idx, doc)
    packed = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
    prompts = [gpt.render_chat(gpt.chat(x), tok, add_generation_prompt=True) for x, _ in data]
    completions = [tok.encode(a) + [tok.special("<|end|>")] for _, a in data]
    unpacked = gpt.completion_loss(model, prompts, completions)
    torch.testing.assert_close(packed, unpacked, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- LoRA

def test_lora_starts_as_the_base_and_merges_exactly(tiny_gpt_config):
    base = make_model(tiny_gpt_config)
    model = sft.apply_lora(make_model(tiny_gpt_config), r=4, alpha=8)
    x = torch.randint(0, 64, (2, 12))
    assert torch.equal(model(x)[0], base(x)[0])  # B = 0: exactly the base
    # r (in + out) per adapted layer: c_attn 32->64, attn c_proj 32->32, c_fc 32->192,
    # mlp c_proj 96->32
    assert sft.trainable_params(model) == 2 * 4 * ((32 + 64) + (32 + 32) + (32 + 192) + (96 + 32))
    torch.manual_seed(1)
    for layer in [m for m in model.modules() if isinstance(m, sft.LoRALinear)]:
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    layer = model.transformer.h[0].attn.c_attn
    h = torch.randn(3, 32, dtype=torch.float64)
    expected = h @ (layer.weight + 8 / 4 * layer.lora_B @ layer.lora_A).T  # x (W + (alpha/r) B A)^T
    torch.testing.assert_close(layer(h), expected, rtol=1e-12, atol=1e-12)
    unmerged, w0 = model(x)[0], layer.weight.clone()
    assert not torch.allclose(unmerged, base(x)[0])
    merged = sft.merge_lora(model)(x)[0]
    torch.testing.assert_close(merged, unmerged, rtol=1e-10, atol=1e-10)
    sft.merge_lora(model, unmerge=True)
    torch.testing.assert_close(layer.weight, w0, rtol=0, atol=1e-14)
    torch.testing.assert_close(model(x)[0], unmerged, rtol=1e-10, atol=1e-10)


def test_only_the_adapters_learn(tiny_gpt_config):
    model = sft.apply_lora(make_model(tiny_gpt_config), r=2, alpha=2, targets=("c_fc",))
    x = torch.randint(0, 64, (2, 8))
    model(x, x)[1].backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {f"transformer.h.{i}.mlp.c_fc.lora_{m}" for i in range(2) for m in "AB"}
    with pytest.raises(ValueError, match="no Linear layer"):
        sft.apply_lora(make_model(tiny_gpt_config), r=2, alpha=2, targets=("q_proj",))


@pytest.mark.parametrize("tie", [True, False])
def test_lora_trains_the_adapters_and_only_the_special_token_rows(tiny_gpt_config, tok, tie):
    """Pretraining encodes ordinary text, so the base never fed in a chat special token (and as
    an output only learned never to predict one): those rows must learn, the other rows stay
    frozen as in standard LoRA (PEFT's trainable_token_indices). Counted by hand: r (in + out)
    for c_attn 32->64, attn c_proj 32->32, c_fc 32->192, mlp c_proj 96->32 at r = 4 in 2 layers,
    plus 7 special rows of 32, once more for an untied head (its <|end|> must learn to win)."""
    cfg = dataclasses.replace(tiny_gpt_config, vocab_size=tok.model_vocab_size, tie_embeddings=tie)
    base = make_model(cfg)
    model = sft.prepare(base, "lora", sft.SFTConfig(lora_r=4, lora_alpha=8), tok)
    assert sft.trainable_params(model) == 2 * 4 * (96 + 64 + 224 + 128) + 7 * 32 * (1 if tie else 2)
    ids = torch.tensor([gpt.render_chat(gpt.chat("first letter: ox", "o"), tok)])
    assert torch.equal(model(ids)[0], base(ids)[0])  # B = 0 and the rows start as the base's
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(ids[:, :-1], ids[:, 1:])[1].backward()
    opt.step()
    special = [tok.special(name) for name in gpt.SPECIAL_TOKENS]
    ordinary = torch.ones(cfg.vocab_size, dtype=torch.bool)
    ordinary[special] = False
    for new, old in [(model.transformer.wte.weight, base.transformer.wte.weight),
                     (model.lm_head.weight, base.lm_head.weight)]:
        assert torch.equal(new[ordinary], old[ordinary])  # frozen, exactly
        assert not torch.equal(new[tok.special("<|end|>")], old[tok.special("<|end|>")])
    assert torch.equal(model.transformer.wte.weight, model.lm_head.weight) == tie


# ----------------------------------------------------------------------------- NF4 and QLoRA

# NF4 as published with QLoRA (Dettmers et al. 2023, appendix E; the bitsandbytes NF4 table)
NF4_PAPER = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
             0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def test_nf4_levels_match_the_paper():
    torch.testing.assert_close(sft.NF4, torch.tensor(NF4_PAPER), rtol=0, atol=1e-6)


def double_quantised_absmax(q):
    """c'_b = e4m3 code * s_k + mean in float64 from the stored tensors: the reference decoder."""
    codes = q["absmax_codes"].double()
    codes = F.pad(codes, (0, -len(codes) % 256)).view(-1, 256)  # one row per fp32 scale s_k
    codes = (codes * q["absmax_scale"].double()[:, None]).flatten()[:len(q["absmax_codes"])]
    return codes + q["absmax_mean"].double()


def test_double_quantised_constants_are_e4m3_within_its_bound():
    """QLoRA's double quantisation (Dettmers et al. 2023): the absmax constants c_b, minus their
    mean m (kept in fp32), go to 8-bit floats in blocks of 256, each with an fp32 scale s_k that
    maps the block's largest |c_b - m| to 448, e4m3's largest value. e4m3 keeps 3 mantissa bits,
    so rounding to nearest errs by at most half a step: 2^-4 |x| for a normal x (in [2^e, 2^(e+1))
    the step is 2^(e-3)) and 2^-10 for a subnormal one (|x| < 2^-6, step 2^-9); |x| <= 448 never
    saturates. So |c_b - c'_b| <= s_k max(2^-4 |x_b|, 2^-10) with x_b = (c_b - m) / s_k exact."""
    torch.manual_seed(0)
    w = torch.randn(130, 300) * torch.logspace(-3, 0, 130)[:, None]  # constants over 3 decades
    q = sft.quantize_nf4(w)
    assert q["absmax_codes"].dtype == torch.float8_e4m3fn
    assert q["absmax_scale"].dtype == q["absmax_mean"].dtype == torch.float32
    c = F.pad(w.flatten(), (0, -w.numel() % 64)).view(-1, 64).abs().amax(1).double()  # 610 blocks
    m = q["absmax_mean"].double()
    torch.testing.assert_close(m, c.mean(), rtol=1e-6, atol=0)  # an fp32 mean of 610 numbers
    centred = F.pad(c - m, (0, -len(c) % 256)).view(-1, 256)  # 3 blocks of 256, the last padded
    s = q["absmax_scale"].double()
    torch.testing.assert_close(s, centred.abs().amax(1) / 448, rtol=1e-6, atol=0)
    s_b = s.repeat_interleave(256)[:len(c)]  # the scale of each constant's block
    bound = s_b * torch.maximum((c - m).abs() / s_b / 16, torch.tensor(2.0 ** -10))
    error = (c - double_quantised_absmax(q)).abs()
    assert (error <= bound * (1 + 1e-5)).all()  # 1e-5: fp32 rounding of c - m and of x, 2^-24 each
    assert (error / bound).max() > 0.5  # a real 8-bit float rounding, not a lossless copy


def test_nf4_round_trip_is_within_the_format_bound():
    """|w - w'| <= (largest NF4 gap / 2) * c_b + |c_b - c'_b| for every weight of block b, where
    c_b is its absmax and c'_b the double-quantised one; codes are the brute-force nearest level;
    dequantize_nf4 equals NF4_PAPER[code] * c'_b computed in float64."""
    torch.manual_seed(0)
    w = torch.randn(300, 100) * 0.02
    w[5, 7], w[200, 3] = 0.5, -0.3  # outliers: their blocks get coarse steps, the others do not
    q = sft.quantize_nf4(w)
    dequantized = sft.dequantize_nf4(q)
    error = (w - dequantized).abs().flatten()
    blocks = F.pad(w.flatten(), (0, -w.numel() % 64)).view(-1, 64)  # 468.75 blocks: padded
    c = blocks.abs().amax(1).double()
    c_dq = double_quantised_absmax(q)
    gap = (sft.NF4[1:] - sft.NF4[:-1]).max().double()
    bound = (gap / 2 * c + (c - c_dq).abs()).repeat_interleave(64)[:w.numel()]
    assert (error.double() <= bound * (1 + 1e-6)).all()
    assert error.max() > 0.25 * bound.max()  # a real 4-bit error, not a lossless copy
    distance = (blocks.double()[..., None] / c[:, None, None] - sft.NF4.double()).abs()
    nearest = distance.argmin(-1).flatten()
    codes = torch.stack([q["codes"] >> 4, q["codes"] & 15], -1).flatten().long()
    assert (codes == nearest).float().mean() > 0.999  # ties at exact midpoints may go either way
    reference = (torch.tensor(NF4_PAPER, dtype=torch.float64)[codes].view(-1, 64) * c_dq[:, None])
    # fp32 evaluation of code * s_k + m and of the product: a few roundings of 2^-24 times max c
    torch.testing.assert_close(dequantized.double().flatten(), reference.flatten()[:w.numel()],
                               rtol=0, atol=float(c.max()) * 2 ** -20)
    bits = 8 * sum(t.numel() * t.element_size() for k, t in q.items() if k != "shape") / w.numel()
    # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 blocks (+ padding)
    assert 4 + 8 / 64 < bits < 4.2


def test_qlora_freezes_the_base_in_4_bit(tiny_gpt_config):
    base = make_model(tiny_gpt_config, dtype=torch.float32)
    model = sft.apply_lora(base, r=4, alpha=8, quantize=True)
    layer = model.transformer.h[1].mlp.c_fc
    assert layer.weight is None and layer.nf4_codes.dtype == torch.uint8
    assert layer.nf4_codes.numel() == 32 * 192 // 2  # two 4-bit codes per byte
    # the same base, weights NF4-rounded by hand
    reference = make_model(tiny_gpt_config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name.startswith("transformer.h.") and name.endswith("weight") and p.dim() == 2:
                p.copy_(sft.dequantize_nf4(sft.quantize_nf4(p)))
    x = torch.randint(0, 64, (2, 12))
    torch.testing.assert_close(model(x)[0], reference(x)[0], rtol=1e-5, atol=1e-5)
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert sft.trainable_params(model) == sum(p.numel() for p in adapters)
    assert sft.weight_bytes(model) < sft.weight_bytes(reference) / 2
    with pytest.raises(ValueError, match="4-bit"):
        sft.merge_lora(model)


@pytest.mark.parametrize("quantize", [False, True])
def test_merged_state_is_a_plain_gpt_with_the_adapters_in(tiny_gpt_config, tmp_path, tok, quantize):
    """The checkpoint of a LoRA (or QLoRA) model is a plain gpt.GPT that gpt.load_model reads and
    that gives the adapted model's logits: W' = W + (alpha/r) B A, W dequantised for QLoRA."""
    cfg = dataclasses.replace(tiny_gpt_config, vocab_size=tok.model_vocab_size)
    model = sft.apply_lora(make_model(cfg), r=4, alpha=8, quantize=quantize)
    torch.manual_seed(1)
    for layer in [m for m in model.modules() if isinstance(m, sft.LoRALinear)]:
        torch.nn.init.normal_(layer.lora_B, std=0.1)  # a trained-looking, non-zero update
    path = str(tmp_path / "ckpt.pt")
    x = torch.randint(0, 64, (2, 12))
    expected = model(x)[0]
    assert not torch.allclose(expected, make_model(cfg)(x)[0])  # the adapters do change the logits
    for merge_first in [False] if quantize else [False, True]:  # main merges LoRA in place first
        if merge_first:
            sft.merge_lora(model)
        gpt.save_checkpoint(path, model, tok, model_state=sft.merged_state(model))
        _, _, ckpt = gpt.load_model(path)  # loads strictly: exactly a plain GPT's keys and shapes
        plain = make_model(cfg)
        plain.load_state_dict(ckpt["model"])  # in float64 (load_model builds float32) to compare
        torch.testing.assert_close(plain(x)[0], expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- the run, DDP

@pytest.fixture
def tiny_init(tmp_path, tok):
    """A random 2-layer byte-level GPT saved as a checkpoint, to fine-tune in seconds. Its 48-token
    context holds the task: the longest prompt, '<|user|>count the letters: ' and 8 letters then
    '<|end|><|assistant|>', is 30 byte tokens, and evaluation lets the model write 16 more."""
    cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=48, n_layer=2, n_head=2,
                        n_embd=32)
    path = str(tmp_path / "init.pt")
    gpt.save_checkpoint(path, make_model(cfg, dtype=torch.float32), tok)
    return path


def log_rows(cfg):
    with open(os.path.join(cfg.out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_main_smoke_and_learning(tiny_init, tmp_path, monkeypatch, capsys):
    plots = []
    monkeypatch.setattr(gpt, "pyplot", lambda plot: "plt" if plot else None)  # matplotlib or not
    monkeypatch.setattr(gpt, "plot_curves", lambda plt, log, keys, path: plots.append((keys, path)))
    cfg = sft.SFTConfig(init=tiny_init, steps=25, batch_size=4, lr=1e-2, lora_lr=2e-2, n_train=60,
                        n_eval=8, plot=True, out_dir=str(tmp_path / "out"), device="cpu")
    results = {r["method"]: r for r in sft.main(cfg)}
    assert set(results) == {"full", "lora", "qlora"}
    merged = re.search(r"LoRA merged into W: \d+/(\d+) answers unchanged", capsys.readouterr().out)
    assert merged[1] == "8"  # out of the n_eval = 8 answers compared, not a fixed 50
    rows = log_rows(cfg)
    for method, r in results.items():
        losses = [row[f"loss_{method}"] for row in rows if f"loss_{method}" in row]
        assert len(losses) == 25 and losses[-1] < losses[0] and r["nll_after"] < r["nll_before"], r
        assert sum(row.get("method") == method for row in rows) == 1  # and its result row
    keys = ["loss_full", "loss_lora", "loss_qlora"]
    assert plots == [(keys, os.path.join(cfg.out_dir, "log.png"))]
    # r (in + out) for c_attn 32->96, attn c_proj 32->32, c_fc 32->192, mlp c_proj 96->32 at r = 8,
    # in 2 layers, plus the embedding rows of the 7 special tokens (32 wide), which learn the chat
    # template
    assert results["lora"]["trainable"] == 2 * 8 * (128 + 64 + 224 + 128) + 7 * 32
    assert results["qlora"]["trainable"] == results["lora"]["trainable"]
    assert results["qlora"]["weight_bytes"] < results["lora"]["weight_bytes"]
    model, _, _ = gpt.load_model(os.path.join(cfg.out_dir, "ckpt.pt"))  # full: a plain GPT
    assert gpt.count_params(model) == results["full"]["trainable"]
    eval_set = gpt.make_task(cfg.n_train, cfg.n_eval, cfg.seed)[1]
    for method in ("lora", "qlora"):  # merged into plain GPTs: the adapted models' answer NLL
        model, tok, _ = gpt.load_model(os.path.join(cfg.out_dir, f"ckpt_{method}.pt"))
        nll = gpt.evaluate_instructions(model, tok, eval_set)[1]
        # float32: W + (alpha/r) B A rounds apart from the two-branch forward, ~1e-7 per weight
        assert nll == pytest.approx(results[method]["nll_after"], rel=1e-5)


def test_resume_is_exact(tiny_init, tmp_path):
    """All three methods in one go equal a run stopped halfway through LoRA and resumed: full is
    kept (its checkpoint is complete), LoRA goes on from its step 2 checkpoint with its optimizer
    and RNG, QLoRA starts after it; every checkpoint bit for bit, and the same log rows."""
    cfg = sft.SFTConfig(init=tiny_init, steps=4, batch_size=4, n_train=40, n_eval=4,
                        ckpt_interval=3, device="cpu")
    whole = dataclasses.replace(cfg, out_dir=str(tmp_path / "whole"))
    sft.main(whole)
    split = dataclasses.replace(cfg, out_dir=str(tmp_path / "split"), stop_after=6)
    assert sft.main(split)[0]["method"] == "full"
    assert gpt.load_checkpoint(os.path.join(split.out_dir, "ckpt_lora.pt"))["step"] == 2
    assert not os.path.exists(os.path.join(split.out_dir, "ckpt_qlora.pt"))
    with pytest.raises(SystemExit, match="saved with --lr=0.003"):  # another lr: another run
        sft.main(dataclasses.replace(split, stop_after=0, resume=True, lr=0.01))
    results = sft.main(dataclasses.replace(split, stop_after=0, resume=True))
    assert [r["method"] for r in results] == ["full", "lora", "qlora"]
    for name in ("ckpt.pt", "ckpt_lora.pt", "ckpt_qlora.pt"):
        a, b = (gpt.load_checkpoint(os.path.join(c.out_dir, name)) for c in (whole, split))
        assert a["step"] == b["step"] == 4
        for group in ("model", "trainable"):
            assert (a[group] is None) == (b[group] is None) and all(
                torch.equal(a[group][k], b[group][k]) for k in a[group] or {})
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in log_rows(c)]
               for c in (split, whole)]  # wall time aside
    assert untimed[0] == untimed[1]


def test_bad_init_or_resume_is_one_line_before_any_work(tiny_init, tmp_path, tok, capsys,
                                                        monkeypatch):
    """A garbage file, a model without rows for the chat tokens, one whose context is shorter than
    the task needs (46 tokens, see tiny_init), nothing to resume: one line, before any training.
    The --plot note comes first of all, since it is a missing package, not bad input."""
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
             (dict(init=short), "context is 40 tokens; this task needs 46"),
             (dict(init=tiny_init, resume=True), "holds no checkpoint")]
    for fields, message in cases:
        cfg = sft.SFTConfig(**fields, plot=True, out_dir=str(tmp_path / "out"), device="cpu")
        with pytest.raises(SystemExit, match=message) as error:
            sft.main(cfg)
        assert "\n" not in str(error.value) and not os.path.exists(cfg.out_dir)
        assert capsys.readouterr().out.startswith("note: --plot needs matplotlib")


@pytest.mark.parametrize("argv, field", [
    (["--steps=0"], "--steps=0"), (["--base_steps=0"], "--base_steps"), (["--lr=0"], "--lr"),
    (["--lora_lr=-1"], "--lora_lr"), (["--lora_alpha=0"], "--lora_alpha"),
    (["--lora_r=0"], "--lora_r"), (["--batch_size=0"], "--batch_size"),
    (["--n_train=0"], "--n_train"), (["--n_eval=0"], "--n_eval"),
    (["--ckpt_interval=0"], "--ckpt_interval"), (["--stop_after=-1"], "--stop_after"),
    (["--methods=full,prefix"], "--methods"), (["--methods="], "--methods"),
    (["--lora_targets=q_proj"], "--lora_targets"), (["--device=cuda"], "only cpu")])
def test_every_field_is_checked_before_any_work(argv, field, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(SystemExit) as error:
        gpt.parse_args(sft.SFTConfig, argv, gpu=sft.GPU)
    assert error.value.code == 2 and field in capsys.readouterr().err


@pytest.fixture
def float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def test_ddp_two_processes_match_one(tiny_init, tmp_path, float64):
    """torchrun with 2 CPU processes (gloo), each with half of every batch, ends on the weights of
    one process and logs the same loss: the mean over the whole batch, not one process's share.
    In float64: float32 sums in another order round apart by ~1e-7, and Adam's g / (sqrt(v) + eps)
    turns that into visible weight differences where a gradient is near zero (8.6e-6 seen here)."""
    cfg = sft.SFTConfig(init=tiny_init, methods="full", steps=3, batch_size=4, n_train=40, n_eval=2,
                        device="cpu")
    single = dataclasses.replace(cfg, out_dir=str(tmp_path / "single"))
    sft.main(single)
    ddp = dataclasses.replace(cfg, out_dir=str(tmp_path / "ddp"))
    script = tmp_path / "sft64.py"  # sft.py's command line, with float64 as the default dtype
    script.write_text(f"import sys, torch\nsys.path.insert(0, {ROOT!r})\n"
                      "torch.set_default_dtype(torch.float64)\nimport gpt, sft\n"
                      "sft.main(gpt.parse_args(sft.SFTConfig, gpu=sft.GPU))\n")
    args = [f"--{f.name}={getattr(ddp, f.name)}" for f in dataclasses.fields(ddp)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script)] + args
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    a = gpt.load_checkpoint(os.path.join(single.out_dir, "ckpt.pt"))["model"]
    b = gpt.load_checkpoint(os.path.join(ddp.out_dir, "ckpt.pt"))["model"]
    assert a["lm_head.weight"].dtype == b["lm_head.weight"].dtype == torch.float64
    for k in a:  # float64 rounding (~1e-16) through Adam's 1/eps = 1e8 and lr 3e-3: below 1e-9
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-9)
    initial = gpt.load_checkpoint(tiny_init)["model"]
    assert not torch.allclose(a["lm_head.weight"].float(), initial["lm_head.weight"])  # it trained
    losses = [[r["loss_full"] for r in log_rows(c) if "loss_full" in r] for c in (single, ddp)]
    assert len(losses[0]) == 3
    assert losses[1] == pytest.approx(losses[0], rel=1e-12, abs=0)  # sums in another order
