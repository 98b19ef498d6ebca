"""train.py: learning happens, runs are exactly reproducible across resume, data parallelism
and gradient accumulation, the schedule and Muon match their definitions, bad input fails in one
line before any work, the real-data loaders and the nanoGPT bench run on local files, and
--plot draws the log."""
import base64
import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import gpt
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def final_weights(cfg):
    return gpt.load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))["model"]


def test_loss_falls_and_a_checkpoint_loads(tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, max_iters=60, eval_interval=20, n_embd=64,
                              n_head=2)
    result = train.main(cfg)
    val = [row["val_loss"] for row in result["history"]]
    assert val[-1] < val[0] - 1.0, val
    model, tok, ckpt = gpt.load_model(os.path.join(cfg.out_dir, "ckpt.pt"))
    assert ckpt["step"] == 60 and tok.n_vocab == 256 + len(gpt.SPECIAL_TOKENS)
    gpt.check_chat_model(model, tok, cfg.block_size)  # what sft.py --init asks of it
    gpt.main(gpt.SampleConfig(ckpt=os.path.join(cfg.out_dir, "ckpt.pt"), max_new_tokens=4))
    rows = [json.loads(line) for line in open(os.path.join(cfg.out_dir, "log.jsonl"))]
    assert [r["step"] for r in rows] == [0, 20, 40, 60]


def log_rows(cfg):
    """log.jsonl without the wall-clock column, the one thing two identical runs differ in."""
    with open(os.path.join(cfg.out_dir, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


def test_resume_is_exact(tiny_train_config, tmp_path):
    """2N steps in one go equal 3 steps, a stop, --resume, and the rest: bit for bit, and the same
    log (a fresh run's log replaces an older one; the resumed run keeps its own first rows). With
    Muon, so both optimizers' states come back (AdamW holds the embeddings, head and norms)."""
    cfg = dataclasses.replace(tiny_train_config, max_iters=8, eval_interval=4, dropout=0.1,
                              optimizer="muon")
    whole = dataclasses.replace(cfg, out_dir=str(tmp_path / "whole"))
    train.main(whole)
    split = dataclasses.replace(cfg, out_dir=str(tmp_path / "split"), stop_after=3)
    os.makedirs(split.out_dir)
    with open(os.path.join(split.out_dir, "log.jsonl"), "w") as f:
        f.write('{"step": 0, "val_loss": 1.0}\n')  # an earlier run's
    train.main(split)
    assert gpt.load_checkpoint(os.path.join(split.out_dir, "ckpt.pt"))["step"] == 3
    train.main(dataclasses.replace(split, stop_after=0, resume=True))
    a, b = final_weights(whole), final_weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert log_rows(split) == log_rows(whole) and [r["step"] for r in log_rows(whole)] == [0, 4, 8]


@pytest.fixture
def float64():
    """Whole runs in float64. Two orders of summation agree to ~1e-16 there; in float32 (~1e-7)
    Adam's step g / (sqrt(v) + eps) turns the difference of a near-zero gradient into a visible
    weight difference, whose size depends on the CPU's kernels (a 2.2e-6 miss on a Xeon)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


# float64 rounding (~1e-16) amplified by Adam's 1/eps = 1e8 at most, times lr = 2e-3, over a few
# steps stays below 1e-9; a different batch moves the weights by more than 1e-5 (checked below).
FLOAT64_RUNS_AGREE = dict(rtol=0, atol=1e-9)


def test_gradient_accumulation_equals_the_large_batch(tiny_train_config, tmp_path, float64):
    big = dataclasses.replace(tiny_train_config, batch_size=8, out_dir=str(tmp_path / "big"))
    small = dataclasses.replace(tiny_train_config, batch_size=2, grad_accum=4,
                                out_dir=str(tmp_path / "small"))
    train.main(big)
    train.main(small)
    a, b = final_weights(big), final_weights(small)
    assert a["lm_head.weight"].dtype == torch.float64
    for k in a:
        torch.testing.assert_close(a[k], b[k], **FLOAT64_RUNS_AGREE)
    untouched = dataclasses.replace(small, grad_accum=1, out_dir=str(tmp_path / "other"))
    train.main(untouched)  # a smaller batch is a different run: the comparison above can fail
    other = final_weights(untouched)["lm_head.weight"]
    assert not torch.allclose(a["lm_head.weight"], other, atol=1e-5)


# torchrun runs this: train.py's DDP run, then its FSDP run, in one process group (one launch, not
# two: starting torch in three processes is most of the time), float64 the default dtype
LAUNCHER = """import sys, torch
sys.path.insert(0, {root!r})
torch.set_default_dtype(torch.float64)
import gpt, train
train.train(gpt.parse_args(train.TrainConfig, {ddp!r}, gpu=train.GPU))
train.main(gpt.parse_args(train.TrainConfig, {fsdp!r}, gpu=train.GPU))  # main ends the group
"""


def cli_args(cfg):
    return [f"--{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)]


def test_two_process_data_parallel_matches_one_process(tiny_train_config, tmp_path, float64):
    """2 processes (gloo, CPU) x 2 micro-batches x 2 sequences = 1 process with 8, for DDP and FSDP:
    one launch covers the gradient sync and its deferral (no_sync, set_requires_gradient_sync)."""
    single = dataclasses.replace(tiny_train_config, batch_size=8, max_iters=4, eval_interval=2,
                                 out_dir=str(tmp_path / "single"))
    train.main(single)
    ddp, fsdp = (dataclasses.replace(single, batch_size=2, grad_accum=2, fsdp=mode == "fsdp",
                                     out_dir=str(tmp_path / mode)) for mode in ("ddp", "fsdp"))
    launcher = tmp_path / "launch_float64.py"
    launcher.write_text(LAUNCHER.format(root=ROOT, ddp=cli_args(ddp), fsdp=cli_args(fsdp)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(launcher)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    for parallel in (ddp, fsdp):
        a, b = final_weights(single), final_weights(parallel)
        assert a.keys() == b.keys() and b["lm_head.weight"].dtype == torch.float64
        for k in a:
            torch.testing.assert_close(a[k], b[k], **FLOAT64_RUNS_AGREE)
        logs = [[row["val_loss"] for row in log_rows(c)] for c in (single, parallel)]
        # the same windows; estimate_loss sums each loss as float32 (2^-24 relative, bf16 on CUDA)
        np.testing.assert_allclose(logs[0], logs[1], rtol=1e-6)


def test_lr_schedules_by_hand():
    cfg = train.TrainConfig(max_iters=100, warmup_frac=0.1, min_lr_frac=0.1)
    assert train.lr_factor(0, cfg) == pytest.approx(0.1)  # (0 + 1) / 10
    assert train.lr_factor(9, cfg) == pytest.approx(1.0)
    assert train.lr_factor(10, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert train.lr_factor(55, cfg) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert train.lr_factor(100, cfg) == pytest.approx(0.1)
    wsd = dataclasses.replace(cfg, schedule="wsd", decay_frac=0.2)
    assert train.lr_factor(50, wsd) == 1.0 and train.lr_factor(79, wsd) == 1.0
    assert train.lr_factor(90, wsd) == pytest.approx(0.55)  # halfway down the last 20 steps
    assert train.lr_factor(100, wsd) == pytest.approx(0.1)


def test_adamw_is_fused_and_matches_the_per_tensor_loop(tiny_gpt_config):
    """make_optimizers fuses AdamW on every device (CPU included, where torch would otherwise loop
    over the tensors); one step in float64 equals torch's single-tensor AdamW to rounding."""
    torch.manual_seed(0)
    model = gpt.GPT(tiny_gpt_config).double()
    ref = gpt.GPT(tiny_gpt_config).double()
    ref.load_state_dict(model.state_dict())
    cfg = train.TrainConfig()
    opt = train.make_optimizers(model, cfg)[0]
    assert opt.defaults["fused"]
    name_of = {id(p): n for n, p in model.named_parameters()}
    ref_params = dict(ref.named_parameters())
    groups = [dict(params=[ref_params[name_of[id(p)]] for p in g["params"]],
                   weight_decay=g["weight_decay"]) for g in opt.param_groups]
    ref_opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)
    x = torch.randint(64, (2, 8))
    for m, o in ((model, opt), (ref, ref_opt)):
        m(x, x)[1].backward()
        o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)  # float64: rounding only


def test_the_bench_model_is_no_larger_than_nanogpts():
    """nanoGPT's 4 x 128 character model counted from its model.py: wte 65 x 128, wpe 64 x 128, per
    block two LayerNorm weights (bias=False), attention 128 x 384 + 128 x 128, MLP 2 x 128 x 512,
    and ln_f: the 804,096 its train.py prints as 0.80M (it leaves out wpe). Ours at the bench's
    recipe (the byte vocabulary padded to 320, a SwiGLU of mlp_hidden) must not be larger."""
    nano = 65 * 128 + 64 * 128 + 4 * (2 * 128 + 128 * 384 + 128 * 128 + 2 * 128 * 512) + 128
    cfg = train.TrainConfig(**load_bench().OURS)
    with torch.device("meta"):
        assert gpt.count_params(gpt.GPT(cfg.model_config(320))) <= nano == 804_096


def test_muon_matches_torch_reference():
    """Our Muon against torch.optim.Muon (same defaults: Nesterov, 5 Newton-Schulz steps,
    sqrt(max(1, rows/cols)) scaling). torch iterates in bf16 and we in float32 on CPU, so they
    agree to bf16 precision."""
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("this torch has no torch.optim.Muon")
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(48, 16))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt_ours = train.Muon([ours], lr=0.02, weight_decay=0.01)
    opt_ref = torch.optim.Muon([ref], lr=0.02, weight_decay=0.01)
    start = ours.detach().clone()
    for _ in range(3):
        g = torch.randn(48, 16)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_ref.step()
    torch.testing.assert_close(ours - start, ref - start, rtol=0.03, atol=2e-3)


def test_muon_weight_decay_is_torchs(tiny_gpt_config):
    """--weight_decay reaches Muon's 2-D block weights, decoupled as in torch.optim.Muon:
    W <- W (1 - lr wd) - lr s NS(U). A zero gradient makes NS(U) = 0 in both (0 / max(|0|, eps)),
    so one step isolates the decay, which must then agree to float32 rounding."""
    model = gpt.GPT(tiny_gpt_config)
    cfg = train.TrainConfig(optimizer="muon", weight_decay=0.1, muon_lr=0.02)
    muon = train.make_optimizers(model, cfg)[1]
    params = muon.param_groups[0]["params"]
    assert len(params) == 4 * tiny_gpt_config.n_layer  # attention in and out, MLP in and out
    refs = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p in params + refs:
        p.grad = torch.zeros_like(p)
    muon.step()
    torch.optim.Muon(refs, lr=0.02, weight_decay=0.1).step()
    for p, ref in zip(params, refs):
        torch.testing.assert_close(p.detach(), ref.detach())


def test_every_window_start_is_drawn_the_last_included():
    """On 100 tokens with block_size=16 the valid starts are 0..83: the window at 83 reads tokens
    83..98 and predicts 84..99, so the last token is a target too."""
    ids = np.arange(100)
    cfg = train.TrainConfig(block_size=16, batch_size=1000)  # 1000 draws of 84 values: all appear
    starts = train.step_starts(len(ids), cfg, torch.Generator().manual_seed(0), world=1)
    assert starts.min() == 0 and starts.max() == 83
    x, y = train.get_batch(ids, [83], 16, "cpu")
    assert x[0, 0].item() == 83 and y[0, -1].item() == 99


def test_newton_schulz_orthogonalises():
    torch.manual_seed(0)
    G = torch.randn(64, 32) @ torch.diag(torch.logspace(-1, 1, 32))  # singular values span ~150x
    s = torch.linalg.svdvals(train.newton_schulz(G))
    assert s.min() > 0.6 and s.max() < 1.25  # five quintic steps squeeze them all near 1
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    X = train.newton_schulz(G)
    cos = (X * (U @ Vh)).sum() / (U @ Vh).norm() / X.norm()
    assert cos > 0.95  # and it points along U V^T


def test_each_optimizer_follows_its_own_peak_lr(tiny_train_config):
    """Muon's groups at muon_lr x the schedule, AdamW's at lr x the schedule, at every step."""
    cfg = dataclasses.replace(tiny_train_config, optimizer="muon", lr=3e-3, muon_lr=0.05)
    train_ids, _, tok = train.prepare_data(cfg)
    model = gpt.GPT(cfg.model_config(tok.model_vocab_size))
    optimizers = train.make_optimizers(model, cfg)
    assert {type(opt).__name__ for opt in optimizers} == {"Muon", "AdamW"}
    data_gen = torch.Generator().manual_seed(0)
    for step in (0, 5):
        train.train_step(model, optimizers, train_ids, cfg, data_gen, step, "cpu", 0, 1)
        for opt in optimizers:
            peak = cfg.muon_lr if type(opt).__name__ == "Muon" else cfg.lr
            assert {g["lr"] for g in opt.param_groups} == {peak * train.lr_factor(step, cfg)}


def test_muon_option_trains(tiny_train_config):
    cfg = dataclasses.replace(tiny_train_config, optimizer="muon", max_iters=30, eval_interval=30)
    result = train.main(cfg)
    assert result["history"][-1]["val_loss"] < result["history"][0]["val_loss"] - 0.5


def test_fineweb_shard_reader(tmp_path):
    path = tmp_path / "shard.bin"
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [train.SHARD_MAGIC, 1, 5]
    path.write_bytes(header.tobytes() + np.array([1, 2, 3, 50256, 7], dtype=np.uint16).tobytes())
    assert train.read_shard(str(path)).tolist() == [1, 2, 3, 50256, 7]
    path.write_bytes(header.tobytes() + np.array([1, 2], dtype=np.uint16).tobytes())
    with pytest.raises(ValueError, match="truncated"):
        train.read_shard(str(path))
    path.write_bytes(b"\0" * 2048)
    with pytest.raises(ValueError, match="not a GPT-2 token shard"):
        train.read_shard(str(path))


def test_offline_download_falls_back_to_the_embedded_corpus(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise train.urllib.error.URLError("no network")
    monkeypatch.setattr(train.urllib.request, "urlopen", offline)
    name, text = train.load_text(train.TrainConfig(data="shakespeare", cache_dir=str(tmp_path)))
    assert name == "embedded" and text == gpt.embedded_corpus()
    assert "falling back to the embedded corpus" in capsys.readouterr().out


def test_bad_data_is_a_clear_error_before_any_work(tiny_train_config, tmp_path):
    """One line that names the file, before anything is tokenised or cached. A Latin-1 file used
    to train on replacement characters."""
    cases = [(b"caf\xe9 au lait " * 100, "latin1.txt", "latin1.txt is not UTF-8 text (byte 3"),
             (b"  \n", "empty.txt", "the corpus is empty: "),
             (b"just a few words, far too few", "short.txt", "too few for block_size=16")]
    for content, name, message in cases:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SystemExit, match=re.escape(message)) as exit:
            train.main(dataclasses.replace(tiny_train_config, data=str(tmp_path / name)))
        assert str(exit.value).startswith("error: ")
        assert os.path.exists(tiny_train_config.cache_dir) == (name == "short.txt")


def test_a_url_is_downloaded_once_and_cached(tiny_train_config, tmp_path, monkeypatch):
    """--data=URL and --data=shakespeare on a local file:// URL (urllib reads those too)."""
    source = tmp_path / "remote" / "input.txt"
    source.parent.mkdir()
    source.write_text("To be, or not to be, that is the question. " * 20, encoding="utf-8")
    monkeypatch.setattr(train, "SHAKESPEARE_URL", source.as_uri())
    for data in (source.as_uri(), "shakespeare"):
        cfg = dataclasses.replace(tiny_train_config, data=data)
        assert train.load_text(cfg) == ("input", source.read_text())
    source.unlink()  # the cached copy is read from now on
    assert train.load_text(cfg) == ("input", "To be, or not to be, that is the question. " * 20)
    assert train.main(cfg)["history"][-1]["step"] == cfg.max_iters


def test_fineweb_trains_from_local_shards(tiny_train_config, tmp_path, monkeypatch):
    """Two shards in FineWeb's layout (256 int32 header: magic, version, count; uint16 ids),
    fetched through file:// URLs, with a byte-level .tiktoken ranks file (base64 token, rank)."""
    ids = np.frombuffer(gpt.embedded_corpus()[:3000].encode(), dtype=np.uint8).astype(np.uint16)
    for split, index, part in (("train", 1, ids[:2500]), ("val", 0, ids[2500:])):
        header = np.zeros(256, dtype=np.int32)
        header[:3] = [train.SHARD_MAGIC, 1, len(part)]
        shard = tmp_path / f"fineweb_{split}_{index:06d}.bin"
        shard.write_bytes(header.tobytes() + part.tobytes())
    url = f"{tmp_path.as_uri()}/fineweb_{{split}}_{{index:06d}}.bin"
    monkeypatch.setattr(train, "FINEWEB_URL", url)
    ranks = tmp_path / "bytes.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    cfg = dataclasses.replace(tiny_train_config, data="fineweb", tokenizer=str(ranks))
    train_ids, val_ids, tok = train.prepare_data(cfg)
    assert train_ids.tolist() == ids[:2500].tolist() and val_ids.tolist() == ids[2500:].tolist()
    assert tok.decode(val_ids[:50].tolist()) == gpt.embedded_corpus()[2500:2550]
    assert train.main(cfg)["history"][-1]["step"] == cfg.max_iters


BAD_FLAGS = [  # each is refused by argparse before any work, naming the flag and the rule
    ("--lr_max=1", "unrecognized arguments: --lr_max"),
    ("--max_iters=1e3", "invalid int value: '1e3'"),
    ("--schedule=linear", "schedule='linear'"),
    ("--n_embd=40 --n_head=3", "n_embd=40 is not divisible by n_head=3"),
    ("--n_embd=32 --n_head=4 --n_kv_head=3", "n_head=4 is not divisible by n_kv_head=3"),
    ("--data=no/such/file.txt", "data='no/such/file.txt': no such file"),
    ("--tokenizer=sentencepiece", "tokenizer='sentencepiece'"),
    ("--vocab_size=100", "vocab_size=100 must be >= 256"),
    ("--depth=0", "depth=0 must be >= 1"),
    ("--eval_interval=0", "eval_interval=0 must be >= 1"),
    ("--stop_after=-1", "stop_after=-1 must be >= 0"),
    ("--lr=0", "lr=0.0 must be > 0"),
    ("--dropout=1", "dropout=1.0 must be in [0, 1)"),
    ("--beta2=1.5", "beta2=1.5 must be in [0, 1)"),
    ("--warmup_frac=2", "warmup_frac=2.0 must be in [0, 1]"),
    ("--val_frac=1", "val_frac=1.0 must be in (0, 1)"),
    ("--fsdp --optimizer=muon", "--optimizer=muon does not support --fsdp")]


@pytest.mark.parametrize("argv, message", BAD_FLAGS)
def test_bad_config_is_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        gpt.parse_args(train.TrainConfig, argv.split())
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_device_that_is_not_here_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpt.parse_args(train.TrainConfig, ["--device=cuda"])
    assert "--device=cuda, but this machine has only cpu" in capsys.readouterr().err


def test_cpu_and_gpu_defaults(monkeypatch):
    """CPU: README's 3.49M-parameter model (its vocabulary of 1,024 rounds up to 1,088 rows).
    CUDA: GPT-2 small, 124,439,808 parameters in Hugging Face's gpt2 (Radford et al. 2019); ours
    has no biases nor position table (RoPE) but the same blocks (SwiGLU's 8/3 x 3 matrices hold
    as much as GELU's 4 x 2), 0.7% fewer. Counted on the meta device: nothing is allocated."""
    cpu = gpt.parse_args(train.TrainConfig, ["--device=cpu"], gpu=train.GPU)
    monkeypatch.setattr(gpt, "pick_device", lambda name="auto": "cuda")
    cuda = gpt.parse_args(train.TrainConfig, [], gpu=train.GPU)
    with torch.device("meta"):
        sizes = [gpt.count_params(gpt.GPT(c.model_config(vocab)))
                 for c, vocab in ((cpu, 1088), (cuda, 50304))]
    assert round(sizes[0] / 1e6, 2) == 3.49 and abs(sizes[1] / 124_439_808 - 1) < 0.01
    assert (cuda.block_size, cuda.batch_size, cuda.max_iters, cuda.lr) == (1024, 32, 5000, 6e-4)


def test_bad_resume_is_a_clear_error_before_any_work(tiny_train_config):
    """A missing, garbage or mismatched checkpoint: one line, before the data is even read, and
    the checkpoint left as it was."""
    resume = dataclasses.replace(tiny_train_config, resume=True)
    with pytest.raises(SystemExit, match="error: no checkpoint at"):
        train.main(resume)
    os.makedirs(tiny_train_config.out_dir)
    path = os.path.join(tiny_train_config.out_dir, "ckpt.pt")
    with open(path, "wb") as f:
        f.write(b"not a checkpoint at all")
    with pytest.raises(SystemExit, match="not a readable checkpoint"):
        train.main(resume)
    assert open(path, "rb").read() == b"not a checkpoint at all"
    assert not os.path.exists(tiny_train_config.cache_dir)  # nothing tokenised
    train.main(tiny_train_config)  # a good checkpoint
    before = open(path, "rb").read()
    for change, message in [(dict(n_embd=64), "--n_embd=32"),
                            (dict(batch_size=2), "--batch_size=4"),
                            (dict(optimizer="muon"), "--optimizer=adamw")]:
        with pytest.raises(SystemExit, match=f"was saved with {message}: resume with those"):
            train.main(dataclasses.replace(resume, **change))
    assert open(path, "rb").read() == before
    train.main(dataclasses.replace(resume, eval_interval=2, sample_tokens=0))  # only watched
    other = dataclasses.replace(resume, out_dir=tiny_train_config.out_dir + "_other")
    os.makedirs(other.out_dir)
    ckpt = torch.load(path, weights_only=False)
    ckpt["config"].pop("fsdp")  # as if another script's Config had saved it
    torch.save(ckpt, os.path.join(other.out_dir, "ckpt.pt"))
    with pytest.raises(SystemExit, match="was not saved by this script"):
        train.main(other)


class Recorder:
    """Stands in for matplotlib.pyplot (not installed in CI): records every call."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_plot_draws_the_logged_losses_next_to_the_log(tiny_train_config, monkeypatch):
    plt = Recorder()
    monkeypatch.setattr(gpt, "pyplot", lambda plot: plt if plot else None)
    cfg = dataclasses.replace(tiny_train_config, plot=True)
    train.main(cfg)
    curves = {kw["label"]: [list(a) for a in args]
              for call, args, kw in plt.calls if call == "plot"}
    rows = log_rows(cfg)
    assert curves == {key: [[r["step"] for r in rows], [r[key] for r in rows]]
                      for key in ("train_loss", "val_loss")}
    assert [args for call, args, _ in plt.calls if call == "savefig"] == [
        (os.path.join(cfg.out_dir, "loss.png"),)]


def test_plot_without_matplotlib_is_a_note_before_any_work(tiny_train_config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    train.main(dataclasses.replace(tiny_train_config, plot=True))
    out = capsys.readouterr().out
    assert out.index("--plot needs matplotlib") < out.index("parameters")


def test_peak_flops_takes_the_most_specific_name():
    # names as torch.cuda.get_device_name gives them; dense bf16 peaks from NVIDIA's data sheets
    # (which print twice these, "with sparsity"); a substring match got the first four wrong
    expected = {"NVIDIA H100 PCIe": 756e12, "NVIDIA L40": 181e12, "NVIDIA A10G": 70e12,
                "NVIDIA H100 NVL": 835e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12,
                "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
                "NVIDIA L40S": 362e12, "NVIDIA L4": 121e12, "NVIDIA A10": 125e12,
                "NVIDIA GeForce RTX 4090": 165e12, "Tesla V100-PCIE-16GB": 112e12,
                "Intel(R) Arc(TM) A770": None}
    assert {name: train.peak_flops(name) for name in expected} == expected


def test_mfu_is_achieved_flops_per_device_over_the_peak(tiny_train_config):
    # a worked example: 4M tokens in 10 s on 2 devices is 2e5 tokens/s each, so with a peak of
    # 8e5 x flops/token every device does a quarter of its peak: MFU 25.0%
    raw = gpt.GPT(gpt.GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32))
    peak = 8e5 * raw.flops_per_token(16)
    text, _ = train.report(raw, tiny_train_config, 4_000_000, 10.0, peak, world=2)
    assert f"25.0% of {peak / 1e12:.0f} TFLOP/s per device" in text
    assert "n/a" in train.report(raw, tiny_train_config, 4_000_000, 10.0, None, world=2)[0]


def test_report_counts_tokens_and_chinchilla(tiny_train_config, capsys):
    result = train.main(tiny_train_config)
    assert result["tokens"] == 8 * 4 * 16  # steps x batch x block
    out = capsys.readouterr().out
    assert "tokens/parameter" in out and "Chinchilla" in out and "MFU" in out


def load_bench():
    path = os.path.join(ROOT, "bench", "train_vs_nanogpt.py")
    spec = importlib.util.spec_from_file_location("bench_train_vs_nanogpt", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


FAKE_NANOGPT = {  # a stand-in checkout: nanoGPT's log lines and checkpoint keys, uniform logits
    "train.py": """import os, pickle, sys, torch
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
vocab = pickle.load(open("data/shakespeare_char/meta.pkl", "rb"))["vocab_size"]
os.makedirs(args["out_dir"], exist_ok=True)
for i in range(int(args["max_iters"]) + 1):
    if i and i % int(args["eval_interval"]) == 0:
        ckpt = dict(model={"bias": torch.zeros(vocab)}, model_args=dict(vocab=vocab), iter_num=i)
        torch.save(ckpt, os.path.join(args["out_dir"], "ckpt.pt"))
    print(f"iter {i}: loss 4.1000, time {10 * i + 5:.2f}ms, mfu -100.00%")
""",
    "model.py": """import torch
GPTConfig = dict
class GPT(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(cfg["vocab"]))
    def forward(self, x, targets=None):
        return self.bias.expand(*x.shape, -1), None
"""}


def test_bench_against_nanogpt_without_nanogpt(tmp_path, monkeypatch, capsys):
    """bench/train_vs_nanogpt.py end to end with a stand-in checkout whose train.py prints lines in
    nanoGPT's log format (its train.py: f"iter {iter_num}: loss {lossf:.4f}, time {dt*1000:.2f}ms,
    mfu ...") and saves at each eval, and our side for real at 4 iterations."""
    bench = load_bench()
    with pytest.raises(ValueError, match="is not a nanoGPT checkout"):
        bench.BenchConfig(nanogpt=str(tmp_path))
    fake = tmp_path / "nanoGPT"
    (fake / "data" / "shakespeare_char").mkdir(parents=True)
    for name, code in FAKE_NANOGPT.items():
        (fake / name).write_text(code)
    text = "".join(c for c in gpt.embedded_corpus()[:8000] if c.isascii())
    (tmp_path / "input.txt").write_text(text)
    cfg = bench.BenchConfig(nanogpt=str(fake), text=str(tmp_path / "input.txt"), iters=4,
                            eval_every=2, out_dir=str(tmp_path / "bench"))
    stoi = bench.prepare_nanogpt_data(text, cfg.nanogpt)
    val = np.fromfile(fake / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16)
    assert "".join(sorted(stoi)[i] for i in val) == text[int(len(text) * 0.9):]
    # iterations take 5, 15, 25, 35 ms; 0 and 2 also hold an eval, so each counts as the mean of
    # the others, 25 ms: 0.025 + 0.015 = 0.04 s after 2 steps, + 0.025 + 0.035 = 0.1 s after 4
    clock = bench.run_nanogpt(cfg, str(tmp_path / "nano"))
    assert clock == pytest.approx({0: 0.0, 2: 0.04, 4: 0.1})
    for name, value in dict(max_iters=4, depth=1, n_embd=32, mlp_hidden=64).items():
        monkeypatch.setitem(bench.OURS, name, value)  # a smaller model: the plumbing is the point
    result = bench.main(cfg)
    assert result["nanogpt"] == pytest.approx({2: math.log(len(stoi)), 4: math.log(len(stoi))})
    assert sorted(result["ours"]) == [2, 4] and result["ours"][4] < result["ours"][2]
    assert re.search(r"nanoGPT train.py +4 +25.00 +0.0 s \(step 2\)", capsys.readouterr().out)
    assert bench.time_to_loss({0: 0.0, 2: 1.5, 4: 3.0}, {0: 5.0, 2: 3.0, 4: 2.0}, 3.0) == (2, 1.5)
    assert bench.time_to_loss({0: 0.0}, {0: 5.0}, 3.0) is None
    rows = []
    uniform = bench.full_val_loss(lambda x: rows.append(len(x)) or torch.zeros(*x.shape, 7),
                                  list(range(7)) * 40, block=8, every=2)
    assert uniform == pytest.approx(math.log(7))  # every next character has probability 1/7
    assert sum(rows) == 17  # every 2nd of the (280 - 1) // 8 = 34 windows
