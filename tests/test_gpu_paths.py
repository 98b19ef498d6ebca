"""The GPU paths, caught on the CPU where they can be: each script's training step under bf16
autocast (CPU bf16 stands in for CUDA's) against its fp32 step, the equalities that must hold
whatever the precision (PPO's ratio of 1 on the first minibatch; DPO's ln 2 is in test_dpo.py),
gpt.GPT compiled by inductor against eager, train.py --compile, and bench/gpu.py --device=cpu."""
import copy
import dataclasses
import importlib.util
import json
import os
import random
import re
import shutil
import sys

import pytest
import torch
import torch.nn as nn

import diffusion_lm
import dpo
import gpt
import moe
import ppo
import sft
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = gpt.GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


def bf16(device):
    return torch.autocast("cpu", dtype=torch.bfloat16)


def rows(n, vocab=64, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(2, 7))] for _ in range(n)]


def assert_bf16_close(monkeypatch, model, step):
    """step(model) runs one training step of a script and returns its loss; run it on two copies
    of model, in fp32 and with gpt.autocast patched to CPU bf16, and compare loss and gradients.
    bf16 keeps 8 significant bits: each rounded operand is off by up to 2^-9 (0.2%) relative,
    and a 2-layer model's loss goes through some tens of them, forward and backward."""
    out = []
    for patch in (False, True):
        with monkeypatch.context() as m:
            if patch:
                m.setattr(gpt, "autocast", bf16)
            copied = copy.deepcopy(model)
            torch.manual_seed(0)
            loss = float(step(copied))
            grads = [p.grad.flatten() for p in copied.parameters() if p.grad is not None]
            out.append((loss, torch.cat(grads)))
    (loss32, grad32), (loss16, grad16) = out
    assert loss16 != loss32  # the step did run under the (patched) autocast
    # measured: loss within 3e-5, gradients within 6.3e-3 of the norm; fp32 accumulation keeps
    # the errors to the rounded operands, so one 2^-8 for the loss and five for the gradients
    assert abs(loss16 - loss32) <= 2 ** -8 * abs(loss32)
    assert (grad16 - grad32).norm() <= 5 * 2 ** -8 * grad32.norm()


def test_train_step_bf16_close_to_fp32(monkeypatch, tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, depth=2, grad_accum=2)
    ids = torch.randint(64, (2000,), generator=torch.Generator().manual_seed(0)).numpy()

    def step(model):  # no optimizer: the gradients stay for the comparison
        return train.train_step(model, [], ids, cfg, torch.Generator().manual_seed(0), 0, "cpu",
                                0, 1)
    torch.manual_seed(0)
    assert_bf16_close(monkeypatch, gpt.GPT(cfg.model_config(64)), step)


def test_finetune_bf16_close_to_fp32(monkeypatch):
    """gpt.finetune: sft.py's and ppo.py's base models, agent.py's tool traces."""
    pairs = list(zip(rows(32), rows(32, seed=1)))
    torch.manual_seed(0)
    assert_bf16_close(monkeypatch, gpt.GPT(TINY),
                      lambda model: gpt.finetune(model, pairs, steps=1, lr=0.0, batch_size=8))


def test_sft_packed_step_bf16_close_to_fp32(monkeypatch):
    examples = [(ids, [i > 1 for i in range(len(ids))]) for ids in rows(40)]
    packed = sft.pack(examples, TINY.block_size)
    cfg = sft.SFTConfig(steps=1, batch_size=4)
    losses = []

    def step(model):
        opt = torch.optim.AdamW(model.parameters(), lr=0.0)
        sft.train_sft(model, packed, opt, torch.Generator().manual_seed(0), cfg, 0, "cpu",
                      lambda done, loss: losses.append(loss))
        return losses[-1]
    torch.manual_seed(0)
    assert_bf16_close(monkeypatch, gpt.GPT(TINY), step)


def test_dpo_batch_loss_bf16_close_to_fp32(monkeypatch):
    torch.manual_seed(0)
    ref = gpt.GPT(TINY).eval().requires_grad_(False)
    policy = copy.deepcopy(ref).requires_grad_(True)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a policy away from the reference: margin != 0
    prompts, chosen, rejected = rows(8), rows(8, seed=1), rows(8, seed=2)

    def step(model):
        loss = dpo.batch_loss(model, ref, prompts, chosen, rejected, dpo.DPOConfig())[0]
        loss.backward()
        return loss.detach()
    assert_bf16_close(monkeypatch, policy, step)


def test_diffusion_lm_step_bf16_close_to_fp32(monkeypatch):
    cfg = diffusion_lm.DiffusionConfig(gen_length=16, n_layer=2, n_embd=32, batch_size=4)
    torch.manual_seed(0)
    models = nn.ModuleDict({"diffusion": gpt.GPT(dataclasses.replace(TINY, causal=False)),
                            "ar": gpt.GPT(TINY)})
    xy = torch.randint(1, 63, (4, 18), generator=torch.Generator().manual_seed(0))

    def step(both):  # the AR loss and the masked-diffusion bound, one update each
        opts = {k: torch.optim.AdamW(m.parameters()) for k, m in both.items()}
        losses = diffusion_lm.train_step(dict(both.items()), opts, xy, cfg, 0,
                                         torch.Generator().manual_seed(0))
        return sum(losses.values())
    assert_bf16_close(monkeypatch, models, step)


def test_moe_step_bf16_close_to_fp32(monkeypatch, tmp_path):
    cfg = moe.DemoConfig(steps=1, batch_size=4, block_size=16, n_layer=2, n_embd=64, n_expert=4)
    torch.manual_seed(0)
    model = moe.moe_gpt(dataclasses.replace(TINY, vocab_size=64, n_embd=64, n_kv_head=None),
                        moe.MoEConfig(n_embd=64, n_expert=4, top_k=2, expert_hidden=64))
    ids = torch.randint(64, (500,), generator=torch.Generator().manual_seed(0))
    logged = []

    def step(model):
        moe.train(model, "moe", 0, ids, cfg, None, lambda **row: logged.append(row["loss"]))
        return logged[-1]
    assert_bf16_close(monkeypatch, model, step)


def test_ppo_first_minibatch_ratio_is_1_under_bf16(monkeypatch, tmp_path):
    """The rollout's log pi_old and the first update's log pi come from the same weights, so
    rho = exp(log pi - log pi_old) is 1 on the first minibatch, exactly, as long as both are
    computed under the same autocast (a bf16 update against fp32 old log-probs starts from
    rho = exp(bf16 rounding noise): 1 +- 1.5e-3 here); and pi = pi_ref, so the KL is 0."""
    monkeypatch.setattr(gpt, "autocast", bf16)
    cfg = ppo.Config(iters=1, rollout_size=8, minibatch=8, epochs=1, n_embd=32, max_new_tokens=8)
    rng = random.Random(0)
    torch.manual_seed(0)
    policy, tok = ppo.start_model(cfg, rng)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    rm = ppo.ScalarModel(copy.deepcopy(ref)).eval().requires_grad_(False)
    seen, rows_logged, ppo_loss = [], [], ppo.ppo_loss

    def recording(logp, old_logp, *args):
        seen.append((logp.detach(), old_logp))
        return ppo_loss(logp, old_logp, *args)
    monkeypatch.setattr(ppo, "ppo_loss", recording)
    ppo.train_ppo(policy, ref, rm, tok, cfg, rng, torch.Generator().manual_seed(0),
                  lambda **row: rows_logged.append(row))
    logp, old_logp = seen[0]
    assert logp.dtype == torch.float32  # log-probs upcast from the bf16 logits
    torch.testing.assert_close(torch.exp(logp - old_logp), torch.ones_like(logp), rtol=0, atol=0)
    # log_softmax + gather (policy) against cross_entropy (reference), both in fp32 from the same
    # bf16 logits: only fp32 rounding of ~1e-7 per token is left
    assert abs(rows_logged[0]["kl"]) < 1e-5


# ----------------------------------------------------------------------------- torch.compile

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(cfg, eager, compiled, batch): the one model this file compiles, at the shape of the
    train.py run below, so that run finds the graphs already compiled (Dynamo guards on the
    module's structure and the tensors' shapes, not on which GPT it is)."""
    if not (shutil.which("g++") or shutil.which("clang++")) and os.environ.get(
            "REQUIRE_REFERENCES") != "1":
        pytest.skip("inductor on CPU needs a C++ compiler (g++ or clang++): none on this machine")
    tmp = tmp_path_factory.mktemp("compile")
    corpus = tmp / "corpus.txt"
    corpus.write_text(gpt.embedded_corpus()[:20_000], encoding="utf-8")
    cfg = train.TrainConfig(data=str(corpus), tokenizer="byte", cache_dir=str(tmp / "cache"),
                            out_dir=str(tmp / "out"), depth=2, n_embd=32, n_head=2, block_size=16,
                            batch_size=4, max_iters=3, eval_interval=3, eval_iters=1,
                            sample_tokens=0, device="cpu", compile=True)
    train_ids, _, tok = train.prepare_data(cfg)
    starts = train.step_starts(len(train_ids), cfg, torch.Generator().manual_seed(0), 1)[0, 0]
    torch.manual_seed(0)
    eager = gpt.GPT(cfg.model_config(tok.model_vocab_size))
    return cfg, eager, torch.compile(copy.deepcopy(eager)), train.get_batch(train_ids, starts, 16,
                                                                           "cpu")


def test_compiled_gpt_equals_eager_forward_and_backward(compiled):
    """Inductor fuses kernels and so reorders fp32 sums: measured 2.4e-7 of each tensor's largest
    entry (a couple of ulps); 1e-5 leaves room for another CPU's vector width."""
    cfg, eager, fast, (x, y) = compiled

    def assert_near(got, want, name=""):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max(), name
    with torch.no_grad():  # eval mode, no autograd: the graph train.estimate_loss runs
        assert_near(fast.eval()(x, y)[0], eager.eval()(x, y)[0])
    losses = [m.train()(x, y)[1] for m in (eager, fast)]
    for loss in losses:
        loss.backward()
    assert_near(losses[1], losses[0])
    for (name, p), q in zip(eager.named_parameters(), fast.parameters()):
        assert_near(q.grad, p.grad, name)


def test_train_compile_runs(compiled):
    result = train.main(compiled[0])
    assert [row["step"] for row in result["history"]] == [0, 3]
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]


# ----------------------------------------------------------------------------- bench/gpu.py

def bench_gpu():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import gpu
    return gpu


def test_bench_gpu_rows_pass_flags_their_scripts_accept(monkeypatch):
    """Each row's flags, read by its script's own parser (not run): a renamed flag fails here,
    not first on a GPU machine."""
    monkeypatch.syspath_prepend(ROOT)
    for i, (script, few, tiny) in enumerate(bench_gpu().ROWS.values()):
        argv = f"{script} {few} {tiny or ''} --device=cpu".split()
        argv = argv[argv.index("train.py"):] if argv[0] == "-m" else argv
        path = os.path.join(ROOT, argv[0])
        spec = importlib.util.spec_from_file_location(f"row{i}", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        config = re.search(r"main\((?:\w+\.)?parse_args\((\w+)", open(path).read()).group(1)
        parse = getattr(module, "parse_args", gpt.parse_args)
        assert dataclasses.is_dataclass(parse(getattr(module, config), argv[1:])), argv


def test_bench_gpu_harness_on_cpu(tmp_path):
    """bench/gpu.py --device=cpu on the rows that exercise each part of the harness: torchrun
    over two processes with train.py's throughput to read, a script run through the peak-memory
    wrapper with the TFLOP/s table to read (the PyTorch kernel on CPU), and a row CPU skips; the
    JSON holds what the table printed."""
    gpu = bench_gpu()
    out = str(tmp_path / "bench.json")
    cfg = gpu.BenchConfig(only="train-compile,flash,torchrun", out=out, device="cpu")
    rows = {r["row"]: r for r in gpu.main(cfg)}
    assert rows["train-compile"]["finished"] is None and "skipped" in rows["train-compile"]["note"]
    for name in ("flash", "torchrun"):
        assert rows[name]["finished"], rows[name]
    assert rows["torchrun"]["tok_per_s"] > 0 and rows["torchrun"]["steady_tok_per_s"] > 0
    assert rows["flash"]["peak_MiB"] > 0
    flash = rows["flash"]["tflops"]
    assert {(t["d"], t["causal"], t["N"]) for t in flash} == {
        (d, c, 128) for d in (64, 128) for c in (True, False)}
    assert all(t["err"] < 1e-4 for t in flash)  # ours against SDPA in float32: measured 4.5e-6
    assert json.load(open(out))["rows"] == list(rows.values())
    with pytest.raises(ValueError, match="no row nope"):
        gpu.BenchConfig(only="nope")
