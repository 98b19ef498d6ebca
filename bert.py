"""BERT: a bidirectional Transformer encoder, pretrained by filling in blanks, then fine-tuned.

Every token attends to every other one (no causal mask). Pretraining hides 15% of the tokens and
predicts them, L_MLM = -sum_{i masked} log p(x_i | x_corrupted), plus next sentence prediction
(NSP: does sentence B follow A?) on [CLS]; fine-tuning puts a classifier on [CLS]. RoBERTa drops
NSP and masks each batch afresh; DistilBERT keeps every other layer and learns from the teacher's
softened outputs. Devlin et al. 2018 (BERT), Liu et al. 2019 (RoBERTa), Hinton et al. 2015, Sanh
et al. 2019 (DistilBERT), Wu et al. 2016 (WordPiece).

    python bert.py                     # CPU: pretrain, fine-tune vs scratch, distill
    python bert.py --nsp=true          # BERT's MLM + NSP instead of RoBERTa-style MLM only
    python bert.py --resume --plot     # go on from out/bert/ckpt.pt; a PNG of the MLM loss
    python bench/bert.py               # the half-depth student's speed against the teacher's
    >>> model, tok = bert.from_pretrained("bert-base-uncased")  # a downloaded Hugging Face folder

On CPU: held-out MLM loss and masked-token (and NSP) accuracy before and after pretraining,
then a sentence task: pretrained vs from scratch, and half-depth students distilled or on labels.
Left out: training a WordPiece vocabulary (the demo uses whole words; WordPiece here reads a
downloaded vocab.txt), whole-word and span masking, and BERT-base sizes on CPU.
"""
import argparse
import copy
import dataclasses
import functools
import inspect
import json
import os
import pathlib
import random
import re
import sys
import typing
import unicodedata
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

@dataclass
class Config:
    data: str = "embedded"  # embedded (Python's reference docs) | a local UTF-8 text file
    vocab_size: int = 2048  # word vocabulary, 5 special tokens included
    max_len: int = 64  # tokens per input
    n_layer: int = 4  # encoder layers; the student keeps half
    n_embd: int = 128  # hidden size
    n_head: int = 4  # attention heads
    nsp: bool = False  # next sentence prediction; false = RoBERTa-style MLM on contiguous text
    batch_size: int = 32  # sequences per step
    pretrain_steps: int = 1000  # MLM (+ NSP) steps
    pretrain_lr: float = 2e-3  # peak AdamW learning rate for pretraining
    finetune_steps: int = 150  # steps for each classifier (pretrained, scratch, two students)
    finetune_lr: float = 3e-4  # peak learning rate for fine-tuning and distillation
    n_classes: int = 6  # documents (classes) in the sentence classification task
    n_per_class: int = 20  # labelled training sentences per class: few, where pretraining pays
    temperature: float = 2.0  # distillation temperature T
    alpha: float = 0.5  # weight of the soft (teacher) loss; 1 - alpha weighs the labels
    out_dir: str = "out/bert"  # log.jsonl, ckpt.pt and pretrain.png
    ckpt_interval: int = 250  # steps between checkpoints; each phase's end is saved too
    resume: bool = False  # go on from out_dir/ckpt.pt, bit for bit
    stop_after: int = 0  # stop after this many steps in all, as if pre-empted (0 = never)
    plot: bool = False  # out_dir/pretrain.png, the pretraining loss curve (needs matplotlib)
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # model init, data split, batches, masks and dropout

    def __post_init__(self):
        rules = {"vocab_size": (self.vocab_size > N_SPECIAL, "> 5, the special tokens"),
                 "max_len": (self.max_len >= 8, ">= 8"), "n_classes": (self.n_classes >= 2, ">= 2"),
                 "alpha": (0 <= self.alpha <= 1, "in [0, 1]"),
                 "stop_after": (self.stop_after >= 0, ">= 0")}
        rules |= {name: (getattr(self, name) > 0, "> 0") for name in (
            "n_layer", "n_embd", "n_head", "batch_size", "pretrain_steps", "finetune_steps",
            "n_per_class", "ckpt_interval", "pretrain_lr", "finetune_lr", "temperature")}
        for name, (ok, rule) in rules.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)} must be {rule}")
        BertConfig(n_embd=self.n_embd, n_head=self.n_head)  # its check: n_head divides n_embd

GPU = dict(n_layer=12, n_embd=768, n_head=12, pretrain_steps=20000, finetune_steps=1000,
           ckpt_interval=1000)  # BERT-base's shape

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4; ordinary tokens follow
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
N_SPECIAL = len(SPECIALS)

# ----------------------------------------------------------------------------- the encoder

@dataclass
class BertConfig:
    vocab_size: int = 2048  # tokens, the special ones included
    max_len: int = 64  # longest input in tokens: the size of the learned position table
    n_layer: int = 4  # encoder layers L
    n_head: int = 4  # attention heads A
    n_embd: int = 128  # hidden size H
    mlp_hidden: int = 0  # feed-forward width; 0 = 4 * n_embd
    n_segments: int = 2  # segment (token type) embeddings: sentence A and sentence B
    dropout: float = 0.1  # on embeddings, attention weights and residual branches
    norm_eps: float = 1e-12  # LayerNorm epsilon, BERT's value

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd

class SelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(d) + M) V, M = -inf on [PAD] keys: no future mask, no padding read."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, key_mask):  # x: (B, T, C); key_mask: (B, 1, 1, T), True = real token
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
                   for t in self.qkv(x).split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, key_mask, self.dropout if self.training else 0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

class EncoderLayer(nn.Module):
    """Post-norm, as BERT: x = LN(x + Attn(x)); x = LN(x + W_2 GELU(W_1 x)), the erf GELU."""

    def __init__(self, cfg):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_hidden)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, key_mask):
        x = self.ln_1(x + self.drop(self.attn(x, key_mask)))
        return self.ln_2(x + self.drop(self.proj(F.gelu(self.fc(x)))))

class Bert(nn.Module):
    """Embeddings (token + position + segment, then LayerNorm), then L encoder layers."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.n_embd)
        self.seg_emb = nn.Embedding(cfg.n_segments, cfg.n_embd)
        self.emb_ln = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.apply(init_weights)

    def forward(self, idx, segments=None, attn_mask=None):
        """(B, T) -> (B, T, C); segments 0 = sentence A, 1 = B; attn_mask 1 = a real token."""
        T = idx.shape[1]
        if T > self.config.max_len:
            raise ValueError(f"input of {T} tokens is longer than max_len={self.config.max_len}")
        segments = torch.zeros_like(idx) if segments is None else segments
        attn_mask = idx != PAD if attn_mask is None else attn_mask.bool()  # HF's 0/1 integers too
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        x = self.drop(self.emb_ln(x + self.seg_emb(segments)))  # (B, T, C)
        # (B, 1, 1, T); None when nothing is padded, so attention takes its fast path
        key_mask = None if bool(attn_mask.all()) else attn_mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask)
        return x

    def pool(self, h):  # (B, T, C) -> (B, C): tanh(W h_[CLS] + b), read by NSP and classifiers
        return torch.tanh(self.pooler(h[:, 0]))

def init_weights(module):  # BERT's: N(0, 0.02) weights, zero biases (LayerNorm keeps 1 and 0)
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)

class BertPretraining(nn.Module):
    """MLM: LN(GELU(W h + b)) E^T + b_vocab, tied to the embeddings E; NSP: 2-way on pool(h)."""

    def __init__(self, bert, nsp=True):
        super().__init__()
        C = bert.config.n_embd
        self.bert = bert
        self.mlm_dense = nn.Linear(C, C)
        self.mlm_ln = nn.LayerNorm(C, eps=bert.config.norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(bert.config.vocab_size))
        self.nsp = nn.Linear(C, 2) if nsp else None
        init_weights(self.mlm_dense)
        init_weights(self.nsp)

    def mlm_logits(self, h):  # (..., C) -> (..., vocab)
        return self.mlm_ln(F.gelu(self.mlm_dense(h))) @ self.bert.tok_emb.weight.T + self.mlm_bias

    def forward(self, idx, segments, targets, is_next=None):
        """(loss, stats). targets: (B, T), the original ids where masked, -100 elsewhere."""
        h = self.bert(idx, segments)
        picked = targets != -100
        logits = self.mlm_logits(h[picked])  # (n_masked, vocab): only where a token was masked
        loss = F.cross_entropy(logits.float(), targets[picked])
        hits = logits.argmax(-1) == targets[picked]
        stats = {"mlm": loss.item(), "mlm_acc": hits.float().mean().item()}
        if self.nsp is not None:
            nsp_logits = self.nsp(self.bert.pool(h))  # (B, 2)
            nsp_loss = F.cross_entropy(nsp_logits.float(), is_next)
            loss = loss + nsp_loss
            stats["nsp"] = nsp_loss.item()
            stats["nsp_acc"] = (nsp_logits.argmax(-1) == is_next).float().mean().item()
        return loss, stats

class BertClassifier(nn.Module):
    """Fine-tuning: logits = W dropout(pool(h)) + b, a linear head on the pooled [CLS] state."""

    def __init__(self, bert, n_classes):
        super().__init__()
        self.bert = bert
        self.drop = nn.Dropout(bert.config.dropout)
        self.head = nn.Linear(bert.config.n_embd, n_classes)
        init_weights(self.head)

    def forward(self, idx):  # (B, T) -> (B, n_classes)
        return self.head(self.drop(self.bert.pool(self.bert(idx))))

# ----------------------------------------------------------------------------- data and tasks

def load_documents(data):
    """{name: text}: Python's reference docs ("embedded", in CPython), or a file's paragraphs."""
    if data == "embedded":
        from pydoc_data import topics
        return {k: topics.topics[k] for k in sorted(topics.topics)}
    try:
        text = pathlib.Path(data).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: cannot read --data={data} as UTF-8 text ({e})") from None
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paragraphs:
        raise SystemExit(f"error: the corpus is empty: {data}")
    return {f"paragraph {i}": p for i, p in enumerate(paragraphs)}

def split_documents(texts, tok, heldout_frac, rng, block=8):
    """(train, held-out) sentences (lists of ids) of each document, held out in random blocks."""
    train, heldout = [], []
    for text in texts:
        doc = [ids for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", text) if (ids := tok.encode(s))]
        blocks = [(doc[i:i + block], rng.random() < heldout_frac)
                  for i in range(0, len(doc), block)]
        train.append([s for b, held in blocks if not held for s in b])
        heldout.append([s for b, held in blocks if held for s in b])
    if sum(len(d) >= 2 for d in heldout) < 2:
        raise SystemExit(f"error: {len(texts)} documents are too few or too short to hold text"
                         " out: use a longer --data file")
    return train, heldout

def mask_tokens(idx, vocab_size, generator=None, p=0.15):
    """BERT's corruption, drawn afresh for every batch (dynamic, as RoBERTa): each ordinary token
    is picked with probability p; of those 80% become [MASK], 10% a random token and 10% stay, so
    no visible token is safe to copy. (inputs, targets: the original id where picked, else -100)"""
    selected = (torch.rand(idx.shape, generator=generator) < p) & (idx >= N_SPECIAL)
    r = torch.rand(idx.shape, generator=generator)  # which of the three fates
    random_ids = torch.randint(N_SPECIAL, vocab_size, idx.shape, generator=generator)
    inputs = torch.where(selected & (r < 0.8), MASK, idx)
    inputs = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    return inputs, torch.where(selected, idx, -100)

def pack_pair(a, b, max_len):
    """[CLS] A [SEP] B [SEP], segments 0...0 1...1; the longer side loses tokens until it fits."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_len - 3:
        (a if len(a) >= len(b) else b).pop()
    return [CLS, *a, SEP, *b, SEP], [0] * (len(a) + 2) + [1] * (len(b) + 1)

def nsp_pair(docs, rng):
    """(A, B, is_next): half the time B follows A; else B is a sentence of another document."""
    d = rng.choice([i for i, doc in enumerate(docs) if len(doc) >= 2])
    i = rng.randrange(len(docs[d]) - 1)
    if rng.random() < 0.5:
        return docs[d][i], docs[d][i + 1], 1
    other = rng.choice([j for j, doc in enumerate(docs) if j != d and doc])
    return docs[d][i], rng.choice(docs[other]), 0

def pad_batch(rows):  # lists of ids right-padded with [PAD] to the longest: (B, W)
    W = max(map(len, rows))
    return torch.tensor([list(r) + [PAD] * (W - len(r)) for r in rows])

def pretraining_batch(docs, stream, batch, max_len, vocab_size, nsp, rng, generator=None):
    """(inputs, segments, targets, is_next): NSP's sentence pairs, or RoBERTa's windows of text."""
    if nsp:
        pairs = [nsp_pair(docs, rng) for _ in range(batch)]
        rows, segs = zip(*(pack_pair(a, b, max_len) for a, b, _ in pairs))
        idx = pad_batch(rows)
        seg = pad_batch(segs)  # padding falls in segment 0, as [PAD] is 0
        is_next = torch.tensor([label for *_, label in pairs])
    else:
        starts = [rng.randrange(len(stream) - max_len + 2) for _ in range(batch)]
        idx = torch.tensor([[CLS, *stream[s:s + max_len - 2], SEP] for s in starts])
        seg = torch.zeros_like(idx)
        is_next = None
    inputs, targets = mask_tokens(idx, vocab_size, generator)
    return inputs, seg, targets, is_next

def topic_task(train_docs, heldout_docs, n_classes, n_per_class, max_len, rng):
    """Which of the n_classes longest documents is a sentence from? (train, test, classes)."""
    classes = sorted(range(len(train_docs)), key=lambda d: -len(train_docs[d]))[:n_classes]

    def examples(docs, per_class):
        out = []
        for label, d in enumerate(classes):
            sentences = [s for s in docs[d] if len(s) >= 4]
            picked = rng.sample(sentences, min(per_class, len(sentences)))
            out += [([CLS, *s[:max_len - 2], SEP], label) for s in picked]
        return out
    train = examples(train_docs, n_per_class)
    return train, examples(heldout_docs, max(map(len, heldout_docs))), classes

# ----------------------------------------------------------------------------- losses and training

def distillation_loss(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y).
    Softening with T > 1 exposes the teacher's "dark knowledge" (how wrong each wrong class is);
    T^2 keeps the soft gradients on the scale of the hard ones (Hinton et al. 2015)."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    hard = F.cross_entropy(student_logits.float(), labels)
    return alpha * temperature ** 2 * kl + (1 - alpha) * hard

def half_depth(classifier):
    """DistilBERT's student: a copy keeping layers 0, 2, 4, ..., so it starts near the teacher."""
    student = copy.deepcopy(classifier)
    student.bert.layers = nn.ModuleList(student.bert.layers[::2])
    student.bert.config = dataclasses.replace(student.bert.config, n_layer=len(student.bert.layers))
    return student

def autocast(device):  # bf16 on CUDA; full precision elsewhere
    return torch.autocast("cuda", torch.bfloat16, enabled=str(device).startswith("cuda"))

def fit(model, step_loss, steps, lr, run, phase):
    """AdamW, 10% linear warmup then linear decay, decay 0.01 on matrices, clip 1: BERT's recipe."""
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0}], lr)
    warmup = max(1, steps // 10)
    start = run.restore(phase, model, opt)
    model.train()
    bar = tqdm(range(start, steps), desc=phase, total=steps, initial=start, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * min((step + 1) / warmup, (steps - step) / max(1, steps - warmup))
        # seeded by the step alone: every classifier sees the same batches and dropout masks,
        # and --resume needs no RNG state to go on bit for bit
        rng = random.Random(f"{run.cfg.seed} {step}")
        torch.manual_seed(rng.getrandbits(62))
        with autocast(params[0].device):
            loss, stats = step_loss(rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
        run.after_step(phase, step + 1, steps, stats, model, opt)
    return model.eval()

def finetune(model, data, cfg, run, phase, teacher=None):
    """Encoder and head on (ids, label) pairs: cross-entropy, or with a teacher, distillation."""
    device = next(model.parameters()).device

    def step_loss(rng):
        rows = rng.sample(data, min(cfg.batch_size, len(data)))
        idx = pad_batch([r for r, _ in rows]).to(device)  # (B, W)
        y = torch.tensor([label for _, label in rows], device=device)
        if teacher is None:
            loss = F.cross_entropy(model(idx).float(), y)
        else:
            with torch.no_grad():
                teacher_logits = teacher.eval()(idx)
            loss = distillation_loss(model(idx), teacher_logits, y, cfg.temperature, cfg.alpha)
        return loss, {"loss": loss.item()}
    return fit(model, step_loss, cfg.finetune_steps, cfg.finetune_lr, run, phase)

@torch.no_grad()
def accuracy(model, data, device, batch=256):
    rows = pad_batch([r for r, _ in data]).split(batch)  # batches: --data sets can be large
    with autocast(device):
        pred = torch.cat([model.eval()(x.to(device)).argmax(-1).cpu() for x in rows])
    return (pred == torch.tensor([y for _, y in data])).sum().item() / len(data)

@torch.no_grad()
def pretraining_metrics(model, docs, stream, batch_size, device, n_batches=8):
    """Mean held-out MLM loss, masked-token accuracy and NSP accuracy on fixed batches."""
    model.eval()
    cfg = model.bert.config
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    totals = Counter()
    for _ in range(n_batches):
        batch = pretraining_batch(docs, stream, batch_size, cfg.max_len, cfg.vocab_size,
                                  model.nsp is not None, rng, gen)
        with autocast(device):
            _, stats = model(*(t.to(device) if t is not None else None for t in batch))
        totals.update(stats)
    return {k: v / n_batches for k, v in totals.items()}

def count_params(model):
    return sum(p.numel() for p in model.parameters())

# ----------------------------------------------------------------------------- the demo

def main(cfg):
    device = pick_device(cfg.device)
    plt = pyplot(cfg.plot)
    documents = load_documents(cfg.data)
    run = Run(cfg)
    rng = random.Random(cfg.seed)
    words = Counter(basic_tokens("\n".join(documents.values())))
    tok = WordPiece(SPECIALS + [w for w, _ in words.most_common(cfg.vocab_size - N_SPECIAL)])
    train_docs, heldout_docs = split_documents(documents.values(), tok, 0.15, rng)
    task_train, task_test, classes = topic_task(train_docs, heldout_docs, cfg.n_classes,
                                                cfg.n_per_class, cfg.max_len, rng)
    train_stream = [t for d in train_docs for s in d for t in s]
    heldout_stream = [t for d in heldout_docs for s in d for t in s]
    model_cfg = BertConfig(vocab_size=len(tok.itos), max_len=cfg.max_len, n_layer=cfg.n_layer,
                           n_head=cfg.n_head, n_embd=cfg.n_embd)
    print(f"{len(train_stream):,} training and {len(heldout_stream):,} held-out words; "
          f"{cfg.n_layer} layers x {cfg.n_embd} wide, {cfg.n_head} heads, on {device}")

    # 1. pretraining: MLM (+ NSP), a fresh mask for every batch
    torch.manual_seed(cfg.seed)
    pre = BertPretraining(Bert(model_cfg), nsp=cfg.nsp).to(device)
    before = pretraining_metrics(pre, heldout_docs, heldout_stream, cfg.batch_size, device)

    def pretrain_loss(rng):
        batch = pretraining_batch(train_docs, train_stream, cfg.batch_size, cfg.max_len,
                                  model_cfg.vocab_size, cfg.nsp, rng)
        return pre(*(t.to(device) if t is not None else None for t in batch))
    fit(pre, pretrain_loss, cfg.pretrain_steps, cfg.pretrain_lr, run, "pretrain")
    after = pretraining_metrics(pre, heldout_docs, heldout_stream, cfg.batch_size, device)
    print(f"\npretraining ({'MLM+NSP' if cfg.nsp else 'MLM'}), {cfg.pretrain_steps} steps,"
          f" {count_params(pre.bert) / 1e6:.2f}M encoder parameters; held-out text:")
    print(f"{'':<24}{'before':>8}{'after':>8}")
    names = {"mlm": "MLM loss", "mlm_acc": "masked-token accuracy", "nsp_acc": "NSP accuracy"}
    for key in [k for k in names if k in after]:
        print(f"{names[key]:<24}{before[key]:>8.3f}{after[key]:>8.3f}")

    # 2. fine-tuning on a sentence task vs the same classifier from scratch
    majority = max(Counter(y for _, y in task_test).values()) / len(task_test)
    print(f"\nsentence task: which of {cfg.n_classes} documents is a sentence from? "
          f"({', '.join(list(documents)[d] for d in classes)})\n{len(task_train)} labelled training"
          f" sentences, {len(task_test)} held-out; majority class {majority:.1%}")
    torch.manual_seed(cfg.seed + 1)
    pretrained = BertClassifier(copy.deepcopy(pre.bert), cfg.n_classes).to(device)
    scratch = BertClassifier(Bert(model_cfg), cfg.n_classes).to(device)
    finetune(pretrained, task_train, cfg, run, "finetune")
    finetune(scratch, task_train, cfg, run, "scratch")

    # 3. distillation (T, alpha) into a student with every other layer of the teacher
    student = finetune(half_depth(pretrained), task_train, cfg, run, "distill", teacher=pretrained)
    hard_only = finetune(half_depth(pretrained), task_train, cfg, run, "labels_only")
    models = {"pretrained, then fine-tuned (teacher)": pretrained,
              "from scratch, same steps": scratch, "student, distilled": student,
              "student, labels only": hard_only}
    acc = {name: accuracy(model, task_test, device) for name, model in models.items()}
    teacher_acc = acc["pretrained, then fine-tuned (teacher)"] or float("nan")  # 0% keeps nothing
    print(f"{'classifier':<40}{'layers':>7}{'params':>9}{'accuracy':>10}{'retained':>10}")
    for name, model in models.items():
        print(f"{name:<40}{model.bert.config.n_layer:>7}{count_params(model) / 1e6:>8.2f}M"
              f"{acc[name]:>10.1%}{acc[name] / teacher_acc:>10.1%}")
    if plt:  # the pretraining losses against the step
        with open(run.log) as f:
            rows = [row for line in f if (row := json.loads(line))["phase"] == "pretrain"]
        for key in [k for k in ("mlm", "nsp") if k in rows[0]]:
            plt.plot([r["step"] for r in rows], [r[key] for r in rows], label=f"{key} loss")
        plt.xlabel("step")
        plt.legend()
        plt.savefig(os.path.join(cfg.out_dir, "pretrain.png"), dpi=120)
        print(f"plot: {os.path.join(cfg.out_dir, 'pretrain.png')}")

# ----------------------------------------------------------------------------- checkpoints and plot
# Not the lecture: what --resume, --stop_after and --plot need.

class Run:
    """out_dir/ckpt.pt: every phase's weights so far, and the optimizer and step of the one under
    way. out_dir/log.jsonl: a line per step; a resumed run keeps those before the checkpoint."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.path = os.path.join(cfg.out_dir, "ckpt.pt")
        self.log = os.path.join(cfg.out_dir, "log.jsonl")
        self.ckpt = {"config": dataclasses.asdict(cfg), "models": {}, "steps": {}, "step": 0}
        if cfg.resume:
            self.ckpt = load_run(self.path, cfg)
        self.step = self.ckpt["step"]  # over all phases: the log's step and --stop_after's count
        os.makedirs(cfg.out_dir, exist_ok=True)
        kept = []
        if cfg.resume and os.path.exists(self.log):
            with open(self.log) as f:
                kept = [line for line in f if json.loads(line)["step"] < self.step]
        with open(self.log, "w") as f:
            f.writelines(kept)

    def restore(self, phase, model, opt):  # the step `phase` starts at
        if phase in self.ckpt["models"]:
            model.load_state_dict(self.ckpt["models"][phase])
        if phase == self.ckpt.get("phase"):  # the phase under way: its optimizer too
            opt.load_state_dict(self.ckpt["optimizer"])
        return self.ckpt["steps"].get(phase, 0)

    def after_step(self, phase, step, steps, stats, model, opt):
        with open(self.log, "a") as f:
            f.write(json.dumps({"step": self.step, "phase": phase, **stats}) + "\n")
        self.step += 1
        stop = self.step == self.cfg.stop_after
        if step == steps or stop or step % self.cfg.ckpt_interval == 0:
            self.ckpt["models"][phase] = model.state_dict()
            self.ckpt["steps"][phase] = step
            self.ckpt |= {"phase": phase, "step": self.step, "optimizer": opt.state_dict()}
            torch.save(self.ckpt, self.path + ".tmp")
            os.replace(self.path + ".tmp", self.path)  # a crash mid-write keeps the last one
        if stop:
            raise SystemExit(f"stopped after {self.step} steps (--stop_after): go on with --resume")

def load_run(path, cfg):
    if not os.path.isfile(path):
        raise SystemExit(f"error: --resume, but {path} does not exist: start without --resume")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own message advises weights_only=False: unsafe, and no help here
        raise SystemExit(f"error: {path} is not a readable checkpoint") from None
    free = ("resume", "stop_after", "plot", "device")  # may change between the parts of a run
    changed = [k for k, v in dataclasses.asdict(cfg).items()
               if k not in free and ckpt.get("config", {}).get(k) != v]
    if changed:
        raise SystemExit(f"error: {path} was saved with other {', '.join(changed)}: resume with"
                         " the settings it was started with")
    return ckpt

def pyplot(plot):
    """matplotlib.pyplot for --plot, else None; without matplotlib, a note before any work."""
    if not plot:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("note: --plot needs matplotlib (pip install matplotlib): no PNG will be written")
        return None

# ----------------------------------------------------------------------------- WordPiece, HF BERT
# Not the lecture: BERT's own tokenizer, and a downloaded Hugging Face BERT read into the encoder.

CJK = re.compile("[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002a6df"
                 "\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f]")  # BERT's CJK blocks

@functools.cache
def char_text(c, lower):  # what BERT's BasicTokenizer makes of one character, once per character
    kind = unicodedata.category(c)
    if c in "\t\n\r" or kind == "Zs":
        return " "
    if kind.startswith("C") or c == "\ufffd" or (lower and kind == "Mn"):  # Mn: accents, once NFD
        return ""
    if kind.startswith("P") or CJK.match(c) or (c.isascii() and not c.isalnum()):
        return f" {c} "  # BERT counts every ASCII symbol ($, +, ^ ...) as punctuation
    return c

def basic_tokens(text, lower=True):
    """BERT's BasicTokenizer: drop control characters, maybe lower-case and strip accents, and
    split on whitespace and around every punctuation mark and CJK character."""
    if lower:  # NFD splits é into e and a combining accent, which char_text then drops
        text = unicodedata.normalize("NFD", text.lower())
    return "".join([char_text(c, lower) for c in text]).split()

class WordPiece:
    """basic_tokens, then each word cut greedily, longest piece first: un ##aff ##able; else [UNK]
    (as is a word over 100 characters). A piece's id is its index in the vocabulary."""

    def __init__(self, vocab, lower=True):
        self.itos = vocab
        self.stoi = {piece: i for i, piece in enumerate(vocab)}
        self.lower = lower

    def pieces(self, word):
        out = []
        while 0 < len(word) <= 100:
            prefix = "##" if out else ""  # a piece inside a word
            end = len(word)
            while end and prefix + word[:end] not in self.stoi:
                end -= 1
            if not end:
                return ["[UNK]"]
            out.append(prefix + word[:end])
            word = word[end:]
        return out or (["[UNK]"] if word else [])  # a word over 100 characters; "" gives none

    def encode(self, text):  # ids, without [CLS] and [SEP]
        return [self.stoi[p] for word in basic_tokens(text, self.lower) for p in self.pieces(word)]

# theirs -> ours in this order (attention.output.* before output.*); gamma, beta: old TF names
HF_NAMES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias",
            "embeddings.word_embeddings": "tok_emb", "embeddings.position_embeddings": "pos_emb",
            "embeddings.token_type_embeddings": "seg_emb", "embeddings.LayerNorm": "emb_ln",
            "pooler.dense": "pooler", "encoder.layer.": "layers.", "attention.self": "attn",
            "attention.output.dense": "attn.proj", "attention.output.LayerNorm": "ln_1",
            "intermediate.dense": "fc", "output.dense": "proj", "output.LayerNorm": "ln_2"}

def from_hf_bert(state_dict, config):
    """A Bert from a Hugging Face BertModel or BertFor* state dict (their heads are ignored) and
    its config.json as a dict, where the head count is. Q, K and V are stacked into one Linear."""
    sd = {}
    for k, v in state_dict.items():
        for theirs, ours in HF_NAMES.items():
            k = k.replace(theirs, ours)
        sd[k.removeprefix("bert.")] = v
    if "tok_emb.weight" not in sd:
        raise ValueError("not a BERT state dict: embeddings.word_embeddings.weight is missing")
    for q in [k for k in sd if ".attn.query." in k]:
        sd[q.replace("query", "qkv")] = torch.cat([sd.pop(q.replace("query", n))
                                                   for n in ("query", "key", "value")])
    cfg = BertConfig(vocab_size=config["vocab_size"], max_len=config["max_position_embeddings"],
                     n_layer=config["num_hidden_layers"], n_head=config["num_attention_heads"],
                     n_embd=config["hidden_size"], mlp_hidden=config["intermediate_size"],
                     n_segments=config["type_vocab_size"], norm_eps=config["layer_norm_eps"])
    model = Bert(cfg).to(sd["tok_emb.weight"].dtype)
    ours = {k: v for k, v in sd.items() if k.split(".")[0] in dict(model.named_children())}
    missing, unexpected = model.load_state_dict(ours, strict=False)  # differing shapes raise here
    missing = sorted(set(missing) - {"pooler.weight", "pooler.bias"})  # add_pooling_layer=False
    if missing or unexpected:
        n_layer = len({k.split(".")[1] for k in ours if k.startswith("layers.")})
        raise ValueError(f"state dict and config disagree ({n_layer} layers in the weights, "
                         f"{cfg.n_layer} in the config): missing {missing}, extra {unexpected}")
    return model

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "U8": torch.uint8, "BOOL": torch.bool}

def read_safetensors(path):
    """u64 n, n bytes of JSON {name: {dtype, shape, data_offsets}}, then the data; torch only."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        flat = torch.frombuffer(data[start:end], dtype=SAFETENSORS_DTYPES[info["dtype"]])
        tensors[name] = flat.reshape(info["shape"])
    return tensors

def from_pretrained(folder):
    """(Bert, WordPiece) from a downloaded Hugging Face BERT folder (do_lower_case true unless its
    tokenizer_config.json says not). The model reads [CLS] + tok.encode(text) + [SEP]."""
    files = set(os.listdir(folder))
    weights = [n for n in ("model.safetensors", "pytorch_model.bin") if n in files]
    if not weights or not {"config.json", "vocab.txt"} <= files:
        raise FileNotFoundError(f"{folder} needs config.json, vocab.txt and model.safetensors or"
                                " pytorch_model.bin")
    path = os.path.join(folder, weights[0])
    if path.endswith(".bin"):
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state_dict = read_safetensors(path)
    names = ("config.json", "vocab.txt", "tokenizer_config.json")
    text = {n: pathlib.Path(folder, n).read_text(encoding="utf-8") for n in names if n in files}
    lower = json.loads(text.get("tokenizer_config.json", "{}")).get("do_lower_case", True)
    vocab = text["vocab.txt"].removesuffix("\n").split("\n")
    return from_hf_bert(state_dict, json.loads(text["config.json"])), WordPiece(vocab, lower)

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
