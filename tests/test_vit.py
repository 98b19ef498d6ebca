"""vit.py against independent references: patches cut out by hand, a float64 ViT written from
the equations, the 2D sin-cos formula, the idx and CIFAR formats built byte by byte, and the
offline fallback with the network switched off."""
import gzip
import hashlib
import io
import math
import os
import pickle
import sys
import tarfile
import urllib.error

import numpy as np
import pytest
import torch

import vit


def tiny_config(**overrides):
    return vit.ViTConfig(**{**dict(image_size=12, patch_size=4, channels=3, n_classes=5, n_layer=2, n_head=2,
                                   n_embd=16), **overrides})


def make_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = vit.ViT(cfg).double().eval()
    with torch.no_grad():  # LayerNorms start at gain 1, bias 0, [CLS] at 0: move them so a slip would show
        for name, p in model.named_parameters():
            if "ln" in name or name == "cls":
                p.add_(0.2 * torch.randn_like(p))
    return model


# ----------------------------------------------------------------------------- patches and positions

@pytest.mark.parametrize("channels,size,patch", [(3, 12, 4), (1, 28, 7), (3, 32, 8)])
def test_conv_and_unfold_patch_embeddings_are_equal_and_match_patches_cut_by_hand(channels, size, patch):
    cfg = tiny_config(channels=channels, image_size=size, patch_size=patch)
    embed = vit.PatchEmbedding(cfg).double()
    img = torch.randn(2, channels, size, size, dtype=torch.float64)
    conv, unfold = embed(img), embed.forward_unfold(img)
    torch.testing.assert_close(conv, unfold, rtol=1e-12, atol=1e-12)
    E, b, grid = embed.conv.weight.reshape(cfg.n_embd, -1), embed.conv.bias, size // patch
    for r in range(grid):  # patch (r, c) is token r * grid + c: row-major
        for c in range(grid):
            x_p = img[:, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].reshape(2, -1)
            torch.testing.assert_close(conv[:, r * grid + c], x_p @ E.T + b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pos", ["learned", "sincos"])
@pytest.mark.parametrize("size,patch", [(12, 4), (32, 8), (28, 7)])
def test_position_count_is_patches_plus_one(pos, size, patch):
    model = vit.ViT(tiny_config(image_size=size, patch_size=patch, pos=pos))
    assert model.pos_emb.shape == (1, (size // patch) ** 2 + 1, 16)
    assert model.features(torch.randn(2, 3, size, size)).shape == (2, (size // patch) ** 2 + 1, 16)
    assert isinstance(model.pos_emb, torch.nn.Parameter) == (pos == "learned")  # sin-cos is fixed


def test_sincos_positions_match_the_formula():
    table, dim, grid = vit.sincos_2d(3, 8), 8, 3
    assert torch.equal(table[0, 0], torch.zeros(dim))  # the [CLS] slot
    for r in range(grid):
        for c in range(grid):
            w = [10000 ** (-i / 2) for i in range(2)]  # dim / 4 = 2 frequencies
            expected = [math.sin(c * w[0]), math.sin(c * w[1]), math.cos(c * w[0]), math.cos(c * w[1]),
                        math.sin(r * w[0]), math.sin(r * w[1]), math.cos(r * w[0]), math.cos(r * w[1])]
            torch.testing.assert_close(table[0, 1 + r * grid + c], torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=8"):
        vit.ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="divisible by 4"):
        vit.ViTConfig(n_embd=18, n_head=2, pos="sincos")
    with pytest.raises(ValueError, match=r"resize them or change the config"):
        vit.ViT(tiny_config())(torch.randn(1, 3, 16, 16))


# ----------------------------------------------------------------------------- the forward pass

def reference_forward(model, img):
    """The ViT from its equations in float64: patches cut by hand and projected, [CLS] prepended,
    positions added, then per block z += MSA(LN(z)) with explicit per-head softmax and
    z += W2 GELU_erf(W1 LN(z)); final LN; head on [CLS] or on the mean of the patch tokens.
    Also returns the last block's attention matrix, mean over heads: (B, 1 + N, 1 + N)."""
    cfg, W = model.config, {k: v.double() for k, v in model.state_dict().items()}
    W["pos_emb"] = model.pos_emb.double()
    P, D, H = cfg.patch_size, cfg.n_embd, cfg.n_head
    grid, hd = cfg.image_size // P, D // H

    def ln(x, name):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * W[name + ".weight"] + W[name + ".bias"]

    E = W["patch.conv.weight"].reshape(D, -1)
    patches = [img[:, :, r * P:(r + 1) * P, c * P:(c + 1) * P].reshape(len(img), -1) for r in range(grid) for c in range(grid)]
    z = torch.stack([p @ E.T + W["patch.conv.bias"] for p in patches], dim=1)
    z = torch.cat([W["cls"].expand(len(img), 1, D), z], dim=1) + W["pos_emb"]
    for l in range(cfg.n_layer):
        p = f"blocks.{l}."
        q, k, v = (ln(z, p + "ln_1") @ W[p + "attn.qkv.weight"].T + W[p + "attn.qkv.bias"]).split(D, -1)
        heads, maps = [], []
        for h in range(H):
            s = slice(h * hd, (h + 1) * hd)
            A = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(hd), dim=-1)
            heads.append(A @ v[..., s])
            maps.append(A)
        z = z + torch.cat(heads, -1) @ W[p + "attn.proj.weight"].T + W[p + "attn.proj.bias"]
        u = ln(z, p + "ln_2") @ W[p + "mlp.0.weight"].T + W[p + "mlp.0.bias"]
        z = z + (0.5 * u * (1 + torch.erf(u / math.sqrt(2)))) @ W[p + "mlp.2.weight"].T + W[p + "mlp.2.bias"]
    z = ln(z, "ln_f")
    pooled = z[:, 0] if cfg.pool == "cls" else z[:, 1:].mean(1)
    return pooled @ W["head.weight"].T + W["head.bias"], torch.stack(maps).mean(0)


@pytest.mark.parametrize("pool,pos", [("cls", "learned"), ("mean", "sincos")])
def test_forward_and_attention_map_match_float64_reference(pool, pos):
    """The map shows what the head reads: pool=cls, the [CLS] row A[0, 1:]; pool=mean, the mean
    of the patch rows, mean_i A[i, 1:] over patches i, the weight each patch's value gets in the
    mean of the last block's attention outputs (the [CLS] row, which that head never reads,
    differs from it, so showing it would be caught)."""
    model = make_model(tiny_config(pool=pool, pos=pos))
    img = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    logits, A = reference_forward(model, img)
    torch.testing.assert_close(model(img), logits, rtol=1e-10, atol=1e-10)
    expected = A[:, 0, 1:] if pool == "cls" else A[:, 1:, 1:].mean(1)  # (B, N)
    torch.testing.assert_close(model.pooled_attention(img), expected, rtol=1e-10, atol=1e-10)
    assert (A[:, 0, 1:] - A[:, 1:, 1:].mean(1)).abs().max() > 1e-3


def test_attention_map_is_labelled_by_what_the_head_reads(capsys):
    img = torch.randn(3, 12, 12)
    for pool, label in [("cls", "[CLS] attention"), ("mean", "mean attention of the patches")]:
        vit.show_attention(make_model(tiny_config(pool=pool)).float(), img, "cpu")
        assert label in capsys.readouterr().out


def test_eval_mode_is_deterministic_and_train_mode_is_not():
    model = vit.ViT(tiny_config(dropout=0.3))
    img = torch.randn(4, 3, 12, 12)
    model.eval()
    assert torch.equal(model(img), model(img))
    model.train()
    assert not torch.equal(model(img), model(img))  # dropout on: the check above could fail


def test_cnn_baseline_has_a_similar_parameter_count():
    target = vit.count_params(vit.ViT(vit.ViTConfig(patch_size=8)))
    cnn = vit.cnn_matching(target, 3, 12)
    assert abs(vit.count_params(cnn) - target) < 0.1 * target
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, 12)


# ----------------------------------------------------------------------------- data

def test_shapes_set_is_labelled_by_what_is_drawn():
    x, y, attrs = vit.make_shapes(300, seed=5)
    assert x.shape == (300, 3, 32, 32) and torch.equal(y, attrs[:, 0] * 3 + attrs[:, 1])
    assert set(y.tolist()) == set(range(12))
    x2, _, _ = vit.make_shapes(300, seed=5)
    assert torch.equal(x, x2)
    # the shape's colour channel is brightest in the quadrant the attributes name
    quadrant_means = torch.stack([x[:, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].mean((2, 3))
                                  for r in range(2) for c in range(2)], dim=1)  # (n, 4 quadrants, 3 channels)
    colour_channel = torch.tensor([0, 1, 2])[attrs[:, 1]]
    in_colour = quadrant_means[torch.arange(300), :, colour_channel]  # (n, 4)
    assert (in_colour.argmax(1) == attrs[:, 2]).float().mean() > 0.97


def test_idx_reader_parses_the_format(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in images.shape) + images.tobytes()
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    assert np.array_equal(vit.read_idx(str(path)), images)
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"\x00" * 12))  # float32 type
    with pytest.raises(ValueError, match="not a uint8 idx file"):
        vit.read_idx(str(path))


def test_cifar_reader_parses_the_archive(tmp_path):
    rng = np.random.default_rng(0)
    batches = {name: {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
               for name, n in [("data_batch_1", 5), ("data_batch_2", 4), ("test_batch", 3)]}
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    out = vit.read_cifar(str(path))
    assert out["train"][0].shape == (9, 3, 32, 32) and out["test"][0].shape == (3, 3, 32, 32)
    # row layout: 1024 red values, then green, then blue, each 32 x 32 row-major
    assert out["train"][0][0, 1, 2, 5] == batches["data_batch_1"][b"data"][0, 1024 + 2 * 32 + 5]
    assert list(out["test"][1]) == batches["test_batch"][b"labels"]


def test_offline_falls_back_to_the_shapes_set(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(vit.urllib.request, "urlopen", no_network)
    data = vit.load_data("mnist", 50, 20, cache_dir=str(tmp_path))
    assert "falling back to the embedded shapes set" in capsys.readouterr().out
    assert data["train"][0].shape == (50, 3, 28, 28) and "attrs" in data  # at MNIST's size


def test_a_corrupt_download_is_a_clear_error(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(ValueError, match="does not match its published MD5"):
        vit.download(vit.CIFAR_URL, vit.CIFAR_MD5, str(tmp_path))


# ----------------------------------------------------------------------------- the vision-language model

def test_vlm_reads_the_image_and_is_causal_over_text():
    import gpt
    torch.manual_seed(0)
    decoder = gpt.GPT(gpt.GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16))
    vlm = vit.TinyVLM(8, decoder).eval()
    image_a, image_b, text = torch.randn(1, 5, 8), torch.randn(1, 5, 8), torch.randint(0, 64, (1, 6))
    logits = vlm(image_a, text)
    assert logits.shape == (1, 6, 64)
    assert (vlm(image_b, text) - logits).abs().max() > 1e-4  # the answer depends on the image
    later = text.clone()
    later[0, 4:] = (later[0, 4:] + 1) % 64
    torch.testing.assert_close(vlm(image_a, later)[:, :4], logits[:, :4])  # and never on later text


def test_vqa_batch_masks_exactly_the_answer_targets():
    examples = [("shape", [1, 2, 3], [7, 8]), ("colour", [1, 2], [9, 9, 9])]
    text, mask = vit.vqa_batch(examples, [0, 1], "cpu")
    assert text.tolist() == [[1, 2, 3, 7, 8], [1, 2, 9, 9, 9]]
    # targets are text[:, 1:]; row 0 predicts 7, 8 (positions 3, 4), row 1 predicts 9, 9, 9
    assert mask.tolist() == [[False, False, True, True], [False, True, True, True]]


def test_cached_archives_load_without_the_network(tmp_path, monkeypatch):
    """MNIST's four idx files and CIFAR-10's archive, tiny, written in their formats into the
    cache with their MD5s as published: load_data reads them and never opens the network."""
    def no_network(*args, **kwargs):
        raise AssertionError("the network was opened")
    monkeypatch.setattr(vit.urllib.request, "urlopen", no_network)
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6, dtype=np.uint8),
              rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 10, 4, dtype=np.uint8)]
    digests = {}
    for name, a in zip(vit.MNIST_MD5, arrays):  # train images, train labels, test images, labels
        header = bytes([0, 0, 8, a.ndim]) + b"".join(n.to_bytes(4, "big") for n in a.shape)
        (tmp_path / name).write_bytes(gzip.compress(header + a.tobytes()))
        digests[name] = hashlib.md5((tmp_path / name).read_bytes()).hexdigest()
    monkeypatch.setattr(vit, "MNIST_MD5", digests)
    data = vit.load_data("mnist", 5, 3, cache_dir=str(tmp_path))
    assert data["train"][0].shape == (5, 1, 28, 28) and data["test"][1].dtype == torch.long
    torch.testing.assert_close(data["train"][0][:, 0], torch.tensor(arrays[0][:5] / 255.0).float())
    assert data["test"][1].tolist() == arrays[3][:3].tolist() and "attrs" not in data

    batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [4, 0, 9]}
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in ("data_batch_1", "test_batch"):
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    monkeypatch.setattr(vit, "CIFAR_MD5", hashlib.md5(
        (tmp_path / "cifar-10-python.tar.gz").read_bytes()).hexdigest())
    data = vit.load_data("cifar10", 2, 3, cache_dir=str(tmp_path))
    assert data["train"][0].shape == (2, 3, 32, 32) and data["test"][1].tolist() == [4, 0, 9]
    assert data["train"][0][1, 2, 31, 31] == batch[b"data"][1, 3071] / 255.0  # blue, last pixel


# ----------------------------------------------------------------------------- config and flags

@pytest.mark.parametrize("argv, message", [
    ("--data=imagenet", "data='imagenet'; choose one of shapes, mnist, cifar10"),
    ("--data=mnist", "image_size=28 is not divisible by patch_size=8"),
    ("--patch_size=0", "patch_size=0 must be at least 1"),
    ("--n_embd=30", "n_embd=30 is not divisible by n_head=4"),
    ("--pos=sincos --n_embd=18 --n_head=2", "2D sin-cos positions need n_embd divisible by 4"),
    ("--pool=max", "pool='max'; choose one of ('cls', 'mean')"),
    ("--steps=0", "steps=0 must be positive"),
    ("--lr=0", "lr=0.0 must be positive"),
    ("--n_layers=2", "unrecognized arguments: --n_layers=2")])
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        vit.parse_args(vit.Config, argv.split(), gpu=vit.GPU)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_device_that_is_not_here_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        vit.parse_args(vit.Config, ["--device=mps"], gpu=vit.GPU)
    assert "--device=mps, but this machine has only cpu" in capsys.readouterr().err


def test_cpu_and_gpu_defaults(monkeypatch):
    """CPU: README's ViT, 16 patches of 8x8, 4 blocks x 64, 214,348 parameters (counted by hand
    below). CUDA: 4x4 patches (they divide MNIST's 28 and the 32 of the others), 8 x 256."""
    cpu = vit.parse_args(vit.Config, ["--device=cpu"], gpu=vit.GPU)
    model = vit.ViT(vit.ViTConfig(patch_size=cpu.patch_size, n_layer=cpu.n_layer,
                                  n_head=cpu.n_head, n_embd=cpu.n_embd))
    D, per_block = 64, 4 * 64 + (3 * 64 * 64 + 3 * 64) + (64 * 64 + 64) + 2 * (4 * 64 * 64) + 5 * 64
    assert vit.count_params(model) == 3 * 8 * 8 * D + D + D + 17 * D + 4 * per_block + 2 * D + 12 * D + 12
    assert vit.count_params(model) == 214_348  # the README's figure
    monkeypatch.setattr(vit, "pick_device", lambda name="auto": "cuda")
    for data in ("shapes", "mnist", "cifar10"):
        cuda = vit.parse_args(vit.Config, [f"--data={data}"], gpu=vit.GPU)
        assert (cuda.patch_size, cuda.n_layer, cuda.n_embd, cuda.steps) == (4, 8, 256, 5000)


# ----------------------------------------------------------------------------- the demo

class Recorder:  # stands in for matplotlib.pyplot and its axes: records what would be drawn
    def __init__(self):
        self.calls = []

    def subplots(self, *args, **kwargs):
        return self, (self, self)

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_plot_draws_the_image_and_the_attention_it_reads(tmp_path, pool):
    """The PNG's right panel is the float64 reference's attention map (as in the test above),
    laid out on the patch grid; the left one the image scaled into [0, 1]."""
    model = make_model(tiny_config(pool=pool))
    img = torch.randn(3, 12, 12, dtype=torch.float64)
    plt = Recorder()
    vit.show_attention(model, img, "cpu", plt, str(tmp_path / "attention.png"))
    _, A = reference_forward(model, img[None])
    expected = A[0, 0, 1:] if pool == "cls" else A[0, 1:, 1:].mean(0)
    (left,), (right,) = [args for call, args, _ in plt.calls if call == "imshow"]
    # float32 in the figure: rounding of values below 1 stays under 1e-7
    torch.testing.assert_close(right.double(), expected.view(3, 3), rtol=0, atol=1e-7)
    assert left.shape == (12, 12, 3) and left.min() == 0 and left.max() == 1
    assert [args for call, args, _ in plt.calls if call == "savefig"] == [
        (str(tmp_path / "attention.png"),)]


def test_plot_without_matplotlib_is_a_note_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setattr(vit, "load_data", lambda *args: 1 / 0)  # the first work main would do
    with pytest.raises(ZeroDivisionError):
        vit.main(vit.Config(plot=True, out_dir=str(tmp_path), device="cpu"))
    assert capsys.readouterr().out.startswith("note: --plot needs matplotlib")


def test_main_smoke(capsys, tmp_path, monkeypatch):
    plt = Recorder()
    monkeypatch.setattr(vit, "pyplot", lambda plot: plt if plot else None)
    vit.main(vit.Config(n_train=256, n_test=32, n_layer=1, n_embd=16, n_head=2, steps=3,
                        batch_size=16, vlm_steps=3, plot=True, out_dir=str(tmp_path), device="cpu"))
    out = capsys.readouterr().out
    for text in ("max difference", "ViT", "CNN", "[CLS] attention", "what colour is the shape?", "chance"):
        assert text in out
    assert [args for call, args, _ in plt.calls if call == "savefig"] == [
        (os.path.join(str(tmp_path), "attention.png"),)]
