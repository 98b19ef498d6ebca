"""Side by side: rag.py's inverted-index BM25 against the rank_bm25 package, in one run.

rank_bm25's BM25Okapi scores every document for every query term; rag.BM25 keeps postings
lists and touches only the documents that contain a query term. Both use Okapi BM25 with
k1 = 1.5, b = 0.75 and the same floor on negative idf, so their scores must agree: the
bench checks that on every size before it times anything.

    pip install rank-bm25        # the peer; never needed by rag.py itself
    python bench/bm25_vs_rank_bm25.py

Prints per-query latency (best of 3 runs over 50 held-out questions, top 10 kept) at 1k, 10k
and 100k chunks of rag.py's generated knowledge base, and the speed-up.
"""
import os
import sys
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import gpt  # noqa: E402
import rag  # noqa: E402


@dataclass
class BenchConfig:
    sizes: str = "1000,10000,100000"  # corpus sizes in chunks
    n_queries: int = 50  # held-out questions timed at each size
    seed: int = 0  # knowledge base and question split


def main(cfg):
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        raise SystemExit("this bench compares against rank_bm25: pip install rank-bm25")
    sizes = [int(s) for s in cfg.sizes.split(",")]
    rc = rag.RAGConfig()
    chunks, facts = rag.make_knowledge_base(max(sizes) // 5, rc.chunk_size, rc.chunk_overlap,
                                            cfg.seed)
    _, test = rag.split_questions(facts, rc.test_frac, cfg.seed)
    print(f"{'chunks':>8}{'rag.BM25 ms':>13}{'rank_bm25 ms':>14}{'ratio':>8}"
          f"{'max |score diff|':>18}")
    for n in sizes:
        docs = chunks[:n]
        queries = [q for q, fact in test if max(fact["relevant"]) < n][:cfg.n_queries]
        ours, peer = rag.BM25(docs), BM25Okapi([rag.words(d) for d in docs])
        diff = max(np.abs(peer.get_scores(rag.words(q)) - ours.scores(q)).max() for q in queries)
        if not diff < 1e-9:
            raise SystemExit(f"scores disagree with rank_bm25 at {n} chunks: max difference"
                             f" {diff:.3g}")
        t_ours = gpt.best_time(lambda: [rag.top_k(ours.scores(q), 10) for q in queries])[1]
        t_peer = gpt.best_time(lambda: [rag.top_k(peer.get_scores(rag.words(q)), 10)
                                        for q in queries])[1]
        t_ours, t_peer = t_ours / len(queries), t_peer / len(queries)  # per query
        print(f"{n:>8}{1e3 * t_ours:>13.3f}{1e3 * t_peer:>14.3f}{t_peer / t_ours:>7.0f}x"
              f"{diff:>18.1e}")
    print("ratio: rank_bm25's time over ours (higher = ours faster)")


if __name__ == "__main__":
    main(gpt.parse_args(BenchConfig))
