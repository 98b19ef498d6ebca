"""ViT: an image is a sequence of patches, and a Transformer encoder reads it.

Cut an H x W image into N = HW / P^2 patches, map each flattened patch to a token x_p E (a conv
with kernel = stride = P), prepend a [CLS] token, add positions, run pre-norm blocks
z = z + MSA(LN(z)); z = z + MLP(LN(z)), and classify y = head(LN(z)_[CLS]) (or the patch mean).
Then a tiny vision-language model: the ViT's tokens, projected into a gpt.py decoder's input,
answer questions about the image. Dosovitskiy et al. 2020 (ViT), Liu et al. 2023 (LLaVA), He et
al. 2021 (MAE: 2D sin-cos).

    python vit.py                             # CPU: ViT vs CNN, attention map, VLM
    python vit.py --pool=mean --pos=sincos    # mean pooling, fixed 2D sin-cos positions
    python vit.py --plot                      # also out/vit/attention.png (needs matplotlib)
    python vit.py --data=mnist --patch_size=7 # or cifar10: downloaded once into data/

On CPU: the test accuracy of the ViT and of a CNN as large, the attention the head reads over
one image's patches as a text heat map, and the VLM's accuracy per question. Only the VLM needs
gpt.py (imported inside it): the ViT can be copied on its own.
Left out: data augmentation and regularisation (the ViT paper's large-data recipe), pretraining
at scale, and the VLM's instruction tuning: its decoder is trained from scratch on templates.
"""
import argparse
import dataclasses
import gzip
import hashlib
import inspect
import math
import os
import pickle
import re
import shutil
import sys
import tarfile
import time
import typing
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

@dataclass
class Config:
    data: str = "shapes"  # shapes (made here) | mnist | cifar10 (downloaded; shapes when offline)
    n_train: int = 6000  # training images
    n_test: int = 1000  # test images
    patch_size: int = 8  # pixels per patch side; it must divide the image side (28 for mnist)
    n_layer: int = 4  # ViT blocks
    n_embd: int = 64  # ViT width
    n_head: int = 4  # attention heads
    pool: str = "cls"  # cls | mean
    pos: str = "learned"  # learned | sincos
    steps: int = 600  # training steps for the ViT and for the CNN
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # peak AdamW learning rate
    vlm_steps: int = 300  # vision-language training steps
    cache_dir: str = "data"  # where MNIST / CIFAR-10 archives are cached
    out_dir: str = "out/vit"  # where --plot writes attention.png
    plot: bool = False  # the attention map as a PNG too (needs matplotlib)
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # data, initialisation and batch order

    def __post_init__(self):
        if self.data not in SIDE:
            raise ValueError(f"data={self.data!r}; choose one of {', '.join(SIDE)}")
        for name in "n_train n_test steps batch_size vlm_steps lr".split():
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        ViTConfig(image_size=SIDE[self.data], patch_size=self.patch_size, n_layer=self.n_layer,
                  n_head=self.n_head, n_embd=self.n_embd, pool=self.pool, pos=self.pos)

GPU = dict(patch_size=4, n_layer=8, n_embd=256, steps=5000, vlm_steps=2000)

@dataclass
class ViTConfig:
    image_size: int = 32  # pixels per side (square images)
    patch_size: int = 4  # pixels per patch side P; N = (image_size / P)^2 patches
    channels: int = 3  # colour channels in (1 for MNIST)
    n_classes: int = 12  # outputs of the head
    n_layer: int = 4  # encoder blocks
    n_head: int = 4  # attention heads
    n_embd: int = 64  # token width D
    dropout: float = 0.0  # on attention weights and residual branches
    pool: str = "cls"  # cls (the [CLS] token) | mean (average of the patch tokens)
    pos: str = "learned"  # learned (1D table) | sincos (fixed 2D sine-cosine)

    def __post_init__(self):
        for name in "image_size patch_size channels n_classes n_layer n_head n_embd".split():
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size="
                             f"{self.patch_size}: choose a patch size that divides the image side")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pos == "sincos" and self.n_embd % 4:
            raise ValueError(f"2D sin-cos positions need n_embd divisible by 4, got {self.n_embd}")
        for name, allowed in [("pool", ("cls", "mean")), ("pos", ("learned", "sincos"))]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {allowed}")

    @property
    def n_patches(self):
        return (self.image_size // self.patch_size) ** 2

# ----------------------------------------------------------------------------- the model

class PatchEmbedding(nn.Module):
    """Token p = x_p E + b per P x P patch x_p: a conv, kernel = stride = P, or unfold + linear."""

    def __init__(self, cfg):
        super().__init__()
        self.P = cfg.patch_size
        self.conv = nn.Conv2d(cfg.channels, cfg.n_embd, kernel_size=self.P, stride=self.P)

    def forward(self, img):  # (B, C, H, W) -> (B, N, D), patches in row-major order
        return self.conv(img).flatten(2).transpose(1, 2)

    def forward_unfold(self, img):
        patches = F.unfold(img, kernel_size=self.P, stride=self.P).transpose(1, 2)  # (B, N, CPP)
        return F.linear(patches, self.conv.weight.flatten(1), self.conv.bias)

def sincos_2d(grid, dim):
    """(1, 1 + N, dim), fixed (MAE): the patch at (r, c) gets [sin(c w), cos(c w), sin(r w),
    cos(r w)], w_i = 10000^(-i / (dim/4)), i < dim/4; the [CLS] slot gets zeros."""
    w = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    steps = torch.arange(grid, dtype=torch.float64)
    r, c = torch.meshgrid(steps, steps, indexing="ij")
    r, c = r.flatten()[:, None] * w, c.flatten()[:, None] * w  # (N, dim/4) each
    table = torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table])[None].float()

class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def heads(self, x):  # (B, T, D) -> q, k, v each (B, n_head, T, hd)
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        return (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))

    def forward(self, x):  # softmax(Q K^T / sqrt(hd)) V: every patch sees every patch
        B, T, D = x.shape
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(*self.heads(x), dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))

    def weights(self, x):  # the attention matrix itself, (B, n_head, T, T), for pictures
        q, k, _ = self.heads(x)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)

class Block(nn.Module):
    """Pre-norm: z = z + MSA(LN(z)); z = z + MLP(LN(z)), MLP(x) = GELU(x W_1 + b_1) W_2 + b_2."""

    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd))
        self.drop = nn.Dropout(cfg.dropout)

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
            table = sincos_2d(cfg.image_size // cfg.patch_size, cfg.n_embd)
            self.register_buffer("pos_emb", table, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.n_classes)

    def embed(self, img):  # (B, C, H, W) -> z_0 (B, 1 + N, D)
        side = self.config.image_size
        if img.shape[1:] != (self.config.channels, side, side):
            raise ValueError(f"images of shape {tuple(img.shape[1:])}, not ({self.config.channels}"
                             f", {side}, {side}): resize them or change the config")
        x = self.patch(img)  # (B, N, D)
        return self.drop(torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos_emb)

    def features(self, img):  # -> (B, 1 + N, D), [CLS] first, after the final LayerNorm
        z = self.embed(img)
        for block in self.blocks:
            z = block(z)
        return self.ln_f(z)

    def forward(self, img):  # (B, C, H, W) -> logits (B, n_classes)
        z = self.features(img)
        return self.head(z[:, 0] if self.config.pool == "cls" else z[:, 1:].mean(dim=1))

    @torch.no_grad()
    def pooled_attention(self, img):
        """(B, N): the last block's attention (mean of heads) from the tokens the head reads to
        each patch: the [CLS] row, or for pool=mean the mean of the patch rows."""
        z = self.embed(img)
        for block in self.blocks[:-1]:
            z = block(z)
        A = self.blocks[-1].attn.weights(self.blocks[-1].ln_1(z)).mean(dim=1)  # (B, 1+N, 1+N)
        return A[:, 0, 1:] if self.config.pool == "cls" else A[:, 1:, 1:].mean(dim=1)

def small_cnn(channels, n_classes, width):
    """The baseline: 3x3 convs of width w (stride 2), 2w, 4w, global average pooling, a head."""

    def conv(c_in, c_out, stride=1):
        return [nn.Conv2d(c_in, c_out, 3, stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*conv(channels, width, stride=2), nn.MaxPool2d(2),
                         *conv(width, 2 * width), nn.MaxPool2d(2),
                         *conv(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4 * width, n_classes))

def cnn_matching(params, channels, n_classes):  # the width whose count is closest to params
    best = small_cnn(channels, n_classes, 4)
    for width in range(8, 1025, 4):
        cnn = small_cnn(channels, n_classes, width)
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
    """One shape (4 kinds) in one colour (3) in one quadrant (4), jittered, on a noisy background:
    images (n, 3, size, size), labels shape * 3 + colour (n,), attributes (n, 3) for the VLM."""
    rng = np.random.default_rng(seed)
    shape, colour, place = rng.integers(0, 4, n), rng.integers(0, 3, n), rng.integers(0, 4, n)
    r = rng.uniform(0.11, 0.2, n)[:, None, None] * size  # radius, pixels
    cx = (0.25 + 0.5 * (place % 2) + rng.uniform(-0.06, 0.06, n))[:, None, None] * size
    cy = (0.25 + 0.5 * (place // 2) + rng.uniform(-0.06, 0.06, n))[:, None, None] * size
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    dx, dy = x - cx, y - cy  # (n, size, size)
    bar = r / 3  # half the width of a cross's bars
    masks = np.stack([dx ** 2 + dy ** 2 <= r ** 2,  # circle
                      (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r),  # square
                      (dy <= 0.8 * r) & (np.abs(dx) <= 0.6 * (dy + r)),  # triangle, apex up
                      ((np.abs(dx) <= bar) | (np.abs(dy) <= bar)) & (np.abs(dx) <= r)
                      & (np.abs(dy) <= r)])  # cross
    mask = masks[shape, np.arange(n)][:, None]  # (n, 1, size, size)
    rgb = np.array(list(COLOURS.values()))[colour] + rng.uniform(-0.1, 0.1, (n, 3))  # (n, 3)
    background = rng.uniform(0.0, 0.35, (n, 1, 1, 1))
    noise = rng.normal(0, 0.1, (n, 3, size, size))
    images = np.where(mask, rgb[:, :, None, None], background) + noise
    attrs = np.stack([shape, colour, place], axis=1)
    labels = torch.tensor(shape * 3 + colour)
    return torch.tensor(images, dtype=torch.float32), labels, torch.tensor(attrs)

# ----------------------------------------------------------------------------- training, pictures

def train_classifier(model, data, steps, lr, batch, device, seed=0, desc="train"):
    """AdamW, 10% warmup, cosine decay: the same loop, seed and batches for every model."""
    x, y = data["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, cosine(s)))
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
    with autocast(device):
        pred = torch.cat([model(part.to(device)).argmax(-1).cpu() for part in x.split(batch)])
    return (pred == y).sum().item() / len(x)

def autocast(device):  # bfloat16 on CUDA, full precision elsewhere
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))

def heat_map(values, grid, ramp=" .:-=+*#%@"):  # (grid*grid,) as text, largest = darkest
    v = (values - values.min()) / (values.max() - values.min() + 1e-12)
    chars = [ramp[min(len(ramp) - 1, int(u * len(ramp)))] * 2 for u in v.tolist()]
    return ["".join(chars[r * grid:(r + 1) * grid]) for r in range(grid)]

def show_attention(vit, img, device, plt=None, path=None):
    """Per-patch brightness beside the attention the head reads, as text; a PNG with plt."""
    cfg = vit.config
    grid = cfg.image_size // cfg.patch_size
    attention = vit.pooled_attention(img[None].to(device))[0].float().cpu()
    reader = "[CLS] attention" if cfg.pool == "cls" else "mean attention of the patches (pool=mean)"
    shown = (img - img.amin()) / (img.amax() - img.amin())  # (C, H, W) in [0, 1]
    brightness = F.avg_pool2d(shown.mean(0, keepdim=True)[None], cfg.patch_size).flatten()
    print(f"image, mean brightness per patch  |  {reader} to each patch, last block, mean of heads")
    for left, right in zip(heat_map(brightness, grid), heat_map(attention, grid)):
        print(f"{left:<33}|  {right}")
    if plt:
        _, (left, right) = plt.subplots(1, 2, figsize=(8, 4))
        left.imshow(shown.permute(1, 2, 0).squeeze(-1), cmap="gray")  # gray only for 1 channel
        right.imshow(attention.view(grid, grid))
        right.set_title(f"{reader}, last block")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        plt.savefig(path, dpi=120)
        plt.close()
        print(f"plot: {path}")

def pyplot(plot):  # matplotlib.pyplot for --plot; without it, a note before any work
    if plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            return plt
        except ImportError:
            print("note: --plot needs matplotlib (pip install matplotlib): no PNG will be written")

# ----------------------------------------------------------------------------- a tiny VLM

QUESTIONS = {"shape": "what shape is this?", "colour": "what colour is the shape?",
             "place": "where is the shape?"}
ANSWERS = {"shape": SHAPES, "colour": tuple(COLOURS), "place": PLACES}  # by attribute column

class TinyVLM(nn.Module):
    """LLaVA: a 2-layer MLP maps the frozen ViT's tokens into a decoder-only LM's input, before
    the text: [img_0 .. img_N, question, answer]. Causal, so the answer reads image and question."""

    def __init__(self, vision_dim, decoder):
        super().__init__()
        D = decoder.config.n_embd
        self.decoder = decoder
        self.proj = nn.Sequential(nn.Linear(vision_dim, D), nn.GELU(), nn.Linear(D, D))

    def forward(self, image_tokens, text):  # (B, 1 + N, D_vit), (B, T) -> logits (B, T, vocab)
        x = torch.cat([self.proj(image_tokens), self.decoder.transformer.wte(text)], dim=1)
        h = self.decoder.hidden(None, embeds=x)  # (B, 1 + N + T, D)
        return self.decoder.lm_head(h[:, image_tokens.size(1):])

def vqa_examples(attrs, tok, rng):  # (kind, prompt ids, answer ids) per image, a random kind
    kinds = list(QUESTIONS)
    out = []
    for row in attrs.tolist():
        k = rng.integers(len(kinds))
        prompt = tok.encode(QUESTIONS[kinds[k]] + " ")
        out.append((kinds[k], prompt, tok.encode(ANSWERS[kinds[k]][row[k]] + "\n")))
    return out

def vqa_batch(examples, rows, device):  # right-padded ids (B, T), (B, T - 1) answer targets
    seqs = [examples[r][1] + examples[r][2] for r in rows]
    T = max(map(len, seqs))
    text = torch.tensor([s + [0] * (T - len(s)) for s in seqs], device=device)
    pos = torch.arange(1, T, device=device)[None]  # the position of each target
    start = torch.tensor([len(examples[r][1]) for r in rows], device=device)[:, None]
    end = torch.tensor([len(s) for s in seqs], device=device)[:, None]
    return text, (pos >= start) & (pos < end)

@torch.no_grad()
def answer(vlm, image_tokens, prompt, newline, max_tokens=16):  # greedy, cut at the newline
    text = torch.tensor(prompt, device=image_tokens.device).expand(len(image_tokens), -1)
    for _ in range(max_tokens):
        text = torch.cat([text, vlm(image_tokens, text)[:, -1].argmax(-1, keepdim=True)], dim=1)
        if bool((text[:, len(prompt):] == newline).any(1).all()):
            break
    said = text[:, len(prompt):].tolist()
    return [row[:row.index(newline)] if newline in row else row for row in said]

def vlm_demo(vit, normalise, test_images, test_attrs, n_train, steps, device, seed=0, batch=64):
    """Prints a TinyVLM's accuracy per question; trained on fresh images (ViT tokens as at test)."""
    import gpt  # here and only here: the ViT stands alone
    tok = gpt.Tokenizer.from_spec("byte", text="bytes need no training")
    images, _, train_attrs = make_shapes(n_train, size=test_images.size(-1), seed=seed + 1)
    with torch.no_grad():  # the vision encoder is frozen: its tokens are computed once
        feats = {s: torch.cat([vit.features(part.to(device)) for part in x.split(500)])
                 for s, x in (("train", normalise(images)), ("test", test_images))}
    rng = np.random.default_rng(seed)
    train = vqa_examples(train_attrs, tok, rng)
    longest = max(len(p) + len(a) for _, p, a in train) + 8
    torch.manual_seed(seed)
    decoder = gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, n_layer=2, n_head=4,
                                    n_embd=64, block_size=feats["train"].size(1) + longest))
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
    newline = tok.encode("\n")[0]
    print(f"\nvision-language model: frozen ViT tokens -> MLP -> a 2-layer gpt.py decoder,"
          f" {steps} steps")
    print(f"{'question':<28}{'test accuracy':>14}{'chance':>8}   first test image: said / truth")
    for column, (kind, question) in enumerate(QUESTIONS.items()):
        truth = [ANSWERS[kind][a] for a in test_attrs[:, column].tolist()]
        with autocast(device):
            ids = answer(vlm, feats["test"], tok.encode(question + " "), newline)
        said = [tok.decode(i) for i in ids]
        acc = sum(s == t for s, t in zip(said, truth)) / len(truth)
        chance = 1 / len(ANSWERS[kind])
        print(f"{question:<28}{acc:>14.1%}{chance:>8.0%}   {said[0]!r} / {truth[0]!r}")

# ----------------------------------------------------------------------------- the demo

def main(cfg):
    device = pick_device(cfg.device)
    plt = pyplot(cfg.plot)
    data = load_data(cfg.data, cfg.n_train, cfg.n_test, cfg.cache_dir, cfg.seed)
    x, y = data["train"]
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)

    def normalise(images):  # per-channel standardisation with the training set's statistics
        return (images - mean) / std
    data |= {split: (normalise(data[split][0]), data[split][1]) for split in ("train", "test")}
    vit_cfg = ViTConfig(image_size=x.size(-1), patch_size=cfg.patch_size, channels=x.size(1),
                        n_classes=int(y.max()) + 1, n_layer=cfg.n_layer, n_head=cfg.n_head,
                        n_embd=cfg.n_embd, pool=cfg.pool, pos=cfg.pos)
    torch.manual_seed(cfg.seed)
    vit = ViT(vit_cfg).to(device)
    cnn = cnn_matching(count_params(vit), vit_cfg.channels, vit_cfg.n_classes).to(device)
    with torch.no_grad():
        probe = data["test"][0][:8].to(device)
        gap = (vit.patch(probe) - vit.patch.forward_unfold(probe)).abs().max().item()
    print(f"{'shapes' if 'attrs' in data else cfg.data}: {len(x)} training and "
          f"{len(data['test'][0])} test images of {tuple(x.shape[1:])}, {vit_cfg.n_classes}"
          f" classes, on {device}")
    print(f"ViT: {vit_cfg.n_patches} patches of {cfg.patch_size}x{cfg.patch_size} + [CLS],"
          f" {cfg.n_layer} blocks x {cfg.n_embd} wide; patch embedding as conv vs unfold +"
          f" linear: max difference {gap:.1e}")
    print(f"\n{'model':<6}{'params':>10}{'steps':>7}{'test accuracy':>15}{'train time':>12}")
    for name, model in [("ViT", vit), ("CNN", cnn)]:
        t0 = time.perf_counter()
        train_classifier(model, data, cfg.steps, cfg.lr, cfg.batch_size, device, cfg.seed, name)
        acc = accuracy(model, *data["test"], device)
        seconds = time.perf_counter() - t0
        print(f"{name:<6}{count_params(model):>10,}{cfg.steps:>7}{acc:>15.1%}{seconds:>11.0f}s")
    print()
    show_attention(vit, data["test"][0][0], device, plt, os.path.join(cfg.out_dir, "attention.png"))
    if "attrs" not in data:
        return print("\n(the vision-language demo asks about the shapes set: run it with"
                     " --data=shapes)")
    vlm_demo(vit, normalise, data["test"][0], data["attrs"][1], cfg.n_train, cfg.vlm_steps, device,
             cfg.seed)

# ----------------------------------------------------------------------------- real data
# Not the lecture: MNIST and CIFAR-10, downloaded for a longer run (python vit.py --data=cifar10).
# Offline, the shapes set stands in, drawn at the same image size.

SIDE = {"shapes": 32, "mnist": 28, "cifar10": 32}  # image side of each data set, pixels
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
            with urllib.request.urlopen(url, timeout=30) as remote, open(path + ".part", "wb") as f:
                shutil.copyfileobj(remote, f)
        except OSError as e:  # URLError included
            print(f"could not download {url} ({e})")
            return None
        os.replace(path + ".part", path)
    with open(path, "rb") as f:
        if hashlib.md5(f.read()).hexdigest() != md5:
            raise ValueError(f"{path} does not match its published MD5 (a broken download?):"
                             " delete it and run again")
    return path

def read_idx(path):  # MNIST's format: 0, 0, 0x08 (uint8), ndim, big-endian int32 sizes, values
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not a uint8 idx file")
    shape = np.frombuffer(data, dtype=">i4", count=data[3], offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3]).reshape(shape)

def read_cifar(path):
    """Pickled rows of 3072 bytes (R, G, B planes of 32 x 32); unpickling runs code, so only
    called on an archive whose MD5 matched."""
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
    """{"train": (images in [0, 1], labels), "test": ...}; the shapes set, with "attrs", offline."""
    arrays = None
    if name == "mnist":
        paths = [download(MNIST_URL + f, md5, cache_dir) for f, md5 in MNIST_MD5.items()]
        if all(paths):
            x, y, x_test, y_test = map(read_idx, paths)
            arrays = {"train": (x[:, None], y), "test": (x_test[:, None], y_test)}
    if name == "cifar10" and (path := download(CIFAR_URL, CIFAR_MD5, cache_dir)):
        arrays = read_cifar(path)
    if arrays is not None:
        return {split: (torch.tensor(x[:n] / 255.0, dtype=torch.float32),
                        torch.tensor(y[:n], dtype=torch.long))
                for (split, (x, y)), n in zip(arrays.items(), (n_train, n_test))}
    if name != "shapes":
        print(f"{name} is unavailable offline: falling back to the embedded shapes set")
    x, y, attrs = make_shapes(n_train + n_test, size=SIDE[name], seed=seed)
    return {"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:]),
            "attrs": (attrs[:n_train], attrs[n_train:])}

# ----------------------------------------------------------------------------- command line
# The same lines in every script that has a command line (tests/test_cli.py keeps the copies
# identical), so that each standalone file can be copied on its own.

def pick_device(name="auto"):
    """cuda, then mps, then cpu; asking for one that is not here is an error naming what is."""
    here = [d for d, ok in [("cuda", torch.cuda.is_available()),
                            ("mps", torch.backends.mps.is_available()), ("cpu", True)] if ok]
    if name != "auto" and name.split(":")[0] not in here:
        raise ValueError(f"--device={name}, but this machine has only {', '.join(here)}")
    return here[0] if name == "auto" else name

def to_bool(text):
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"

def parse_args(config_cls, argv=None, gpu=None):
    """A Config from --field=value arguments; --help prints each field with its comment. gpu: the
    defaults that change on a CUDA device, in one place (what the command line sets wins)."""
    doc = sys.modules[config_cls.__module__].__doc__.split("\n")[0]
    parser = argparse.ArgumentParser(description=doc, allow_abbrev=False,
                                     epilog=f"on CUDA the defaults become {gpu}" if gpu else None)
    notes = dict(re.findall(r"^ +(\w+):[^#\n]*#(.*(?:\n +#.*)*)", inspect.getsource(config_cls),
                            re.M))
    for f in dataclasses.fields(config_cls):
        kind = typing.get_type_hints(config_cls)[f.name]
        note = " ".join(notes.get(f.name, "").replace("#", " ").split()).replace("%", "%%")
        names = dict.fromkeys([f"--{f.name}", f"--{f.name.replace('_', '-')}"])
        how = dict(type=to_bool, nargs="?", const=True) if kind is bool else dict(type=kind)
        parser.add_argument(*names, dest=f.name, default=f.default, **how,
                            help=f"{note} (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if gpu and pick_device(getattr(args, "device", "auto")).startswith("cuda"):
            parser.set_defaults(**gpu)
            args = parser.parse_args(argv)
        return config_cls(**vars(args))
    except ValueError as e:
        parser.error(str(e))

if __name__ == "__main__":
    main(parse_args(Config, gpu=GPU))
