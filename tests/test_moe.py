"""moe.py against independent references: a float64 "every expert x gate" re-computation, the
naive per-expert loop, closed forms of the Switch and z-losses, and a hand-worked capacity example."""
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import gpt
import moe

SPEC = importlib.util.spec_from_file_location(
    "bench_moe", os.path.join(os.path.dirname(__file__), "..", "bench", "moe.py"))
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def make_moe(dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(n_embd=16, n_expert=4, top_k=2, expert_hidden=8)
    return moe.MoE(moe.MoEConfig(**{**fields, **overrides})).to(dtype)


def swiglu(x, w_in, w_out):  # (SiLU(x W_gate) * x W_up) W_down, weights in nn.Linear's (out, in) layout
    gate, up = w_in.chunk(2, dim=0)
    return (F.silu(x @ gate.T) * (x @ up.T)) @ w_out.T


def reference_moe(layer, x):
    """Every expert on every token, in float64, weighted by a gate that is softmax over the top-k
    logits (zero for the other experts), plus each shared expert written out on its own."""
    cfg, x = layer.cfg, x.double()
    logits = x @ layer.router.gate.weight.double().T  # (N, E)
    top = logits.topk(cfg.top_k, dim=-1)
    G = torch.zeros_like(logits).scatter(1, top.indices, torch.softmax(top.values, dim=-1))  # (N, E)
    y = sum(G[:, e:e + 1] * swiglu(x, layer.experts.w_in[e].double(), layer.experts.w_out[e].double())
            for e in range(cfg.n_expert))
    h, H = cfg.expert_hidden, cfg.n_shared * cfg.expert_hidden
    for j in range(cfg.n_shared):  # shared expert j owns hidden units j*h .. (j+1)*h of the wide one
        w_in, w_out = layer.shared.w_in[0].double(), layer.shared.w_out[0].double()
        w_in_j = torch.cat([w_in[j * h:(j + 1) * h], w_in[H + j * h:H + (j + 1) * h]])
        y = y + swiglu(x, w_in_j, w_out[:, j * h:(j + 1) * h])
    return y


# ----------------------------------------------------------------------------- the layer's output

@pytest.mark.parametrize("top_k,n_shared", [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_dropless_output_equals_every_expert_times_gate(top_k, n_shared):
    layer = make_moe(top_k=top_k, n_shared=n_shared)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    y = layer(x)
    if top_k == 1:  # top-1 weights by the raw probability p_i, not by softmax over one logit (= 1)
        p = torch.softmax(x.view(-1, 16) @ layer.router.gate.weight.T, -1).max(-1).values
        ref = reference_moe(layer, x.view(-1, 16))  # gate 1 per token; shared part none here
        torch.testing.assert_close(y.view(-1, 16), ref * p[:, None], rtol=1e-10, atol=1e-12)
    else:
        torch.testing.assert_close(y.view(-1, 16), reference_moe(layer, x.view(-1, 16)), rtol=1e-10, atol=1e-12)
    assert layer.stats["dropped"] == 0


def test_grouped_matmul_path_equals_reference_in_float32():
    if not moe.grouped_mm_runs("cpu", torch.float32):
        pytest.skip("torch._grouped_mm does not run on this CPU build; the loop path is tested above")
    layer = make_moe(torch.float32, n_shared=1)
    x = torch.randn(64, 16)
    torch.testing.assert_close(layer(x).double(), reference_moe(layer, x), rtol=1e-5, atol=1e-6)


def test_router_runs_in_float32_under_bf16_autocast():
    layer = make_moe(torch.float32)
    x = torch.randn(32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, probs, _, gates = layer.router(x)
        y = layer(x)
    assert logits.dtype == probs.dtype == gates.dtype == torch.float32
    torch.testing.assert_close(logits, x @ layer.router.gate.weight.T)  # no bf16 rounding in the scores
    torch.testing.assert_close(y.double(), reference_moe(layer, x), rtol=0.05, atol=0.02)  # bf16 experts


# ----------------------------------------------------------------------------- dispatch

@pytest.mark.parametrize("capacity", [0, 5])
def test_sorted_dispatch_equals_the_loop_forward_and_backward(capacity):
    layer = make_moe(n_expert=6, top_k=2)
    x = torch.randn(24, 16, dtype=torch.float64)
    _, _, expert_index, gates = layer.router(x)
    outputs, grads = [], []
    for dispatch in (lambda *a: moe.dispatch_sorted(*a, capacity=capacity)[0],
                     lambda *a: bench.dispatch_loop(*a, capacity=capacity)):
        xi, gi = x.clone().requires_grad_(), gates.detach().clone().requires_grad_()
        layer.zero_grad()
        y = dispatch(xi, expert_index, gi, layer.experts)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outputs.append(y)
        grads.append([xi.grad, gi.grad, layer.experts.w_in.grad.clone(), layer.experts.w_out.grad.clone()])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    for sorted_grad, loop_grad in zip(*grads):
        torch.testing.assert_close(sorted_grad, loop_grad, rtol=1e-12, atol=1e-12)


def test_grouped_dispatch_equals_the_loop_forward_and_backward():
    if not moe.grouped_mm_runs("cpu", torch.float32):
        pytest.skip("torch._grouped_mm does not run on this CPU build")
    layer = make_moe(torch.float32, n_expert=8, expert_hidden=16)
    x = torch.randn(50, 16)
    _, _, expert_index, gates = layer.router(x)
    expert_index[:, 0] = expert_index[:, 0].clamp(max=5)  # leave expert 7 with few or no tokens
    results = []
    for grouped in (True, False):
        xi = x.clone().requires_grad_()
        layer.zero_grad()
        y, _ = moe.dispatch_sorted(xi, expert_index, gates.detach(), layer.experts, grouped=grouped)
        y.square().sum().backward()
        results.append([y, xi.grad, layer.experts.w_in.grad.clone(), layer.experts.w_out.grad.clone()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_capacity_drops_exactly_the_overflow_in_priority_order():
    """Worked example: 5 tokens, 3 experts, top-2, capacity 2 (= ceil(0.6 * 2 * 5 / 3)).
    Choices (first, second): t0 (0,1)  t1 (0,2)  t2 (1,0)  t3 (0,1)  t4 (2,0).
    Queues, first choices then second choices, earlier tokens first:
      expert 0: t0 t1 t3 | t2 t4  -> keeps t0, t1; drops t3 (1st choice), t2 and t4 (2nd choice)
      expert 1: t2 | t0 t3        -> keeps t2, t0; drops t3
      expert 2: t4 | t1           -> keeps both
    So 4 of 10 assignments drop, and t3 loses both experts: its output is 0, the residual carries it."""
    layer = make_moe(n_embd=8, n_expert=3, top_k=2, capacity_factor=0.6)
    scores = torch.tensor([[3., 2, 0], [3, 0, 2], [2, 3, 0], [3, 2, 0], [2, 0, 3]], dtype=torch.float64)  # (N, E)
    with torch.no_grad():  # token n is the basis vector e_n, so its logits are column n of W_g
        layer.router.gate.weight.zero_()[:, :5] = scores.T
    x = torch.eye(8, dtype=torch.float64)[:5]
    y = layer(x)
    _, _, expert_index, gates = layer.router(x)
    assert expert_index.tolist() == [[0, 1], [0, 2], [1, 0], [0, 1], [2, 0]]
    kept = {0: [(0, 0), (1, 1)], 1: [(0, 0), (2, 1)], 2: [(1, 0)], 3: [], 4: [(2, 0)]}  # token: [(expert, choice)]
    for token, pairs in kept.items():
        expected = torch.zeros(8, dtype=torch.float64)
        for e, c in pairs:  # gates keep their dropless values (no renormalisation after dropping)
            expected += gates[token, c] * swiglu(x[token], layer.experts.w_in[e], layer.experts.w_out[e])
        torch.testing.assert_close(y[token], expected, rtol=1e-12, atol=0)
    assert y[3].abs().max() == 0
    assert layer.stats["dropped"].item() == pytest.approx(0.4)
    token, choice, counts = moe.sort_by_expert(expert_index, 3, capacity=2)
    assert list(zip(token.tolist(), choice.tolist())) == [(0, 0), (1, 0), (2, 0), (0, 1), (4, 0), (1, 1)]
    assert counts.tolist() == [2, 2, 2]


# ----------------------------------------------------------------------------- the router and its losses

def test_top_k_gates_are_softmax_over_the_top_k_logits():
    layer = make_moe(n_expert=8, top_k=3)
    x = torch.randn(40, 16, dtype=torch.float64)
    logits, probs, expert_index, gates = layer.router(x)
    top = logits.topk(3, dim=-1)  # softmax over the chosen logits ...
    assert torch.equal(expert_index, top.indices)
    torch.testing.assert_close(gates, torch.softmax(top.values, -1), rtol=1e-12, atol=1e-14)
    p = torch.softmax(logits, -1).topk(3, dim=-1).values  # ... equals softmax, top-k, renormalise
    torch.testing.assert_close(gates, p / p.sum(-1, keepdim=True), rtol=1e-12, atol=1e-14)


def test_top1_router_gets_a_gradient_through_the_raw_probability():
    layer = make_moe(top_k=1, aux_loss_coef=0.0, z_loss_coef=0.0)
    with torch.no_grad():  # experts of O(1) output, so a wrong or zero gradient cannot hide under gradcheck's atol
        layer.experts.w_in.mul_(20), layer.experts.w_out.mul_(20)
    x = torch.randn(20, 16, dtype=torch.float64)
    _, probs, _, gates = layer.router(x)
    torch.testing.assert_close(gates[:, 0], probs.max(-1).values)  # p_i itself, below 1
    assert gates.max() < 1
    w = layer.router.gate.weight.detach().clone().requires_grad_()
    out = lambda w: torch.func.functional_call(layer, {"router.gate.weight": w}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(out, (w,))  # the analytic gradient is the true one (fixed routing) ...
    (grad,) = torch.autograd.grad(out(w).square().sum(), w)
    assert grad.abs().max() > 0.1  # ... and it is not zero
    renormalised = gates / gates.sum(-1, keepdim=True)  # what top-1 renormalisation would give: exactly 1
    assert torch.equal(renormalised, torch.ones_like(gates))


def test_load_balancing_loss_is_exactly_one_under_uniform_routing():
    E, N = 8, 64
    probs = torch.full((N, E), 1 / E)
    for k in (1, 2, 4):  # token n picks experts n, n+1, ... (mod E): every expert gets N*k/E
        expert_index = (torch.arange(N)[:, None] + torch.arange(k)) % E
        assert moe.load_balancing_loss(probs, expert_index, E).item() == pytest.approx(1.0, abs=1e-6)
        assert moe.load_balancing_loss(probs, expert_index, E, alpha=0.01).item() == pytest.approx(0.01, abs=1e-8)
    collapsed = F.one_hot(torch.zeros(N, dtype=torch.long), E).float()  # all on expert 0, p_0 = 1: E
    assert moe.load_balancing_loss(collapsed, torch.zeros(N, 1, dtype=torch.long), E).item() == pytest.approx(E)


def test_load_balancing_loss_worked_example_and_mixtral_form():
    # f = (3/4, 1/4), P = mean of the rows = (0.7, 0.3): 2 * (0.75 * 0.7 + 0.25 * 0.3) = 1.2
    probs = torch.tensor([[.9, .1], [.8, .2], [.7, .3], [.4, .6]])
    assert moe.load_balancing_loss(probs, torch.tensor([[0], [0], [0], [1]]), 2).item() == pytest.approx(1.2)
    # Mixtral's form, E * sum_{choice, i} mean_n one_hot * P_i, is k times ours
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(30, 6), -1)
    expert_index = probs.topk(3, -1).indices
    mixtral = 6 * (F.one_hot(expert_index, 6).float().mean(0) * probs.mean(0)).sum()
    torch.testing.assert_close(3 * moe.load_balancing_loss(probs, expert_index, 6), mixtral)


def test_router_z_loss_matches_its_formula():
    logits = torch.randn(10, 5, dtype=torch.float64) * 3
    expected = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 10
    assert moe.router_z_loss(logits).item() == pytest.approx(expected, rel=1e-12)
    assert moe.router_z_loss(torch.zeros(4, 8)).item() == pytest.approx(math.log(8) ** 2)  # (log E)^2


def test_aux_free_bias_changes_selection_but_not_gate_values():
    layer = make_moe(n_expert=6, top_k=2)
    x = torch.randn(50, 16, dtype=torch.float64)
    logits, _, index_before, gates_before = layer.router(x)
    layer.router.bias[3] = 1.0  # p_i + b_i: expert 3 now wins every token's selection
    logits_after, _, index_after, gates_after = layer.router(x)
    assert torch.equal(logits, logits_after)
    assert (index_after == 3).any(-1).all() and not (index_before == 3).any(-1).all()
    torch.testing.assert_close(gates_after, torch.softmax(logits.gather(-1, index_after), -1))  # unbiased logits
    same = (index_after == index_before).all(-1)
    assert same.any()
    torch.testing.assert_close(gates_after[same], gates_before[same], rtol=0, atol=0)


def test_aux_free_bias_moves_against_the_load_only_in_training():
    layer = make_moe(n_expert=4, top_k=1, bias_update_rate=0.1)
    with torch.no_grad():
        layer.router.gate.weight.zero_()[0, 0] = 5.0  # tokens with x_0 > 0 all pick expert 0
    x = torch.randn(40, 16, dtype=torch.float64).abs()
    layer.eval()(x)
    assert layer.router.bias.abs().max() == 0
    layer.train()(x)
    load = layer.stats["load"]  # expert 0 overloaded (all of it), the rest idle
    assert load[0] == 1
    torch.testing.assert_close(layer.router.bias, torch.tensor([-0.1, 0.1, 0.1, 0.1], dtype=torch.float64))


def test_noisy_gating_noise_has_softplus_std_in_training_only():
    layer = make_moe(torch.float32, n_expert=8, noisy_gating=True)
    x = torch.randn(5000, 16)
    clean = x @ layer.router.gate.weight.T
    torch.testing.assert_close(layer.router.eval()(x)[0], clean)
    noise = layer.router.train()(x)[0] - clean  # W_noise = 0 at init: std softplus(0) = ln 2
    assert noise.std().item() == pytest.approx(math.log(2), abs=0.02)
    assert noise.mean().abs().item() < 0.02


# ----------------------------------------------------------------------------- the MoE-GPT and the demo

def test_moe_gpt_losses_and_active_parameters(tiny_gpt_config):
    moe_cfg = moe.MoEConfig(n_embd=32, n_expert=4, top_k=2, expert_hidden=8)
    model = moe.moe_gpt(tiny_gpt_config, moe_cfg)
    idx = torch.randint(0, 64, (2, 12))
    _, loss = model(idx, idx)
    aux = moe.aux_loss(model)
    layers = moe.moe_layers(model)
    assert len(layers) == tiny_gpt_config.n_layer
    torch.testing.assert_close(aux, sum(m.aux_loss for m in layers))
    (loss + aux).backward()
    assert all(m.router.gate.weight.grad.abs().max() > 0 for m in layers)
    skipped = tiny_gpt_config.n_layer * (4 - 2) * 3 * 32 * 8  # (E - k) experts of 3 matrices d x h per layer
    assert moe.active_params(model) == gpt.count_params(model) - skipped
    assert moe.active_params(gpt.GPT(tiny_gpt_config)) == gpt.count_params(gpt.GPT(tiny_gpt_config))


def test_bad_configs_are_clear_errors(tiny_gpt_config):
    with pytest.raises(ValueError, match="top_k=9"):
        moe.MoEConfig(n_expert=8, top_k=9)
    with pytest.raises(ValueError, match="must equal GPTConfig.n_embd"):
        moe.moe_gpt(tiny_gpt_config, moe.MoEConfig(n_embd=64))


def demo_config(out_dir, data, **overrides):
    fields = dict(data=data, steps=3, batch_size=2, block_size=16, n_layer=1, n_embd=32,
                  n_expert=4, eval_batches=1, device="cpu", out_dir=str(out_dir))
    return moe.DemoConfig(**{**fields, **overrides})


def log_rows(cfg):
    with open(os.path.join(cfg.out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_main_smoke(tmp_path, capsys, corpus_file, monkeypatch):
    """Without matplotlib, --plot is a note before any work, and no PNG."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    cfg = demo_config(tmp_path, corpus_file, aux_free=True, plot=True)
    moe.main(cfg)
    out = capsys.readouterr().out
    assert out.startswith("note: --plot needs matplotlib")
    assert not os.path.exists(os.path.join(cfg.out_dir, "moe.png"))
    assert "MoE, no balancing loss" in out and "busiest expert in each layer" in out
    results = [r for r in log_rows(cfg) if "val_loss" in r]
    assert [r["model"] for r in results] == ["dense", "MoE 4x top-2", "MoE, no balancing loss",
                                             "MoE, aux-free bias"]
    assert all(len(r["load"]) == 1 and sum(r["load"][0]) == pytest.approx(1) for r in results[1:])


def test_resume_is_exact(tmp_path, corpus_file):
    """Three models of 4 steps in one go equal a stop inside the second (global step 6), then
    --resume: the last model's weights bit for bit, and the same log rows (timings aside)."""
    whole = demo_config(tmp_path / "whole", corpus_file, steps=4, ckpt_every=3)
    moe.main(whole)
    split = dataclasses.replace(whole, out_dir=str(tmp_path / "split"), stop_after=6)
    moe.main(split)
    assert gpt.load_checkpoint(os.path.join(split.out_dir, "ckpt.pt"))["step"] == 6
    moe.main(dataclasses.replace(split, stop_after=0, resume=True))
    a, b = (gpt.load_checkpoint(os.path.join(c.out_dir, "ckpt.pt"))["model"] for c in (whole, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [log_rows(whole), log_rows(split)]
    for row in rows[0] + rows[1]:
        row.pop("ms_per_step", None)  # a timing: the only field allowed to differ
    assert rows[0] == rows[1]
    assert len([r for r in log_rows(whole) if "val_loss" in r]) == 3


def test_bad_input_is_one_line_before_any_work(tmp_path, corpus_file):
    latin1, empty, short = tmp_path / "latin1.txt", tmp_path / "empty.txt", tmp_path / "short.txt"
    latin1.write_bytes("caf\xe9 au lait ".encode("latin-1") * 200)
    empty.write_text("")
    short.write_text("a few words only")
    for path, says in [(latin1, "latin1.txt is not UTF-8"), (empty, "empty: .*empty.txt"),
                       (short, "short.txt.* too short")]:
        with pytest.raises(SystemExit, match=f"^error: .*{says}"):
            moe.main(demo_config(tmp_path / "out", str(path)))
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="^error: .*not a readable checkpoint"):
        moe.main(demo_config(garbage, corpus_file, resume=True))
    moe.main(demo_config(tmp_path / "run", corpus_file, stop_after=1))
    with pytest.raises(SystemExit, match="^error: .*steps=3"):  # saved with 3 steps per model
        moe.main(demo_config(tmp_path / "run", corpus_file, steps=5, resume=True))


@pytest.mark.parametrize("field,value", [("steps", 0), ("batch_size", 0), ("block_size", 0),
                                         ("n_layer", 0), ("n_embd", 66), ("n_expert", 0),
                                         ("top_k", 9), ("aux_loss_coef", -1.0),
                                         ("capacity_factor", -1.0), ("eval_capacity", 0.0),
                                         ("lr", 0.0), ("eval_batches", 0), ("ckpt_every", 0),
                                         ("stop_after", -1), ("data", "no/such/file.txt")])
def test_demo_config_checks_every_field(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        moe.DemoConfig(**{field: value})


def test_command_line_errors_exit_2_naming_the_problem(capsys):
    for argv, says in [(["--device=tpu"], "this machine has only"), (["--top_k=9"], "top_k=9")]:
        with pytest.raises(SystemExit) as stop:
            gpt.parse_args(moe.DemoConfig, argv, gpu=moe.GPU)
        assert stop.value.code == 2 and says in capsys.readouterr().err
    if not torch.cuda.is_available():  # on CPU the CPU defaults, GPU's only on CUDA
        assert gpt.parse_args(moe.DemoConfig, [], gpu=moe.GPU) == moe.DemoConfig()
        assert all(getattr(moe.DemoConfig(), k) != v for k, v in moe.GPU.items())


def test_the_layer_runs_without_gpt_and_the_demo_says_what_needs_it():
    code = ("import sys; sys.modules['gpt'] = None; import torch, moe\n"
            "layer = moe.MoE(moe.MoEConfig(n_embd=16, n_expert=4, expert_hidden=8))\n"
            "print(tuple(layer(torch.randn(2, 3, 16)).shape))\n"
            "moe.main(moe.DemoConfig(device='cpu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(moe.__file__))
    assert out.stdout.split("\n")[0] == "(2, 3, 16)"
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "gpt.py" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_plot_writes_the_curves_and_the_load_as_a_png(tmp_path, corpus_file):
    pytest.importorskip("matplotlib")
    cfg = demo_config(tmp_path, corpus_file, plot=True)
    moe.main(cfg)
    with open(os.path.join(cfg.out_dir, "moe.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bench_smoke(capsys):  # bench/moe.py, moved out of moe.py --bench
    bench.main(bench.BenchConfig(n_embd=16, tokens="32", repeats=1, device="cpu"))
    out = capsys.readouterr().out
    assert "naive loop" in out and "dense MLP" in out and len(out.strip().splitlines()) == 3


def test_benchs_every_expert_baseline_equals_the_reference():
    layer = make_moe(n_expert=6, top_k=2)
    x = torch.randn(30, 16, dtype=torch.float64)
    _, _, expert_index, gates = layer.router(x)
    y = bench.dispatch_dense(x, expert_index, gates, layer.experts)
    torch.testing.assert_close(y, reference_moe(layer, x), rtol=1e-10, atol=1e-12)


def test_train_runs_in_training_mode_whatever_mode_it_is_given():
    """The demo's loop trains with dropout on even when handed a model left in eval mode."""
    cfg = moe.DemoConfig(steps=2, batch_size=2, block_size=16, n_layer=1, n_embd=32, n_expert=4)
    model = moe.moe_gpt(gpt.GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2,
                                      n_embd=32, dropout=0.5),
                        moe.MoEConfig(n_embd=32, n_expert=4, top_k=2, expert_hidden=32)).eval()
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    ids = torch.randint(64, (200,), generator=torch.Generator().manual_seed(0))
    moe.train(model, "moe", 0, ids, cfg, None, lambda **row: None)
    assert modes == [True, True]
