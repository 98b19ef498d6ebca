"""rope.py against independent references: rotation as complex multiplication, the full forward
pass for cached decoding, Python's math module in double precision, YaRN as released (re-derived
in float64, and values printed by Hugging Face transformers), and worked examples from the
papers' formulas (ALiBi slopes, T5 buckets)."""
import importlib.util
import math
import sys

import pytest
import torch

import rope as R


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rotate(x, position, theta, layout="half", **kw):  # one vector (d,) at one position
    return R.apply_rope(x.view(1, 1, 1, -1), torch.tensor([position]), theta, layout, **kw).flatten()


# ----------------------------------------------------------------------------- RoPE

@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_relative_property(layout):
    """<R(m) q, R(n) k> = <q, R(n - m) k>: it depends on m - n only, even at positions far apart."""
    q, k = rand(32, seed=1), rand(32, seed=2)
    theta, _ = R.rope_frequencies(32)
    for m, n in [(0, 0), (5, 2), (2, 5), (1000, 997), (31000, 32767)]:
        score = rotate(q, m, theta, layout) @ rotate(k, n, theta, layout)
        assert torch.allclose(score, q @ rotate(k, n - m, theta, layout), rtol=1e-10, atol=1e-10)
        for shift in (1, 77, 20000):
            shifted = rotate(q, m + shift, theta, layout) @ rotate(k, n + shift, theta, layout)
            assert torch.allclose(score, shifted, rtol=1e-10, atol=1e-10)
    far = rotate(q, 10, theta, layout) @ rotate(k, 3, theta, layout)
    assert abs(far - q @ rotate(k, 0, theta, layout)) > 1e-3  # and it does change with m - n


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotation_preserves_norm(layout):
    x = rand(3, 2, 40, 16)
    theta, _ = R.rope_frequencies(16)
    y = R.apply_rope(x, torch.arange(0, 40 * 997, 997), theta, layout)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_row", [False, True])
def test_both_layouts_are_complex_multiplication(per_row):
    """Pair (a, b) at position m becomes (a + ib) e^{i m theta_i}: interleaved pairs (x_2i, x_2i+1),
    half pairs (x_i, x_i+d/2). Positions (T,) are shared; (B, T) give each row its own (a row
    that starts after a cache, or after left padding)."""
    x, d = rand(2, 3, 10, 16), 16
    positions = torch.arange(10) * 13
    positions = torch.stack([positions, positions + 5]) if per_row else positions
    theta, _ = R.rope_frequencies(d, base=500.0)
    angles = positions[..., None] * theta  # (T, d/2) or (B, T, d/2)
    angles = angles[:, None] if per_row else angles  # (B, 1, T, d/2): the same for every head
    turn = torch.polar(torch.ones_like(angles), angles)
    inter = torch.view_as_real(torch.view_as_complex(x.view(2, 3, 10, d // 2, 2).contiguous()) * turn).flatten(-2)
    torch.testing.assert_close(R.apply_rope(x, positions, theta, "interleaved"), inter, rtol=1e-12, atol=1e-12)
    z = torch.complex(x[..., :d // 2], x[..., d // 2:]) * turn
    torch.testing.assert_close(R.apply_rope(x, positions, theta, "half"), torch.cat([z.real, z.imag], -1),
                               rtol=1e-12, atol=1e-12)


def test_layouts_are_equal_after_the_permutation():
    x = rand(2, 4, 9, 16)
    positions = torch.arange(100, 109)
    theta, _ = R.rope_frequencies(16)
    perm = R.rope_permutation(16)
    assert perm.tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15]
    torch.testing.assert_close(R.apply_rope(x[..., perm], positions, theta, "half"),
                               R.apply_rope(x, positions, theta, "interleaved")[..., perm], rtol=0, atol=1e-13)


def test_weights_converted_between_layouts_give_the_same_scores():
    """Meta's Llama (interleaved) weights, rows permuted per head, score identically with the half layout."""
    n_head, hd, d_in, T = 2, 8, 12, 6
    W_q, W_k, x = rand(n_head * hd, d_in, seed=1), rand(n_head * hd, d_in, seed=2), rand(1, T, d_in, seed=3)
    theta, _ = R.rope_frequencies(hd)

    def scores(Wq, Wk, layout):
        q = (x @ Wq.T).view(1, T, n_head, hd).transpose(1, 2)
        k = (x @ Wk.T).view(1, T, n_head, hd).transpose(1, 2)
        pos = torch.arange(T)
        return R.apply_rope(q, pos, theta, layout) @ R.apply_rope(k, pos, theta, layout).transpose(-1, -2)
    torch.testing.assert_close(scores(R.interleaved_to_half(W_q, n_head), R.interleaved_to_half(W_k, n_head), "half"),
                               scores(W_q, W_k, "interleaved"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("encoding", R.ENCODINGS)
def test_cached_decoding_at_an_offset_equals_the_full_forward(encoding):
    """TinyLM given a 5-token prompt, then one token at a time, then the last 3 at once, each call
    continuing from its cache, gives the logits of one causal pass over the whole sequence
    (float64): cached keys stay rotated at their absolute positions, and positions, biases and the
    causal mask are those of queries that come after the cached keys."""
    torch.manual_seed(0)
    model = R.TinyLM(encoding, vocab=11, d_model=16, n_head=2, n_layer=2, max_len=16).double().eval()
    idx = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    scaling = {"type": "yarn", "factor": 4, "original_len": 4} if encoding == "rope" else None
    full = model(idx, scaling)
    cache = [[] for _ in model.blocks]
    pieces = [model(idx[:, :5], scaling, cache)]
    pieces += [model(idx[:, t:t + 1], scaling, cache) for t in range(5, 9)]
    pieces.append(model(idx[:, 9:], scaling, cache))
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-10, atol=1e-10)
    assert cache[0][0].shape == (2, 2, 12, 8)  # (B, n_head, T, head_dim): every key, once


def rotate_half_reference(x, angles):  # float64 complex product, half layout; angles (T, d/2)
    half = x.size(-1) // 2
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], -1)


def test_angles_are_exact_at_32k_for_float32_inputs():
    """The angles must come out as in double precision (Python's math), even where float32 or
    bf16 positions would be off (bf16 cannot tell 32768 from 32769)."""
    head_dim = 64
    theta, _ = R.rope_frequencies(head_dim)
    x = torch.ones(1, 1, 2, head_dim)  # float32; half layout: pair i is (x_i, x_{i+32}) = (1, 1)
    y = R.apply_rope(x, torch.tensor([32768, 32769]), theta)
    assert y.dtype == torch.float32
    for row, m in enumerate([32768, 32769]):
        for i in (0, 1, 5, 31):
            angle = m * 10000.0 ** (-2 * i / head_dim)  # (1, 1) rotated: (cos - sin, sin + cos)
            assert abs(y[0, 0, row, i] - (math.cos(angle) - math.sin(angle))) < 1e-6
            assert abs(y[0, 0, row, i + 32] - (math.sin(angle) + math.cos(angle))) < 1e-6


def test_bf16_inputs_are_rotated_as_in_float64_then_rounded_once():
    """A bf16 input, rotated, equals the float64 rotation of the same numbers up to one rounding
    of the output to bf16: |y - y_64| <= 2^-8 |y_64| (bf16 keeps 8 significant bits and rounds to
    nearest), plus 1e-6 max|x| for the float32 arithmetic before it. Angles computed in bf16
    (32769 becomes 32768, theta_i keeps 3 digits) break that bound, so the check can fail."""
    d = 64
    theta = torch.tensor([10000.0 ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    positions = torch.tensor([0, 7, 1000, 32768, 32769])
    x = rand(2, 3, 5, d).bfloat16()
    y = R.apply_rope(x, positions, R.rope_frequencies(d)[0])
    assert y.dtype == torch.bfloat16
    exact = rotate_half_reference(x.double(), positions[:, None].double() * theta)
    bound = 2 ** -8 * exact.abs() + 1e-6 * x.double().abs().max()
    assert ((y.double() - exact).abs() <= bound).all()
    bf16_angles = (positions[:, None].bfloat16() * theta.bfloat16()).double()
    assert ((rotate_half_reference(x.double(), bf16_angles) - exact).abs() > bound).any()


# ----------------------------------------------------------------------------- context extension

def test_every_scaling_with_factor_one_is_plain_rope():
    theta, _ = R.rope_frequencies(32)
    for kind in ("linear", "ntk", "yarn"):
        scaled, factor = R.rope_frequencies(32, scaling={"type": kind, "factor": 1, "original_len": 64})
        torch.testing.assert_close(scaled, theta, rtol=1e-15, atol=0)
        assert factor == 1.0


def test_position_interpolation_reads_position_m_as_m_over_s():
    x = rand(1, 1, 5, 16)
    theta, _ = R.rope_frequencies(16)
    pi, _ = R.rope_frequencies(16, scaling={"type": "linear", "factor": 4})
    positions = torch.tensor([0, 4, 40, 400, 4000])
    torch.testing.assert_close(R.apply_rope(x, positions, pi), R.apply_rope(x, positions // 4, theta),
                               rtol=1e-12, atol=1e-12)
    assert R.unseen_angle_pairs(R.Config(), {"type": "linear", "factor": 4})[0] == "0/8"


def test_ntk_keeps_the_fastest_pair_and_slows_the_slowest_by_s():
    d, s = 64, 8.0
    theta, _ = R.rope_frequencies(d)
    ntk, _ = R.rope_frequencies(d, scaling={"type": "ntk", "factor": s})
    assert ntk[0] == theta[0] == 1.0  # short-range resolution unchanged
    assert math.isclose(ntk[-1], theta[-1] / s, rel_tol=1e-12)  # base' = base * s^(d/(d-2))
    assert ((ntk <= theta) & (ntk >= theta / s - 1e-18)).all()


def yarn_as_released(d, base, s, L, beta_fast=32, beta_slow=1):
    """YaRN as its authors released it (github.com/jquesnelle/yarn,
    scaled_rope/LlamaYaRNScaledRotaryEmbedding.py) and as Hugging Face runs rope_type="yarn"
    (_compute_yarn_parameters): the pair turning r times over L is
    i(r) = d ln(L / (2 pi r)) / (2 ln base); low = max(floor(i(beta_fast)), 0),
    high = min(ceil(i(beta_slow)), d - 1); for each pair j,
    ramp = clamp((j - low)/(high - low), 0, 1) (high - low = 0.001 when equal) and
    theta'_j = theta_j / s * ramp + theta_j * (1 - ramp); mscale = 0.1 ln s + 1. Python floats."""
    def index(r):
        return d * math.log(L / (2 * math.pi * r)) / (2 * math.log(base))
    low, high = max(math.floor(index(beta_fast)), 0), min(math.ceil(index(beta_slow)), d - 1)
    out = []
    for j in range(d // 2):
        theta = base ** (-2 * j / d)
        ramp = min(max((j - low) / (high - low if high != low else 0.001), 0.0), 1.0)
        out.append(theta / s * ramp + theta * (1 - ramp))
    return torch.tensor(out, dtype=torch.float64), 0.1 * math.log(s) + 1


@pytest.mark.parametrize("d,base,s,L,betas", [
    (128, 1e4, 8, 4096, (32, 1)), (64, 5e5, 4, 8192, (32, 1)), (128, 1e6, 16, 2048, (16, 2)),
    (16, 1e4, 4, 32, (32, 1)),  # the demo's sizes: low = 0, high = 2
    (16, 1e4, 2, 6, (32, 1))])  # low = high = 0
def test_yarn_matches_the_released_implementation(d, base, s, L, betas):
    yarn, factor = R.rope_frequencies(d, base, {"type": "yarn", "factor": s, "original_len": L,
                                                "beta_fast": betas[0], "beta_slow": betas[1]})
    expected, mscale = yarn_as_released(d, base, s, L, *betas)
    torch.testing.assert_close(yarn, expected, rtol=1e-13, atol=0)  # float64 both: rounding only
    assert math.isclose(factor, mscale, rel_tol=1e-15)


def test_yarn_worked_example_llama_sizes():
    """d = 128, base = 10000, s = 8, original L = 4096, beta_fast = 32, beta_slow = 1 (Llama 2 to
    32k, the paper's setting). The literal values were printed by Hugging Face transformers 5.24
    (ROPE_INIT_FUNCTIONS["yarn"], max_position_embeddings = 32768), which computes in float32,
    hence rtol 1e-6.
    By hand: i(32) = 20.94 and i(1) = 45.03, so pairs 0..20 keep theta, pairs 46.. get theta / 8,
    and pair 33 sits halfway: theta_33 * (0.5 / 8 + 0.5)."""
    scaling = {"type": "yarn", "factor": 8, "original_len": 4096}
    yarn, factor = R.rope_frequencies(128, 10000.0, scaling)
    hf = {0: 1.0, 20: 0.05623412877321243, 21: 0.04705791920423508, 25: 0.022776277735829353,
          33: 0.004871049430221319, 40: 0.0010338216088712215, 45: 0.0002443153061904013,
          46: 0.00016669018077664077, 63: 1.4434774129767902e-05}
    for i, value in hf.items():
        assert math.isclose(yarn[i], value, rel_tol=1e-6), (i, float(yarn[i]), value)
    assert math.isclose(yarn[33], 10000 ** (-66 / 128) * (0.5 / 8 + 0.5), rel_tol=1e-12)
    assert math.isclose(factor, 1.2079441541679836, rel_tol=1e-12)  # HF's attention_factor


def test_yarn_paper_ramp_keeps_fast_pairs_interpolates_slow_ones_and_ramps_between():
    """The paper's own ramp (Peng et al. 2023, "NTK-by-parts"), linear in the turn count r: pairs
    turning more than beta_fast = 32 times over L stay put, pairs turning less than beta_slow = 1
    time are divided by s exactly, the rest blend linearly. At Llama's sizes it differs from the
    released ramp by up to 57%, so it is an option, not the default."""
    d, L, s = 128, 4096, 8.0
    theta, _ = R.rope_frequencies(d, 10000.0)
    yarn, factor = R.rope_frequencies(d, 10000.0, {"type": "yarn", "factor": s, "original_len": L,
                                                   "ramp": "paper"})
    turns = L * theta / (2 * math.pi)
    fast, slow = turns > 32, turns < 1
    assert fast.sum() > 10 and slow.sum() > 10
    torch.testing.assert_close(yarn[fast], theta[fast], rtol=0, atol=0)
    torch.testing.assert_close(yarn[slow], theta[slow] / s, rtol=1e-15, atol=0)
    between = ~fast & ~slow
    gamma = (turns[between] - 1) / 31
    torch.testing.assert_close(yarn[between], theta[between] * ((1 - gamma) / s + gamma), rtol=1e-12, atol=0)
    assert math.isclose(factor, 0.1 * math.log(8) + 1)
    released, _ = yarn_as_released(d, 10000.0, s, L)
    assert 0.5 < (1 - yarn / released).abs().max() < 0.6  # pair 36: 0.00258 released, 0.00112 paper
    x = rand(1, 1, 1, d)  # at short positions the fast half of each vector rotates as before
    keep = torch.cat([fast, fast])
    y_plain = R.apply_rope(x, torch.tensor([7]), theta)
    y_yarn = R.apply_rope(x, torch.tensor([7]), yarn)
    torch.testing.assert_close(y_yarn[..., keep], y_plain[..., keep], rtol=0, atol=0)


def test_bad_rope_arguments():
    with pytest.raises(ValueError, match="must be even"):
        R.rope_frequencies(15)
    with pytest.raises(ValueError, match="unknown RoPE scaling type 'dynamic'"):
        R.rope_frequencies(16, scaling={"type": "dynamic", "factor": 2})
    with pytest.raises(ValueError, match="layout='neox'"):
        R.apply_rope(rand(1, 1, 2, 8), torch.arange(2), R.rope_frequencies(8)[0], layout="neox")


# ----------------------------------------------------------------------------- ALiBi and T5

def test_alibi_slopes_follow_the_formula():
    for n in (1, 2, 4, 8, 16, 32):  # powers of two: m_h = 2^(-8h/n), h = 1..n
        torch.testing.assert_close(R.alibi_slopes(n), torch.tensor([2 ** (-8 * h / n) for h in range(1, n + 1)]))
    assert R.alibi_slopes(8).tolist() == [1 / 2 ** h for h in range(1, 9)]  # the paper's 1/2, 1/4, ..., 1/256
    # 12 heads: the 8-head slopes 2^-1..2^-8, then the odd-h slopes of 16 heads, 2^(-h/2) for h = 1, 3, 5, 7
    expected = [2 ** -h for h in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    torch.testing.assert_close(R.alibi_slopes(12), torch.tensor(expected))
    assert len(R.alibi_slopes(6)) == 6 and len(set(R.alibi_slopes(6).tolist())) == 6


def test_alibi_bias_values_and_decoding_offset():
    bias = R.alibi_bias(4, 5)  # (4, 5, 5): -m_h |i - j|
    assert bias[1, 4, 1] == -2 ** -4 * 3 and bias[0, 2, 2] == 0
    torch.testing.assert_close(R.alibi_bias(4, 1, 9), R.alibi_bias(4, 9)[:, -1:])  # one new query after 8 cached


def test_t5_buckets_worked_example():
    """num_buckets = 32, max_distance = 128, causal: max_exact = 16 distances get their own bucket;
    distance n >= 16 goes to 16 + floor(ln(n/16) / ln(8) * 16), capped at 31. By hand:
    32 -> 16 + floor(5.33) = 21; 64 -> 16 + floor(10.67) = 26; 127 -> 16 + floor(15.94) = 31."""
    distance = torch.tensor([0, 1, 15, 16, 20, 32, 64, 127, 128, 5000])
    buckets = R.t5_bucket(-distance)  # key n steps behind the query: relative position j - i = -n
    assert buckets.tolist() == [0, 1, 15, 16, 17, 21, 26, 31, 31, 31]  # 20 -> 16 + floor(ln(1.25)/ln(8)*16) = 17
    assert R.t5_bucket(distance[1:]).tolist() == [0] * 9  # causal: keys ahead of the query all share bucket 0
    # bidirectional: 16 buckets each way, max_exact = 8: behind -> 0..15, ahead -> 16..31
    both = R.t5_bucket(torch.tensor([-3, 3, -8, 8, -1000, 1000]), bidirectional=True)
    assert both.tolist() == [3, 19, 8, 24, 15, 31]  # 8 -> 8 + floor(ln(1)/ln(16) * 8) = 8


def test_t5_bias_depends_on_distance_only_and_decodes_at_an_offset():
    torch.manual_seed(0)
    t5 = R.T5RelativeBias(n_head=3, num_buckets=16, max_distance=64)
    full = t5(40)  # (3, 40, 40)
    torch.testing.assert_close(full[:, 1:, 1:], full[:, :-1, :-1], rtol=0, atol=0)  # Toeplitz: b(i, j) = f(j - i)
    torch.testing.assert_close(t5(1, 40), full[:, -1:], rtol=0, atol=0)


# ----------------------------------------------------------------------------- absolute encodings, CLI, demo

def test_sinusoidal_positions_formula_and_shift_is_a_rotation():
    pe = R.sinusoidal_positions(200, 16).double()
    i, pos = 2, 123
    assert abs(pe[pos, 2 * i] - math.sin(pos / 10000 ** (2 * i / 16))) < 1e-6
    assert abs(pe[pos, 2 * i + 1] - math.cos(pos / 10000 ** (2 * i / 16))) < 1e-6
    k = 9  # PE(pos + k) = M_k PE(pos), M_k block-diagonal, [[cos wk, sin wk], [-sin wk, cos wk]] per pair
    w = 10000 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    s, c = pe[:-k, 0::2], pe[:-k, 1::2]
    torch.testing.assert_close(pe[k:, 0::2], s * torch.cos(w * k) + c * torch.sin(w * k), rtol=0, atol=1e-6)
    torch.testing.assert_close(pe[k:, 1::2], c * torch.cos(w * k) - s * torch.sin(w * k), rtol=0, atol=1e-6)


def test_learned_positions_refuse_to_extrapolate():
    table = R.LearnedPositions(16, 8)
    assert table(torch.arange(16)).shape == (16, 8)
    with pytest.raises(ValueError, match="position 16 is past max_len=16"):
        table(torch.arange(17))


def parse_error(argv, capsys, gpu=None):
    """The one-line message argparse prints to stderr when it exits with code 2."""
    with pytest.raises(SystemExit) as exit_info:
        R.parse_args(R.Config, argv, gpu)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_parse_args(capsys):
    cfg = R.parse_args(R.Config, ["--encodings=rope,t5", "--k=3", "--lr=0.01", "--plot"])
    assert cfg.encodings == "rope,t5" and cfg.k == 3 and cfg.lr == 0.01 and cfg.plot is True
    assert "encodings=rope,xpos: unknown ['xpos']" in parse_error(["--encodings=rope,xpos"], capsys)
    assert "k=40: use 1 to 31" in parse_error(["--k=40"], capsys)
    assert "unrecognized arguments: --layers=3" in parse_error(["--layers=3"], capsys)


# fields the old Config accepted, to fail later with a raw error (a division by zero in the
# cosine schedule, an empty batch, log of a base <= 1) or to train nothing
@pytest.mark.parametrize("field, value", [
    ("steps", 0), ("batch_size", 0), ("lr", 0.0), ("lr", -1.0), ("n_eval", 0), ("vocab", 0),
    ("n_layer", 0), ("n_head", 0), ("d_model", 0), ("d_model", 36), ("rope_base", 1.0),
    ("rope_base", -5.0), ("k", 0)])
def test_every_field_is_checked_before_any_work(field, value):
    with pytest.raises(ValueError, match=f"^{field}={value}"):  # one line that names the field
        R.Config(**{field: value})


def test_a_device_that_is_not_there_is_an_argparse_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    error = parse_error(["--device=cuda"], capsys, R.GPU)
    assert "--device=cuda, but this machine has only cpu" in error


def test_gpu_defaults_apply_on_cuda_and_the_command_line_wins(monkeypatch):
    monkeypatch.setattr(R, "pick_device", lambda name: "cuda")
    assert R.parse_args(R.Config, [], R.GPU).steps == R.GPU["steps"] != R.Config().steps
    assert R.parse_args(R.Config, ["--steps=7"], R.GPU).steps == 7


def test_plot_without_matplotlib_says_so_before_any_work(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError

    def no_work(name):
        raise RuntimeError("work started")
    monkeypatch.setattr(R, "pick_device", no_work)  # main's first step after the plot check
    with pytest.raises(RuntimeError, match="work started"):
        R.main(R.Config(plot=True))
    assert capsys.readouterr().out.startswith("note: --plot needs matplotlib")


def test_main_smoke(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    R.main(R.Config(train_len=8, k=2, d_model=16, n_head=2, n_layer=1, steps=3, batch_size=4,
                    n_eval=4, device="cpu", plot=True))
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()
            if line.strip().startswith(("3 ", "10 ", "100 ", "5003 "))]
    assert len(rows) == 4 and len({row[-2] for row in rows}) == 1  # m - n = 3: one RoPE score
    for text in ("long-term decay", "4L = 32", "learned", "sinusoidal", "alibi", "t5",
                 "+ position interpolation", "+ NTK-aware", "+ YaRN"):
        assert text in out
    png = tmp_path / "out" / "rope" / "accuracy.png"
    if importlib.util.find_spec("matplotlib") is None:  # CI: the note, and no PNG
        assert out.startswith("note: --plot needs matplotlib") and not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
