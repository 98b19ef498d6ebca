"""Retrieval-augmented generation: find the passages that answer a question, then read them.

BM25 (Robertson & Zaragoza 2009), score = sum_t idf(t) f(t,d) (k1 + 1) / (f(t,d) + k1 (1 - b +
b |d| / avgdl)). A bi-encoder (Reimers & Gurevych 2019) trained with InfoNCE over in-batch
negatives, L = -log exp(q.d+/tau) / sum_j exp(q.d_j/tau) (van den Oord et al. 2018), searched by
exact cosine. Hybrid: reciprocal rank fusion, sum_r 1/(k + rank_r(d)) (Cormack et al. 2009). A
cross-encoder re-ranks [CLS] q [SEP] d (Nogueira & Cho 2019); HyDE (Gao et al. 2022) searches
with a passage the generator imagines (lecture 7).

    python rag.py                          # made-up knowledge base -> retrieval -> reader accuracy
    python rag.py --hyde --n_entities=200  # also HyDE; a bigger knowledge base
    python bench/rag.py                    # query latency vs corpus size: BM25, exact dense, LSH

On CPU: Recall@1/5, hit@1, P@5, MRR, NDCG@10 of each retriever on held-out questions beside the
ideal ranking; the reader's exact match with no retrieval, with the retrieved passages, with the
gold one. Retrieval needs only torch and numpy; the reader and HyDE need gpt.py beside this file.
Left out: real documents and pretrained encoders (all is trained from scratch on made-up
biographies), a vector database (LSH: bench/rag.py), query rewriting beyond HyDE, multi-hop.
"""
import math
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

try:
    import gpt  # the generator half (reader, HyDE); retrieval works without it
except ImportError:
    gpt = None

@dataclass
class RAGConfig:
    n_entities: int = 300  # made-up people in the knowledge base
    chunk_size: int = 16  # words per chunk
    chunk_overlap: int = 9  # overlap in words, >= the longest sentence - 1 so that no fact is split
    test_frac: float = 0.3  # fraction of facts whose questions are held out from all training
    n_embd: int = 64  # width of the bi- and cross-encoder (a head per 16 channels)
    n_layer: int = 2  # transformer blocks in each encoder
    tau: float = 0.05  # InfoNCE temperature
    encoder_steps: int = 300  # bi-encoder training steps
    cross_steps: int = 1000  # cross-encoder training steps of 8 questions x (1 + n_negatives) pairs
    batch_size: int = 64  # bi-encoder batch: 64 questions, each with 63 in-batch negatives
    n_negatives: int = 7  # cross-encoder: hard negatives per question, from BM25 and dense results
    rerank_depth: int = 20  # hybrid candidates the cross-encoder re-scores
    top_k: int = 2  # passages in the reader's prompt
    reader_steps: int = 2500  # reader fine-tuning steps
    reader_embd: int = 64  # reader width (4 heads, 2 layers)
    reader_lr: float = 5e-3  # reader peak learning rate (cosine decay)
    hyde: bool = False  # also train the generator to write HyDE passages, and search with them
    out_dir: str = "out/rag"  # log.jsonl: the encoders' losses and every result
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # knowledge base, splits and initialisation

    def __post_init__(self):  # every field, before any work
        for bad, error in [
                *[(getattr(self, f) < 1, f"{f}={getattr(self, f)} must be at least 1") for f in
                  ("n_entities", "chunk_size", "n_layer", "encoder_steps", "cross_steps",
                   "batch_size", "n_negatives", "top_k", "reader_steps")],
                (not 0 <= self.chunk_overlap < self.chunk_size, f"chunk_overlap="
                 f"{self.chunk_overlap} must be >= 0 and below chunk_size={self.chunk_size}"),
                (not 0 < self.test_frac < 1, f"test_frac={self.test_frac} must lie in (0, 1)"),
                (self.n_embd < 16 or self.n_embd % 16, f"n_embd={self.n_embd}: a multiple of 16"),
                (self.reader_embd < 8 or self.reader_embd % 8, f"reader_embd={self.reader_embd}:"
                 " a multiple of 8 (4 heads of an even width: RoPE rotates pairs)"),
                (min(self.tau, self.reader_lr) <= 0, "tau and reader_lr must be positive"),
                (self.top_k > self.rerank_depth, f"rerank_depth={self.rerank_depth} must be at"
                 f" least top_k={self.top_k}"),
                (os.path.isfile(self.out_dir), f"out_dir={self.out_dir!r} is a file")]:
            if bad:
                raise ValueError(error)

GPU = dict(n_entities=1000, reader_steps=6000, reader_embd=256)  # the defaults on CUDA

# ----------------------------------------------------------------------------- text

def words(text):  # one tokenisation for BM25 and the encoders' vocabulary
    return re.findall(r"\w+", text.lower())

def chunk(text, size, overlap):  # windows of `size` words, `overlap` shared with the next
    if not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < size, got size={size}, overlap={overlap}")
    tokens = text.split()
    starts = range(0, max(len(tokens) - overlap, 1), size - overlap)
    return [" ".join(tokens[s:s + size]) for s in starts]

def top_k(scores, k):  # ids of the k highest, best first, ties to the lower id; O(N), no sort
    scores = np.asarray(scores)
    k = min(k, len(scores))
    threshold = np.partition(scores, -k)[-k] if k else np.inf  # the k-th largest value
    candidates = np.flatnonzero(scores >= threshold)  # every tie at the threshold, in index order
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k]

# ----------------------------------------------------------------------------- sparse: BM25

class BM25:
    """Inverted index: a query reads its terms' postings; idf < 0 -> eps * mean idf (rank_bm25)."""

    def __init__(self, docs, k1=1.5, b=0.75, eps=0.25):
        tokenized = [words(d) for d in docs]
        self.n_docs = N = len(docs)
        lengths = np.array([len(t) for t in tokenized], dtype=np.float64)
        avgdl = lengths.mean()
        df = Counter(t for doc in tokenized for t in set(doc))  # n_t: documents containing t
        idf = {t: math.log((N - n + 0.5) / (n + 0.5)) for t, n in df.items()}
        floor = eps * sum(idf.values()) / len(idf)
        self.idf = {t: v if v >= 0 else floor for t, v in idf.items()}
        postings = defaultdict(lambda: ([], []))
        for i, doc in enumerate(tokenized):
            norm = k1 * (1 - b + b * lengths[i] / avgdl)  # k1 (1 - b + b |d| / avgdl)
            for t, f in Counter(doc).items():
                postings[t][0].append(i)
                postings[t][1].append(self.idf[t] * f * (k1 + 1) / (f + norm))
        self.postings = {t: (np.array(ids), np.array(w)) for t, (ids, w) in postings.items()}

    def scores(self, query):  # (N,); a repeated query term counts each time
        s = np.zeros(self.n_docs)
        for t in words(query):
            if t in self.postings:
                ids, weights = self.postings[t]
                s[ids] += weights
        return s

# ----------------------------------------------------------------------------- dense: encoders

class Vocab:  # word ids: 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], then every word seen

    def __init__(self, texts):
        self.itos = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + sorted(set(words(" ".join(texts))))
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def ids(self, text):
        return [self.stoi.get(w, 1) for w in words(text)]

class Encoder(nn.Module):  # bidirectional, learned positions, torch's pre-norm blocks

    def __init__(self, vocab_size, n_embd, n_layer, max_len=64):
        super().__init__()
        self.max_len = max_len
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(max_len, n_embd)
        block = nn.TransformerEncoderLayer(n_embd, max(1, n_embd // 16), 4 * n_embd, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, n_layer, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(n_embd)

    def pad(self, seqs):  # -> (B, T) ids cut at max_len, padded with 0 = [PAD], on our device
        rows = [torch.tensor(s[:self.max_len], dtype=torch.long) for s in seqs]
        return nn.utils.rnn.pad_sequence(rows, batch_first=True).to(self.wte.weight.device)

    def forward(self, idx, valid, extra=None):  # idx, valid (B, T); extra (B, T, n_embd) or None
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))  # (B, T, C)
        x = x if extra is None else x + extra
        return self.ln_f(self.blocks(x, src_key_padding_mask=~valid))  # (B, T, C)

class BiEncoder(nn.Module):
    """e = normalise(mean of the real tokens' states), cos = q . d; passages embedded offline."""

    def __init__(self, vocab, n_embd=64, n_layer=2):
        super().__init__()
        self.vocab = vocab
        self.encoder = Encoder(len(vocab.itos), n_embd, n_layer)

    def forward(self, texts):
        idx = self.encoder.pad([self.vocab.ids(t) for t in texts])
        valid = idx != 0  # no word is [PAD]
        h = self.encoder(idx, valid)  # (B, T, n_embd)
        mean = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)  # (B, C)
        return F.normalize(mean, dim=-1)

    @torch.no_grad()
    def embed(self, texts, batch_size=256):  # -> (N, n_embd) float32 numpy unit vectors
        out = torch.cat([self(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
        return out.float().cpu().numpy()

def info_nce(q, d, tau, false_negatives=None):  # (B, B) false_negatives: relevant, not negative
    logits = q @ d.T / tau  # (B, B); L = -(1/B) sum_i log softmax_j(q_i . d_j / tau)[i]
    if false_negatives is not None:
        logits = logits.masked_fill(false_negatives, -math.inf)
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))

class CrossEncoder(nn.Module):
    """score = w . h_[CLS] of [CLS] q [SEP] d: q and d attend to each other, too slow to search
    with. Its exact-match feature (DrQA, Chen et al. 2017) spares a tiny model learning to match."""

    def __init__(self, vocab, n_embd=64, n_layer=2):
        super().__init__()
        self.vocab = vocab
        self.encoder = Encoder(len(vocab.itos), n_embd, n_layer)
        self.features = nn.Embedding(4, n_embd)  # 2 * segment + [word is in the other segment]
        self.head = nn.Linear(n_embd, 1)

    def forward(self, queries, passages):  # -> (B,) scores
        seqs, feats = [], []
        for query, passage in zip(queries, passages):
            q, p = self.vocab.ids(query), self.vocab.ids(passage)
            seqs.append([2] + q + [3] + p)
            feats.append([0] + [int(t in p) for t in q] + [0] + [2 + int(t in q) for t in p])
        idx = self.encoder.pad(seqs)
        features = self.features(self.encoder.pad(feats))
        h = self.encoder(idx, idx != 0, features)  # (B, T, n_embd); no word is [PAD]
        return self.head(h[:, 0]).squeeze(-1)

def dense_search(query_emb, doc_embs, k):  # exact: unit query (d,), unit passages (N, d)
    scores = doc_embs @ query_emb  # (N,) cos = q . d for unit vectors
    ids = top_k(scores, k)
    return ids, scores[ids]

def reciprocal_rank_fusion(rankings, k=60):  # needs no score calibration between retrievers
    fused = defaultdict(float)
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] += 1.0 / (k + rank)  # sum_r 1 / (k + rank_r(d)); 0 if r lacks d
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))  # ties to the lower id

# ----------------------------------------------------------------------------- metrics
# Means over queries of a ranking (ids, best first) against relevant ids R; R empty scores 0.

def recall_at_k(rankings, relevant, k):  # |top-k & R| / |R|
    return float(np.mean([len(set(r[:k]) & rel) / len(rel) if rel else 0.0
                          for r, rel in zip(rankings, relevant)]))

def precision_at_k(rankings, relevant, k):  # |top-k & R| / k, k even past the ranking's end
    return float(np.mean([len(set(r[:k]) & rel) / k for r, rel in zip(rankings, relevant)]))

def mrr(rankings, relevant):  # mean of 1 / (rank of the first relevant id), 0 if none
    return float(np.mean([next((1.0 / i for i, d in enumerate(r, 1) if d in rel), 0.0)
                          for r, rel in zip(rankings, relevant)]))

def ndcg_at_k(rankings, relevant, k):  # DCG@k / IDCG@k, DCG = sum_{i<=k} rel_i / log2(i + 1)
    out = []
    for r, rel in zip(rankings, relevant):
        dcg = sum(1.0 / math.log2(i + 1) for i, d in enumerate(r[:k], 1) if d in rel)
        ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(rel)) + 1))  # R first
        out.append(dcg / ideal if rel else 0.0)
    return float(np.mean(out))

# ----------------------------------------------------------------------------- the knowledge base
# Made-up people, so no model knows an answer; paraphrased templates, so word overlap alone does
# not find the passage. Rows: attribute, values, sentence templates, questions ("|" between).

SYLLABLES = "ka lo mi ra ve tu shi no pa de lin bor zan qui el mar tho rin sa vel dru fen gal"
ATTRIBUTES = [
    ("town", "", "{n} was born in {v}.|{n} comes from the town of {v}.|The birthplace of {n} is"
     " {v}.", "Where was {n} born?|Which town does {n} come from?|What is the hometown of {n}?"),
    ("job", "glassblower beekeeper cartographer ferryman astronomer locksmith puppeteer tailor "
     "falconer brewer clockmaker surveyor", "{n} works as a {v}.|By trade, {n} is a {v}.|{n} earns"
     " a living as a {v}.", "What does {n} do for a living?|What is the profession of {n}?|Which"
     " job does {n} have?"),
    ("instrument", "harp cello oboe banjo lute zither bassoon ukulele accordion sitar", "{n} plays"
     " the {v}.|{n} practises the {v} every evening.|The instrument of {n} is the {v}.", "Which"
     " instrument does {n} play?|What does {n} practise in the evenings?|What music does {n}"
     " make?"),
    ("colour", "crimson teal amber violet ochre indigo scarlet olive", "The favourite colour of {n}"
     " is {v}.|{n} always dresses in {v}.|Above all colours, {n} likes {v}.", "What colour does"
     " {n} like best?|Which colour is the favourite of {n}?|What shade does {n} wear?"),
    ("pet", "tortoise parrot ferret goat hedgehog iguana donkey owl", "{n} keeps a {v} as a pet.|At"
     " home {n} looks after a {v}.|The pet of {n} is a {v}.", "What pet does {n} have?|Which"
     " animal lives with {n}?|What animal does {n} look after?"),
    ("year", "", "{n} was born in {v}.|{n} came into the world in {v}.|The birth year of {n} is"
     " {v}.", "When was {n} born?|In which year was {n} born?|What year did {n} come into the"
     " world?"),
]

def make_knowledge_base(n_entities, size, overlap, seed=0):
    """Chunks of biographies; a fact per (person, attribute), `relevant`: the chunks holding it."""
    rng = random.Random(seed)

    def made_up_word(n_syllables):
        return "".join(rng.choice(SYLLABLES.split()) for _ in range(n_syllables)).capitalize()
    towns = sorted({made_up_word(2) + rng.choice(["ton", "mere", "holm", "by"])
                    for _ in range(40)})
    firsts = sorted({made_up_word(2) for _ in range(60)})
    lasts = sorted({made_up_word(3) for _ in range(max(60, n_entities // 20))})  # enough
    names = rng.sample(sorted({f"{a} {b}" for a in firsts for b in lasts}), n_entities)
    chunks, facts = [], []
    for name in names:
        sentences = []
        for attribute, values, templates, questions in ATTRIBUTES:
            value = rng.choice(towns) if attribute == "town" else \
                str(rng.randint(1900, 1999)) if attribute == "year" else rng.choice(values.split())
            sentence = rng.choice(templates.split("|")).format(n=name, v=value)
            sentences.append(sentence)
            facts.append(dict(name=name, attribute=attribute, answer=value, sentence=sentence,
                              questions=[q.format(n=name) for q in questions.split("|")]))
        rng.shuffle(sentences)
        first = len(chunks)
        chunks += chunk(" ".join(sentences), size, overlap)  # each biography is chunked alone
        for fact in facts[-len(ATTRIBUTES):]:
            fact["relevant"] = {i for i in range(first, len(chunks))
                                if fact["sentence"] in chunks[i]}
            if not fact["relevant"]:
                raise ValueError(f"no chunk holds the whole sentence {fact['sentence']!r}: raise"
                                 f" chunk_overlap (now {overlap}) to the longest sentence - 1")
    return chunks, facts

def split_questions(facts, test_frac, seed=0):  # held-out facts are never trained on
    rng = random.Random(seed + 1)
    order = list(range(len(facts)))
    rng.shuffle(order)
    n_test = int(len(facts) * test_frac)
    test = [(rng.choice(facts[i]["questions"]), facts[i]) for i in order[:n_test]]  # one each
    train = [(q, facts[i]) for i in order[n_test:] for q in facts[i]["questions"]]  # every one
    return train, test

# ----------------------------------------------------------------------------- retriever training

def optimise(model, loss_fn, steps, lr, name, log):  # AdamW on loss_fn(device), both encoders
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    device = model.encoder.wte.weight.device
    model.train()
    for step in (bar := tqdm(range(steps), desc=name, leave=False)):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if log:
            log(step=step, **{f"{name}_loss": loss.item()})
    return model.eval()

def train_bi_encoder(model, train, chunks, steps, batch_size, tau, seed=0, lr=2e-3, log=None):
    """InfoNCE with in-batch negatives; no positive twice in a batch, no relevant one negative."""
    rng = random.Random(seed)

    def loss_fn(device):
        batch, positives = [], []
        while len(batch) < min(batch_size, len(train)):
            question, fact = rng.choice(train)
            positive = rng.choice(sorted(fact["relevant"]))
            if positive not in positives:
                batch.append((question, fact))
                positives.append(positive)
        relevant = torch.tensor([[p in fact["relevant"] for p in positives] for _, fact in batch])
        false_negatives = (relevant & ~torch.eye(len(batch), dtype=torch.bool)).to(device)
        q, d = model([question for question, _ in batch]), model([chunks[p] for p in positives])
        return info_nce(q.float(), d.float(), tau, false_negatives)
    return optimise(model, loss_fn, steps, lr, "bi_encoder", log)

def hard_negatives(rankings, train, n_chunks, n_negatives, seed=0):
    """Retrieved non-relevant chunks in rank order, as met at test time; random ones only fill."""
    rng = random.Random(seed)
    out = []
    for ranking, (_, fact) in zip(rankings, train):
        hard = [c for c in ranking if c not in fact["relevant"]]
        if len(hard) < n_negatives:
            pool = [c for c in range(n_chunks) if c not in hard and c not in fact["relevant"]]
            hard += rng.sample(pool, min(len(pool), n_negatives - len(hard)))
        out.append(hard)
    return out

def train_cross_encoder(model, train, chunks, negatives, steps, n_negatives, seed=0, lr=2e-3,
                        n_questions=8, log=None):
    """Listwise: cross-entropy of each positive against n_negatives hard negatives."""
    rng = random.Random(seed)

    def loss_fn(device):
        queries, passages = [], []
        for i in rng.sample(range(len(train)), n_questions):
            question, fact = train[i]
            positive = rng.choice(sorted(fact["relevant"]))
            candidates = [positive] + rng.sample(negatives[i], n_negatives)
            queries += [question] * len(candidates)
            passages += [chunks[c] for c in candidates]
        scores = model(queries, passages).float().view(n_questions, 1 + n_negatives)
        return F.cross_entropy(scores, torch.zeros(n_questions, dtype=torch.long, device=device))
    return optimise(model, loss_fn, steps, lr, "cross_encoder", log)

def search_all(questions, bm25, query_embs, doc_embs, depth):  # BM25, dense, hybrid (RRF) ids
    sparse = [top_k(bm25.scores(q), depth).tolist() for q in questions]
    dense = [dense_search(e, doc_embs, depth)[0].tolist() for e in query_embs]
    hybrid = [[d for d, _ in reciprocal_rank_fusion(pair)][:depth] for pair in zip(sparse, dense)]
    return sparse, dense, hybrid

@torch.no_grad()
def rerank(cross, questions, rankings, chunks):  # by the cross-encoder; ties keep the old order
    scores = [cross([q] * len(r), [chunks[c] for c in r]).float().cpu().numpy()
              for q, r in zip(questions, rankings)]
    return [[r[i] for i in top_k(s, len(r))] for s, r in zip(scores, rankings)]

# ----------------------------------------------------------------------------- generation (gpt.py)

SPECIAL = re.compile(r"<\|[a-z_]+\|>")
HYDE = "<|system|>write the passage<|user|>{}<|assistant|>"  # worded like the chunks, maybe wrong

def augment(question, passages):
    """Question first (passages attend to it), then passages minus special tokens (untrusted)."""
    context = "\n".join(f"[{i}] {SPECIAL.sub('', p)}" for i, p in enumerate(passages, 1))
    return f"<|user|>{question}<|system|>{context}<|assistant|>"

def generate_text(model, tok, prompts, max_new_tokens, batch_size=64):  # greedy, cut at <|end|>
    end = tok.special("<|end|>")
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [tok.encode(p, allow_special=True) for p in prompts[i:i + batch_size]]
        out += [tok.decode([t for t in new if t != end]).strip()
                for new in model.generate(ids, max_new_tokens, temperature=0, stop_tokens=(end,))]
    return out

def reader_pairs(train, chunks, distractors, tok, top_k, hyde, seed=0, closed_book=0.15):
    """SFT pairs: gold passage + 0..top_k-1 distractors -> answer; closed-book rows; HyDE rows."""
    rng = random.Random(seed)
    rows = []
    for i, (question, fact) in enumerate(train):
        passages = []
        if rng.random() >= closed_book:  # else a closed-book row: no passage
            n_distractors = rng.randint(0, top_k - 1)
            gold = chunks[rng.choice(sorted(fact["relevant"]))]
            passages = [gold] + [chunks[d] for d in distractors[i][:n_distractors]]
            rng.shuffle(passages)
        rows.append((augment(question, passages), fact["answer"] + "<|end|>"))
        if hyde:
            rows.append((HYDE.format(question), fact["sentence"] + "<|end|>"))
    return [(tok.encode(p, allow_special=True), tok.encode(c, allow_special=True))
            for p, c in rows]

def train_reader(train, chunks, distractors, cfg, device):
    """A BPE of the knowledge base and a 2-layer gpt.py model trained on reader_pairs."""
    tok = gpt.Tokenizer.from_spec("bpe", "\n".join(chunks + [q for q, _ in train]), vocab_size=512)
    pairs = reader_pairs(train, chunks, distractors, tok, cfg.top_k, cfg.hyde, cfg.seed)
    longest = max(len(p) + len(c) for p, c in pairs)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=longest + 64,
                                  n_layer=2, n_head=4, n_embd=cfg.reader_embd)).to(device)
    loss = gpt.finetune(model, pairs, cfg.reader_steps, lr=cfg.reader_lr, batch_size=16,
                        seed=cfg.seed, desc="reader")
    print(f"reader: gpt.py 2x{cfg.reader_embd}, {gpt.count_params(model) / 1e6:.2f}M params,"
          f" {len(pairs)} pairs, {cfg.reader_steps} steps, final loss {loss:.3f}")
    return model, tok

# ----------------------------------------------------------------------------- the demo

def print_retrieval_table(rows, relevant, n_chunks, log=None):
    """hit@1 beside Recall@1 (two relevant chunks cap it at 1/2); the ideal row is the ceiling."""
    print(f"\nretrieval on {len(relevant)} held-out questions over {n_chunks} chunks")
    header = ("Recall@1", "hit@1", "Recall@5", "P@5", "MRR", "NDCG@10")
    print(f"{'method':<22}" + "".join(f"{h:>9}" for h in header))
    for name, rankings in {**rows, "ideal (relevant first)": [sorted(r) for r in relevant]}.items():
        values = [recall_at_k(rankings, relevant, 1), precision_at_k(rankings, relevant, 1),
                  recall_at_k(rankings, relevant, 5), precision_at_k(rankings, relevant, 5),
                  mrr(rankings, relevant), ndcg_at_k(rankings, relevant, 10)]
        print(f"{name:<22}" + "".join(f"{v:>9.3f}" for v in values))
        if log:
            log(method=name, **dict(zip(header, values)))

def main(cfg):
    if gpt is None:
        raise SystemExit("rag.py's demo trains a reader with gpt.py: put gpt.py beside rag.py")
    device = gpt.pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    log = gpt.RunLog(cfg.out_dir)
    chunks, facts = make_knowledge_base(cfg.n_entities, cfg.chunk_size, cfg.chunk_overlap,
                                        cfg.seed)
    train, test = split_questions(facts, cfg.test_frac, cfg.seed)
    print(f"knowledge base: {cfg.n_entities} made-up people, {len(facts)} facts in {len(chunks)}"
          f" chunks of {cfg.chunk_size} words; {len(train)} training questions, {len(test)}"
          " held-out facts")
    train_questions = [q for q, _ in train]
    bm25 = BM25(chunks)
    vocab = Vocab(chunks + train_questions)
    bi = train_bi_encoder(BiEncoder(vocab, cfg.n_embd, cfg.n_layer).to(device), train, chunks,
                          cfg.encoder_steps, cfg.batch_size, cfg.tau, cfg.seed, log=log)
    doc_embs = bi.embed(chunks)
    _, _, hybrid = search_all(train_questions, bm25, bi.embed(train_questions), doc_embs,
                              cfg.rerank_depth)
    hard = hard_negatives(hybrid, train, len(chunks), cfg.n_negatives, cfg.seed)
    cross = train_cross_encoder(CrossEncoder(vocab, cfg.n_embd, cfg.n_layer).to(device), train,
                                chunks, hard, cfg.cross_steps, cfg.n_negatives, cfg.seed, log=log)
    reader, tok = train_reader(train, chunks, hard, cfg, device)

    questions, relevant = [q for q, _ in test], [fact["relevant"] for _, fact in test]
    query_embs = bi.embed(questions)
    sparse, dense, hybrid = search_all(questions, bm25, query_embs, doc_embs, cfg.rerank_depth)
    reranked = rerank(cross, questions, hybrid, chunks)
    rows = {"BM25": sparse, "dense (bi-encoder)": dense, "hybrid (RRF, k=60)": hybrid,
            "hybrid + re-rank": reranked}
    if cfg.hyde:  # embed question + imagined passage together, as Gao et al. average embeddings
        imagined = generate_text(reader, tok, [HYDE.format(q) for q in questions], 48)
        hyde_embs = query_embs + bi.embed(imagined)
        hyde_embs /= np.linalg.norm(hyde_embs, axis=1, keepdims=True)
        rows["dense + HyDE"] = [dense_search(e, doc_embs, cfg.rerank_depth)[0].tolist()
                                for e in hyde_embs]
        print(f"HyDE example: {questions[0]!r} -> {imagined[0]!r}")
    print_retrieval_table(rows, relevant, len(chunks), log)

    answers = [fact["answer"].lower() for _, fact in test]
    settings = {"no retrieval (closed book)": [augment(q, []) for q in questions],
                f"top-{cfg.top_k} hybrid + re-rank": [augment(q, [chunks[c] for c in r[:cfg.top_k]])
                                                      for q, r in zip(questions, reranked)],
                "gold passage (ceiling)": [augment(q, [chunks[min(rel)]])
                                           for q, rel in zip(questions, relevant)]}
    print(f"\nreader answer accuracy (exact match) on the {len(test)} held-out questions")
    for name, prompts in settings.items():
        predicted = generate_text(reader, tok, prompts, 12)
        accuracy = np.mean([p.lower() == a for p, a in zip(predicted, answers)])
        print(f"{name:<30}{accuracy:>7.1%}")
        log(reader=name, exact_match=float(accuracy))
    print(f"e.g. {questions[0]!r} -> {predicted[0]!r} (truth {test[0][1]['answer']!r})")

if __name__ == "__main__":  # without gpt.py, main says what needs it
    main(gpt.parse_args(RAGConfig, gpu=GPU) if gpt else None)
