"""flash_attention.py against independent references: float64 naive attention, gradcheck,
F.scaled_dot_product_attention with an explicit bottom-right mask, and hand-counted HBM traffic."""
import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import flash_attention as fa
from conftest import TRITON_PROMISED, require


def rand_qkv(Lq, Lk, d=8, B=2, H=3, dtype=torch.float64, seed=0, d_v=None):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, dim, generator=g, dtype=dtype, requires_grad=True)
            for n, dim in ((Lq, d), (Lk, d), (Lk, d_v or d))]


def grads(out, dO, *leaves):
    return torch.autograd.grad(out, leaves, dO)


def sdpa_bottom_right(q, k, v, causal):
    """The independent reference: SDPA, with the bottom-right causal mask written out as attn_mask."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    mask = torch.ones(Lq, Lk, device=q.device).tril(diagonal=Lk - Lq).bool() if causal else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ----------------------------------------------------------------------------- PyTorch path

@pytest.mark.parametrize("Lq,Lk,causal", [(7, 7, False), (7, 7, True), (5, 11, True), (11, 5, True), (9, 4, False)])
def test_gradcheck_float64(Lq, Lk, causal):
    # tiles of 3 x 4 so every case has several tiles, ragged ends and tiles cut by the diagonal
    q, k, v = rand_qkv(Lq, Lk, d=4, B=1, H=1)
    fn = lambda q, k, v: fa.flash_attention_torch(q, k, v, causal, None, 3, 4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Lq,Lk", [(64, 64), (37, 37), (100, 100), (20, 45), (45, 20), (1, 33)])
def test_torch_path_equals_sdpa(Lq, Lk, causal):
    q, k, v = rand_qkv(Lq, Lk, d=16)
    dO = torch.randn(q.shape[:3] + (16,), dtype=torch.float64)
    out = fa.flash_attention_torch(q, k, v, causal, None, 16, 16)
    ref = sdpa_bottom_right(q, k, v, causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for ours, theirs in zip(grads(out, dO, q, k, v), grads(ref, dO, q, k, v)):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Lq,Lk", [(37, 37), (20, 45), (45, 20)])
def test_value_head_dim_may_differ_from_the_query_head_dim(Lq, Lk, causal):
    # q, k: d = 16; v: d_v = 24, as SDPA allows; 16 x 16 tiles leave ragged ends
    q, k, v = rand_qkv(Lq, Lk, d=16, d_v=24)
    dO = torch.randn(q.shape[:3] + (24,), dtype=torch.float64)
    out = fa.flash_attention_torch(q, k, v, causal, None, 16, 16)
    ref = sdpa_bottom_right(q, k, v, causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for ours, theirs in zip(grads(out, dO, q, k, v), grads(ref, dO, q, k, v)):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


def test_naive_attention_equals_sdpa():
    # naive_attention is the reference of __main__, so it is checked against SDPA too
    for Lq, Lk, causal in [(13, 13, True), (6, 13, True), (13, 6, True), (13, 6, False)]:
        q, k, v = rand_qkv(Lq, Lk)
        torch.testing.assert_close(fa.naive_attention(q, k, v, causal), sdpa_bottom_right(q, k, v, causal))


def test_float32_and_scale():
    q, k, v = rand_qkv(50, 70, d=32, dtype=torch.float32)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.3)
    torch.testing.assert_close(fa.flash_attention(q, k, v, scale=0.3).double(), ref, rtol=1e-5, atol=1e-6)


def test_log_sum_exp_saved_in_float32():
    q, k, v = rand_qkv(30, 50, d=16, dtype=torch.float16)
    O, L = fa._torch_forward(q, k, v, True, 0.25, 16, 16)
    assert O.dtype == L.dtype == torch.float32
    S = 0.25 * q.double() @ k.double().transpose(-2, -1)
    ref = S.masked_fill(~fa.causal_mask(30, 50), -math.inf).logsumexp(-1)
    torch.testing.assert_close(L.double(), ref, rtol=1e-3, atol=1e-3)


def test_fully_masked_rows_are_zero_not_nan():
    # Lq > Lk with bottom-right alignment: the first Lq - Lk queries see no key at all
    q, k, v = rand_qkv(12, 5, d=8)
    out = fa.flash_attention_torch(q, k, v, True, None, 4, 4)
    dq, dk, dv = grads(out, torch.ones_like(out), q, k, v)
    assert not any(t.isnan().any() for t in (out, dq, dk, dv))
    assert (out[:, :, :7] == 0).all() and (dq[:, :, :7] == 0).all()
    torch.testing.assert_close(out, sdpa_bottom_right(q, k, v, True))  # SDPA also gives 0 there


def test_dispatch_on_cpu_is_the_torch_path():
    q, k, v = rand_qkv(40, 40, d=16, dtype=torch.float32)
    assert torch.equal(fa.flash_attention(q, k, v, causal=True), fa.flash_attention_torch(q, k, v, causal=True))


def test_bad_inputs_give_clear_errors():
    q, k, v = rand_qkv(8, 8)
    with pytest.raises(ValueError, match="shapes do not match"):
        fa.flash_attention(q[0], k[0], v[0])  # no batch dimension
    with pytest.raises(TypeError, match="one floating dtype"):
        fa.flash_attention(q, k.float(), v)
    with pytest.raises(TypeError, match="one floating dtype"):
        fa.flash_attention(*(t.long() for t in (q, k, v)))
    with pytest.raises(ValueError, match="shapes do not match"):
        fa.flash_attention(q, k[:, :1], v[:, :1])  # fewer key heads than query heads
    with pytest.raises(ValueError, match="shapes do not match"):
        fa.flash_attention(q, k, v[:, :, :5])
    if fa.triton is not None and not fa.INTERPRET:
        with pytest.raises(ValueError, match="head dims"):
            fa.flash_attention_triton(q, k, v)  # float64 and d = 8
        q, k, v = rand_qkv(8, 8, d=64, d_v=32, dtype=torch.float16)
        with pytest.raises(ValueError, match="d_v=32"):
            fa.flash_attention_triton(q, k, v)  # the kernels take d_v = d only
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="CUDA tensors"):
                fa.flash_attention_triton(*(torch.zeros(1, 1, 4, 64, dtype=torch.float16) for _ in range(3)))


# ----------------------------------------------------------------------------- Triton path

# The kernels run on CPU tensors only if TRITON_INTERPRET=1 is set before triton is first imported
# (triton.language's own helpers are jit functions too), so on a machine without a GPU the
# test_triton_* cases run in a child pytest started with it set; here they are skipped.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
triton_here = pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRETED),
                                 reason="runs in the child process of test_triton_under_interpreter")


@pytest.fixture
def triton_device():
    require("triton", TRITON_PROMISED)
    return "cuda" if torch.cuda.is_available() else "cpu"


def test_triton_under_interpreter():
    require("triton", TRITON_PROMISED)
    if torch.cuda.is_available() or INTERPRETED:
        pytest.skip("the test_triton_* cases run in this process")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
               "-k", "triton_ and not interpreter"]
    child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 and " passed" in child.stdout and "skipped" not in child.stdout, child.stdout[-4000:]


# Each case is a few seconds in the interpreter, so the list is short but covers: both dtypes of the
# kernel and float32, every head dim (16 and 32 take 64's tiles), causal and not, ragged lengths,
# Lq < Lk and Lq > Lk (empty rows), and a batch of 2 (the batch stride).
TRITON_CASES = [
    (torch.float32, 64, 37, 37, False, 2),
    (torch.float32, 16, 20, 45, True, 1),
    (torch.float32, 32, 45, 20, True, 1),
    (torch.float16, 128, 37, 37, False, 1),
    (torch.bfloat16, 64, 45, 20, True, 2),
    (torch.bfloat16, 128, 33, 50, True, 1),
]


@triton_here
@pytest.mark.parametrize("dtype,d,Lq,Lk,causal,B", TRITON_CASES)
def test_triton_kernel_equals_reference(triton_device, dtype, d, Lq, Lk, causal, B):
    if dtype not in fa.TRITON_DTYPES:
        pytest.skip(f"{dtype} runs only under the interpreter")
    device = triton_device
    q, k, v = (t.detach().to(device) for t in rand_qkv(Lq, Lk, d=d, B=B, H=2))
    dO = torch.randn(B, 2, Lq, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    leaves64 = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = sdpa_bottom_right(*leaves64, causal)
    ref_grads = grads(ref, dO, *leaves64)
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = fa.flash_attention_triton(*leaves, causal=causal)
    assert out.dtype == dtype
    ours = [out] + list(grads(out, dO.to(dtype), *leaves))
    if dtype == torch.float32:  # the algorithm itself: float32 rounding only
        tolerances = [1e-5] * 4
    else:  # 16-bit: at most 2x the error of SDPA run in the same dtype on the same inputs, + eps
        low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        low_out = sdpa_bottom_right(*low, causal)
        low_ref = [low_out] + list(grads(low_out, dO.to(dtype), *low))
        eps = torch.finfo(dtype).eps
        tolerances = [2 * (a.double() - r).abs().max().item() + eps for a, r in zip(low_ref, [ref, *ref_grads])]
    for name, a, r, tol in zip(("O", "dQ", "dK", "dV"), ours, [ref, *ref_grads], tolerances):
        err = (a.double() - r).abs().max().item()
        assert err <= tol, f"{name}: max error {err:.2e} > {tol:.2e}"
    if causal and Lq > Lk:
        assert (out[:, :, : Lq - Lk] == 0).all() and not out.isnan().any()


@triton_here
def test_triton_log_sum_exp_float32(triton_device):
    device = triton_device
    q, k, v = (t.detach().to(device, torch.float16) for t in rand_qkv(40, 24, d=64, B=1, H=1))
    O, L = fa._triton_forward(q, k, v, True, 0.125)
    assert L.dtype == torch.float32
    S = 0.125 * q.double() @ k.double().transpose(-2, -1)
    ref = S.masked_fill(~fa.causal_mask(40, 24, device), -math.inf).logsumexp(-1)
    assert torch.equal(L[:, :, :16].isinf(), ref[:, :, :16].isinf())  # rows with no key: -inf
    torch.testing.assert_close(L.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(fa.triton is None or INTERPRETED, reason="needs triton, outside the interpreter")
def test_autotune_keeps_the_configs_listed_for_the_head_dim():
    for table, kernel in ((fa._FWD, fa._fwd_kernel), (fa._DKDV, fa._dkdv_kernel),
                          (fa._DQ, fa._dq_kernel)):
        for d, wanted in ((32, table[64]), (64, table[64]), (128, table[128])):
            kept = kernel.early_config_prune(kernel.configs, {}, HEAD_DIM=d, CAUSAL=True)
            shapes = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept]
            assert sorted(shapes) == sorted(wanted)


# ----------------------------------------------------------------------------- IO analysis and demo

def test_io_counts_match_hand_computation():
    hbm_accesses = load_bench().hbm_accesses
    # d = 64, SRAM of 9216 elements: B^2 + 4 d B <= 9216 gives B = 32 (32^2 + 256 * 32 = 9216 exactly)
    # N = 1024: naive = 4 N^2 + 4 N d = 4 * 1048576 + 4 * 65536 = 4456448
    # tiled = N d (Q) + (N / B) * 2 N d (K, V per query tile) + N d (O) + N (L)
    #       = 65536 + 32 * 131072 + 65536 + 1024 = 4326400
    assert hbm_accesses(1024, 64, 9216) == (4456448, 4326400, 32)
    # SRAM of 65536 elements: sqrt(4 * 64^2 + 65536) = sqrt(81920) = 286.2, so B = 286 - 128 = 158,
    # ceil(1024 / 158) = 7 query tiles: tiled = 65536 + 7 * 131072 + 65536 + 1024 = 1049600
    assert hbm_accesses(1024, 64, 65536) == (4456448, 1049600, 158)
    with pytest.raises(ValueError, match="SRAM"):
        hbm_accesses(1024, 64, 100)


def load_bench():
    path = os.path.join(os.path.dirname(__file__), "..", "bench", "flash_attention.py")
    spec = importlib.util.spec_from_file_location("bench_flash_attention", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # parse_args reads the module's docstring from sys.modules
    spec.loader.exec_module(bench)
    return bench


def test_peak_memory_sees_the_n_squared_matrices():
    # naive attention holds at least S and P (N^2 floats each) at once; ours never holds one N x N
    # matrix (its tiles are 256 x 256 = N^2 / 16 here)
    bench = load_bench()
    N, d = 1024, 16
    q, k, v = (torch.randn(1, 1, N, d, requires_grad=True) for _ in range(3))
    dO = torch.randn(1, 1, N, d)
    step = lambda attn: lambda: bench.forward_backward(attn, q, k, v, False, dO)  # noqa: E731
    naive = bench.peak_memory(step(fa.naive_attention), "cpu")
    ours = bench.peak_memory(step(fa.flash_attention), "cpu")
    assert naive >= 2 * N * N * 4
    assert 0 < ours < N * N * 4


def parse_error(parse, config, argv, capsys):
    """The one-line message argparse prints to stderr when it exits with code 2."""
    with pytest.raises(SystemExit) as exit_info:
        parse(config, argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_parse_args(capsys):
    cfg = fa.parse_args(fa.Config, ["--head-dim=32", "--seed=3", "--device=cpu"])
    assert (cfg.head_dim, cfg.seed, cfg.device) == (32, 3, "cpu")
    assert "unrecognized arguments" in parse_error(fa.parse_args, fa.Config, ["--nope=1"], capsys)
    assert "invalid int value" in parse_error(fa.parse_args, fa.Config, ["--head_dim=big"], capsys)


def test_bad_config_is_a_clear_error_before_any_work(capsys, monkeypatch):
    with pytest.raises(ValueError, match="head_dim=0"):
        fa.Config(head_dim=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    error = parse_error(fa.parse_args, fa.Config, ["--device=cuda"], capsys)
    assert error.endswith("error: --device=cuda, but this machine has only cpu")  # was a late crash


def test_main_smoke(capsys):
    fa.main(fa.Config(device="cpu", head_dim=16))
    out = capsys.readouterr().out
    assert out.count(" yes") == 4 and " NO" not in out


def test_bench_config_is_checked(capsys):
    bench = load_bench()
    for argv, text in ((["--max_n=512"], "max_n=512"), (["--tables=memory,plots"], "tables="),
                       (["--tokens=1000"], "tokens=1000"), (["--speed_sizes=1k"], "speed_sizes"),
                       (["--sram-kb=-4"], "sram_kb=-4")):
        assert text in parse_error(fa.parse_args, bench.BenchConfig, argv, capsys)


def test_bench_smoke(capsys):
    """Each table of bench/flash_attention.py at tiny sizes, the TFLOP/s one in its CPU variant."""
    bench = load_bench()
    bench.main(bench.BenchConfig(tables="io,memory,speed,tflops", head_dim=16, max_n=1024,
                                 speed_sizes="64", tflops_sizes="32", tokens=32, device="cpu"))
    out = capsys.readouterr().out
    # the io table: hbm_accesses (checked by hand above) at SRAM 192 KB = 98304 fp16 elements
    io_rows = {tuple(map(int, r.split()[:3])): r.split()[-1] for r in out.splitlines()
               if r.split() and r.split()[-1].endswith("x") and len(r.split()) == 6}
    for (N, d, B), ratio in io_rows.items():
        naive, tiled, tile = bench.hbm_accesses(N, d, 98304)
        assert B == tile and ratio == f"{naive / tiled:.1f}x"
    assert sorted(io_rows) == sorted((N, d, bench.hbm_accesses(N, d, 98304)[2])
                                     for d in (64, 128) for N in (1024, 4096, 16384))
    memory_rows = [r.split() for r in out.splitlines()
                   if r.startswith("  1024") and len(r.split()) == 5]  # io rows have 6 columns
    assert len(memory_rows) == 1 and memory_rows[0][-1].endswith("x")  # naive/ours at N = 1k
    assert sum(line.startswith("   64 ") for line in out.splitlines()) == 2  # causal and not
    tflops_rows = [r for r in out.splitlines() if "fwd+bwd:" in r and r.split()[0].isdigit()]
    assert len(tflops_rows) == 4  # d = 64, 128 x causal or not
    assert all(float(row.split("|")[-1]) < 1e-4 for row in tflops_rows)  # float32: ours = SDPA
