"""Query latency against corpus size: rag.py's BM25, exact dense search and LSH, in one run.

The LSH index (approximate search) lives here, not in rag.py: it matters for latency at scale,
not for the lecture's few hundred chunks. It is timed against its peer, exact cosine search over
the same embeddings, and its recall@10 against that exact search is printed beside it. LSH grows
its codes with the corpus, log2(N/2) bits (about two chunks per bucket), 16 tables, probe radius
1. The bi-encoder is rag.py's, trained for --encoder_steps on rag.py's generated knowledge base.
bench/bm25_vs_rank_bm25.py compares BM25 with the rank_bm25 package.

    python bench/rag.py                      # 1k, 10k and 100k chunks, 50 held-out questions
    python bench/rag.py --sizes=1000,10000 --device=cuda

Prints per-query latency in ms (the best of --repeats runs), LSH's speed-up over exact search,
and LSH's recall@10.
"""
import math
import os
import sys
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gpt  # noqa: E402
import rag  # noqa: E402


@dataclass
class BenchConfig:
    sizes: str = "1000,10000,100000"  # corpus sizes in chunks, comma-separated
    n_queries: int = 50  # held-out questions timed at each size
    encoder_steps: int = 100  # bi-encoder training steps
    repeats: int = 3  # timed runs of each; the fastest counts
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # knowledge base, question split, initialisation and LSH planes

    def __post_init__(self):
        if not all(n.strip().isdigit() and int(n) > 1 for n in self.sizes.split(",")):
            raise ValueError(f"sizes={self.sizes!r}: integers above 1, comma-separated")
        if min(self.n_queries, self.encoder_steps, self.repeats) < 1:
            raise ValueError("n_queries, encoder_steps and repeats must be at least 1")


class LSHIndex:
    """Random-hyperplane LSH (Charikar 2002): bit_i(x) = [r_i . x > 0], r_i Gaussian, so at angle
    theta P(same bit) = 1 - theta/pi. A query scores exactly the buckets within Hamming distance
    radius of its codes (n_bits: all)."""

    def __init__(self, doc_embs, n_tables=8, n_bits=8, seed=0):
        self.doc_embs = doc_embs
        self.n_bits = n_bits
        rng = np.random.default_rng(seed)
        self.planes = rng.standard_normal((n_tables, n_bits, doc_embs.shape[1]))
        self.tables = []
        for codes in self.codes(doc_embs):  # (N,) per table
            order = np.argsort(codes, kind="stable")
            keys, starts = np.unique(codes[order], return_index=True)
            self.tables.append(dict(zip(keys.tolist(), np.split(order, starts[1:]))))

    def codes(self, x):  # x (N, d) -> (n_tables, N) integer codes
        bits = np.einsum("tbd,nd->tnb", self.planes, x) > 0  # (n_tables, N, n_bits)
        return bits @ (1 << np.arange(self.n_bits))

    def search(self, query_emb, k, radius=1):  # -> (ids, number of chunks scored)
        flips = [sum(1 << b for b in bits) for r in range(radius + 1)
                 for bits in combinations(range(self.n_bits), r)]  # XOR masks of <= radius bits
        codes = self.codes(query_emb[None])[:, 0].tolist()
        buckets = [table.get(code ^ m) for table, code in zip(self.tables, codes) for m in flips]
        found = [b for b in buckets if b is not None] or [np.zeros(0, int)]
        candidates = np.unique(np.concatenate(found))
        ids = rag.top_k(self.doc_embs[candidates] @ query_emb, k)  # none found: none returned
        return candidates[ids], len(candidates)


def main(cfg):
    device = gpt.pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    sizes = [int(n) for n in cfg.sizes.split(",")]
    rc = rag.RAGConfig()
    chunks, facts = rag.make_knowledge_base(max(sizes) // 5, rc.chunk_size, rc.chunk_overlap,
                                            cfg.seed)
    train, test = rag.split_questions(facts, rc.test_frac, cfg.seed)
    bi = rag.BiEncoder(rag.Vocab(chunks), rc.n_embd, rc.n_layer).to(device)
    bi = rag.train_bi_encoder(bi, train, chunks, cfg.encoder_steps, rc.batch_size, rc.tau, cfg.seed)
    all_embs = np.concatenate([bi.embed(chunks[i:i + 8192])
                               for i in tqdm(range(0, max(sizes), 8192), "embed", leave=False)])
    print(f"{'chunks':>8}{'BM25 ms':>9}{'dense ms':>9}{'LSH ms':>8}{'x faster':>9}"
          f"{'LSH recall@10':>14}")
    for n in sizes:
        docs, embs = chunks[:n], all_embs[:n]
        queries = [q for q, fact in test if max(fact["relevant"]) < n][:cfg.n_queries]
        query_embs = bi.embed(queries)
        bm25 = rag.BM25(docs)
        index = LSHIndex(embs, 16, max(1, round(math.log2(n / 2))), cfg.seed)
        seconds = [gpt.best_time(run, cfg.repeats)[1] / len(queries) for run in [
            lambda: [rag.top_k(bm25.scores(q), 10) for q in queries],
            lambda: [rag.dense_search(e, embs, 10) for e in query_embs],
            lambda: [index.search(e, 10, 1) for e in query_embs]]]
        exact = [set(rag.dense_search(e, embs, 10)[0].tolist()) for e in query_embs]
        recall = np.mean([len(set(index.search(e, 10, 1)[0].tolist()) & x) / 10
                          for e, x in zip(query_embs, exact)])
        t_bm25, t_dense, t_lsh = seconds
        print(f"{n:>8}{1e3 * t_bm25:>9.3f}{1e3 * t_dense:>9.3f}{1e3 * t_lsh:>8.3f}"
              f"{t_dense / t_lsh:>9.1f}{recall:>14.3f}")


if __name__ == "__main__":
    main(gpt.parse_args(BenchConfig))
