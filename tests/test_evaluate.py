"""evaluate.py against independent references. The metrics are checked against worked examples
whose values were computed with the reference packages (sacrebleu 2.6.0, rouge-score 0.1.2,
nltk 3.10.4, scikit-learn 1.9.1, statsmodels 0.15.0: the versions are named beside each value),
against published examples (sacrebleu's README, NLTK's docstrings, Wikipedia), and against hand
computations; when those packages are installed, the tests at the end also compare with them
directly on random inputs. The model-based parts are checked against float64 brute force."""
import dataclasses
import importlib.util
import math
import os
import random
import re
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import evaluate as E
import gpt
from conftest import require


# ----------------------------------------------------------------------------- BLEU

README_HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
README_REFS = [["The dog bit the man.", "The dog had bit the man."],
               ["It was not unexpected.", "No one was surprised."],
               ["The man bit him first.", "The man had bitten the dog."]]


def test_bleu_sacrebleu_readme_example():
    # sacrebleu's README prints "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ...)"; the full
    # values below are sacrebleu 2.6.0's corpus_bleu with each smoothing / option.
    hyps, refs = README_HYPS, README_REFS
    assert E.bleu(hyps, refs) == pytest.approx(48.530827009929865, abs=1e-9)
    assert E.bleu(hyps, refs, smooth="add-k") == pytest.approx(52.70109002482467, abs=1e-9)
    assert E.bleu(hyps, refs, smooth="floor") == pytest.approx(48.530827009929865, abs=1e-9)
    assert E.bleu(hyps, refs, tokenize="none") == pytest.approx(49.19195660047277, abs=1e-9)
    sentence = [E.sentence_bleu(h, r) for h, r in zip(hyps, refs)]  # sacrebleu 2.6.0 sentence_bleu
    assert sentence == pytest.approx([100.0, 14.794015674776452, 29.071536848410968], abs=1e-9)


def test_bleu_unicode_punctuation_numbers():
    hyps = ["Le café coûte 3,50 € — très cher!", "Price: $1,000.50 (approx.)"]
    refs = [["Le café coûte 3,50 € : très cher !"], ["The price is $1,000.50, approximately."]]
    # sacrebleu 2.6.0: corpus_bleu default / lowercase / add-k / tokenize="none"; sentence_bleu
    assert E.bleu(hyps, refs) == pytest.approx(36.051731136821424, abs=1e-9)
    assert E.bleu(hyps, refs, lowercase=True) == pytest.approx(36.84455060594592, abs=1e-9)
    assert E.bleu(hyps, refs, smooth="add-k") == pytest.approx(41.226259855774835, abs=1e-9)
    assert E.bleu(hyps, refs, tokenize="none") == pytest.approx(34.3732711274869, abs=1e-9)
    assert E.sentence_bleu(hyps[1], refs[1]) == pytest.approx(12.22307556087252, abs=1e-9)


def test_tokenize_13a():
    # sacrebleu 2.6.0 Tokenizer13a: numbers keep their . and , ; dashes split only after digits
    assert (E.tokenize_13a("Hello, world! It's 3.5 km (approx.) &amp; 1,000 x-rays; 5-6 e.g.")
            == "Hello , world ! It's 3.5 km ( approx . ) & 1,000 x-rays ; 5 - 6 e . g .")
    assert E.tokenize_13a("a-\nb <skipped> &quot;q&quot;") == 'ab " q "'


def test_bleu_edge_cases():
    ref = [["the cat sat on the mat"]]
    assert E.bleu([""], ref) == 0.0  # empty hypothesis (sacrebleu 2.6.0: 0.0)
    assert E.sentence_bleu("", ref[0]) == 0.0
    assert E.bleu(["xyz qrs"], ref) == 0.0  # no n-gram matches at all
    # shorter than n: corpus BLEU (no effective order) is 0 as the 3- and 4-gram precisions
    # are undefined; sentence BLEU keeps orders 1-2 (p1 = p2 = 100%) with BP = exp(1 - 6/2)
    assert E.bleu(["the cat"], ref) == 0.0
    assert E.sentence_bleu("the cat", ref[0]) == pytest.approx(100 * math.exp(-2), abs=1e-9)
    add_k = E.bleu(["the cat"], ref, smooth="add-k")
    assert add_k == pytest.approx(13.533528323661276, abs=1e-9)  # sacrebleu 2.6.0


def test_bleu_smoothing_by_hand():
    # "the dog sat on mat" vs "the cat sat on the mat": matches 4/5, 1/4, 0/3, 0/2 and
    # BP = exp(1 - 6/5).
    # exp smoothing gives the zero orders 100/(2*3) and 100/(4*2) percent:
    by_hand = math.exp(1 - 6 / 5) * (80 * 25 * (100 / 6) * 12.5) ** 0.25
    hyp, ref = ["the dog sat on mat"], [["the cat sat on the mat"]]
    assert E.bleu(hyp, ref) == pytest.approx(by_hand, abs=1e-9)
    # sacrebleu 2.6.0, here and below
    assert E.bleu(hyp, ref) == pytest.approx(20.80119537801062, abs=1e-9)
    assert E.sentence_bleu(hyp[0], ref[0]) == pytest.approx(20.80119537801062, abs=1e-9)
    assert E.bleu(hyp, ref, smooth="floor") == pytest.approx(11.062691203042489, abs=1e-9)
    floor = E.bleu(hyp, ref, smooth="floor", smooth_value=0.3)
    assert floor == pytest.approx(19.16114323211486, abs=1e-9)
    assert E.bleu(hyp, ref, smooth="add-k") == pytest.approx(33.08516361499262, abs=1e-9)
    add_k = E.bleu(hyp, ref, smooth="add-k", smooth_value=2)
    assert add_k == pytest.approx(43.54252404797312, abs=1e-9)
    assert E.bleu(hyp, ref, smooth="none") == 0.0


def test_bleu_multiple_references_closest_length():
    # the closest reference length, the shorter on ties: hyp of 6 words, refs of 5 and 7 ->
    # 5, so no brevity penalty; every n-gram of the hypothesis is in the 7-word reference.
    hyp = ["a b c d e f"]
    assert E.bleu(hyp, [["a b c d e", "a b c d e f g"]]) == pytest.approx(100.0, abs=1e-9)
    assert E.bleu(hyp, [["a b c d e f g"]]) == pytest.approx(100 * math.exp(1 - 7 / 6), abs=1e-9)
    # three references of 7, 4 and 9 words (sacrebleu 2.6.0)
    refs = [["there is a cat on the mat", "the cat is here", "a cat is on the mat now ok"]]
    assert E.bleu(["the cat is on the mat"], refs) == pytest.approx(73.08015504567588, abs=1e-9)


def test_bleu_rejects_flat_reference_lists():
    with pytest.raises(ValueError, match=r"\[\[r\] for r in refs\]"):
        E.bleu(["a cat"], ["a cat"])
    with pytest.raises(ValueError, match="smooth"):
        E.bleu(["a"], [["a"]], smooth="laplace")


# ------------------------------------------------------------------------- ROUGE and the stemmer

def test_rouge_readme_example():
    # rouge-score's README: score('The quick brown fox jumps over the lazy dog',
    # 'The quick brown dog jumps on the log.'); values from rouge-score 0.1.2
    s = E.rouge("The quick brown dog jumps on the log.",
                "The quick brown fox jumps over the lazy dog")
    assert s["rouge1"] == pytest.approx((0.75, 2 / 3, 0.7058823529411765), abs=1e-12)
    assert s["rouge2"] == pytest.approx((2 / 7, 0.25, 0.26666666666666666), abs=1e-12)
    assert s["rougeL"] == pytest.approx((0.625, 5 / 9, 0.5882352941176471), abs=1e-12)
    assert s["rougeLsum"] == s["rougeL"]  # one line: summary-level LCS is plain LCS


def test_rouge_lsum_and_stemming():
    pred = "the cats are running\nthe dog sleeps"
    ref = "a cat runs fast\nthe dogs slept\nthe cat ran"
    plain, stem = E.rouge(pred, ref), E.rouge(pred, ref, stem=True)  # rouge-score 0.1.2 values
    assert plain["rouge1"] == pytest.approx((2 / 7, 0.2, 0.23529411764705882), abs=1e-12)
    assert plain["rouge2"] == (0.0, 0.0, 0.0)
    assert stem["rouge1"] == pytest.approx((5 / 7, 0.5, 0.588235294117647), abs=1e-12)
    assert stem["rouge2"] == pytest.approx((1 / 3, 2 / 9, 0.26666666666666666), abs=1e-12)
    assert stem["rougeL"] == pytest.approx((4 / 7, 0.4, 0.47058823529411764), abs=1e-12)
    assert stem["rougeLsum"] == pytest.approx((5 / 7, 0.5, 0.588235294117647), abs=1e-12)


def test_rouge_edge_cases_and_multiple_references():
    assert all(v == (0.0, 0.0, 0.0) for v in E.rouge("", "the cat").values())  # empty prediction
    # only [a-z0-9] survive (rouge-score 0.1.2)
    s = E.rouge("Ünïcödé — naïve café 42!", "naive cafe 42")
    assert s["rouge1"] == pytest.approx((1 / 7, 1 / 3, 0.2), abs=1e-12)
    # several references: per type, the one with the best F (rouge-score's score_multi)
    s = E.rouge("the cat sat on a mat",
                ["the cat sat", "a dog sat on a mat", "the cat sat on the mat"])
    assert s["rouge1"] == pytest.approx((5 / 6,) * 3, abs=1e-12)
    assert s["rouge2"] == pytest.approx((0.6,) * 3, abs=1e-12)


def test_porter_stemmer():
    # Porter (1980)'s own examples, plus NLTK's extensions (dies -> die, spied -> spi, sky, dying);
    # expected stems from nltk 3.10.4 PorterStemmer()
    expected = {"caresses": "caress", "ponies": "poni", "ties": "tie", "dies": "die",
                "flies": "fli", "feed": "feed", "agreed": "agre", "plastered": "plaster",
                "motoring": "motor", "sing": "sing", "conflated": "conflat", "hopping": "hop",
                "falling": "fall", "filing": "file", "happy": "happi", "sky": "sky",
                "relational": "relat", "conditional": "condit", "rational": "ration",
                "generalization": "gener", "hopefulness": "hope", "electrical": "electr",
                "adoption": "adopt", "controlling": "control", "geology": "geolog", "dying": "die",
                "innings": "inning", "spied": "spi", "died": "die", "running": "run",
                "generously": "gener"}
    assert {w: E.porter_stem(w) for w in expected} == expected


# ----------------------------------------------------------------------------- METEOR

NLTK_HYP = ("It is a guide to action which ensures that the military always obeys the commands"
            " of the party")
NLTK_REF1 = ("It is a guide to action that ensures that the military will forever heed Party"
             " commands")
NLTK_REF2 = ("It is the guiding principle which guarantees the military forces always being under"
             " the command of the Party")


def test_meteor_nltk_docstring_example():
    # NLTK's meteor_score docstring: round(meteor_score([reference1], hypothesis1), 4) == 0.6944,
    # and the same with three references; no synonym matters in it (nltk 3.10.4, no WordNet:
    # 0.6944444444444445)
    assert E.meteor(NLTK_HYP, NLTK_REF1) == pytest.approx(0.6944444444444445, abs=1e-12)
    two = E.meteor(NLTK_HYP, [NLTK_REF1, NLTK_REF2])
    assert two == pytest.approx(0.6944444444444445, abs=1e-12)


def test_meteor_by_hand():
    # exact: the, home; stems: cats~cat, running~runs. m = 4, P = 4/5, R = 1,
    # F = P R / (0.9 P + 0.1 R) = 0.8 / 0.82; 2 chunks -> penalty 0.5 (2/4)^3 = 0.0625
    hyp, ref = "the cats were running home", "the cat runs home"
    assert E.meteor(hyp, ref) == pytest.approx(0.9375 * 0.8 / 0.82, abs=1e-12)
    # every word matches but no two neighbours stay neighbours: 6 chunks of 6, penalty 0.5
    shuffled, sentence = "on the mat sat the cat", "the cat sat on the mat"
    assert E.meteor(shuffled, sentence) == pytest.approx(0.5, abs=1e-12)
    # greedy matching from the right: the last "the" of the hypothesis takes the last "the"
    assert E.meteor("the the the", "the cat the") == pytest.approx(1 / 3, abs=1e-12)  # nltk 3.10.4
    # the weights: alpha = 0.5 is the plain F1 of P and R; gamma = 0 switches the penalty off
    assert E.meteor(hyp, ref, alpha=0.5, gamma=0.0) == pytest.approx(0.8 / 0.9)
    assert E.meteor(shuffled, sentence, beta=1.0, gamma=0.25) == pytest.approx(0.75)
    assert E.meteor("", "the cat") == 0.0
    assert E.meteor("a b c", "x y z") == 0.0


# ----------------------------------------------------------------------------- pass@k, maj@k

def test_pass_at_k_equals_the_binomial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert E.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_edges_and_stability():
    assert E.pass_at_k(10, 8, 3) == 1.0  # k > n - c: every 3-subset holds a correct sample
    assert E.pass_at_k(10, 0, 10) == 0.0
    with pytest.raises(ValueError, match="k <= n"):
        E.pass_at_k(5, 1, 6)  # k > n: undefined
    with pytest.raises(ValueError):
        E.pass_at_k(5, 6, 1)
    # large n: the product form stays exact where C(n, k) overflows a float
    exact = 1 - Fraction(math.comb(5000 - 7, 1000), math.comb(5000, 1000))
    assert E.pass_at_k(5000, 7, 1000) == pytest.approx(float(exact), rel=1e-12)


def test_majority_vote_and_maj_at_k():
    assert E.majority_vote(["7", "8", "8", "7"]) == "7"  # tie: the first to appear among the tied
    assert E.majority_vote([None, None, "3"]) == "3"  # no answer never wins
    assert E.majority_vote([None]) is None
    samples = [["4", "4", "5"], ["1", "2", "2"], ["9", "9", "9"]]
    assert E.maj_at_k(samples, ["4", "1", "9"], 3) == pytest.approx(2 / 3)
    assert E.maj_at_k(samples, ["4", "1", "9"], 1) == 1.0  # first sample only
    with pytest.raises(ValueError):
        E.maj_at_k(samples, ["4", "1", "9"], 4)


# ----------------------------------------------------------------------------- agreement

def test_cohen_kappa_wikipedia_example():
    # Wikipedia, "Cohen's kappa": 50 proposals, yes/yes 20, yes/no 5, no/yes 10, no/no 15:
    # p_o = 0.7, p_e = 0.5, kappa = 0.4 (scikit-learn 1.9.1 cohen_kappa_score agrees)
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert E.raw_agreement(a, b) == pytest.approx(0.7)
    assert E.cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_when_expected_agreement_is_one():
    # both raters always say PASS: p_o = p_e = 1 and kappa = 0/0, nan (scikit-learn 1.9.1: nan)
    assert math.isnan(E.cohen_kappa(["PASS"] * 4, ["PASS"] * 4))
    assert E.cohen_kappa(["PASS", "FAIL"], ["FAIL", "PASS"]) == pytest.approx(-1.0)


WIKI_FLEISS = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
               [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def test_fleiss_kappa_wikipedia_example():
    # Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories;
    # P-bar = 0.378, P-bar_e = 0.213, kappa = 0.210 (statsmodels 0.15.0: 0.20993070442195522).
    # By hand, exactly: P-bar = (sum n_ij^2 - N n) / (N n (n-1)) = (828 - 140) / 1820, and
    # P-bar_e = sum_j (column total / 140)^2 = (20^2 + 28^2 + 39^2 + 21^2 + 32^2) / 140^2.
    p_bar = Fraction(828 - 140, 1820)
    p_e = Fraction(20 ** 2 + 28 ** 2 + 39 ** 2 + 21 ** 2 + 32 ** 2, 140 ** 2)
    assert E.fleiss_kappa(WIKI_FLEISS) == pytest.approx(float((p_bar - p_e) / (1 - p_e)), abs=1e-12)
    assert round(E.fleiss_kappa(WIKI_FLEISS), 3) == 0.210
    with pytest.raises(ValueError, match="same number of raters"):
        E.fleiss_kappa([[1, 2], [3, 1]])


def test_precision_recall_f1_by_hand():
    predicted = ["PASS", "PASS", "FAIL", "PASS", "FAIL"]
    actual = ["PASS", "FAIL", "PASS", "PASS", "FAIL"]  # TP = 2, FP = 1, FN = 1
    got = E.precision_recall_f1(predicted, actual, positive="PASS")
    assert got == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert E.precision_recall_f1(["FAIL"], ["FAIL"], positive="PASS") == (0.0, 0.0, 0.0)


def test_metrics_need_neither_torch_nor_gpt():
    code = ("import sys\nsys.modules['torch'] = None\nsys.modules['gpt'] = None\n"
            "import evaluate as E\n"
            "print(round(E.bleu(['a b c d'], [['a b c d']]), 6),"
            " E.rouge('a b', 'a b')['rouge1'][2],"
            " E.meteor('a b', 'a b') > 0.9, E.fleiss_kappa([[2, 0], [0, 2]]))\n"
            "E.main(E.EvalConfig())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(E.__file__))
    assert out.stdout.split() == ["100.0", "1.0", "True", "1.0"]
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "gpt.py" in out.stderr


# ------------------------------------------------------------------------ model-based evaluation

def tiny_model(seed=0, block_size=24):
    torch.manual_seed(seed)
    cfg = gpt.GPTConfig(vocab_size=320, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    return gpt.GPT(cfg).double().eval()


def brute_force_nll(model, seq):
    """-sum_t log p(x_t | x_<t) in float64 from one plain forward pass."""
    logits, _ = model(torch.tensor([seq]))
    logp = F.log_softmax(logits[0, :-1].double(), -1)
    return -logp.gather(-1, torch.tensor(seq[1:])[:, None]).sum().item()


def test_perplexity_is_pooled_and_equals_brute_force():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (3, 17, 24)]
    nll = sum(brute_force_nll(model, s) for s in seqs)
    expected = math.exp(nll / sum(len(s) - 1 for s in seqs))  # exp(sum NLL / sum tokens)
    assert E.perplexity(model, seqs, batch_size=2) == pytest.approx(expected, rel=1e-9)
    mean_of_ppl = sum(math.exp(brute_force_nll(model, s) / (len(s) - 1)) for s in seqs) / 3
    assert abs(E.perplexity(model, seqs) - mean_of_ppl) > 1e-6  # not a mean of per-sequence ppl


def test_perplexity_windows_a_long_sequence():
    model = tiny_model(block_size=8)
    seq = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    # windows of 8 tokens overlapping by one: [0:8] [7:15] [14:22] [21:29] [28:30]
    windows = [seq[i:i + 8] for i in range(0, 29, 7)]
    expected = math.exp(sum(brute_force_nll(model, w) for w in windows) / 29)
    assert E.perplexity(model, [seq]) == pytest.approx(expected, rel=1e-9)


class ByteTok:
    """A stand-in tokenizer: bytes 0-255, plus <|end|> = 256 (enough for option_logprobs)."""
    ranks = {bytes([i]): i for i in range(256)}

    def encode(self, text):
        return list(text.encode("utf-8"))


def test_option_logprobs_equal_brute_force():
    model, tok = tiny_model(), ByteTok()
    prompts, options = ["Q: 2+2=", "Q: x", "hi"], [" 4", " yes!", " there"]
    got = E.option_logprobs(model, [tok.encode(p) for p in prompts],
                            [tok.encode(o) for o in options], batch_size=2)
    for p, o, score in zip(prompts, options, got):
        full = tok.encode(p + o)
        logp = F.log_softmax(model(torch.tensor([full]))[0][0].double(), -1)
        expected = sum(logp[t - 1, full[t]].item() for t in range(len(tok.encode(p)), len(full)))
        assert score == pytest.approx(expected, abs=1e-9)


def test_multiple_choice_sum_vs_length_normalised(monkeypatch):
    # option 0 is short and likelier in total, option 1 is likelier per byte
    scores = [-3.0, -4.0, -9.0, -1.0, -2.0]
    monkeypatch.setattr(E, "option_logprobs", lambda *args, **kw: scores)
    questions = [([1], [" a", " bbbbbbbb", " c"], 1), ([2], [" x", " y"], 0)]
    tok = byte_tokenizer()
    assert E.multiple_choice(None, tok, questions) == {"accuracy": 0.5, "accuracy_norm": 1.0}


def test_fact_check_against_a_knowledge_source():
    knowledge = {("Zor", "capital", "Quel"), ("Zor", "river", "Amar")}
    text = "Its capital is Quel. Its river is Mira. It is lovely."
    assert E.fact_check(text, "Zor", knowledge) == [("Its capital is Quel.", True),
                                                    ("Its river is Mira.", False),
                                                    ("It is lovely.", False)]
    assert E.fact_check("", "Zor", knowledge) == []


# ----------------------------------------------------------------------------- the judge

def byte_tokenizer():
    return gpt.Tokenizer.from_spec("byte", "x")


@pytest.mark.parametrize("labels", [("PASS", "FAIL"), ("A", "B")])
def test_constrained_verdict_is_always_a_label(labels):
    # an untrained model sampling at temperature 1 would write anything; the mask forces the
    # rationale to end within the budget and the verdict to be one of the labels
    tok = byte_tokenizer()
    model = gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=96, n_layer=1,
                                  n_head=2, n_embd=32))
    constraint = E.verdict_constraint(tok, labels, budget=12, vocab_size=tok.model_vocab_size)
    end = tok.special("<|end|>")
    prompts = [tok.encode(f"Grade case {i}. Rationale:") for i in range(24)]
    outs = model.generate(prompts, 12 + 1 + 14, temperature=1.0, stop_tokens=[end],
                          allowed_tokens=constraint, generator=torch.Generator().manual_seed(0))
    newline = tok.encode("\n")[0]
    for out in outs:  # rationale (at most 12 tokens), newline, "Verdict: <label>", <|end|>
        assert newline in out[:13] and out[-1] == end
        verdict = tok.decode(out[out.index(newline) + 1:-1])
        assert verdict in {f"Verdict: {label}" for label in labels}
    verdicts, rationales = E.run_judge(model, tok, [tok.decode(p) for p in prompts[:4]],
                                       labels=labels, budget=12)
    assert set(verdicts) <= set(labels) and len(rationales) == 4


def test_pairwise_both_orders(monkeypatch):
    # the first half are the A=1 verdicts, the second half the swapped ones
    verdicts = ["A", "A", "B", "B", "A", "A"]  # item 1: 1 wins twice; item 2: "A" both times, a tie
    monkeypatch.setattr(E, "run_judge", lambda model, tok, prompts, labels: (verdicts, None))
    result = E.judge_pairwise(None, None, [("q", "r", "x", "y")] * 3)
    assert result["winners"] == [1, None, 2]
    assert result["consistency"] == pytest.approx(2 / 3)
    assert result["chose_A"] == pytest.approx(4 / 6)


class RecordingTokenizer:
    """Delegates to a tokenizer and keeps every text it encodes: all a model is ever asked."""

    def __init__(self, tok):
        self.tok, self.encoded = tok, []

    def encode(self, text, **options):
        self.encoded.append(text)
        return self.tok.encode(text, **options)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_qa_and_multiple_choice_ask_in_wording_no_training_text_holds():
    # The card's QA and multiple-choice rows claim held-out items; the facts are trained on, so
    # the question wording must not be: no question the rows ask may occur in any training text.
    world, tok = E.make_world(6, seed=0), RecordingTokenizer(byte_tokenizer())
    cfg = E.EvalConfig(countries=6, held_out=2, repeat=1, judge_cases=40, samples=2)
    pairs = E.training_pairs(world, list(world)[:4], tok.tok, cfg, random.Random(0))
    training_text = "\n".join(tok.decode(p + c) for p, c in pairs)
    torch.manual_seed(0)
    config = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=96, n_layer=1, n_head=2,
                           n_embd=16)
    E.qa_rows(gpt.GPT(config), tok, E.unseen_items(world, tok), cfg, "unseen wording")
    asked = {text.split("\n")[0][3:] for text in tok.encoded if text.startswith("Q: ")}
    assert len(asked) == len(world) * len(E.ATTRIBUTES)  # every fact is asked
    assert [q for q in asked if q in training_text] == []


# ------------------------------------------------------- the reference packages, when installed

class NoWordNet:
    def synsets(self, word):
        return []


def random_sentences(rng, n, vocab):
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12))) for _ in range(n)]


VOCAB = ["the", "cat", "The", "Cat.", "mat,", "sat", "on", "3.5", "1,000", "x-ray", "é", "—", "!",
         "it's", "running", "runs", "ran", "happily", "generously", "(a)", "\n", "dogs", "dog"]


def test_bleu_equals_sacrebleu_on_random_corpora():
    sacrebleu = require("sacrebleu")
    rng = random.Random(0)
    for _ in range(100):
        n, n_refs = rng.randint(1, 4), rng.randint(1, 3)
        hyps = random_sentences(rng, n, VOCAB)
        refs = [random_sentences(rng, n_refs, VOCAB) for _ in range(n)]
        streams = [list(s) for s in zip(*refs)]
        for smooth in ("exp", "floor", "add-k", "none"):
            theirs = sacrebleu.corpus_bleu(hyps, streams, smooth_method=smooth).score
            assert E.bleu(hyps, refs, smooth=smooth) == pytest.approx(theirs, abs=1e-6)
        assert E.bleu(hyps, refs, lowercase=True, tokenize="none") == pytest.approx(
            sacrebleu.corpus_bleu(hyps, streams, lowercase=True, tokenize="none").score, abs=1e-6)
        theirs = sacrebleu.sentence_bleu(hyps[0], refs[0]).score
        assert E.sentence_bleu(hyps[0], refs[0]) == pytest.approx(theirs, abs=1e-6)


def test_rouge_equals_rouge_score_on_random_texts():
    rouge_scorer = require("rouge_score.rouge_scorer")
    rng = random.Random(1)
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorers = {s: rouge_scorer.RougeScorer(types, use_stemmer=s) for s in (False, True)}
    for _ in range(60):
        pred = random_sentences(rng, 1, VOCAB)[0]
        refs = random_sentences(rng, rng.randint(1, 3), VOCAB)
        for stem in (False, True):
            ours, theirs = E.rouge(pred, refs, stem), scorers[stem].score_multi(refs, pred)
            for key in ours:
                assert ours[key] == pytest.approx(tuple(theirs[key]), abs=1e-12)


# Porter (1980), "An algorithm for suffix stripping", the examples it gives for each step
PORTER_1980 = {
    "1a": "caresses ponies ties caress cats",
    "1b": "feed agreed plastered bled motoring sing conflated troubled sized hopping tanned "
          "falling hissing fizzed failing filing",
    "1c": "happy sky",
    "2": "relational conditional rational valenci hesitanci digitizer conformabli radicalli "
         "differentli vileli analogousli vietnamization predication operator feudalism "
         "decisiveness hopefulness callousness formaliti sensitiviti sensibiliti",
    "3": "triplicate formative formalize electriciti electrical hopeful goodness",
    "4": "revival allowance inference airliner gyroscopic adjustable defensible irritant "
         "replacement adjustment dependent adoption homologou communism activate angulariti "
         "homologous effective bowdlerize",
    "5a": "probate rate cease",
    "5b": "controll roll",
}


def porter_test_words():
    """The paper's examples; every suffix of every step (and NLTK's extra ones) on stems of
    measure 0, 1 and 2, bare and inflected, so each rule's condition is met and missed; NLTK's
    irregular forms; and every lowercase word of the embedded corpus."""
    suffixes = " ".join([
        "sses ies ss s eed ed ing ied y",  # 1a, 1b, 1c (ied: NLTK)
        "ational tional enci anci izer abli bli alli entli eli ousli ization ation ator alism",  # 2
        "iveness fulness ousness aliti iviti biliti fulli logi",  # 2 (bli, fulli, logi: NLTK)
        "icate ative alize iciti ical ful ness",  # 3
        "al ance ence er ic able ible ant ement ment ent ion ou ism ate iti ous ive ize",  # 4
        "e ll"]).split()  # 5a, 5b
    bare = [stem + s for stem in ("tr", "hop", "gener", "oscill") for s in suffixes]
    inflected = [w.removesuffix("e") + tail for w in bare for tail in ("ed", "ing")]
    built = set(bare + [w + "s" for w in bare] + inflected)
    irregular = "skies sky dying lying tying news innings inning outings outing cannings canning"
    irregular += " howe proceed exceed succeed"  # NLTK's pool of irregular forms
    words = " ".join([*PORTER_1980.values(), irregular]).split() + sorted(built)
    return words + sorted(set(re.findall(r"\b[a-z]+\b", gpt.embedded_corpus())))


def test_porter_and_meteor_equal_nltk():
    require("nltk")
    from nltk.stem.porter import PorterStemmer
    from nltk.translate.meteor_score import meteor_score
    stemmer = PorterStemmer()
    words = porter_test_words()
    assert [(w, E.porter_stem(w)) for w in words] == [(w, stemmer.stem(w)) for w in words]
    rng = random.Random(2)
    for _ in range(300):
        hyp = random_sentences(rng, 1, VOCAB)[0]
        refs = random_sentences(rng, rng.randint(1, 3), VOCAB)
        theirs = meteor_score([r.split() for r in refs], hyp.split(), wordnet=NoWordNet())
        assert E.meteor(hyp, refs) == pytest.approx(theirs, abs=1e-12)
        theirs = meteor_score([r.split() for r in refs], hyp.split(), wordnet=NoWordNet(),
                              alpha=0.7, beta=2.0, gamma=0.3)
        ours = E.meteor(hyp, refs, alpha=0.7, beta=2.0, gamma=0.3)
        assert ours == pytest.approx(theirs, abs=1e-12)


def test_kappas_equal_sklearn_and_statsmodels():
    metrics = require("sklearn.metrics")
    inter_rater = require("statsmodels.stats.inter_rater")
    rng = random.Random(3)
    for _ in range(50):
        a = [rng.choice("xyz") for _ in range(20)]
        b = [x if rng.random() < 0.6 else rng.choice("xyz") for x in a]
        assert E.cohen_kappa(a, b) == pytest.approx(metrics.cohen_kappa_score(a, b), abs=1e-12)
        counts = [[0] * 4 for _ in range(12)]
        for row in counts:
            for _ in range(6):
                row[rng.randrange(4)] += 1
        assert E.fleiss_kappa(counts) == pytest.approx(inter_rater.fleiss_kappa(counts), abs=1e-12)


def test_a_promised_reference_that_is_missing_fails_instead_of_skipping(monkeypatch):
    """CI sets REQUIRE_REFERENCES=1: there the comparisons above must run, never skip."""
    import conftest
    monkeypatch.setattr(conftest, "REQUIRED", True)
    with pytest.raises(ModuleNotFoundError):
        conftest.require("no_such_reference_package")
    monkeypatch.setattr(conftest, "REQUIRED", False)
    with pytest.raises(pytest.skip.Exception):
        conftest.require("no_such_reference_package")


# ----------------------------------------------------------------------------- the program

TINY = dict(countries=4, held_out=1, repeat=1, judge_cases=8, steps=4, samples=2, n_layer=1,
            n_embd=32, vocab_size=600, device="cpu")


def log_lines(cfg):  # as text: the card holds nan (kappa 0/0), and nan != nan once parsed
    with open(os.path.join(cfg.out_dir, "log.jsonl")) as f:
        return f.read().splitlines()


def test_resume_is_exact_and_prints_the_card(tmp_path, capsys, monkeypatch):
    """Fine-tuning 4 steps in one go equals 2 steps, a stop, --resume and 2 more: the same weights
    bit for bit and the same log; the card is printed. --plot: a note before any work when
    matplotlib is missing, else loss.png."""
    whole = E.EvalConfig(**TINY, plot=True, out_dir=str(tmp_path / "whole"))
    E.main(whole)
    out = capsys.readouterr().out
    assert "judge Cohen's kappa" in out and "fact check:" in out and "verdict" in out
    if importlib.util.find_spec("matplotlib"):  # not installed in CI: only the note is tested
        assert os.path.exists(os.path.join(whole.out_dir, "loss.png"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    split = dataclasses.replace(whole, out_dir=str(tmp_path / "split"), stop_after=2)
    E.main(split)
    assert capsys.readouterr().out.startswith("note: --plot needs matplotlib")
    assert gpt.load_checkpoint(os.path.join(split.out_dir, "ckpt.pt"))["step"] == 2
    E.main(dataclasses.replace(split, stop_after=0, resume=True, plot=False))
    a, b = (gpt.load_checkpoint(os.path.join(c.out_dir, "ckpt.pt")) for c in (whole, split))
    assert a["step"] == b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k])
                                               for k in a["model"])
    assert log_lines(split) == log_lines(whole)
    assert sum('"metric": ' in line for line in log_lines(whole)) == 20  # every row of the card


def tiny_checkpoint(path, block_size=96, vocab_size=None, dropout=0.0):
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=vocab_size or tok.model_vocab_size, n_layer=1,
                                  n_head=2, n_embd=16, block_size=block_size, dropout=dropout))
    gpt.save_checkpoint(str(path), model, tok)
    return str(path)


def test_resume_of_an_init_model_with_dropout_is_exact(tmp_path):
    """Dropout draws from the global RNG, which the checkpoint must carry for a bit-exact resume."""
    init = tiny_checkpoint(tmp_path / "init.pt", block_size=256, dropout=0.2)
    whole = E.EvalConfig(**TINY, init=init, out_dir=str(tmp_path / "whole"))
    E.main(whole)
    split = dataclasses.replace(whole, out_dir=str(tmp_path / "split"), stop_after=2)
    E.main(split)
    E.main(dataclasses.replace(split, stop_after=0, resume=True))
    a, b = (gpt.load_checkpoint(os.path.join(c.out_dir, "ckpt.pt")) for c in (whole, split))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_ckpt_scores_a_chat_checkpoint_as_it_is(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path / "chat.pt")
    before = open(path, "rb").read()
    cfg = E.EvalConfig(ckpt=path, instructions=12, samples=2, device="cpu",
                       out_dir=str(tmp_path / "out"))
    rows = dict(E.main(cfg))
    assert open(path, "rb").read() == before  # nothing trained, nothing saved over it
    assert list(rows)[:3] == ["perplexity, corpus text", "instructions: greedy exact match %",
                              "instructions: NLL per answer token"]
    assert "QA pass@2 %, held-out instructions" in rows and "multiple choice %" in rows
    assert "instructions: greedy exact match %" in capsys.readouterr().out
    assert len(log_lines(cfg)) == len(rows)


def test_checkpoints_are_checked_at_load_before_any_work(tmp_path):
    no_chat_rows = tiny_checkpoint(tmp_path / "bytes.pt", vocab_size=256)
    short = tiny_checkpoint(tmp_path / "short.pt", block_size=24)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    out = str(tmp_path / "out")
    for fields, says in [(dict(ckpt=no_chat_rows), "no rows for the chat tokens"),
                         (dict(init=no_chat_rows), "no rows for the chat tokens"),
                         (dict(init=short), "context is 24 tokens; this task needs"),
                         (dict(ckpt=str(garbage)), "not a readable checkpoint"),
                         (dict(init=str(garbage)), "not a readable checkpoint")]:
        with pytest.raises(SystemExit, match=f"^error: .*{says}"):
            E.main(E.EvalConfig(**{**TINY, **fields, "out_dir": out}))
    os.makedirs(out)
    os.replace(garbage, os.path.join(out, "ckpt.pt"))
    with pytest.raises(SystemExit, match="^error: .*not a readable checkpoint"):
        E.main(E.EvalConfig(**TINY, resume=True, out_dir=out))


def test_resume_with_other_settings_is_an_error(tmp_path):
    cfg = E.EvalConfig(**TINY, stop_after=1, out_dir=str(tmp_path))
    tok = byte_tokenizer()
    model = gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, n_layer=1, n_head=2, n_embd=16))
    gpt.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), model, tok, step=1, config=cfg)
    with pytest.raises(SystemExit, match="^error: .*saved with --steps=4: resume with those"):
        E.main(dataclasses.replace(cfg, steps=5, resume=True))
    gpt.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), model, tok, step=1,
                        config=gpt.SampleConfig())  # another script's settings
    with pytest.raises(SystemExit, match="^error: .*not saved by this script"):
        E.main(dataclasses.replace(cfg, resume=True))


@pytest.mark.parametrize("field,value", [
    ("instructions", 0), ("countries", 3), ("countries", 101), ("held_out", 0), ("held_out", 16),
    ("repeat", 0), ("judge_cases", -1), ("steps", 0), ("lr", 0.0), ("batch_size", 0),
    ("n_layer", 0), ("n_embd", 36), ("vocab_size", 255), ("samples", 0), ("temperature", -1.0),
    ("ckpt_every", 0), ("stop_after", -1), ("init", "no/such.pt"), ("ckpt", "no/such.pt")])
def test_config_checks_every_field(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        E.EvalConfig(**{field: value})


def test_ckpt_excludes_init_and_resume(tmp_path):
    path = tiny_checkpoint(tmp_path / "chat.pt")
    for other in (dict(init=path), dict(resume=True)):
        with pytest.raises(ValueError, match="ckpt= scores a checkpoint as it is"):
            E.EvalConfig(ckpt=path, **other)


def test_command_line_errors_exit_2_naming_the_problem(capsys):
    for argv, says in [(["--device=tpu"], "this machine has only"), (["--steps=0"], "steps=0")]:
        with pytest.raises(SystemExit) as stop:
            gpt.parse_args(E.EvalConfig, argv, gpu=E.GPU)
        assert stop.value.code == 2 and says in capsys.readouterr().err
    if not torch.cuda.is_available():  # the CPU defaults are the fields', CUDA's are GPU's
        assert gpt.parse_args(E.EvalConfig, [], gpu=E.GPU) == E.EvalConfig()
        assert all(getattr(E.EvalConfig(), k) != v for k, v in E.GPU.items())


def test_bench_smoke(capsys):  # bench/evaluate.py, moved out of evaluate.py --bench
    spec = importlib.util.spec_from_file_location(
        "bench_evaluate", os.path.join(os.path.dirname(__file__), "..", "bench", "evaluate.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(bench.BenchConfig(countries=4, n_layer=1, n_embd=32, vocab_size=300, repeats=1,
                                 device="cpu"))
    out = capsys.readouterr().out
    assert "batched (ours)" in out and "one forward per option" in out
