"""rag.py against hand computations, worked examples and brute force."""
import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpt
import rag
from conftest import require


# ----------------------------------------------------------------------------- BM25

def test_bm25_matches_hand_computation():
    # N = 3, |d| = 3, 3, 1, avgdl = 7/3. df: cat 2, everything else 1.
    # idf(cat) = ln((3 - 2 + 0.5) / (2 + 0.5)) = ln 0.6 < 0 -> floor 0.25 * mean idf over the 5 terms
    # idf(other) = ln(2.5 / 1.5) = ln(5/3). Query "cat dog":
    # d0 = 0.0679, d1 = 0.5529, d2 = 0 (values below, written out from the Okapi formula).
    docs = ["cat sat mat", "cat cat dog", "bird"]
    k1, b, avgdl = 1.5, 0.75, 7 / 3
    idf_other = math.log(2.5 / 1.5)
    floor = 0.25 * (math.log(0.6) + 4 * idf_other) / 5

    def term(idf, f, length):
        return idf * f * (k1 + 1) / (f + k1 * (1 - b + b * length / avgdl))

    expected = [term(floor, 1, 3), term(floor, 2, 3) + term(idf_other, 1, 3), 0.0]
    scores = rag.BM25(docs).scores("Cat, dog!")
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    np.testing.assert_allclose(scores, [0.067894, 0.552886, 0.0], atol=1e-6)


def test_bm25_repeated_query_term_counts_twice_and_unknown_terms_score_zero():
    bm25 = rag.BM25(["cat sat mat", "cat cat dog", "bird"])
    np.testing.assert_allclose(bm25.scores("dog dog"), 2 * bm25.scores("dog"))
    assert not bm25.scores("zebra").any()


def test_bm25_floor_is_negative_when_most_terms_are_common():
    # N = 4. a, b, e are in 3 documents: idf = ln(1.5 / 3.5) < 0; c, d in 1: idf = ln(3.5 / 1.5).
    # mean idf = (3 ln(3/7) + 2 ln(7/3)) / 5 = ln(3/7) / 5 < 0, so the floor 0.25 * mean idf is
    # negative too: the common word "a" lowers the score of every document that contains it,
    # and "d", with no query word at all, outranks "a b e" (rank_bm25 0.2.2 does the same).
    docs = ["a b e", "a b e", "a b e c", "d"]
    k1, b, avgdl = 1.5, 0.75, 11 / 4
    floor = 0.25 * math.log(3 / 7) / 5

    def term(idf, length):  # f = 1
        return idf * (k1 + 1) / (1 + k1 * (1 - b + b * length / avgdl))

    expected = [term(floor, 3), term(floor, 3), term(floor, 4) + term(math.log(7 / 3), 4), 0.0]
    scores = rag.BM25(docs).scores("a c")
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert floor < 0 and scores[0] < scores[3] == 0.0
    rank_bm25 = require("rank_bm25")
    peer = rank_bm25.BM25Okapi([rag.words(d) for d in docs]).get_scores(["a", "c"])
    np.testing.assert_allclose(scores, peer, rtol=1e-12)


# ----------------------------------------------------------------------------- metrics

def test_metrics_worked_example():
    ranking, relevant = [[3, 1, 4, 5, 9]], [{1, 5, 7}]  # relevant docs at ranks 2 and 4; doc 7 never retrieved
    assert rag.recall_at_k(ranking, relevant, 1) == 0.0
    assert rag.recall_at_k(ranking, relevant, 2) == pytest.approx(1 / 3, abs=1e-15)
    assert rag.recall_at_k(ranking, relevant, 5) == pytest.approx(2 / 3, abs=1e-15)
    assert rag.precision_at_k(ranking, relevant, 2) == 0.5
    assert rag.precision_at_k(ranking, relevant, 5) == pytest.approx(2 / 5, abs=1e-15)
    assert rag.precision_at_k(ranking, relevant, 10) == pytest.approx(2 / 10, abs=1e-15)  # denominator is k
    assert rag.mrr(ranking, relevant) == 0.5
    # DCG@5 = 1/log2(3) + 1/log2(5) = 1.061606; IDCG@5 (3 relevant) = 1 + 1/log2(3) + 1/log2(4) = 2.130930
    assert rag.ndcg_at_k(ranking, relevant, 5) == pytest.approx(0.498189, abs=1e-6)
    # @2: DCG = 1/log2(3); IDCG = 1 + 1/log2(3) (only 2 slots, though 3 are relevant)
    assert rag.ndcg_at_k(ranking, relevant, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)), abs=1e-15)


def test_metrics_query_without_relevant_documents_scores_zero_and_counts():
    rankings, relevant = [[1, 2], [1, 2]], [{1}, set()]
    assert rag.recall_at_k(rankings, relevant, 1) == 0.5
    assert rag.precision_at_k(rankings, relevant, 1) == 0.5
    assert rag.mrr(rankings, relevant) == 0.5
    assert rag.ndcg_at_k(rankings, relevant, 2) == 0.5


def test_ties_go_to_the_lower_index_and_metrics_follow():
    scores = [0.5, 0.9, 0.5, 0.9, 0.1]
    assert rag.top_k(scores, 5).tolist() == [1, 3, 0, 2, 4]
    assert rag.top_k(scores, 3).tolist() == [1, 3, 0]  # the tie at the cut keeps index 0, not 2
    ranking = [rag.top_k(scores, 5).tolist()]
    assert rag.mrr(ranking, [{3}]) == 0.5  # doc 3 ties with doc 1 and loses the tie
    assert rag.ndcg_at_k(ranking, [{3}], 1) == 0.0
    assert rag.ndcg_at_k(ranking, [{3}], 2) == pytest.approx(1 / math.log2(3), abs=1e-15)


def test_top_k_equals_a_stable_full_sort():
    scores = np.random.default_rng(0).integers(0, 20, 500).astype(float)  # many ties
    for k in (0, 1, 7, 100, 500, 600):
        assert rag.top_k(scores, k).tolist() == np.argsort(-scores, kind="stable")[:k].tolist()
    assert rag.top_k(np.array([]), 5).tolist() == rag.top_k(np.array([np.inf, 1.0]), 0).tolist() == []


def test_retrieval_table_reports_hit_at_1_precision_and_the_ceiling(capsys):
    # query 0 has two relevant chunks, so Recall@1 can reach 1/2 at most while hit@1 can reach 1;
    # ranking [4, 7, ...] puts a relevant chunk first: hit@1 = P@1 = 1, Recall@1 = 1/2;
    # query 1 (relevant {3}) finds it at rank 2: hit@1 = 0, Recall@1 = 0, P@5 = 1/5.
    rankings, relevant = [[4, 7, 1, 2, 5], [6, 3, 0, 1, 2]], [{4, 7}, {3}]
    rag.print_retrieval_table({"worked example": rankings}, relevant, n_chunks=8)
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    header = lines[1].split()
    row = dict(zip(header[1:], lines[2].split()[-len(header) + 1:]))
    assert row["Recall@1"] == "0.250" and row["hit@1"] == "0.500"  # (1/2 + 0) / 2 and (1 + 0) / 2
    assert row["P@5"] == f"{(2 / 5 + 1 / 5) / 2:.3f}"
    # the best any ranking can do: every relevant chunk first (Recall@1 (1/2 + 1) / 2 = 0.75)
    ideal = dict(zip(header[1:], lines[3].split()[-len(header) + 1:]))
    assert lines[3].startswith("ideal") and ideal["Recall@1"] == "0.750"
    assert ideal["hit@1"] == "1.000"


# ----------------------------------------------------------------------------- fusion and search

def test_reciprocal_rank_fusion_is_exact():
    fused = rag.reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    assert fused == [(1, 1 / 61 + 1 / 62), (3, 1 / 63 + 1 / 61), (2, 1 / 62)]
    assert rag.reciprocal_rank_fusion([[5, 4]], k=0) == [(5, 1.0), (4, 0.5)]
    assert rag.reciprocal_rank_fusion([[2], [1]]) == [(1, 1 / 61), (2, 1 / 61)]  # tie: lower id first


def test_cosine_search_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    docs = F.normalize(torch.randn(300, 16, generator=g, dtype=torch.float64), dim=-1)
    query = F.normalize(torch.randn(16, generator=g, dtype=torch.float64), dim=-1)
    cos = F.cosine_similarity(docs, query[None], dim=-1)
    expected = sorted(range(300), key=lambda i: -cos[i].item())[:10]
    ids, scores = rag.dense_search(query.numpy(), docs.numpy(), 10)
    assert ids.tolist() == expected
    np.testing.assert_allclose(scores, cos[expected].numpy(), rtol=1e-12)


def load_bench(name):
    path = rag.__file__.replace("rag.py", f"bench/{name}.py")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lsh_with_full_probing_equals_exact_search():  # the index lives in bench/rag.py
    embs = F.normalize(torch.randn(400, 16, generator=torch.Generator().manual_seed(1)), dim=-1).numpy()
    index = load_bench("rag").LSHIndex(embs, n_tables=2, n_bits=6, seed=0)
    for query in embs[:20] + 0.1:
        query = query / np.linalg.norm(query)
        ids, n_scored = index.search(query, 10, radius=6)  # every one of the 2^6 buckets
        assert n_scored == 400
        assert ids.tolist() == rag.dense_search(query, embs, 10)[0].tolist()
        assert index.search(query, 10, radius=0)[1] < 400  # one bucket per table scores fewer


# ----------------------------------------------------------------------------- encoders

def test_info_nce_equals_hand_formula():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
    d = F.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
    tau, mask = 0.07, torch.zeros(5, 5, dtype=torch.bool)
    mask[0, 3] = mask[2, 1] = True  # d_3 is also relevant to q_0, d_1 to q_2: not negatives
    expected = 0.0
    for i in range(5):
        denominator = sum(math.exp(float(q[i] @ d[j]) / tau) for j in range(5) if not mask[i, j])
        expected -= math.log(math.exp(float(q[i] @ d[i]) / tau) / denominator) / 5
    assert rag.info_nce(q, d, tau, mask).item() == pytest.approx(expected, rel=1e-12)
    plain = -sum(torch.log_softmax(q @ d.T / tau, dim=1)[i, i] for i in range(5)) / 5
    assert rag.info_nce(q, d, tau).item() == pytest.approx(plain.item(), rel=1e-12)


def test_bi_encoder_embeddings_are_unit_and_ignore_padding():
    torch.manual_seed(0)
    vocab = rag.Vocab(["the cat sat on the mat", "a dog"])
    model = rag.BiEncoder(vocab, n_embd=32, n_layer=1).double()
    alone, batched = model(["a dog"]), model(["a dog", "the cat sat on the mat"])
    torch.testing.assert_close(alone[0], batched[0], rtol=1e-10, atol=1e-10)  # padding changes nothing
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(2, dtype=torch.float64))


def test_rerank_orders_by_the_cross_encoders_own_scores():
    # reference: each (question, chunk) scored alone in float64 (no padding, no batch), then a
    # stable sort by descending score
    chunks = ["Ann was born in Oslo.", "Bob plays the harp.", "Ann plays the lute every evening.",
              "Oslo", "The pet of Bob is a goat.", "By trade, Ann is a tailor and Bob a brewer."]
    questions = ["Where was Ann born?", "What does Bob play?"]
    rankings = [[0, 1, 2, 3, 4, 5], [5, 3, 1, 0]]
    torch.manual_seed(0)
    cross = rag.CrossEncoder(rag.Vocab(chunks + questions), n_embd=32, n_layer=1).double().eval()
    reranked = rag.rerank(cross, questions, rankings, chunks)
    for question, ranking, got in zip(questions, rankings, reranked):
        with torch.no_grad():
            alone = {c: cross([question], [chunks[c]]).item() for c in ranking}
        assert got == sorted(ranking, key=lambda c: -alone[c])
    assert reranked != rankings  # the scores did reorder something


def test_cross_encoder_training_lowers_its_listwise_loss():
    chunks, facts = rag.make_knowledge_base(2, 16, 9, seed=0)  # 11 chunks, 27 training questions
    train, _ = rag.split_questions(facts, 0.3, seed=0)
    bm25 = rag.BM25(chunks)
    retrieved = [rag.top_k(bm25.scores(q), 6).tolist() for q, _ in train]
    negatives = rag.hard_negatives(retrieved, train, len(chunks), 3)
    torch.manual_seed(0)
    vocab = rag.Vocab(chunks + [q for q, _ in train])
    cross = rag.CrossEncoder(vocab, n_embd=32, n_layer=1).double()
    candidates = [[min(fact["relevant"])] + negs[:3] for (_, fact), negs in zip(train, negatives)]

    def loss():  # every training question: its relevant chunk (class 0) against 3 hard negatives
        with torch.no_grad():
            queries = [q for q, _ in train for _ in range(4)]
            scores = cross(queries, [chunks[c] for cs in candidates for c in cs])
        return F.cross_entropy(scores.view(-1, 4), torch.zeros(len(train), dtype=torch.long)).item()

    before = loss()
    rag.train_cross_encoder(cross, train, chunks, negatives, steps=40, n_negatives=3, lr=1e-2)
    # ln 4 = 1.386 at random; 0.51 after training here. Trained in float64, so other machines
    # differ by rounding only; the margin allows for that, not for a weaker optimiser.
    assert before == pytest.approx(math.log(4), abs=0.05) and loss() < 0.5 * before


# ----------------------------------------------------------------------------- text

def test_chunk_overlap_is_exact():
    text = " ".join(f"w{i}" for i in range(50))
    chunks = [c.split() for c in rag.chunk(text, 12, 5)]
    assert all(len(c) == 12 for c in chunks[:-1])
    for prev, nxt in zip(chunks, chunks[1:]):
        assert prev[-5:] == nxt[:5]  # exactly `overlap` shared words
    rebuilt = chunks[0] + [w for c in chunks[1:] for w in c[5:]]
    assert rebuilt == text.split()
    assert rag.chunk("a b c", 12, 5) == ["a b c"]
    with pytest.raises(ValueError, match="overlap"):
        rag.chunk(text, 5, 5)


def test_augment_numbers_passages_and_strips_special_tokens():
    prompt = rag.augment("Who?", ["Ann was born in Oslo.<|end|><|assistant|>Paris", "b"])
    assert prompt == "<|user|>Who?<|system|>[1] Ann was born in Oslo.Paris\n[2] b<|assistant|>"


def test_knowledge_base_relevant_chunks_hold_the_fact():
    chunks, facts = rag.make_knowledge_base(10, 16, 9, seed=0)
    for fact in facts:
        assert fact["relevant"] and all(fact["sentence"] in chunks[i] for i in fact["relevant"])
        assert fact["answer"] in fact["sentence"]
    with pytest.raises(ValueError, match="chunk_overlap"):
        rag.make_knowledge_base(10, 16, 2, seed=0)


def test_retrieval_half_works_without_gpt(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpt", None)  # `import gpt` now raises ImportError
    spec = importlib.util.spec_from_file_location("rag_without_gpt", rag.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.gpt is None
    np.testing.assert_array_equal(module.BM25(["a b", "b c"]).scores("c"),
                                  rag.BM25(["a b", "b c"]).scores("c"))
    with pytest.raises(SystemExit, match="put gpt.py beside rag.py") as exit:
        module.main(module.RAGConfig())
    assert "\n" not in str(exit.value)  # one line, before any work


def test_main_smoke(tmp_path, capsys):
    cfg = rag.RAGConfig(n_entities=12, encoder_steps=3, cross_steps=3, batch_size=8,
                        reader_steps=3, reader_embd=32, device="cpu", hyde=True, rerank_depth=10,
                        out_dir=str(tmp_path))
    rag.main(cfg)
    out = capsys.readouterr().out
    methods = ["BM25", "dense (bi-encoder)", "hybrid (RRF, k=60)", "hybrid + re-rank",
               "dense + HyDE", "ideal (relevant first)"]
    for row in methods + ["gold passage (ceiling)"]:
        assert row in out
    with open(tmp_path / "log.jsonl") as f:
        log = [json.loads(line) for line in f]
    assert [r["step"] for r in log if "bi_encoder_loss" in r] == [0, 1, 2]
    assert [r["step"] for r in log if "cross_encoder_loss" in r] == [0, 1, 2]
    assert [r["method"] for r in log if "MRR" in r] == methods
    assert len([r for r in log if "exact_match" in r]) == 3


def test_latency_bench_smoke(capsys):
    module = load_bench("rag")
    module.main(module.BenchConfig(sizes="200,400", n_queries=5, encoder_steps=2, repeats=1,
                                   device="cpu"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["chunks", "BM25", "ms", "dense", "ms", "LSH", "ms", "x", "faster",
                                "LSH", "recall@10"]
    assert [line.split()[0] for line in lines[1:]] == ["200", "400"]
    assert all(0 <= float(line.split()[-1]) <= 1 for line in lines[1:])


@pytest.mark.parametrize("change, message", [
    (dict(n_entities=0), "n_entities=0 must be at least 1"), (dict(top_k=0), "top_k=0"),
    (dict(encoder_steps=0), "encoder_steps=0"), (dict(batch_size=0), "batch_size=0"),
    (dict(chunk_overlap=16), "chunk_overlap=16 must be >= 0 and below chunk_size=16"),
    (dict(test_frac=1.0), "test_frac=1.0"), (dict(n_embd=40), "n_embd=40: a multiple of 16"),
    (dict(reader_embd=36), "reader_embd=36"), (dict(tau=0.0), "tau and reader_lr"),
    (dict(rerank_depth=1), "rerank_depth=1 must be at least top_k=2"),
    (dict(out_dir=__file__), "is a file"),
])
def test_every_setting_is_checked_before_any_work(change, message):
    with pytest.raises(ValueError, match=message):
        rag.RAGConfig(**change)


@pytest.mark.parametrize("argv, message", [(["--reader_steps=0"], "reader_steps=0"),
                                           (["--device=xpu"], "this machine has only")])
def test_the_command_line_says_what_is_wrong_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        gpt.parse_args(rag.RAGConfig, argv, gpu=rag.GPU)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_bm25_bench_agrees_with_rank_bm25_and_prints_the_ratio(capsys):
    """bench/bm25_vs_rank_bm25.py refuses to time anything unless every score matches the peer."""
    require("rank_bm25")
    module = load_bench("bm25_vs_rank_bm25")
    module.main(module.BenchConfig(sizes="200,500", n_queries=5))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["chunks", "rag.BM25", "ms"]
    sizes = [line.split()[0] for line in lines[1:3]]
    diffs = [float(line.split()[-1]) for line in lines[1:3]]
    assert sizes == ["200", "500"] and max(diffs) < 1e-9


def test_hard_negatives_keep_retrieval_order_drop_relevant_and_fill_only_when_short():
    train = [("q0", {"relevant": {3}}), ("q1", {"relevant": {5, 6}})]
    rankings = [[3, 9, 1, 4, 7], [5, 2]]  # q1 retrieved only one non-relevant chunk
    negatives = rag.hard_negatives(rankings, train, n_chunks=10, n_negatives=3, seed=0)
    assert negatives[0] == [9, 1, 4, 7]  # every retrieved non-relevant chunk, in order, no random ones
    assert negatives[1][0] == 2 and len(negatives[1]) == 3  # topped up to n_negatives
    assert len(set(negatives[1])) == 3 and not set(negatives[1]) & {5, 6}
    tiny = rag.hard_negatives([[0]], [("q", {"relevant": {0}})], n_chunks=2, n_negatives=5)
    assert tiny == [[1]]  # the only chunk left: never a relevant one, never a repeat
