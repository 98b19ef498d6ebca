"""BERT: a bidirectional Transformer encoder, pretrained by filling in blanks, then fine-tuned.

Every token attends to every other one (no causal mask), so a word is read with both its left
and its right context. Pretraining hides 15% of the tokens and predicts them, the masked
language model L_MLM = -sum_{i masked} log p(x_i | x_corrupted), plus next sentence prediction
(NSP: does sentence B follow sentence A?) on the [CLS] token. Fine-tuning puts a classifier on
[CLS]. RoBERTa drops NSP and draws a fresh mask for every batch; DistilBERT keeps every other
layer and learns from the teacher's softened outputs.
Papers: Devlin et al. 2018 (BERT), Liu et al. 2019 (RoBERTa), Hinton et al. 2015 and Sanh et
al. 2019 (distillation, DistilBERT).

    python bert.py                          # CPU: pretrain, fine-tune vs scratch, distill (~5 min)
    python bert.py --nsp=true               # BERT's MLM + NSP instead of RoBERTa-style MLM only
    python bert.py --pretrain_steps=3000 --n_layer=6

On CPU you see the MLM loss falling with masked-token (and, with --nsp=true, NSP) accuracy on
held-out text, a table of held-out accuracy on a sentence task for the pretrained model vs the
same model from scratch at the same budget (51.9% vs 37.9% from 120 labelled sentences), and the
half-depth student's parameters, speed and accuracy retained (98.2% when distilled).
A word-level vocabulary stands in for BERT's WordPiece; from_hf_bert loads real BERT weights.
"""
import copy
import dataclasses
import inspect
import math
import random
import re
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class BertConfig:
    vocab_size: int = 2048  # tokens, the 5 special ones included
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
        if self.vocab_size <= N_SPECIAL:
            raise ValueError(f"vocab_size={self.vocab_size} leaves no room beside the {N_SPECIAL} special tokens")
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4; ordinary tokens follow
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))
N_SPECIAL = len(SPECIALS)


# ----------------------------------------------------------------------------- the encoder

class SelfAttention(nn.Module):
    """Bidirectional multi-head attention, softmax(Q K^T / sqrt(d) + M) V, where M is -inf on
    [PAD] keys and 0 elsewhere: nothing attends to padding, and no future mask."""

    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, key_mask):  # x: (B, T, C); key_mask: (B, 1, 1, T), True = real token
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, n_head, T, hd)
                   for t in self.qkv(x).split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    """Post-norm, as in BERT and the 2017 Transformer: x = LN(x + Attn(x)); x = LN(x + FFN(x)),
    FFN(x) = GELU(x W_1 + b_1) W_2 + b_2 with the exact (erf) GELU."""

    def __init__(self, cfg):
        super().__init__()
        self.attn, self.ln_1 = SelfAttention(cfg), nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.fc, self.proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden), nn.Linear(cfg.mlp_hidden, cfg.n_embd)
        self.ln_2, self.drop = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps), nn.Dropout(cfg.dropout)

    def forward(self, x, key_mask):
        x = self.ln_1(x + self.drop(self.attn(x, key_mask)))
        return self.ln_2(x + self.drop(self.proj(F.gelu(self.fc(x)))))


class Bert(nn.Module):
    """Embeddings (token + position + segment, then LayerNorm), L encoder layers, and the pooler
    tanh(W h_[CLS] + b) that NSP and classifiers read."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.n_embd)
        self.seg_emb = nn.Embedding(cfg.n_segments, cfg.n_embd)
        self.emb_ln, self.drop = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps), nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.apply(init_weights)

    def forward(self, idx, segments=None, attn_mask=None):
        """Hidden states (B, T, n_embd). idx: (B, T) token ids; segments: (B, T) 0 for sentence A,
        1 for B (default all 0); attn_mask: (B, T) True or 1 for real tokens, bool or integer as
        Hugging Face passes it (default idx != [PAD])."""
        B, T = idx.shape
        if T > self.config.max_len:
            raise ValueError(f"input of {T} tokens is longer than max_len={self.config.max_len}: truncate it")
        segments = torch.zeros_like(idx) if segments is None else segments
        attn_mask = idx != PAD if attn_mask is None else attn_mask.bool()  # HF passes 0/1 ints
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device)) + self.seg_emb(segments)
        x = self.drop(self.emb_ln(x))  # (B, T, C)
        key_mask = None if bool(attn_mask.all()) else attn_mask[:, None, None, :]  # (B, 1, 1, T); None: no padding, fast path
        for layer in self.layers:
            x = layer(x, key_mask)
        return x

    def pool(self, h):  # (B, T, C) -> (B, C): the [CLS] summary
        return torch.tanh(self.pooler(h[:, 0]))


def init_weights(module):
    """BERT's initialisation: N(0, 0.02) weights, zero biases, LayerNorm gain 1 and bias 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class BertPretraining(nn.Module):
    """The two pretraining heads on a Bert. MLM: LN(GELU(W h + b)) E^T + b_vocab, its output
    matrix tied to the token embeddings E. NSP: a 2-way linear on the pooled [CLS] (None when
    nsp=False, RoBERTa-style)."""

    def __init__(self, bert, nsp=True):
        super().__init__()
        C = bert.config.n_embd
        self.bert = bert
        self.mlm_dense, self.mlm_ln = nn.Linear(C, C), nn.LayerNorm(C, eps=bert.config.norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(bert.config.vocab_size))
        self.nsp = nn.Linear(C, 2) if nsp else None
        init_weights(self.mlm_dense)
        if nsp:
            init_weights(self.nsp)

    def mlm_logits(self, h):  # (..., C) -> (..., vocab)
        return self.mlm_ln(F.gelu(self.mlm_dense(h))) @ self.bert.tok_emb.weight.T + self.mlm_bias

    def forward(self, idx, segments, targets, is_next=None):
        """(loss, stats). targets: (B, T) original ids at the masked positions, -100 elsewhere;
        is_next: (B,) NSP labels. Logits are computed only where a token was masked."""
        h = self.bert(idx, segments)
        picked = targets != -100
        logits = self.mlm_logits(h[picked])  # (n_masked, vocab)
        loss = F.cross_entropy(logits.float(), targets[picked])
        stats = {"mlm": loss.item(), "mlm_acc": (logits.argmax(-1) == targets[picked]).float().mean().item()}
        if self.nsp is not None:
            nsp_logits = self.nsp(self.bert.pool(h))  # (B, 2)
            nsp_loss = F.cross_entropy(nsp_logits.float(), is_next)
            loss = loss + nsp_loss
            stats |= {"nsp": nsp_loss.item(), "nsp_acc": (nsp_logits.argmax(-1) == is_next).float().mean().item()}
        return loss, stats


class BertClassifier(nn.Module):
    """Fine-tuning: logits = W dropout(pool(h)) + b, a linear head on the pooled [CLS] state."""

    def __init__(self, bert, n_classes):
        super().__init__()
        self.bert, self.drop = bert, nn.Dropout(bert.config.dropout)
        self.head = nn.Linear(bert.config.n_embd, n_classes)
        init_weights(self.head)

    def forward(self, idx, segments=None):
        return self.head(self.drop(self.bert.pool(self.bert(idx, segments))))  # (B, n_classes)


# ----------------------------------------------------------------------------- Hugging Face weights

HF_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size",
                  "layer_norm_eps")


def from_hf_bert(state_dict, config):
    """A Bert from a Hugging Face BertModel (or BertFor*, whose keys start with "bert.") state
    dict and its config.json as a dict. HF keeps Q, K and V as three Linears; we stack them into
    one. The head count is not in the weights, so it comes from the config, never a guess. Head
    weights (cls.*) are ignored."""
    missing = [k for k in HF_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"config lacks {missing}: pass the model's config.json as a dict")
    sd = {k.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
          for k, v in state_dict.items()}
    if "embeddings.word_embeddings.weight" not in sd:
        raise ValueError("not a BERT state dict: embeddings.word_embeddings.weight is missing")
    n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    cfg = BertConfig(vocab_size=config["vocab_size"], max_len=config["max_position_embeddings"],
                     n_layer=config["num_hidden_layers"], n_head=config["num_attention_heads"],
                     n_embd=config["hidden_size"], mlp_hidden=config["intermediate_size"],
                     n_segments=config["type_vocab_size"], norm_eps=config["layer_norm_eps"])
    ours = {"tok_emb.weight": "embeddings.word_embeddings.weight", "pos_emb.weight": "embeddings.position_embeddings.weight",
            "seg_emb.weight": "embeddings.token_type_embeddings.weight", "emb_ln.weight": "embeddings.LayerNorm.weight",
            "emb_ln.bias": "embeddings.LayerNorm.bias", "pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"}
    ours = {k: sd[v] for k, v in ours.items() if v in sd}  # BertModel(add_pooling_layer=False) has no pooler
    for l in range(n_layer):
        p, q = f"encoder.layer.{l}.", f"layers.{l}."
        for kind in ("weight", "bias"):
            ours[q + f"attn.qkv.{kind}"] = torch.cat([sd[p + f"attention.self.{n}.{kind}"] for n in ("query", "key", "value")])
            for mine, theirs in [("attn.proj", "attention.output.dense"), ("ln_1", "attention.output.LayerNorm"),
                                 ("fc", "intermediate.dense"), ("proj", "output.dense"), ("ln_2", "output.LayerNorm")]:
                ours[q + f"{mine}.{kind}"] = sd[p + f"{theirs}.{kind}"]
    model = Bert(cfg).to(sd["embeddings.word_embeddings.weight"].dtype)
    missing, unexpected = model.load_state_dict(ours, strict=False)  # differing shapes raise here
    missing = sorted(set(missing) - {"pooler.weight", "pooler.bias"})
    if missing or unexpected:
        raise ValueError(f"state dict and config disagree ({n_layer} layers in the weights, "
                         f"{cfg.n_layer} in the config): missing {missing}, extra {unexpected}")
    return model


# ----------------------------------------------------------------------------- text and the pretraining tasks

WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")  # uncased words, numbers, and each punctuation mark


class WordTokenizer:
    """The vocab_size - 5 most frequent lowercased words after the 5 special tokens; any other
    word is [UNK]. (BERT's WordPiece would split rare words into pieces instead.)"""

    def __init__(self, text, vocab_size):
        counts = Counter(WORD.findall(text.lower()))
        self.itos = SPECIALS + [w for w, _ in counts.most_common(vocab_size - N_SPECIAL)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def encode(self, text):
        return [self.stoi.get(w, UNK) for w in WORD.findall(text.lower())]

    def decode(self, ids):
        return " ".join(self.itos[i] for i in ids)


def load_documents(data):
    """{name: text}: the topics of Python's reference documentation ("embedded", about 460 kB,
    shipped with CPython), or the blank-line-separated paragraphs of a local text file."""
    if data == "embedded":
        from pydoc_data import topics
        return {k: topics.topics[k] for k in sorted(topics.topics)}
    try:
        with open(data, encoding="utf-8") as f:
            return {f"paragraph {i}": p for i, p in enumerate(re.split(r"\n\s*\n", f.read())) if p.strip()}
    except OSError as e:
        raise SystemExit(f"error: cannot read --data={data!r} ({e}): pass embedded or a path to a text file") from None


def split_sentences(doc, tok):
    """A document as a list of sentences, each a list of token ids (empty ones dropped)."""
    return [ids for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", doc) if (ids := tok.encode(s))]


def mask_tokens(idx, vocab_size, generator=None, p=0.15):
    """BERT's MLM corruption, drawn afresh for every batch (dynamic masking, as RoBERTa). Each
    ordinary token is selected with probability p (special tokens never are); of the selected,
    80% become [MASK], 10% a random ordinary token and 10% stay as they are, so the model cannot
    tell which visible tokens it will be asked about. Returns (inputs, targets): targets hold
    the original id at the selected positions and -100 (ignored by the loss) elsewhere."""
    selected = (torch.rand(idx.shape, generator=generator) < p) & (idx >= N_SPECIAL)
    r = torch.rand(idx.shape, generator=generator)  # which of the three fates
    random_ids = torch.randint(N_SPECIAL, vocab_size, idx.shape, generator=generator)
    inputs = torch.where(selected & (r < 0.8), MASK, idx)
    inputs = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    return inputs, torch.where(selected, idx, -100)


def pack_pair(a, b, max_len):
    """[CLS] A [SEP] B [SEP] and its segments 0...0 1...1; the longer sentence loses its last
    token until the pair fits (BERT's truncate_seq_pair)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_len - 3:
        (a if len(a) >= len(b) else b).pop()
    return [CLS, *a, SEP, *b, SEP], [0] * (len(a) + 2) + [1] * (len(b) + 1)


def nsp_pair(docs, rng):
    """(A, B, is_next): half the time B is the sentence after A; otherwise B is a random
    sentence from another document (is_next = 0)."""
    d = rng.choice([i for i, doc in enumerate(docs) if len(doc) >= 2])
    i = rng.randrange(len(docs[d]) - 1)
    if rng.random() < 0.5:
        return docs[d][i], docs[d][i + 1], 1
    other = rng.choice([j for j, doc in enumerate(docs) if j != d and doc])
    return docs[d][i], rng.choice(docs[other]), 0


def pad_batch(rows, segments=None):
    """Right-pad lists of ids with [PAD] to the longest: (B, W) ids and (B, W) segments."""
    W = max(len(r) for r in rows)
    idx = torch.tensor([r + [PAD] * (W - len(r)) for r in rows])
    seg = torch.zeros_like(idx) if segments is None else torch.tensor([s + [0] * (W - len(s)) for s in segments])
    return idx, seg


def pretraining_batch(docs, stream, batch, max_len, vocab_size, nsp, rng, generator):
    """(inputs, segments, targets, is_next). With NSP: sentence pairs, half of them consecutive.
    Without (RoBERTa): windows of contiguous text as one segment, and is_next is None."""
    if nsp:
        pairs = [nsp_pair(docs, rng) for _ in range(batch)]
        rows, segs = zip(*(pack_pair(a, b, max_len) for a, b, _ in pairs))
        idx, seg = pad_batch(list(rows), list(segs))
        is_next = torch.tensor([label for *_, label in pairs])
    else:
        starts = [rng.randrange(len(stream) - max_len + 2) for _ in range(batch)]
        idx, seg = pad_batch([[CLS, *stream[s:s + max_len - 2], SEP] for s in starts])
        is_next = None
    inputs, targets = mask_tokens(idx, vocab_size, generator)
    return inputs, seg, targets, is_next


def topic_task(train_docs, heldout_docs, n_classes, n_per_class, max_len, rng):
    """A sentence classification task with a known answer: which of the n_classes longest
    documents does a sentence come from? n_per_class labelled training sentences per class, and
    every held-out sentence of those documents as the test set. Returns (train, test), lists
    of ([CLS] sentence [SEP], label), and the classes' document indices."""
    classes = sorted(range(len(train_docs)), key=lambda d: -len(train_docs[d]))[:n_classes]

    def examples(docs, per_class):
        out = []
        for label, d in enumerate(classes):
            sentences = [s for s in docs[d] if len(s) >= 4]
            out += [([CLS, *s[:max_len - 2], SEP], label) for s in rng.sample(sentences, min(per_class, len(sentences)))]
        return out
    return examples(train_docs, n_per_class), examples(heldout_docs, max(map(len, heldout_docs))), classes


# ----------------------------------------------------------------------------- training, fine-tuning, distillation

def fit(model, step_loss, steps, lr, device, desc):
    """AdamW (weight decay 0.01 on matrices) with linear warmup over the first 10% of steps and
    linear decay to 0, as BERT; the gradient norm is clipped at 1. step_loss(step) -> (loss, stats)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=lr)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    model.train()
    bar = tqdm(range(steps), desc=desc, leave=False)
    for step in bar:
        with autocast(device):
            loss, stats = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
    return model.eval()


def sample_batch(data, batch, rng, device):
    """A random batch of (ids, label) examples: (B, W) padded ids and (B,) labels."""
    rows = rng.sample(data, min(batch, len(data)))
    idx, _ = pad_batch([r for r, _ in rows])
    return idx.to(device), torch.tensor([y for _, y in rows], device=device)


def finetune(model, data, steps, lr, batch, device, seed=0, teacher=None, temperature=2.0, alpha=0.5, desc="fine-tune"):
    """Train a classifier on labelled (ids, label) examples, encoder and head together: with
    cross-entropy, or, given a frozen teacher, with the distillation loss."""
    rng = random.Random(seed)

    def step_loss(step):
        idx, y = sample_batch(data, batch, rng, device)
        if teacher is None:
            loss = F.cross_entropy(model(idx).float(), y)
        else:
            with torch.no_grad():
                teacher_logits = teacher.eval()(idx)
            loss = distillation_loss(model(idx), teacher_logits, y, temperature, alpha)
        return loss, {"loss": loss.item()}
    return fit(model, step_loss, steps, lr, device, desc)


def distillation_loss(student_logits, teacher_logits, labels, temperature=2.0, alpha=0.5):
    """alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y).
    Softening with T > 1 exposes the teacher's "dark knowledge" (how wrong each wrong class is);
    T^2 keeps the soft gradients on the scale of the hard ones (Hinton et al. 2015)."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return alpha * temperature ** 2 * kl + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)


def half_depth(classifier):
    """DistilBERT's student: a copy of the classifier keeping layers 0, 2, 4, ... of its encoder
    (the teacher's weights are the initialisation), so it starts close to the teacher."""
    student = copy.deepcopy(classifier)
    student.bert.layers = nn.ModuleList(student.bert.layers[::2])
    student.bert.config = dataclasses.replace(student.bert.config, n_layer=len(student.bert.layers))
    return student


def distill(teacher, student, data, steps, lr, batch, device, temperature=2.0, alpha=0.5, seed=0):
    """DistilBERT-style: the student learns from the teacher's softened outputs and the labels."""
    return finetune(student, data, steps, lr, batch, device, seed, teacher, temperature, alpha, desc="distill")


@torch.no_grad()
def accuracy(model, data, device, batch=256):
    model.eval()
    correct = 0
    for i in range(0, len(data), batch):
        idx, _ = pad_batch([r for r, _ in data[i:i + batch]])
        with autocast(device):
            pred = model(idx.to(device)).argmax(-1).cpu()
        correct += (pred == torch.tensor([y for _, y in data[i:i + batch]])).sum().item()
    return correct / len(data)


@torch.no_grad()
def pretraining_metrics(model, docs, stream, batch_size, device, n_batches=8):
    """Mean held-out MLM loss, masked-token accuracy and NSP accuracy on fixed batches."""
    model.eval()
    cfg, nsp = model.bert.config, model.nsp is not None
    rng, gen, totals = random.Random(0), torch.Generator().manual_seed(0), Counter()
    for _ in range(n_batches):
        batch = pretraining_batch(docs, stream, batch_size, cfg.max_len, cfg.vocab_size, nsp, rng, gen)
        with autocast(device):
            _, stats = model(*(t.to(device) if t is not None else None for t in batch))
        totals.update(stats)
    return {k: v / n_batches for k, v in totals.items()}


@torch.no_grad()
def sequences_per_second(model, data, device, batch=64, repeats=5):
    """Inference throughput on one fixed batch, best of `repeats`."""
    idx, _ = pad_batch([r for r, _ in data[:batch]])
    idx, best = idx.to(device), math.inf
    model.eval()
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        with autocast(device):
            model(idx)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return len(idx) / best


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- config, device, demo

@dataclass
class RunConfig:
    data: str = "embedded"  # embedded (Python's reference docs) | a local text file
    vocab_size: int = 2048  # word vocabulary, 5 special tokens included
    max_len: int = 64  # tokens per input
    n_layer: int = 0  # encoder layers; 0 = 4 on CPU, 12 on CUDA (BERT-base); the student keeps half
    n_embd: int = 0  # hidden size; 0 = 128 on CPU, 768 on CUDA
    n_head: int = 0  # attention heads; 0 = n_embd / 32 on CPU, n_embd / 64 on CUDA
    nsp: bool = False  # next sentence prediction; false = RoBERTa-style MLM on contiguous text (at the CPU
    # budget NSP learns little, 65% after 2000 steps, and its pretrained model fine-tunes worse)
    batch_size: int = 32  # sequences per step
    pretrain_steps: int = 0  # MLM(+NSP) steps; 0 = 1000 on CPU, 20000 on CUDA
    pretrain_lr: float = 2e-3  # peak AdamW learning rate for pretraining
    finetune_steps: int = 0  # steps for each classifier (pretrained, scratch, students); 0 = 150 on CPU, 1000 on CUDA
    finetune_lr: float = 3e-4  # peak learning rate for fine-tuning and distillation
    n_classes: int = 6  # documents (classes) in the sentence classification task
    n_per_class: int = 20  # labelled training sentences per class: few, where pretraining pays
    temperature: float = 2.0  # distillation temperature T
    alpha: float = 0.5  # weight of the soft (teacher) loss; 1 - alpha weighs the labels
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 1337  # model init, data split, batches and masks

    def __post_init__(self):
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ValueError(f"alpha={self.alpha} must lie in [0, 1] and temperature={self.temperature} be positive")
        if self.max_len < 8 or self.batch_size < 1:
            raise ValueError(f"max_len={self.max_len} must be at least 8 and batch_size={self.batch_size} at least 1")


def resolve(cfg, device):
    """Fill the 0 = auto fields: a few-minute model on CPU, BERT-base on CUDA (the one dial)."""
    cuda = device.startswith("cuda")
    n_embd = cfg.n_embd or (768 if cuda else 128)
    return dataclasses.replace(cfg, n_layer=cfg.n_layer or (12 if cuda else 4), n_embd=n_embd,
                               n_head=cfg.n_head or n_embd // (64 if cuda else 32),
                               pretrain_steps=cfg.pretrain_steps or (20000 if cuda else 1000),
                               finetune_steps=cfg.finetune_steps or (1000 if cuda else 150))


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


def split_documents(texts, tok, heldout_frac, rng, block=8):
    """Each document as a list of sentences, cut into blocks of `block` sentences; heldout_frac
    of the blocks, at random, are held out: no training ever sees them. Returns (train, held-out)
    documents, each a list of sentences (lists of token ids)."""
    train, heldout = [], []
    for doc in (split_sentences(t, tok) for t in texts):
        blocks = [(doc[i:i + block], rng.random() < heldout_frac) for i in range(0, len(doc), block)]
        train.append([s for b, held in blocks if not held for s in b])
        heldout.append([s for b, held in blocks if held for s in b])
    if sum(len(d) >= 2 for d in heldout) < 2:
        raise SystemExit(f"error: {len(texts)} documents are too few or too short to hold text out: use a longer --data file")
    return train, heldout


def main(cfg):
    device = pick_device(cfg.device)
    cfg = resolve(cfg, device)
    torch.manual_seed(cfg.seed)
    rng, gen = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    documents = load_documents(cfg.data)
    tok = WordTokenizer("\n".join(documents.values()), cfg.vocab_size)
    train_docs, heldout_docs = split_documents(documents.values(), tok, 0.15, rng)
    train_stream, heldout_stream = ([t for d in docs for s in d for t in s] for docs in (train_docs, heldout_docs))
    model_cfg = BertConfig(vocab_size=len(tok.itos), max_len=cfg.max_len, n_layer=cfg.n_layer, n_head=cfg.n_head,
                           n_embd=cfg.n_embd)
    print(f"{len(train_stream):,} training and {len(heldout_stream):,} held-out words; "
          f"{cfg.n_layer} layers x {cfg.n_embd} wide, {cfg.n_head} heads, on {device}")

    # 1. pretraining: MLM (+ NSP), dynamic masks
    pre = BertPretraining(Bert(model_cfg), nsp=cfg.nsp).to(device)
    before = pretraining_metrics(pre, heldout_docs, heldout_stream, cfg.batch_size, device)

    def pretrain_loss(step):
        batch = pretraining_batch(train_docs, train_stream, cfg.batch_size, cfg.max_len, model_cfg.vocab_size, cfg.nsp, rng, gen)
        return pre(*(t.to(device) if t is not None else None for t in batch))
    t0 = time.perf_counter()
    fit(pre, pretrain_loss, cfg.pretrain_steps, cfg.pretrain_lr, device, "pretrain " + ("MLM+NSP" if cfg.nsp else "MLM"))
    after = pretraining_metrics(pre, heldout_docs, heldout_stream, cfg.batch_size, device)
    print(f"\npretraining, {cfg.pretrain_steps} steps in {time.perf_counter() - t0:.0f} s "
          f"({count_params(pre.bert) / 1e6:.2f}M encoder parameters); held-out text:")
    print(f"{'':<24}{'before':>8}{'after':>8}")
    for key, name in [("mlm", "MLM loss"), ("mlm_acc", "masked-token accuracy"), ("nsp_acc", "NSP accuracy")]:
        if key in after:
            print(f"{name:<24}{before[key]:>8.3f}{after[key]:>8.3f}")

    # 2. fine-tuning on a sentence task vs the same classifier from scratch
    task_train, task_test, classes = topic_task(train_docs, heldout_docs, cfg.n_classes, cfg.n_per_class, cfg.max_len, rng)
    majority = max(Counter(y for _, y in task_test).values()) / len(task_test)
    names = ", ".join(list(documents)[d] for d in classes)
    print(f"\nsentence task: which of {cfg.n_classes} documents is a sentence from? ({names})\n"
          f"{len(task_train)} labelled training sentences, {len(task_test)} held-out; majority class {majority:.1%}")
    pretrained = BertClassifier(copy.deepcopy(pre.bert), cfg.n_classes).to(device)
    finetune(pretrained, task_train, cfg.finetune_steps, cfg.finetune_lr, cfg.batch_size, device, cfg.seed, desc="fine-tune")
    torch.manual_seed(cfg.seed + 1)
    scratch = BertClassifier(Bert(model_cfg), cfg.n_classes).to(device)
    finetune(scratch, task_train, cfg.finetune_steps, cfg.finetune_lr, cfg.batch_size, device, cfg.seed, desc="scratch")
    acc_pre, acc_scratch = accuracy(pretrained, task_test, device), accuracy(scratch, task_test, device)
    print(f"{'classifier':<34}{'held-out accuracy':>18}")
    print(f"{'pretrained, then fine-tuned':<34}{acc_pre:>18.1%}")
    print(f"{'from scratch, same steps':<34}{acc_scratch:>18.1%}")

    # 3. distillation into a student with half the layers
    student = distill(pretrained, half_depth(pretrained), task_train, cfg.finetune_steps, cfg.finetune_lr,
                      cfg.batch_size, device, cfg.temperature, cfg.alpha, cfg.seed)
    hard_only = finetune(half_depth(pretrained), task_train, cfg.finetune_steps, cfg.finetune_lr, cfg.batch_size, device,
                         cfg.seed, desc="student, labels only")
    models = [("teacher (fine-tuned)", pretrained), ("student, distilled", student), ("student, labels only", hard_only)]
    speeds = [sequences_per_second(model, task_test, device) for _, model in models]
    print(f"\ndistillation (T={cfg.temperature}, alpha={cfg.alpha}): student = every other layer of the teacher")
    print(f"{'model':<24}{'layers':>7}{'params':>9}{'seq/s':>9}{'speed':>7}{'accuracy':>10}{'retained':>10}")
    for (name, model), speed in zip(models, speeds):
        acc = accuracy(model, task_test, device)
        print(f"{name:<24}{model.bert.config.n_layer:>7}{count_params(model) / 1e6:>8.2f}M{speed:>9.0f}"
              f"{speed / speeds[0]:>6.2f}x{acc:>10.1%}{acc / acc_pre:>10.1%}")

if __name__ == "__main__":
    main(parse_args(RunConfig))
