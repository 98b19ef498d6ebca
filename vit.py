"""ViT: an image is a sequence of patches, and a Transformer encoder reads it.

Cut an H x W image into N = HW / P^2 patches of P x P pixels and map each flattened patch to a
D-wide token, x_p E (a conv whose kernel and stride are both P). Prepend a learned [CLS] token,
add position embeddings, run pre-norm blocks z = z + MSA(LN(z)); z = z + MLP(LN(z)), and classify
y = head(LN(z)_[CLS]) (or the mean of the patch tokens). Then a tiny vision-language model:
the ViT's patch tokens, projected into a gpt.py decoder's input, answer questions about the image.
Papers: Dosovitskiy et al. 2020 (ViT), Liu et al. 2023 (LLaVA), He et al. 2021 (MAE: 2D sin-cos).

    python vit.py                                # CPU: shapes set, ViT vs CNN, attention map, VLM (~3 min)
    python vit.py --pool=mean --pos=sincos       # mean pooling, fixed 2D sin-cos positions
    python vit.py --data=mnist                   # or cifar10: downloaded once into data/ (7x7 patches)

On CPU you see test accuracy of the ViT and of a CNN with about as many parameters trained for
the same steps, the [CLS] attention (with --pool=mean: the patches' mean attention) over the
patches of one image as a text heat map, and the vision-language model's accuracy per question
("what shape is this?", "what colour ...?", ...).
Only the VLM demo needs gpt.py (imported inside it): the ViT itself can be copied on its own.
"""
import dataclasses
import gzip
import hashlib
import inspect
import math
import os
import pickle
import re
import sys
import tarfile
import time
import urllib.error
import urllib.request
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class ViTConfig:
    image_size: int = 32  # pixels per side (square images)
    patch_size: int = 4  # pixels per patch side P; N = (image_size / P)^2 patches
    channels: int = 3  # colour channels in (1 for MNIST)
    n_classes: int = 12  # outputs of the head
    n_layer: int = 4  # encoder blocks
    n_head: int = 4  # attention heads
    n_embd: int = 64  # token width D
    mlp_hidden: int = 0  # MLP width; 0 = 4 * n_embd
    dropout: float = 0.0  # on attention weights and residual branches
    pool: str = "cls"  # cls (the [CLS] token) | mean (average of the patch tokens)
    pos: str = "learned"  # learned (1D table) | sincos (fixed 2D sine-cosine)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}: "
                             "choose a patch size that divides the image side")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pos == "sincos" and self.n_embd % 4:
            raise ValueError(f"2D sin-cos positions need n_embd divisible by 4, got {self.n_embd}")
        for name, allowed in [("pool", ("cls", "mean")), ("pos", ("learned", "sincos"))]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {allowed}")
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd

    @property
    def n_patches(self):
        return (self.image_size // self.patch_size) ** 2


# ----------------------------------------------------------------------------- the model

class PatchEmbedding(nn.Module):
    """Token p = x_p E + b for every P x P patch x_p. As a conv, kernel = stride = P; as unfold +
    linear, cut the patches out, flatten each (C*P*P values, channel-major) and multiply by the
    same E: the two are one linear map, shown equal in the tests and in main()."""

    def __init__(self, cfg):
        super().__init__()
        self.P = cfg.patch_size
        self.conv = nn.Conv2d(cfg.channels, cfg.n_embd, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, img):  # (B, C, H, W) -> (B, N, D), patches in row-major order
        return self.conv(img).flatten(2).transpose(1, 2)

    def forward_unfold(self, img):
        patches = F.unfold(img, kernel_size=self.P, stride=self.P).transpose(1, 2)  # (B, N, C*P*P)
        return F.linear(patches, self.conv.weight.flatten(1), self.conv.bias)


def sincos_2d(grid, dim):
    """Fixed 2D positions (MAE): a patch at (row r, col c) gets [sin(c w), cos(c w), sin(r w), cos(r w)],
    w_i = 10000^(-i / (dim/4)), i < dim/4; the [CLS] slot gets zeros. Returns (1, 1 + grid^2, dim)."""
    w = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    r, c = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    r, c = r.flatten()[:, None] * w, c.flatten()[:, None] * w  # (N, dim/4)
    table = torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table])[None].float()


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv, self.proj = nn.Linear(cfg.n_embd, 3 * cfg.n_embd), nn.Linear(cfg.n_embd, cfg.n_embd)

    def heads(self, x):  # (B, T, D) -> q, k, v each (B, n_head, T, hd)
        B, T, D = x.shape
        return (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in self.qkv(x).split(D, dim=-1))

    def forward(self, x):  # softmax(Q K^T / sqrt(hd)) V: every patch sees every patch
        B, T, D = x.shape
        y = F.scaled_dot_product_attention(*self.heads(x), dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))

    def weights(self, x):  # the attention matrix itself, (B, n_head, T, T), for pictures
        q, k, _ = self.heads(x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)


class Block(nn.Module):
    """Pre-norm: z = z + MSA(LN(z)); z = z + MLP(LN(z)), MLP(x) = GELU(x W_1 + b_1) W_2 + b_2."""

    def __init__(self, cfg):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(cfg.n_embd), Attention(cfg)
        self.ln_2, self.drop = nn.LayerNorm(cfg.n_embd), nn.Dropout(cfg.dropout)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, cfg.mlp_hidden), nn.GELU(), nn.Linear(cfg.mlp_hidden, cfg.n_embd))

    def forward(self, z):
        z = z + self.drop(self.attn(self.ln_1(z)))
        return z + self.drop(self.mlp(self.ln_2(z)))


class ViT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.patch = PatchEmbedding(cfg)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.n_embd))
        if cfg.pos == "learned":  # one vector per slot: [CLS] + N patches
            self.pos_emb = nn.Parameter(torch.randn(1, cfg.n_patches + 1, cfg.n_embd) * 0.02)
        else:
            self.register_buffer("pos_emb", sincos_2d(cfg.image_size // cfg.patch_size, cfg.n_embd), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.n_classes)

    def embed(self, img):  # (B, C, H, W) -> z_0 (B, 1 + N, D)
        cfg = self.config
        if img.shape[1:] != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"images of shape {tuple(img.shape[1:])}, but the model takes "
                             f"({cfg.channels}, {cfg.image_size}, {cfg.image_size}): resize them or change the config")
        x = self.patch(img)  # (B, N, D)
        return self.drop(torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos_emb)

    def features(self, img):
        """Every token after the last block and the final LayerNorm: (B, 1 + N, D), [CLS] first."""
        z = self.embed(img)
        for block in self.blocks:
            z = block(z)
        return self.ln_f(z)

    def forward(self, img):  # (B, C, H, W) -> logits (B, n_classes)
        z = self.features(img)
        return self.head(z[:, 0] if self.config.pool == "cls" else z[:, 1:].mean(dim=1))

    @torch.no_grad()
    def pooled_attention(self, img):
        """How much the tokens the head reads attend to each patch in the last block, averaged
        over heads: (B, N). pool=cls: the [CLS] row. pool=mean: the mean of the patch rows, the
        weight each patch's value gets in the mean of that block's attention outputs."""
        z = self.embed(img)
        for block in self.blocks[:-1]:
            z = block(z)
        A = self.blocks[-1].attn.weights(self.blocks[-1].ln_1(z)).mean(dim=1)  # (B, 1 + N, 1 + N)
        return A[:, 0, 1:] if self.config.pool == "cls" else A[:, 1:, 1:].mean(dim=1)


class SmallCNN(nn.Module):
    """The baseline: a stride-2 3x3 conv stem, then 3x3 convs (width w, 2w, 4w), each followed by
    BatchNorm and ReLU, with 2x2 max-pooling between them, global average pooling and a linear
    head; w is chosen to match the ViT's parameter count."""

    def __init__(self, channels, n_classes, width):
        super().__init__()

        def conv(c_in, c_out, stride=1):
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.net = nn.Sequential(*conv(channels, width, stride=2), nn.MaxPool2d(2), *conv(width, 2 * width),
                                 nn.MaxPool2d(2), *conv(2 * width, 4 * width),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, n_classes))

    def forward(self, img):
        return self.net(img)


def cnn_matching(params, channels, n_classes):
    """The SmallCNN whose parameter count is closest to `params` (the count grows with the width)."""
    best = SmallCNN(channels, n_classes, 4)
    for width in range(8, 1025, 4):
        cnn = SmallCNN(channels, n_classes, width)
        if abs(count_params(cnn) - params) > abs(count_params(best) - params):
            return best
        best = cnn
    return best


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- data

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (0.9, 0.15, 0.1), "green": (0.15, 0.75, 0.2), "blue": (0.2, 0.35, 0.95)}
PLACES = ("top left", "top right", "bottom left", "bottom right")


def make_shapes(n, size=32, seed=0):
    """The embedded data set: one shape (4 kinds) in one colour (3) in one quadrant (4), with
    random size, offset, colour jitter, background level and pixel noise. Class = shape * 3 +
    colour (12 classes). Returns images (n, 3, size, size) float32, labels (n,), and the
    attributes (n, 3) = (shape, colour, quadrant) that the vision-language demo asks about."""
    rng = np.random.default_rng(seed)
    shape, colour, place = rng.integers(0, 4, n), rng.integers(0, 3, n), rng.integers(0, 4, n)
    r = rng.uniform(0.11, 0.2, n)[:, None, None] * size  # radius, pixels
    cx = (0.25 + 0.5 * (place % 2) + rng.uniform(-0.06, 0.06, n))[:, None, None] * size
    cy = (0.25 + 0.5 * (place // 2) + rng.uniform(-0.06, 0.06, n))[:, None, None] * size
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    dx, dy = x - cx, y - cy  # (n, size, size)
    masks = np.stack([dx ** 2 + dy ** 2 <= r ** 2,  # circle
                      (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r),  # square
                      (dy <= 0.8 * r) & (np.abs(dx) <= 0.6 * (dy + r)),  # triangle, apex up
                      ((np.abs(dx) <= r / 3) | (np.abs(dy) <= r / 3)) & (np.abs(dx) <= r) & (np.abs(dy) <= r)])  # cross
    mask = masks[shape, np.arange(n)][:, None]  # (n, 1, size, size)
    rgb = np.array(list(COLOURS.values()))[colour] + rng.uniform(-0.1, 0.1, (n, 3))  # (n, 3)
    background = rng.uniform(0.0, 0.35, (n, 1, 1, 1))
    images = np.where(mask, rgb[:, :, None, None], background) + rng.normal(0, 0.1, (n, 3, size, size))
    attrs = np.stack([shape, colour, place], axis=1)
    return torch.tensor(images, dtype=torch.float32), torch.tensor(shape * 3 + colour), torch.tensor(attrs)


MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the idx files of LeCun et al. 1998
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # Krizhevsky 2009
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


def download(url, md5, cache_dir):
    """The cached copy of url, fetched once and checked against its published MD5; None offline."""
    path = os.path.join(cache_dir, url.rsplit("/", 1)[-1])
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(path + ".part", "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
        except (urllib.error.URLError, OSError) as e:
            print(f"could not download {url} ({e})")
            return None
        os.replace(path + ".part", path)
    with open(path, "rb") as f:
        if hashlib.md5(f.read()).hexdigest() != md5:
            raise ValueError(f"{path} does not match its published MD5 (a broken download?): delete it and run again")
    return path


def read_idx(path):
    """An idx file (MNIST's format): 2 zero bytes, a type byte (0x08 = uint8), the number of
    dimensions, each dimension as a big-endian int32, then the values."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not a uint8 idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_cifar(path):
    """CIFAR-10's python archive: pickled batches of 10000 rows of 3072 bytes (R, G, B planes of
    32 x 32). Only called on an archive whose MD5 matched, since unpickling runs code."""
    split = {"train": ([], []), "test": ([], [])}
    with tarfile.open(path, "r:gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = os.path.basename(member.name)
            if name.startswith("data_batch") or name == "test_batch":
                batch = pickle.load(tar.extractfile(member), encoding="bytes")
                xs, ys = split["test" if name == "test_batch" else "train"]
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[b"labels"]))
    return {k: (np.concatenate(xs), np.concatenate(ys)) for k, (xs, ys) in split.items()}


def load_data(name, n_train, n_test, cache_dir="data", seed=0):
    """{"train": (images, labels), "test": ..., "attrs": ...} as float tensors scaled to [0, 1].
    mnist and cifar10 come from their canonical archives (cached in cache_dir); when that fails,
    the embedded shapes set stands in, with a message."""
    if name not in ("shapes", "mnist", "cifar10"):
        raise ValueError(f"data={name!r}; choose shapes, mnist or cifar10")
    arrays = None
    if name == "mnist":
        paths = {f: download(MNIST_URL + f, md5, cache_dir) for f, md5 in MNIST_MD5.items()}
        if all(paths.values()):
            x, y, xt, yt = (read_idx(paths[f]) for f in MNIST_MD5)
            arrays = {"train": (x[:, None], y), "test": (xt[:, None], yt)}
    elif name == "cifar10":
        path = download(CIFAR_URL, CIFAR_MD5, cache_dir)
        arrays = read_cifar(path) if path else None
    if arrays is not None:
        return {split: (torch.tensor(x[:n] / 255.0, dtype=torch.float32), torch.tensor(y[:n], dtype=torch.long))
                for (split, (x, y)), n in zip(arrays.items(), (n_train, n_test))}
    if name != "shapes":
        print(f"{name} is unavailable offline: falling back to the embedded shapes set")
    x, y, attrs = make_shapes(n_train + n_test, seed=seed)
    return {"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:]),
            "attrs": (attrs[:n_train], attrs[n_train:])}


# ----------------------------------------------------------------------------- training and pictures

def train_classifier(model, data, steps, lr, batch, device, seed=0, desc="train"):
    """AdamW (weight decay 0.05) with 10% linear warmup and cosine decay; cross-entropy on
    random batches of the training split. The same loop, seed and batches for every model."""
    x, y = data["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in (bar := tqdm(range(steps), desc=desc, leave=False)):
        i = torch.randint(len(x), (batch,), generator=g)
        with autocast(device):
            loss = F.cross_entropy(model(x[i].to(device)).float(), y[i].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def accuracy(model, x, y, device, batch=500):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        with autocast(device):
            correct += (model(x[i:i + batch].to(device)).argmax(-1).cpu() == y[i:i + batch]).sum().item()
    return correct / len(x)


def heat_map(values, grid, ramp=" .:-=+*#%@"):
    """A (grid*grid,) array as lines of text, darkest character = largest value."""
    v = (values - values.min()) / (values.max() - values.min() + 1e-12)
    chars = [ramp[min(len(ramp) - 1, int(u * len(ramp)))] * 2 for u in v.tolist()]
    return ["".join(chars[r * grid:(r + 1) * grid]) for r in range(grid)]


def show_attention(vit, img, device):
    """The image's per-patch brightness beside the attention that the pooled tokens pay to them."""
    cfg = vit.config
    grid, P = cfg.image_size // cfg.patch_size, cfg.patch_size
    attention = vit.pooled_attention(img[None].to(device))[0].cpu()
    reader = "[CLS] attention" if cfg.pool == "cls" else "mean attention of the patches (pool=mean)"
    brightness = F.avg_pool2d((img - img.amin()).mean(0, keepdim=True)[None], P).flatten()
    print(f"image, mean brightness per patch  |  {reader} to each patch, last block, mean of heads")
    for left, right in zip(heat_map(brightness, grid), heat_map(attention, grid)):
        print(f"{left:<33}|  {right}")


# ----------------------------------------------------------------------------- a tiny vision-language model

QUESTIONS = {"shape": "what shape is this?", "colour": "what colour is the shape?", "place": "where is the shape?"}
ANSWERS = {"shape": SHAPES, "colour": tuple(COLOURS), "place": PLACES}  # indexed by the attributes' columns


class TinyVLM(nn.Module):
    """LLaVA's recipe ("method 1": reuse a decoder-only LM). The frozen ViT's output tokens are
    mapped by a trained 2-layer MLP into the decoder's embedding space and placed before the
    text: [img_0 .. img_N, question, answer]. The decoder is causal, so the answer reads both
    the image and the question; the loss is on the answer tokens only."""

    def __init__(self, vision_dim, decoder):
        super().__init__()
        D = decoder.config.n_embd
        self.decoder, self.proj = decoder, nn.Sequential(nn.Linear(vision_dim, D), nn.GELU(), nn.Linear(D, D))

    def forward(self, image_tokens, text):  # (B, 1 + N, D_vit), (B, T) -> next-token logits (B, T, vocab)
        x = torch.cat([self.proj(image_tokens), self.decoder.transformer.wte(text)], dim=1)
        h = self.decoder.hidden(None, embeds=x)  # (B, 1 + N + T, D)
        return self.decoder.lm_head(h[:, image_tokens.size(1):])


def vqa_examples(attrs, tok, rng):
    """One (kind, prompt ids, answer ids) per image, the question kind drawn at random."""
    kinds = list(QUESTIONS)
    out = []
    for row in attrs.tolist():
        kind = kinds[rng.integers(len(kinds))]
        out.append((kind, tok.encode(QUESTIONS[kind] + " "), tok.encode(ANSWERS[kind][row[kinds.index(kind)]] + "\n")))
    return out


def vqa_batch(examples, rows, device):
    """Right-padded [prompt, answer] ids (B, T) and a (B, T - 1) mask of the answer targets."""
    seqs = [examples[r][1] + examples[r][2] for r in rows]
    T = max(map(len, seqs))
    text = torch.tensor([s + [0] * (T - len(s)) for s in seqs], device=device)
    pos = torch.arange(1, T, device=device)[None]  # the position of each target
    start = torch.tensor([len(examples[r][1]) for r in rows], device=device)[:, None]
    end = torch.tensor([len(s) for s in seqs], device=device)[:, None]
    return text, (pos >= start) & (pos < end)


@torch.no_grad()
def answer(vlm, image_tokens, prompt, newline, max_tokens=16):
    """Greedy answers to one prompt for a batch of images, each cut at its first newline."""
    text = torch.tensor(prompt, device=image_tokens.device).expand(len(image_tokens), -1)
    for _ in range(max_tokens):
        text = torch.cat([text, vlm(image_tokens, text)[:, -1].argmax(-1, keepdim=True)], dim=1)
        if bool((text[:, len(prompt):] == newline).any(1).all()):
            break
    return [row[:row.index(newline)] if newline in row else row for row in text[:, len(prompt):].tolist()]


def vlm_demo(vit, normalise, test_images, test_attrs, n_train, steps, device, seed=0, batch=64):
    """Train a TinyVLM on templated questions about n_train fresh shapes images (ones the ViT
    never trained on, so its frozen tokens look as they will at test time); return its accuracy
    on the test images per question kind. gpt.py is needed here, and only here."""
    import gpt
    tok = gpt.Tokenizer.from_spec("byte", text="bytes need no training")
    images, _, train_attrs = make_shapes(n_train, seed=seed + 1)
    with torch.no_grad():  # the vision encoder is frozen: its tokens are computed once
        feats = {s: torch.cat([vit.features(x[i:i + 500].to(device)) for i in range(0, len(x), 500)])
                 for s, x in (("train", normalise(images)), ("test", test_images))}
    rng = np.random.default_rng(seed)
    train = vqa_examples(train_attrs, tok, rng)
    longest = max(len(p) + len(a) for _, p, a in train) + 8
    torch.manual_seed(seed)
    decoder = gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=feats["train"].size(1) + longest,
                                    n_layer=2, n_head=4, n_embd=64))
    vlm = TinyVLM(vit.config.n_embd, decoder).to(device)
    opt = torch.optim.AdamW(vlm.parameters(), lr=3e-3, weight_decay=0.0)
    vlm.train()
    for _ in (bar := tqdm(range(steps), desc="VLM", leave=False)):
        rows = rng.integers(len(train), size=batch)
        text, mask = vqa_batch(train, rows, device)
        with autocast(device):
            logits = vlm(feats["train"][torch.as_tensor(rows, device=device)], text[:, :-1])
        loss = F.cross_entropy(logits.float()[mask], text[:, 1:][mask])  # answer tokens only
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    vlm.eval()
    newline, results = tok.encode("\n")[0], {}
    for column, (kind, question) in enumerate(QUESTIONS.items()):
        truth = [ANSWERS[kind][a] for a in test_attrs[:, column].tolist()]
        with autocast(device):
            said = [tok.decode(ids) for ids in answer(vlm, feats["test"], tok.encode(question + " "), newline)]
        results[question] = (sum(s == t for s, t in zip(said, truth)) / len(truth), said[0], truth[0])
    return results


# ----------------------------------------------------------------------------- config, device, demo

@dataclass
class RunConfig:
    data: str = "shapes"  # shapes (made here) | mnist | cifar10 (downloaded into data/; shapes when offline)
    n_train: int = 6000  # training images
    n_test: int = 1000  # test images
    patch_size: int = 0  # pixels per patch side; 0 = the largest divisor of the image side up to 8 on CPU, 4 on CUDA
    n_layer: int = 0  # ViT blocks; 0 = 4 on CPU, 8 on CUDA
    n_embd: int = 0  # ViT width; 0 = 64 on CPU, 256 on CUDA
    n_head: int = 4  # attention heads
    pool: str = "cls"  # cls | mean
    pos: str = "learned"  # learned | sincos
    steps: int = 0  # training steps for the ViT and for the CNN; 0 = 600 on CPU, 5000 on CUDA
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # peak AdamW learning rate
    vlm_steps: int = 0  # vision-language training steps; 0 = 300 on CPU, 2000 on CUDA
    cache_dir: str = "data"  # where MNIST / CIFAR-10 archives are cached
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # data, initialisation and batch order


def resolve(cfg, device):
    """Fill the 0 = auto fields: a few-minute run on CPU, a larger one on CUDA (the one dial)."""
    cuda = device.startswith("cuda")
    return dataclasses.replace(cfg, n_layer=cfg.n_layer or (8 if cuda else 4),
                               n_embd=cfg.n_embd or (256 if cuda else 64), steps=cfg.steps or (5000 if cuda else 600),
                               vlm_steps=cfg.vlm_steps or (2000 if cuda else 300))


def parse_args(config_cls, argv=None):
    """--field=value overrides of a dataclass; --help lists the fields; unknown names and bad
    values exit with a message that names them. (gpt.py has the same; this file stands alone.)"""
    argv, fields = sys.argv[1:] if argv is None else argv, {f.name: f for f in dataclasses.fields(config_cls)}
    if "--help" in argv or "-h" in argv:
        comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(config_cls), flags=re.M))
        print("options:\n" + "\n".join(f"  --{n}={f.default!s:<10} {comments.get(n, '')}" for n, f in fields.items()))
        raise SystemExit(0)
    overrides = {}
    for arg in argv:
        name, _, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or name not in fields:
            raise SystemExit(f"error: unknown option {arg!r}; valid options: " + " ".join(f"--{n}" for n in fields))
        overrides[name] = convert(value, type(fields[name].default), name)
    try:
        return config_cls(**overrides)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def convert(value, kind, name):
    if kind is bool and value.lower() in ("", "1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("", "1", "true", "yes")  # a bare --flag means true
    try:
        if kind is not bool:
            return kind(value)
    except ValueError:
        pass
    raise SystemExit(f"error: --{name} takes a {kind.__name__}, got {value!r}")


def pick_device(name="auto"):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def autocast(device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else nullcontext()


def main(cfg):
    device = pick_device(cfg.device)
    cfg = resolve(cfg, device)
    data = load_data(cfg.data, cfg.n_train, cfg.n_test, cfg.cache_dir, cfg.seed)
    x, y = data["train"]
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)

    def normalise(images):  # per-channel standardisation with the training set's statistics
        return (images - mean) / std
    data |= {split: (normalise(data[split][0]), data[split][1]) for split in ("train", "test")}
    side = x.size(-1)
    patch = cfg.patch_size or max(p for p in range(1, 5 if device.startswith("cuda") else 9) if side % p == 0)
    vit_cfg = ViTConfig(image_size=side, patch_size=patch, channels=x.size(1), n_classes=int(y.max()) + 1,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, pool=cfg.pool, pos=cfg.pos)
    torch.manual_seed(cfg.seed)
    vit = ViT(vit_cfg).to(device)
    cnn = cnn_matching(count_params(vit), vit_cfg.channels, vit_cfg.n_classes).to(device)
    with torch.no_grad():
        probe = data["test"][0][:8].to(device)
        gap = (vit.patch(probe) - vit.patch.forward_unfold(probe)).abs().max().item()
    print(f"{'shapes' if 'attrs' in data else cfg.data}: {len(x)} training and "
          f"{len(data['test'][0])} test images of {tuple(x.shape[1:])}, {vit_cfg.n_classes} classes, on {device}")
    print(f"ViT: {vit_cfg.n_patches} patches of {patch}x{patch} + [CLS], {cfg.n_layer} blocks x "
          f"{cfg.n_embd} wide; patch embedding as conv vs unfold + linear: max difference {gap:.1e}")

    results = []
    for name, model in [("ViT", vit), ("CNN", cnn)]:
        t0 = time.perf_counter()
        train_classifier(model, data, cfg.steps, cfg.lr, cfg.batch_size, device, cfg.seed, desc=name)
        results.append((name, count_params(model), accuracy(model, *data["test"], device), time.perf_counter() - t0))
    print(f"\n{'model':<6}{'params':>10}{'steps':>7}{'test accuracy':>15}{'train time':>12}")
    for name, params, acc, seconds in results:
        print(f"{name:<6}{params:>10,}{cfg.steps:>7}{acc:>15.1%}{seconds:>11.0f}s")
    print()
    show_attention(vit, data["test"][0][0], device)
    if "attrs" not in data:
        return print("\n(the vision-language demo asks about the shapes set: run it with --data=shapes)")
    print(f"\nvision-language model: frozen ViT tokens -> MLP -> a 2-layer gpt.py decoder, {cfg.vlm_steps} steps")
    print(f"{'question':<28}{'test accuracy':>14}{'chance':>8}   first test image: said / truth")
    results = vlm_demo(vit, normalise, data["test"][0], data["attrs"][1], cfg.n_train, cfg.vlm_steps, device, cfg.seed)
    for (question, (acc, said, truth)), kind in zip(results.items(), QUESTIONS):
        print(f"{question:<28}{acc:>14.1%}{1 / len(ANSWERS[kind]):>8.0%}   {said!r} / {truth!r}")


if __name__ == "__main__":
    main(parse_args(RunConfig))
