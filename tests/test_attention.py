"""attention.py against independent references: F.scaled_dot_product_attention, nn.MultiheadAttention
with copied weights, F.cross_entropy's label smoothing, the paper's formulas in float64, and
worked examples."""
import importlib.util
import math
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import attention as A


def qkv(B=2, H=4, H_kv=4, Tq=7, Tk=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, H_kv, Tk, d, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, v


def tiny_transformer(n_kv_head=None, seed=0):
    torch.manual_seed(seed)
    return A.Transformer(11, 40, d_model=32, n_head=4, n_kv_head=n_kv_head, n_layer=2, d_ff=64,
                         dropout=0.0).double().eval()


# ----------------------------------------------------------------------------- scaled dot-product attention

@pytest.mark.parametrize("which", ["none", "causal", "padding", "window", "cross", "random"])
def test_equals_torch_sdpa(which):
    Tk = 9 if which == "cross" else 7
    q, k, v = qkv(Tk=Tk)
    mask = {"none": None, "causal": A.causal_mask(7), "padding": A.padding_mask(torch.tensor([7, 4]), 7),
            "window": A.causal_mask(7, window=3), "cross": A.causal_mask(7, 9),
            "random": torch.rand(2, 4, 7, 7, generator=torch.Generator().manual_seed(1)) < 0.7}[which]
    if which == "random":
        mask[..., 0] = True  # every row keeps a key (fully masked rows have their own test)
    ours, weights = A.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 7, dtype=torch.float64))


def test_causal_mask_matches_torch_is_causal_bottom_right():
    """Our causal_mask(Tq, Tk) puts the queries at the last Tq positions (KV-cache decoding):
    torch's CausalBias with lower-right alignment is the same convention."""
    from torch.nn.attention.bias import causal_lower_right
    q, k, v = qkv(Tq=3, Tk=8)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(3, 8))
    ours = A.scaled_dot_product_attention(q, k, v, A.causal_mask(3, 8))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("H_kv", [1, 2])
def test_gqa_equals_explicit_repeat(H_kv):
    """Each group of H / H_kv query heads shares a K, V head: the same as repeating K, V H / H_kv times."""
    q, k, v = qkv(H=4, H_kv=H_kv, Tq=6, Tk=6)
    mask = A.causal_mask(6)
    ours = A.scaled_dot_product_attention(q, k, v, mask)
    G = 4 // H_kv
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=mask)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
                               rtol=1e-12, atol=1e-12)


def test_sliding_window_attends_to_exactly_w_tokens():
    T, W = 12, 4
    q, k, v = qkv(Tq=T, Tk=T)
    mask = A.causal_mask(T, window=W)
    _, weights = A.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    attended = weights > 0  # softmax of finite scores is never exactly 0, masked ones are exactly 0
    for i in range(T):
        assert attended[..., i, :].sum(-1).eq(min(W, i + 1)).all()
        allowed = torch.zeros(T, dtype=torch.bool)
        allowed[max(0, i - W + 1):i + 1] = True
        assert (attended[..., i, :] == allowed).all()


def test_padding_is_never_attended():
    q, k, v = qkv(Tq=6, Tk=6)
    lengths = torch.tensor([6, 3])
    mask = A.padding_mask(lengths, 6)
    out, weights = A.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert weights[1, ..., 3:].abs().max() == 0
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 3:], v2[1, :, 3:] = 1e3, -1e3  # change the padded keys and values wildly
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k2, v2, mask), out, rtol=0, atol=0)


def test_fully_masked_row_gives_zeros_not_nan():
    q, k, v = qkv(Tq=4, Tk=4)
    q.requires_grad_(True)
    mask = A.causal_mask(4).clone()
    mask[2] = False  # query 2 may see nothing
    out, weights = A.scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert out[..., 2, :].abs().max() == 0 and weights[..., 2, :].abs().max() == 0
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad[..., 2, :].abs().max() == 0
    # torch >= 2.5 makes the same choice
    torch.testing.assert_close(out.detach(), F.scaled_dot_product_attention(q.detach(), k, v, attn_mask=mask))


def test_dropout_is_unbiased_and_off_at_p0():
    """E[dropout(A) V] = A V: the kept weights are scaled by 1/(1 - p)."""
    q, k, v = qkv(B=1, H=1, H_kv=1, Tq=3, Tk=5, d=4)
    exact = A.scaled_dot_product_attention(q, k, v)
    torch.manual_seed(0)
    mean = torch.stack([A.scaled_dot_product_attention(q, k, v, dropout_p=0.5) for _ in range(4000)]).mean(0)
    assert (mean - exact).abs().max() < 0.08  # std of a 4000-sample mean of |values| ~2 is about 0.03
    assert (A.scaled_dot_product_attention(q, k, v, dropout_p=0.5) - exact).abs().max() > 0.1
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, dropout_p=0.0), exact, rtol=0, atol=0)


@pytest.mark.parametrize("bad, message", [
    (lambda q, k, v: (q, k[..., :4], v, None), "k (2, 4, 7, 4)"),  # head dims differ
    (lambda q, k, v: (q, k[:, :3], v[:, :3], None), "H a multiple of H_kv"),
    (lambda q, k, v: (q, k, v[1:], None), "v (1, 4, 7, 8)"),  # batch of keys and values differ
    (lambda q, k, v: (q, k, v, torch.ones(7, 6, dtype=torch.bool)), "broadcast to"),
    (lambda q, k, v: (q, k, v, torch.ones(3, 4, 7, 7, dtype=torch.bool)), "broadcast to"),
    (lambda q, k, v: (q, k, v, torch.zeros(7, 7)), "boolean"),
    (lambda q, k, v: (q[0], k, v, None), "q (4, 7, 8)"),  # no batch dimension
])
def test_bad_input_gives_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        A.scaled_dot_product_attention(*bad(*qkv()))


def test_module_config_errors():
    with pytest.raises(ValueError, match="n_kv_head=3: n_head must divide d_model, and n_kv_head"):
        A.MultiHeadAttention(32, 4, 3)
    with pytest.raises(ValueError, match="d_model=30, n_head=4"):
        A.MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="window=0"):
        A.causal_mask(5, window=0)


# ----------------------------------------------------------------------------- multi-head attention

def copy_from_torch(ours, theirs):
    E = theirs.embed_dim
    with torch.no_grad():
        for i, proj in enumerate([ours.q_proj, ours.k_proj, ours.v_proj]):
            proj.weight.copy_(theirs.in_proj_weight[i * E:(i + 1) * E])
            proj.bias.copy_(theirs.in_proj_bias[i * E:(i + 1) * E])
        ours.out_proj.weight.copy_(theirs.out_proj.weight)
        ours.out_proj.bias.copy_(theirs.out_proj.bias)


def test_self_attention_equals_nn_multihead_attention():
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(32, 4, batch_first=True).double().eval()
    ours = A.MultiHeadAttention(32, 4).double().eval()
    copy_from_torch(ours, theirs)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    lengths = torch.tensor([7, 5])
    mask = A.causal_mask(7) & A.padding_mask(lengths, 7)  # (B, 1, T, T)
    y, w = ours(x, mask=mask, return_weights=True)
    # torch's masks mean the opposite: True = do NOT attend
    ref, ref_w = theirs(x, x, x, attn_mask=~A.causal_mask(7), key_padding_mask=torch.arange(7) >= lengths[:, None],
                        average_attn_weights=False)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(w, ref_w, rtol=1e-10, atol=1e-10)


def test_cross_attention_equals_nn_multihead_attention():
    torch.manual_seed(1)
    theirs = nn.MultiheadAttention(32, 4, batch_first=True).double().eval()
    ours = A.MultiHeadAttention(32, 4).double().eval()
    copy_from_torch(ours, theirs)
    x, memory = torch.randn(2, 5, 32, dtype=torch.float64), torch.randn(2, 9, 32, dtype=torch.float64)
    lengths = torch.tensor([9, 6])
    ref, _ = theirs(x, memory, memory, key_padding_mask=torch.arange(9) >= lengths[:, None])
    torch.testing.assert_close(ours(x, context=memory, mask=A.padding_mask(lengths, 9)), ref, rtol=1e-10, atol=1e-10)


def test_gqa_module_shares_kv_heads_and_caches_fewer_bytes():
    """A GQA layer equals an MHA layer whose K, V projections repeat each KV head's rows G times;
    its cache holds n_kv_head heads, as kv_cache_bytes counts."""
    torch.manual_seed(0)
    gqa = A.MultiHeadAttention(32, 4, n_kv_head=2).double().eval()
    mha = A.MultiHeadAttention(32, 4).double().eval()
    with torch.no_grad():
        mha.q_proj.load_state_dict(gqa.q_proj.state_dict()), mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
        for src, dst in [(gqa.k_proj, mha.k_proj), (gqa.v_proj, mha.v_proj)]:
            dst.weight.copy_(src.weight.view(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32))
            dst.bias.copy_(src.bias.view(2, 8).repeat_interleave(2, 0).reshape(32))
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    cache = A.KVCache()
    torch.testing.assert_close(gqa(x, mask=A.causal_mask(6), cache=cache), mha(x, mask=A.causal_mask(6)),
                               rtol=1e-10, atol=1e-10)
    nbytes = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    assert nbytes == A.kv_cache_bytes(n_layer=1, n_kv_head=2, head_dim=8, seq_len=6, batch=2, bytes_per_value=8)


def test_kv_cache_table_worked_example():
    # Llama-2-7B: 2 (K, V) * 32 layers * 32 heads * 128 dims * 8192 tokens * 2 bytes = 4 GiB exactly
    assert A.kv_cache_bytes(32, 32, 128, 8192) == 4 * 2 ** 30
    assert A.kv_cache_bytes(32, 8, 128, 8192) == 2 ** 30  # Llama-3-8B, GQA with 8 KV heads
    assert A.kv_cache_bytes(32, 1, 128, 8192) == 2 ** 27  # MQA


def test_incremental_self_attention_with_cache_equals_full():
    torch.manual_seed(0)
    mha = A.MultiHeadAttention(32, 4, n_kv_head=1).double().eval()
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    full = mha(x, mask=A.causal_mask(8))
    cache = A.KVCache()
    prefix = mha(x[:, :3], mask=A.causal_mask(3), cache=cache)  # a 3-token prompt, then one token at a time
    steps = [mha(x[:, t:t + 1], mask=A.causal_mask(1, t + 1), cache=cache) for t in range(3, 8)]
    torch.testing.assert_close(torch.cat([prefix] + steps, 1), full, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- the Transformer

def test_sinusoidal_positions_formula():
    pe = A.sinusoidal_positions(50, 16)
    pos, i = 37, 3  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
    assert abs(pe[pos, 2 * i] - math.sin(pos / 10000 ** (2 * i / 16))) < 1e-6
    assert abs(pe[pos, 2 * i + 1] - math.cos(pos / 10000 ** (2 * i / 16))) < 1e-6
    assert pe[0, 0::2].abs().max() == 0 and (pe[0, 1::2] == 1).all()


def test_decoder_with_cache_equals_full_forward():
    """Greedy decoding step by step with self- and cross-attention caches gives the logits of the
    full teacher-forced forward pass, for MHA and GQA."""
    for n_kv_head in (None, 2):
        model = tiny_transformer(n_kv_head)
        src = torch.tensor([[3, 5, 7, 1, 2], [4, 4, 9, 0, 0]])
        src_mask = A.padding_mask(torch.tensor([5, 3]), 5)
        tgt = torch.tensor([[1, 8, 9, 10, 11, 12], [1, 20, 21, 22, 23, 24]])
        memory = model.encode(src, src_mask)
        full = model.decode(tgt, memory, src_mask)
        caches = model.new_caches()
        steps = [model.decode(tgt[:, :2], memory, src_mask, caches)]  # two tokens at once, then one by one
        steps += [model.decode(tgt[:, t:t + 1], memory, src_mask, caches) for t in range(2, 6)]
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)


def test_source_padding_changes_nothing():
    model = tiny_transformer()
    tgt = torch.tensor([[1, 8, 9]])
    short = model(torch.tensor([[3, 5, 7]]), A.padding_mask(torch.tensor([3]), 3), tgt)
    padded = model(torch.tensor([[3, 5, 7, 0, 0]]), A.padding_mask(torch.tensor([3]), 5), tgt)
    torch.testing.assert_close(padded, short, rtol=1e-10, atol=1e-10)


@torch.no_grad()
def greedy(model, src, src_mask, bos, eos, max_len):
    """Batched greedy decoding with KV caches, y_t = argmax p(y | y_<t, x): a reference for
    beam_search(beam_size=1); lists cut before eos."""
    memory = model.encode(src, src_mask)
    caches = model.new_caches()
    token = torch.full((src.size(0), 1), bos, dtype=torch.long)
    out = []
    for _ in range(max_len):
        token = model.decode(token, memory, src_mask, caches)[:, -1].argmax(-1, keepdim=True)
        out.append(token)  # (B, 1)
        if bool((torch.cat(out, 1) == eos).any(1).all()):  # every row has ended
            break
    rows = torch.cat(out, 1).tolist()
    return [row[:row.index(eos)] if eos in row else row for row in rows]


def test_beam_size_one_equals_greedy():
    model = tiny_transformer(seed=3)
    model.head = nn.Linear(32, 40, bias=False).double()  # untied and random: varied, sharp predictions
    nn.init.normal_(model.head.weight, std=0.5)
    src = torch.tensor([[3, 5, 7, 1], [9, 2, 6, 6]])
    mask = A.padding_mask(torch.tensor([4, 4]), 4)
    free = greedy(model, src, mask, bos=1, eos=-1, max_len=12)  # eos = -1 never comes: 12 tokens each
    assert len(set(free[0] + free[1])) > 4
    for eos in sorted(set(free[0][3:] + free[1][3:]))[:4] + [39]:  # tokens that stop a row early, and one that may not
        batched = greedy(model, src, mask, bos=1, eos=eos, max_len=12)
        for i in range(2):
            assert model.beam_search(src[i:i + 1], mask[i:i + 1], 1, eos, beam_size=1, max_len=12) == batched[i]
            assert batched[i] == (free[i][:free[i].index(eos)] if eos in free[i] else free[i])


def test_beam_search_is_exact_when_the_beam_covers_everything():
    """With a beam wider than every step's candidate count nothing is pruned: beam search must
    return the most probable finished sequence, found here by scoring each one by brute force."""
    torch.manual_seed(0)
    model = A.Transformer(5, 4, d_model=16, n_head=2, n_layer=1, d_ff=32, dropout=0.0).double().eval()
    with torch.no_grad():
        model.head.weight.mul_(4)  # sharp enough that the best sequence is not the greedy one (checked below)
    src, mask, bos, eos = torch.tensor([[1, 2, 3]]), A.padding_mask(torch.tensor([3]), 3), 0, 3
    best = model.beam_search(src, mask, bos, eos, beam_size=40, max_len=4)  # 4 steps: at most 27 x 4 candidates
    finished = [[]] + [[a] for a in range(3)] + [[a, b] for a in range(3) for b in range(3)]
    finished += [[a, b, c] for a in range(3) for b in range(3) for c in range(3)]  # eos at step 1, 2, 3 or 4
    memory = model.encode(src, mask)

    def logp(seq):  # log p(seq + [eos] | src), teacher-forced
        logits = model.decode(torch.tensor([[bos] + seq]), memory, mask)[0]
        return F.log_softmax(logits, -1).gather(-1, torch.tensor(seq + [eos])[:, None]).sum().item()
    assert best == max(finished, key=logp)
    assert best != greedy(model, src, mask, bos, eos, max_len=4)[0]


def test_label_smoothing_equals_torch_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    targets[0, 2:] = 0  # padding, ignored
    for eps in (0.0, 0.1, 0.3):
        ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0, label_smoothing=eps)
        torch.testing.assert_close(A.label_smoothed_loss(logits, targets, eps, ignore_index=0), ref)


# ----------------------------------------------------------------------------- task, CLI and demo

def test_number_words_worked_examples():
    cases = {0: "zero", 7: "seven", 13: "thirteen", 40: "forty", 105: "one hundred five",
             4071: "four thousand seventy one", 100010: "one hundred thousand ten",
             999999: "nine hundred ninety nine thousand nine hundred ninety nine",
             12000345: "twelve million three hundred forty five"}
    for n, words in cases.items():
        assert " ".join(A.number_words(n)) == words


def parse_error(argv, capsys, gpu=None):
    """The one-line message argparse prints to stderr when it exits with code 2."""
    with pytest.raises(SystemExit) as exit_info:
        A.parse_args(A.Config, argv, gpu)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_parse_args(capsys):
    cfg = A.parse_args(A.Config, ["--steps=5", "--label-smoothing=0", "--plot"])
    assert cfg.steps == 5 and cfg.label_smoothing == 0.0 and cfg.plot is True
    assert "unrecognized arguments: --stepz=5" in parse_error(["--stepz=5"], capsys)
    assert "invalid int value: 'many'" in parse_error(["--steps=many"], capsys)
    assert "max_digits=12: use 3 to 9" in parse_error(["--max_digits=12"], capsys)
    assert "n_test=500: hold out at most half" in parse_error(["--max_digits=3"], capsys)


# every field the old Config accepted silently, to fail later (a division by zero in the
# schedule, NaN losses, a raw torch error in the model) or never
@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("batch_size", 0), ("warmup", 0), ("lr", 0.0), ("lr", -1.0), ("d_model", 0),
    ("d_model", 30), ("n_kv_head", 3), ("n_kv_head", -2), ("dropout", 1.0), ("dropout", -0.1),
    ("label_smoothing", 1.5), ("max_digits", 2), ("n_layer", 0), ("beam_size", 0)])
def test_every_field_is_checked_before_any_work(field, value):
    with pytest.raises(ValueError, match=f"^{field}={value}"):  # one line that names the field
        A.Config(**{field: value})


def test_a_bad_field_is_an_argparse_error(capsys):
    assert parse_error(["--warmup=0"], capsys).endswith("error: warmup=0 must be positive")


def test_a_device_that_is_not_there_is_an_argparse_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert "--device=cuda, but this machine has only cpu" in parse_error(["--device=cuda"], capsys,
                                                                         A.GPU)


def test_gpu_defaults_apply_on_cuda_and_the_command_line_wins(monkeypatch):
    monkeypatch.setattr(A, "pick_device", lambda name: "cuda")
    assert (A.parse_args(A.Config, [], A.GPU).d_model, A.Config().d_model) == (256, 128)
    assert A.parse_args(A.Config, ["--d_model=64"], A.GPU).d_model == 64
    assert A.parse_args(A.Config, [], A.GPU).steps == A.GPU["steps"]


def test_plot_without_matplotlib_says_so_before_any_work(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError

    def no_work(name):
        raise RuntimeError("work started")
    monkeypatch.setattr(A, "pick_device", no_work)  # main's first step after the plot check
    with pytest.raises(RuntimeError, match="work started"):
        A.main(A.Config(plot=True))
    assert capsys.readouterr().out.startswith("note: --plot needs matplotlib")


def test_main_smoke(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    A.main(A.Config(max_digits=4, d_model=32, n_head=2, n_kv_head=1, n_layer=1, steps=30,
                    batch_size=16, n_test=8, beam_size=2, device="cpu", plot=True))
    out = capsys.readouterr().out
    for text in ("held-out exact match", "beam search (2 beams)", "cross-attention",
                 "GQA-8 (Llama-3-8B)", "4.000 GiB"):
        assert text in out
    png = tmp_path / "out" / "attention" / "attention.png"
    if importlib.util.find_spec("matplotlib") is None:  # CI: the note, and no PNG
        assert out.startswith("note: --plot needs matplotlib") and not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_smoke(capsys):
    """bench/attention.py checks both outputs agree, then prints a row per (kv heads, T)."""
    path = os.path.join(os.path.dirname(__file__), "..", "bench", "attention.py")
    spec = importlib.util.spec_from_file_location("bench_attention", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(bench.BenchConfig(lengths="16,32", kv_heads="8,2", repeats=1, device="cpu"))
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split()[:2] for r in rows] == [["16", "8"], ["32", "8"], ["16", "2"], ["32", "2"]]
    assert all(r.endswith("x") for r in rows)
