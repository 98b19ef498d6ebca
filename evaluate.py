"""Evaluating LLMs: reference metrics, LLM-as-a-judge and benchmark harnesses, on one report card.

Rule-based metrics compare text with references: BLEU (Papineni et al. 2002) is clipped n-gram
precision with a brevity penalty, BP * exp(mean_n log p_n); ROUGE (Lin 2004) is n-gram and
longest-common-subsequence recall/precision; METEOR (Banerjee & Lavie 2005) is a recall-weighted
F-mean of aligned unigrams with a fragmentation penalty. They equal sacrebleu, rouge-score and
NLTK (see each docstring). Model-based evaluation: perplexity exp(sum NLL / sum tokens), pass@k
(Chen et al. 2021), maj@k, multiple-choice log-likelihood scoring (MMLU, Hendrycks et al. 2021),
FActScore-style factuality (Min et al. 2023), and an LLM judge (Zheng et al. 2023) with a
rationale before a PASS/FAIL verdict forced by constrained decoding, judged in both orders,
probed for verbosity bias, and calibrated against labels with Cohen's kappa (Cohen 1960).

    python evaluate.py                          # a tiny model fine-tuned on the built-in suite, its card
    python evaluate.py --ckpt=out/train/ckpt.pt --steps=600   # start from your checkpoint instead
    python evaluate.py --bench                  # multiple-choice scoring: batched vs one forward per option

On CPU (about 3 minutes) you see a tiny model fine-tuned on a built-in world of made-up facts,
and a report card, base model vs fine-tuned: perplexity, BLEU/ROUGE/METEOR of descriptions,
factual precision, pass@1/pass@k/maj@k and multiple-choice accuracy on questions worded as no
training text words them (beside pass@1 in the trained wording: memorisation), and the judge's
kappa, position consistency and verbosity bias. The metrics need only the standard library:
copy this file without gpt.py and `from evaluate import bleu, rouge, meteor` still works.
"""
import collections
import math
import random
import re
import time
from dataclasses import dataclass

try:  # the judge, the harnesses and main() need torch and gpt.py; the metrics do not
    import torch
    from tqdm import tqdm
    import gpt
except ImportError:
    torch = tqdm = gpt = None


# ----------------------------------------------------------------------------- BLEU (= sacrebleu)

# mteval-v13a: split off ASCII punctuation except ' , - . (the space in the class is harmless)
_13A_PUNCT = re.compile(r"([ -&(-+/:-@\[-`{-~])")


def tokenize_13a(line):
    """mteval-v13a.pl's tokenisation (WMT's standard, sacrebleu's default): unescape a few HTML
    entities, split punctuation off words, and periods/commas unless they sit inside a number."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        line = line.replace(entity, char)
    line = _13A_PUNCT.sub(r" \1 ", f" {line} ")
    line = re.sub(r"([^0-9])([.,])", r"\1 \2 ", line)  # . or , after a non-digit
    line = re.sub(r"([.,])([^0-9])", r" \1 \2", line)  # . or , before a non-digit
    line = re.sub(r"([0-9])(-)", r"\1 \2 ", line)  # a dash after a digit
    return " ".join(line.split())


MAX_ORDER = 4  # BLEU's n-grams run from 1 to 4


def ngram_counts(tokens, n):
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_stats(hypothesis, references, tokenize="13a", lowercase=False):
    """One segment's sufficient statistics, a flat row [hyp_len, ref_len, matches_1..4, totals_1..4]
    that a corpus sums column by column: ref_len is the closest reference length (the shorter on
    ties); a hypothesis n-gram matches at most as often as it occurs in any single reference."""
    if tokenize not in ("13a", "none"):
        raise ValueError(f"tokenize={tokenize!r}; choose 13a or none")

    def words(text):
        text = (text.lower() if lowercase else text).rstrip()
        return (tokenize_13a(text) if tokenize == "13a" else text).split()

    hyp, refs = words(hypothesis), [words(r) for r in references]
    ref_len = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    correct, total = [], []
    for n in range(1, MAX_ORDER + 1):
        max_ref = collections.Counter()
        for r in refs:
            max_ref |= ngram_counts(r, n)  # |: elementwise max
        counts = ngram_counts(hyp, n)
        correct.append(sum(min(c, max_ref[g]) for g, c in counts.items()))
        total.append(sum(counts.values()))
    return [len(hyp), ref_len] + correct + total


def bleu_from_stats(hyp_len, ref_len, correct, total, smooth="exp", smooth_value=None, effective_order=False):
    """BLEU = BP * exp(mean_n log p_n), 0-100, with BP = min(1, exp(1 - ref_len / hyp_len)).
    Smoothing of zero-match orders (Chen & Cherry 2014): exp halves the pseudo-count at each
    successive one, p_n = 100 / (2^j * total_n); floor uses smooth_value / total_n (0.1);
    add-k adds k (1) to matches and totals for n >= 2; none leaves p_n = 0 (BLEU 0).
    effective_order drops the orders the hypothesis is too short to have."""
    if smooth not in ("exp", "floor", "add-k", "none"):
        raise ValueError(f"smooth={smooth!r}; choose exp, floor, add-k or none")
    k = smooth_value if smooth_value is not None else {"floor": 0.1, "add-k": 1}.get(smooth)
    bp = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0)
    if not any(correct):
        return 0.0
    precisions, order, halvings = [0.0] * len(correct), len(correct), 1.0
    for n, (c, t) in enumerate(zip(correct, total)):
        if smooth == "add-k" and n > 0:
            c, t = c + k, t + k
        if t == 0:
            break  # longer n-grams do not exist either
        order = n + 1 if effective_order else order
        if c > 0:
            precisions[n] = 100.0 * c / t
        elif smooth == "exp":
            halvings *= 2
            precisions[n] = 100.0 / (halvings * t)
        elif smooth == "floor":
            precisions[n] = 100.0 * k / t
    log_p = [math.log(p) if p > 0 else -9999999999 for p in precisions[:order]]  # sacrebleu's log(0)
    return bp * math.exp(sum(log_p) / order)


def bleu(hypotheses, references, tokenize="13a", smooth="exp", smooth_value=None, lowercase=False,
         effective_order=False):
    """Corpus BLEU (0-100): statistics summed over segments, then one score. references[i] is the
    list of reference strings for hypotheses[i]. The defaults equal sacrebleu's BLEU() (13a,
    exp smoothing, no effective order); sacrebleu takes references as streams, refs[j][i]."""
    if isinstance(hypotheses, str) or not hypotheses or len(hypotheses) != len(references):
        raise ValueError(f"bleu needs a list of hypotheses and one list of references per hypothesis "
                         f"(got {type(hypotheses).__name__} and {len(references)} reference lists)")
    if any(isinstance(refs, str) or not refs for refs in references):
        raise ValueError("each references[i] must be a non-empty list of strings; for one reference per "
                         "hypothesis pass [[r] for r in refs]")
    stats = [bleu_stats(h, refs, tokenize, lowercase) for h, refs in zip(hypotheses, references)]
    sums = [sum(column) for column in zip(*stats)]
    return bleu_from_stats(sums[0], sums[1], sums[2:2 + MAX_ORDER], sums[2 + MAX_ORDER:], smooth, smooth_value,
                           effective_order)


def sentence_bleu(hypothesis, references, **options):
    """sacrebleu.sentence_bleu: one segment, exp smoothing, effective order on."""
    if isinstance(references, str):
        references = [references]
    return bleu([hypothesis], [references], **{"effective_order": True, **options})


# ----------------------------------------------------------------------------- Porter stemmer (= NLTK)

_POOL = {"skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
         "innings": "inning", "inning": "inning", "outings": "outing", "outing": "outing",
         "cannings": "canning", "canning": "canning", "howe": "howe", "proceed": "proceed",
         "exceed": "exceed", "succeed": "succeed"}  # irregular forms NLTK's extensions look up


def _consonants(word):
    """c/v flags: a consonant is not a e i o u, and not a y that follows a consonant."""
    flags = []
    for i, ch in enumerate(word):
        flags.append(ch not in "aeiou" and not (ch == "y" and i > 0 and flags[i - 1]))
    return flags


def _measure(stem):  # m in [C](VC)^m[V]: the number of vowel->consonant transitions
    flags = _consonants(stem)
    return sum(not a and b for a, b in zip(flags, flags[1:]))


def _has_vowel(stem):
    return not all(_consonants(stem))


def _ends_cvc(stem):  # *o: consonant-vowel-consonant, the last not w, x or y (NLTK: or a 2-letter vc)
    f = _consonants(stem)
    if len(stem) >= 3 and f[-3] and not f[-2] and f[-1] and stem[-1] not in "wxy":
        return True
    return len(stem) == 2 and not f[0] and f[1]


def _first_rule(word, rules):
    """Porter's rule lists: the first listed suffix the word ends with decides (longer suffixes
    are listed before their tails); if its condition on the stem fails, the word stays as is."""
    for suffix, replacement, condition in rules:
        if word.endswith(suffix):
            stem = word[:len(word) - len(suffix)]
            return stem + replacement if condition(stem) else word
    return word


def _m_above(k):
    return lambda stem: _measure(stem) > k


_STEP1A = [("sses", "ss"), ("ies", "i"), ("ss", "ss"), ("s", "")]
_STEP2 = [("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
          ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"),
          ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"),
          ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
          ("fulli", "ful")]
_STEP3 = [("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""),
          ("ness", "")]
_STEP4 = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou",
          "ism", "ate", "iti", "ous", "ive", "ize"]


def _step4_condition(suffix):  # (m > 1), and for -ion also a stem ending in s or t (adoption)
    if suffix == "ion":
        return lambda stem: _measure(stem) > 1 and stem[-1] in "st"
    return _m_above(1)


def _step1b(word):
    if word.endswith("ied"):  # NLTK: died -> die, spied -> spi
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("eed"):
        return word[:-1] if _measure(word[:-3]) > 0 else word
    for suffix in ("ed", "ing"):
        if word.endswith(suffix) and _has_vowel(word[:-len(suffix)]):
            stem = word[:-len(suffix)]
            break
    else:
        return word
    for suffix in ("at", "bl", "iz"):  # conflat(ed) -> conflate
        if stem.endswith(suffix):
            return stem + "e"
    if len(stem) >= 2 and stem[-1] == stem[-2] and _consonants(stem)[-1]:  # hopp(ing) -> hop
        return stem if stem[-1] in "lsz" else stem[:-1]
    return stem + "e" if _measure(stem) == 1 and _ends_cvc(stem) else stem  # fil(ing) -> file


def _step2(word):
    if word.endswith("alli") and _measure(word[:-4]) > 0:  # NLTK: alli -> al first, then again
        return _step2(word[:-2])
    if word.endswith("logi"):  # NLTK: the l stays with the stem (geology -> geolog)
        return word[:-1] if _measure(word[:-3]) > 0 else word
    return _first_rule(word, [(s, r, _m_above(0)) for s, r in _STEP2])


def porter_stem(word):
    """The Porter (1980) stemmer exactly as NLTK's PorterStemmer() (its default NLTK_EXTENSIONS
    mode, which rouge-score and NLTK's METEOR use): five steps of suffix rules guarded by the
    stem's measure m, plus NLTK's irregular forms and its y/ies/ied/alli/logi/fulli tweaks."""
    stem = word.lower()
    if stem in _POOL:
        return _POOL[stem]
    if len(word) <= 2:
        return stem
    if stem.endswith("ies") and len(stem) == 4:  # step 1a; NLTK: dies -> die
        stem = stem[:-1]
    else:
        stem = _first_rule(stem, [(s, r, lambda _: True) for s, r in _STEP1A])
    stem = _step1b(stem)
    stem = _first_rule(stem, [("y", "i", lambda s: len(s) > 1 and _consonants(s)[-1])])  # 1c: happy -> happi
    stem = _step2(stem)
    stem = _first_rule(stem, [(s, r, _m_above(0)) for s, r in _STEP3])
    stem = _first_rule(stem, [(s, "", _step4_condition(s)) for s in _STEP4])
    if stem.endswith("e"):  # 5a: (m > 1) or (m = 1 and not *o) E ->
        m = _measure(stem[:-1])
        if m > 1 or (m == 1 and not _ends_cvc(stem[:-1])):
            stem = stem[:-1]
    if stem.endswith("ll") and _measure(stem[:-1]) > 1:  # 5b: controll -> control
        stem = stem[:-1]
    return stem


# ----------------------------------------------------------------------------- ROUGE (= rouge-score)

def rouge_tokens(text, stem=False):
    """rouge-score's tokeniser: lowercase, anything but [a-z0-9] is a space, Porter-stem the
    words longer than 3 characters."""
    words = re.split(r"\s+", re.sub(r"[^a-z0-9]+", " ", text.lower()))
    if stem:
        words = [porter_stem(w) if len(w) > 3 else w for w in words]
    return [w for w in words if re.fullmatch(r"[a-z0-9]+", w)]


def prf(matches, n_pred, n_ref):
    """(precision, recall, F1), with 0 for empty denominators."""
    p, r = matches / max(n_pred, 1), matches / max(n_ref, 1)
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


def lcs_table(a, b):
    """T[i][j] = length of the longest common subsequence of a[:i] and b[:j]."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return table


def lcs_positions(ref, cand):
    """Positions in ref of one LCS, read back from the table (rouge-score's tie-breaking)."""
    table, i, j, positions = lcs_table(ref, cand), len(ref), len(cand), []
    while i > 0 and j > 0:
        if ref[i - 1] == cand[j - 1]:
            positions.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions[::-1]


def rouge_lsum(pred_sents, ref_sents):
    """Summary-level LCS (Lin 2004, sec. 3.2): for each reference sentence, the union of its LCS
    with every predicted sentence, each token counted at most as often as it occurs on both sides."""
    m, n = sum(map(len, ref_sents)), sum(map(len, pred_sents))
    if not m or not n:
        return 0.0, 0.0, 0.0
    left_ref = collections.Counter(t for s in ref_sents for t in s)
    left_pred = collections.Counter(t for s in pred_sents for t in s)
    hits = 0
    for ref in ref_sents:
        union = sorted(set().union(*(lcs_positions(ref, cand) for cand in pred_sents)))
        for token in (ref[i] for i in union):
            if left_pred[token] > 0 and left_ref[token] > 0:
                hits, left_pred[token], left_ref[token] = hits + 1, left_pred[token] - 1, left_ref[token] - 1
    return prf(hits, n, m)


def rouge(prediction, reference, stem=False):
    """{"rouge1", "rouge2", "rougeL", "rougeLsum": (precision, recall, f)}, equal to rouge-score's
    RougeScorer(..., use_stemmer=stem).score(reference, prediction); rougeLsum treats each line
    as a sentence. A list of references gives, per type, the one with the best f (score_multi)."""
    if not isinstance(reference, str):
        if not reference:
            raise ValueError("rouge needs at least one reference")
        per_ref = [rouge(prediction, r, stem) for r in reference]
        return {k: max(per_ref, key=lambda s: s[k][2])[k] for k in per_ref[0]}  # max keeps the first tie
    pred, ref = rouge_tokens(prediction, stem), rouge_tokens(reference, stem)
    scores = {}
    for n in (1, 2):
        p_grams, r_grams = ngram_counts(pred, n), ngram_counts(ref, n)
        overlap = sum(min(c, p_grams[g]) for g, c in r_grams.items())
        scores[f"rouge{n}"] = prf(overlap, sum(p_grams.values()), sum(r_grams.values()))
    lcs = lcs_table(ref, pred)[-1][-1] if pred and ref else 0
    scores["rougeL"] = prf(lcs, len(pred), len(ref))
    sentences = [[rouge_tokens(s, stem) for s in text.split("\n") if s] for text in (prediction, reference)]
    scores["rougeLsum"] = rouge_lsum(*sentences)
    return scores


# ----------------------------------------------------------------------------- METEOR (= NLTK, minus WordNet)

def _match(hyp, ref, key):
    """Greedy one-to-one matching of (position, word) lists on key(word): from the last
    hypothesis word backwards, each takes the last free reference word with the same key.
    Returns the matched position pairs and what is left on each side."""
    free = collections.defaultdict(list)
    for j, (_, word) in enumerate(ref):
        free[key(word)].append(j)
    pairs, used_h, used_r = [], set(), set()
    for i in reversed(range(len(hyp))):
        if free.get(key(hyp[i][1])):
            j = free[key(hyp[i][1])].pop()
            pairs.append((hyp[i][0], ref[j][0]))
            used_h.add(i)
            used_r.add(j)
    return (pairs, [w for i, w in enumerate(hyp) if i not in used_h],
            [w for j, w in enumerate(ref) if j not in used_r])


def meteor(hypothesis, reference, alpha=0.9, beta=3.0, gamma=0.5):
    """METEOR: align unigrams (exact, then Porter stems), then
    F_mean = P R / (alpha P + (1 - alpha) R), penalty = gamma (chunks / matches)^beta,
    score = (1 - penalty) F_mean, where a chunk is a run of matches adjacent on both sides.
    A list of references gives the maximum. Words are str.split() tokens, lowercased.
    Equal to nltk.translate.meteor_score.meteor_score([r.split() ...], hypothesis.split())
    with WordNet switched off: NLTK adds a third stage that matches WordNet synonyms, which we
    leave out (no corpus download), so a synonym pair scores lower here. Like NLTK, and unlike
    METEOR 1.x, the alignment is greedy rather than the one with the fewest crossings."""
    if not isinstance(reference, str):
        if not reference:
            raise ValueError("meteor needs at least one reference")
        return max(meteor(hypothesis, r, alpha, beta, gamma) for r in reference)
    hyp = list(enumerate(w.lower() for w in hypothesis.split()))
    ref = list(enumerate(w.lower() for w in reference.split()))
    exact, hyp_left, ref_left = _match(hyp, ref, key=lambda w: w)
    stemmed, _, _ = _match(hyp_left, ref_left, key=porter_stem)
    matches = sorted(exact + stemmed)
    if not matches:
        return 0.0
    precision, recall = len(matches) / len(hyp), len(matches) / len(ref)
    f_mean = (precision * recall) / (alpha * precision + (1 - alpha) * recall)
    chunks = 1 + sum(not (b[0] == a[0] + 1 and b[1] == a[1] + 1) for a, b in zip(matches, matches[1:]))
    return (1 - gamma * (chunks / len(matches)) ** beta) * f_mean


# ----------------------------------------------------------------------------- sampling metrics

def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i), a product with no huge binomials."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}: "
                         "draw at least k samples per problem")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(answers):
    """The most frequent answer (None = no answer, never voted for); a tie goes to the answer,
    among the tied, that appeared first. None if there is no answer at all."""
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == top)


def maj_at_k(samples, correct, k):
    """maj@k (cons@k): the fraction of problems whose majority answer over the first k samples
    equals the correct one. samples[i] is the list of parsed answers to problem i."""
    if any(len(s) < k for s in samples):
        raise ValueError(f"maj@{k} needs at least {k} samples per problem")
    return sum(majority_vote(s[:k]) == c for s, c in zip(samples, correct)) / len(samples)


# ----------------------------------------------------------------------------- agreement

def raw_agreement(a, b):
    """p_o: the fraction of items on which two raters give the same label."""
    if len(a) != len(b) or not a:
        raise ValueError(f"two raters must label the same non-empty list of items ({len(a)} vs {len(b)})")
    return sum(x == y for x, y in zip(a, b)) / len(a)


def cohen_kappa(a, b):
    """kappa = (p_o - p_e) / (1 - p_e), p_e = sum_k p_a(k) p_b(k): agreement beyond chance.
    When p_e = 1 (both raters always give one same label) kappa is 0/0: nan, as scikit-learn."""
    p_o = raw_agreement(a, b)
    count_a, count_b = collections.Counter(a), collections.Counter(b)
    p_e = sum(count_a[k] * count_b[k] for k in count_a) / len(a) ** 2
    return (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan


def fleiss_kappa(counts):
    """Fleiss (1971) kappa for N items each rated by the same n raters. counts[i][j] = raters who
    put item i in category j. P_i = (sum_j n_ij^2 - n) / (n (n - 1)), p_j = sum_i n_ij / (N n),
    kappa = (mean_i P_i - sum_j p_j^2) / (1 - sum_j p_j^2); nan when that is 0/0."""
    n = sum(counts[0]) if counts else 0
    if n < 2 or any(sum(row) != n for row in counts):
        raise ValueError("fleiss_kappa needs every row of counts to sum to the same number of raters (>= 2)")
    N = len(counts)
    P_bar = sum((sum(x * x for x in row) - n) / (n * (n - 1)) for row in counts) / N
    P_e = sum((sum(col) / (N * n)) ** 2 for col in zip(*counts))
    return (P_bar - P_e) / (1 - P_e) if P_e < 1 else math.nan


def precision_recall_f1(predicted, actual, positive=True):
    """Binary precision TP/(TP+FP), recall TP/(TP+FN) and F1 for the label `positive`."""
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions but {len(actual)} labels")
    tp = sum(p == positive and a == positive for p, a in zip(predicted, actual))
    return prf(tp, sum(p == positive for p in predicted), sum(a == positive for a in actual))


# ----------------------------------------------------------------------------- model-based evaluation

def require_gpt():
    if gpt is None:
        raise ImportError("the model-based part of evaluate.py needs torch, tqdm and gpt.py next to it "
                          "(pip install -r requirements.txt); the metrics above it do not")


def perplexity(model, sequences, batch_size=32):
    """exp(sum NLL / sum predicted tokens) over a corpus of token-id sequences: one pooled ratio,
    not a mean of per-sequence perplexities. A sequence longer than the context is cut into
    windows of block_size tokens overlapping by one, so every token after the first of each
    sequence is predicted exactly once."""
    require_gpt()
    T = model.config.block_size
    windows = [s[i:i + T] for s in sequences for i in range(0, len(s) - 1, T - 1)]
    if not windows:
        raise ValueError("perplexity needs at least one sequence of 2 or more tokens")
    nll, count, device = 0.0, 0, next(model.parameters()).device
    with gpt.evaluating(model), gpt.autocast(device):
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]  # each window: first token as context, the rest predicted
            logp, mask = gpt.completion_logprobs(model, [w[:1] for w in chunk], [w[1:] for w in chunk])
            nll, count = nll - logp.sum().item(), count + int(mask.sum())
    return math.exp(nll / count)


def option_logprobs(model, tok, prompts, options, batch_size=64):
    """log p(option | prompt) summed over the option's tokens, for each (prompt, option) row."""
    require_gpt()
    rows = [(tok.encode(p), tok.encode(o)) for p, o in zip(prompts, options)]
    scores, device = [], next(model.parameters()).device
    with gpt.evaluating(model), gpt.autocast(device):
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            logp, _ = gpt.completion_logprobs(model, [p for p, _ in chunk], [o for _, o in chunk])
            scores += logp.sum(-1).tolist()  # masked positions are already 0
    return scores


def multiple_choice(model, tok, questions, batch_size=64):
    """MMLU-style cloze scoring: each question is (prompt, options, index of the right one), and
    the option with the highest log p(option | prompt) wins; `accuracy` sums the log-probs,
    `accuracy_norm` divides them by the option's length in UTF-8 bytes (lm-evaluation-harness's
    acc_norm), which stops long options losing just for having more tokens to pay for."""
    prompts = [p for p, opts, _ in questions for _ in opts]
    options = [o for _, opts, _ in questions for o in opts]
    scores, hits, hits_norm, i = option_logprobs(model, tok, prompts, options, batch_size), 0, 0, 0
    for _, opts, right in questions:
        s = scores[i:i + len(opts)]
        norm = [x / len(o.encode("utf-8")) for x, o in zip(s, opts)]
        hits += s.index(max(s)) == right
        hits_norm += norm.index(max(norm)) == right
        i += len(opts)
    return {"accuracy": hits / len(questions), "accuracy_norm": hits_norm / len(questions)}


# ----------------------------------------------------------------------------- factuality

CLAIM = re.compile(r"(?:Its|The) (\w+) is (\w+)\.?")  # the one claim shape the built-in world uses


def atomic_claims(text):
    """Decompose a text into atomic claims: here its sentences (FActScore, Min et al. 2023, then
    asks an LLM to split each sentence further; ours say one thing each)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def fact_check(text, subject, knowledge):
    """Verify each atomic claim of `text` (about `subject`) against a knowledge source, a set of
    (subject, relation, value) triples; the model that wrote the text is never asked. A claim
    that does not parse cannot be verified and counts as unsupported. Returns [(claim, bool)]."""
    verdicts = []
    for claim in atomic_claims(text):
        m = CLAIM.fullmatch(claim)
        verdicts.append((claim, bool(m) and (subject, m.group(1), m.group(2)) in knowledge))
    return verdicts


# ----------------------------------------------------------------------------- LLM-as-a-judge

CRITERIA = "it names what the reference names; length and style do not count"


def judge_prompt(question, reference, answer):
    """Pointwise, reference-guided grading: the criteria, the case, then a rationale that comes
    before the verdict (so the verdict is conditioned on the written reasoning, as in CoT)."""
    return f"PASS or FAIL: {CRITERIA}.\nQ: {question}\nReference: {reference}\nAnswer: {answer}\nRationale:"


def pairwise_prompt(question, reference, answer_a, answer_b):
    return f"A or B: {CRITERIA}.\nQ: {question}\nReference: {reference}\nA: {answer_a}\nB: {answer_b}\nRationale:"


def verdict_constraint(tok, labels, budget, vocab_size):
    """An allowed_tokens callback for gpt's generate: a free rationale of at most `budget` tokens
    that a newline ends, then exactly "Verdict: <one of labels>" and <|end|>. Whatever the
    weights, the output parses: the mask makes every other token impossible."""
    newline, end = tok.encode("\n"), tok.special("<|end|>")
    if len(newline) != 1:
        raise ValueError("the judge needs a tokenizer in which a newline is one token")
    tails = [tok.encode(f"Verdict: {label}") + [end] for label in labels]
    free = torch.zeros(vocab_size, dtype=torch.bool)  # ordinary tokens that hold no newline
    free[[i for i in range(len(tok.ranks)) if b"\n" not in tok.decode_bytes([i])] + newline] = True

    def allowed(generated):  # (B, t) tokens so far -> (B, vocab) mask
        masks = torch.zeros(len(generated), vocab_size, dtype=torch.bool)
        for row, g in enumerate(generated.tolist()):
            if newline[0] not in g:  # still in the rationale; at the budget, force the newline
                masks[row] = free if len(g) < budget else False
                masks[row, newline[0]] = True
                continue
            forced = g[g.index(newline[0]) + 1:]  # walk the trie of the allowed tails
            nxt = {t[len(forced)] for t in tails if len(t) > len(forced) and t[:len(forced)] == forced}
            masks[row, list(nxt or {end})] = True
        return masks.to(generated.device)
    return allowed


def run_judge(model, tok, prompts, labels=("PASS", "FAIL"), budget=40, batch_size=64):
    """Greedy (temperature 0, for reproducibility) rationale, then a constrained verdict.
    Returns (verdicts, rationales)."""
    require_gpt()
    ids, end = [tok.encode(p) for p in prompts], tok.special("<|end|>")
    tail = 2 + max(len(tok.encode(f"Verdict: {label}")) for label in labels)  # newline, "Verdict: X", <|end|>
    budget = min(budget, model.config.block_size - max(map(len, ids)) - tail)  # what the context leaves
    if budget < 1:
        raise ValueError(f"a judge prompt of {max(map(len, ids))} tokens leaves no room for a rationale in "
                         f"block_size={model.config.block_size}: shorten the prompts")
    constraint = verdict_constraint(tok, labels, budget, model.config.vocab_size)
    verdicts, rationales = [], []
    for i in range(0, len(ids), batch_size):
        for out in model.generate(ids[i:i + batch_size], budget + tail, temperature=0, stop_tokens=[end],
                                  allowed_tokens=constraint):
            rationale, _, verdict = tok.decode([t for t in out if t != end]).rpartition("\nVerdict: ")
            verdicts.append(verdict)
            rationales.append(rationale.strip())
    return verdicts, rationales


def judge_pairwise(model, tok, items):
    """Position-bias mitigation: judge each (question, reference, answer 1, answer 2) as A=1,B=2
    and again as A=2,B=1. The winner (1 or 2) stands only where both orders agree, else it
    is a tie (None). Returns the winners, the consistency rate and how often "A" was chosen."""
    forward = [pairwise_prompt(q, r, a, b) for q, r, a, b in items]
    swapped = [pairwise_prompt(q, r, b, a) for q, r, a, b in items]
    verdicts, _ = run_judge(model, tok, forward + swapped, labels=("A", "B"))
    first, second = verdicts[:len(items)], verdicts[len(items):]
    winners = [(1 if v1 == "A" else 2) if (v1 == "A") != (v2 == "A") else None for v1, v2 in zip(first, second)]
    return {"winners": winners, "consistency": sum(w is not None for w in winners) / len(items),
            "chose_A": verdicts.count("A") / len(verdicts)}


def verbosity_probe(model, tok, items, padding=", as any atlas shows"):
    """Verbosity bias: the same (question, reference, answer) cases with and without content-free
    padding on the answer. An unbiased judge passes both equally often: (PASS rate plain, padded)."""
    plain, _ = run_judge(model, tok, [judge_prompt(q, r, a) for q, r, a in items])
    padded, _ = run_judge(model, tok, [judge_prompt(q, r, a + padding) for q, r, a in items])
    return plain.count("PASS") / len(items), padded.count("PASS") / len(items)


# ----------------------------------------------------------------------------- the built-in suite

SYLLABLES = "zor bi quel mir tha ven dor ka lis on ru sel ta mo gri fen ul pra nes vo ar li".split()
ATTRIBUTES = ("capital", "river", "language")


def make_world(n_countries, seed):
    """{country: {attribute: value}} of made-up, all-distinct names: no model knows them beforehand,
    so whatever it knows about them, the fine-tuning taught it."""
    if not 4 <= n_countries <= 100:
        raise ValueError(f"countries={n_countries}: use between 4 and 100")
    rng, used = random.Random(seed), set()

    def new_name(most_syllables):  # a fresh name of 1 to most_syllables syllables
        while True:
            name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, most_syllables))).capitalize()
            if name not in used:
                used.add(name)
                return name
    return {new_name(3): {a: new_name(2) for a in ATTRIBUTES} for _ in range(n_countries)}


# The split. Training text holds every fact of every country, asked in question()'s wording, and
# the descriptions of the training countries. Held out: the other countries' descriptions and
# judge cases, and the wording below, in which the QA and multiple-choice rows ask every fact
# (no training text contains it: tested). Asked in the trained wording, QA measures memorisation.
PARAPHRASES = {"capital": "Which city is the capital of {}?",
               "river": "Which river flows through {}?",
               "language": "Which language do the people of {} speak?"}


def question(country, attribute):
    return f"What is the {attribute} of {country}?"


def paraphrase(country, attribute):
    return PARAPHRASES[attribute].format(country)


def qa_prompt(country, attribute, ask=question):
    return f"Q: {ask(country, attribute)}\nA:"


def describe_prompt(country):
    return f"Describe {country}.\n"


def description(world, country):  # three atomic claims, one sentence each
    return " ".join(f"Its {a} is {v}." for a, v in world[country].items())


def judge_example(world, rng, countries, pairwise):
    """One graded case, right or wrong by construction, with its target rationale and verdict.
    The reference is any value of the asked attribute (an answer key), so the judge must read
    it rather than recall the world; the wrong answer is another value of that attribute. The
    rationale puts the two names side by side before saying same/different: a tiny model cannot
    compare tokens that sit far apart, but learns to compare neighbours quickly."""
    c, a = rng.choice(countries), rng.choice(ATTRIBUTES)
    values = sorted({world[x][a] for x in world})
    reference = rng.choice(values)
    wrong = rng.choice([v for v in values if v != reference])
    if pairwise:
        first, second = (reference, wrong) if rng.random() < 0.5 else (wrong, reference)
        rationale = f"{reference} vs {first}: {compare(reference, first)}; {reference} vs {second}: {compare(reference, second)}."
        return pairwise_prompt(question(c, a), reference, first, second), rationale, "A" if first == reference else "B"
    answer = reference if rng.random() < 0.5 else wrong
    rationale = f"{reference} vs {answer}: {compare(reference, answer)}."
    return judge_prompt(question(c, a), reference, answer), rationale, "PASS" if answer == reference else "FAIL"


def compare(reference, answer):
    return "same" if reference == answer else "different"


def training_pairs(world, train, tok, cfg, rng):
    """(prompt ids, completion ids) for gpt.finetune: every fact as a question, the descriptions
    of the training countries, and graded judge cases, point- and pairwise."""
    end = tok.special("<|end|>")
    texts = [(qa_prompt(c, a), f" {v}") for c in world for a, v in world[c].items()] * cfg.repeat
    texts += [(describe_prompt(c), description(world, c)) for c in train] * cfg.repeat
    for i in range(cfg.judge_cases):
        prompt, rationale, verdict = judge_example(world, rng, train, pairwise=i % 2 == 1)
        texts.append((prompt, f" {rationale}\nVerdict: {verdict}"))
    return [(tok.encode(p), tok.encode(c) + [end]) for p, c in texts]


def eval_judge_cases(world, held_out, rng):
    """Cases about countries the judge never graded, each fact with its right answer and with a
    wrong one: (question, reference, answer, is_right)."""
    cases = []
    for c in held_out:
        for a in ATTRIBUTES:
            wrong = rng.choice([world[x][a] for x in world if x != c])
            cases += [(question(c, a), world[c][a], world[c][a], True), (question(c, a), world[c][a], wrong, False)]
    return cases


# ----------------------------------------------------------------------------- the report card

@dataclass
class EvalConfig:
    ckpt: str = ""  # a gpt.py checkpoint to fine-tune and evaluate; empty = a tiny model from scratch
    countries: int = 16  # made-up countries in the built-in world, 3 facts each
    held_out: int = 6  # countries never described nor judged in training: the generation and judge tests
    repeat: int = 30  # copies of each fact and description in the fine-tuning mix
    judge_cases: int = 4000  # graded cases the judge learns from, half pointwise, half pairwise
    steps: int = 3000  # fine-tuning steps
    lr: float = 3e-3  # peak fine-tuning learning rate (cosine decay)
    batch_size: int = 16  # fine-tuning sequences per step
    n_layer: int = 0  # layers of the from-scratch model; 0 = 2 on CPU, 4 on CUDA
    n_embd: int = 0  # its width; 0 = 96 on CPU, 256 on CUDA
    vocab_size: int = 900  # its BPE vocabulary, trained on corpus text plus the world's names
    samples: int = 8  # samples per question for pass@k and maj@k
    temperature: float = 1.0  # sampling temperature for pass@k
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # the world, the data order and the samples
    bench: bool = False  # time multiple-choice scoring: batched vs one forward per option


def mean(xs):
    return sum(xs) / len(xs)


def sample_answers(model, tok, world, cfg, ask):
    """cfg.samples sampled answers to every question of the world: {(country, attribute): [str]}."""
    end, facts = tok.special("<|end|>"), [(c, a) for c in world for a in ATTRIBUTES]
    g = torch.Generator(next(model.parameters()).device).manual_seed(cfg.seed)
    prompts = [tok.encode(qa_prompt(c, a, ask)) for c, a in facts for _ in range(cfg.samples)]
    outs = model.generate(prompts, 12, temperature=cfg.temperature, stop_tokens=[end], generator=g)
    answers = [tok.decode([t for t in o if t != end]).strip() for o in outs]
    return {f: answers[i * cfg.samples:(i + 1) * cfg.samples] for i, f in enumerate(facts)}


def text_rows(model, tok, world, held_out):
    """Perplexity, then greedy descriptions of the held-out countries scored against the
    references (BLEU, ROUGE-L, METEOR) and fact-checked against the world."""
    end, refs = tok.special("<|end|>"), [description(world, c) for c in held_out]
    tail = gpt.embedded_corpus()[-20_000:]  # the end of the corpus, which train.py holds out too
    outs = model.generate([tok.encode(describe_prompt(c)) for c in held_out], 48, temperature=0, stop_tokens=[end])
    hyps = [tok.decode([t for t in o if t != end]).strip() for o in outs]
    knowledge = {(c, a, v) for c in world for a, v in world[c].items()}
    checks = [ok for h, c in zip(hyps, held_out) for _, ok in fact_check(h, c, knowledge)]
    return [("perplexity, held-out descriptions", perplexity(model, [tok.encode(describe_prompt(c) + r)
                                                                      for c, r in zip(held_out, refs)])),
            ("perplexity, corpus text", perplexity(model, [tok.encode(tail)])),
            ("BLEU, held-out descriptions", bleu(hyps, [[r] for r in refs])),
            ("ROUGE-L F1 (x100)", 100 * mean([rouge(h, r)["rougeL"][2] for h, r in zip(hyps, refs)])),
            ("METEOR (x100)", 100 * mean([meteor(h, r) for h, r in zip(hyps, refs)])),
            ("factual precision of their claims %", 100 * sum(checks) / max(len(checks), 1))], hyps


def qa_rows(model, tok, world, cfg, rng):
    """pass@1, pass@k and maj@n from n sampled answers per question, then 4-way multiple choice,
    all asked in the held-out PARAPHRASES wording."""
    answers = sample_answers(model, tok, world, cfg, paraphrase)
    right = {f: world[f[0]][f[1]] for f in answers}
    n_right = [sum(a == right[f] for a in s) for f, s in answers.items()]
    k, questions = min(4, cfg.samples), []
    for (c, a), v in right.items():  # the right value and three others of that attribute
        options = [v] + rng.sample(sorted({world[x][a] for x in world} - {v}), 3)
        rng.shuffle(options)
        prompt = qa_prompt(c, a, paraphrase)
        questions.append((prompt, [f" {o}" for o in options], options.index(v)))
    mc, n = multiple_choice(model, tok, questions), cfg.samples
    return [("QA pass@1 %, unseen wording", 100 * mean([pass_at_k(n, c, 1) for c in n_right])),
            (f"QA pass@{k} %, unseen wording", 100 * mean([pass_at_k(n, c, k) for c in n_right])),
            (f"QA maj@{n} %, unseen wording",
             100 * maj_at_k(list(answers.values()), list(right.values()), n)),
            ("multiple choice %, unseen wording", 100 * mc["accuracy"]),
            ("multiple choice, length-normalised %, unseen", 100 * mc["accuracy_norm"])]


def judge_rows(model, tok, world, held_out, rng):
    """The judge on cases about held-out countries: calibration against the labels, pairwise
    consistency across the two orders, and the verbosity probe."""
    cases = eval_judge_cases(world, held_out, rng)  # alternately the right and a wrong answer
    verdicts, _ = run_judge(model, tok, [judge_prompt(q, r, a) for q, r, a, _ in cases])
    labels = ["PASS" if ok else "FAIL" for *_, ok in cases]
    pairs = judge_pairwise(model, tok, [(q, r, a, wrong[2]) for (q, r, a, _), wrong in zip(cases[::2], cases[1::2])])
    pass_plain, pass_padded = verbosity_probe(model, tok, [(q, r, a) for q, r, a, _ in cases])
    return [("judge agreement with labels %", 100 * raw_agreement(verdicts, labels)),
            ("judge Cohen's kappa", cohen_kappa(verdicts, labels)),
            ("judge F1 of PASS", precision_recall_f1(verdicts, labels, positive="PASS")[2]),
            ("pairwise: same winner in both orders %", 100 * pairs["consistency"]),
            ("pairwise: right answer wins both orders %", 100 * mean([w == 1 for w in pairs["winners"]])),
            ("pairwise: picks position A %", 100 * pairs["chose_A"]),
            ("verbosity: PASS rate, plain answers %", 100 * pass_plain),
            ("verbosity: PASS rate, same answers padded %", 100 * pass_padded)]


def report_card(model, tok, world, held_out, cfg):
    """Every evaluation of this file on one model: [(row, value)], and the generated descriptions."""
    rng = random.Random(cfg.seed + 1)
    rows, hyps = text_rows(model, tok, world, held_out)
    recalled = sample_answers(model, tok, world, cfg, question)  # the trained wording: memorisation
    memorised = mean([a == world[c][x] for (c, x), s in recalled.items() for a in s])  # pass@1
    rows += qa_rows(model, tok, world, cfg, rng)
    rows.append(("QA pass@1 %, trained wording (memorisation)", 100 * memorised))
    return rows + judge_rows(model, tok, world, held_out, rng), hyps


def tiny_model(cfg, world, device):
    """From scratch: a BPE vocabulary trained on some corpus text plus the world's names (so each
    name is a token, as real names are in a large vocabulary), and an untrained GPT."""
    names = " ".join(f"{c} {a} {v}." for c in world for a, v in world[c].items())
    template = judge_prompt("What is the capital of X?", "Y", "Z") + pairwise_prompt("Q", "R", "A", "B")
    tok = gpt.Tokenizer.from_spec("bpe", gpt.embedded_corpus()[:20_000] + f"\n{names}" * 40 + template * 40,
                                  vocab_size=cfg.vocab_size)
    cuda = str(device).startswith("cuda")
    model_cfg = gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=128, n_layer=cfg.n_layer or (4 if cuda else 2),
                              n_embd=cfg.n_embd or (256 if cuda else 96), n_head=4)
    return gpt.GPT(model_cfg).to(device), tok


def main(cfg):
    require_gpt()
    device = gpt.pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng, world = random.Random(cfg.seed), make_world(cfg.countries, cfg.seed)
    if not 1 <= cfg.held_out < cfg.countries:
        raise SystemExit(f"error: held_out={cfg.held_out} must be between 1 and countries - 1 = {cfg.countries - 1}")
    train, held_out = list(world)[:-cfg.held_out], list(world)[-cfg.held_out:]
    if cfg.ckpt:
        model, tok, _ = gpt.load_model(cfg.ckpt, device)
        print(f"loaded {cfg.ckpt}: {gpt.count_params(model) / 1e6:.2f}M parameters")
    else:
        model, tok = tiny_model(cfg, world, device)
        print(f"a {gpt.count_params(model) / 1e6:.2f}M-parameter model from scratch (--ckpt=path to start from yours)")
    if cfg.bench:
        return bench(model, tok, world)
    pairs = training_pairs(world, train, tok, cfg, rng)
    longest = max(len(p) + len(c) for p, c in pairs)
    if longest > model.config.block_size:
        raise SystemExit(f"error: a training example has {longest} tokens, more than block_size="
                         f"{model.config.block_size}: use fewer/shorter names or a model with a longer context")
    print(f"world: {len(world)} countries x {len(ATTRIBUTES)} facts; {len(held_out)} held out for the "
          f"generation task, the judge cases and the pairwise cases")
    before, _ = report_card(model, tok, world, held_out, cfg)
    t0 = time.time()
    loss = gpt.finetune(model, pairs, cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed, desc="fine-tune")
    print(f"fine-tuned {cfg.steps} steps on {len(pairs)} examples in {time.time() - t0:.0f}s, last loss {loss:.3f}")
    after, hyps = report_card(model, tok, world, held_out, cfg)
    print(f"\n{'report card':<48} {'base':>9} {'fine-tuned':>11}")
    for (name, value), (_, tuned) in zip(before, after):
        print(f"{name:<48} {value:>9.2f} {tuned:>11.2f}")
    knowledge = {(c, a, v) for c in world for a, v in world[c].items()}
    print(f"\na held-out description: {hyps[0]!r}\n  reference:            {description(world, held_out[0])!r}")
    print("  fact check: " + "; ".join(f"{claim} {'supported' if ok else 'NOT supported'}"
                                       for claim, ok in fact_check(hyps[0], held_out[0], knowledge)))
    q, r, a, _ = eval_judge_cases(world, held_out, random.Random(0))[1]
    (verdict,), (rationale,) = run_judge(model, tok, [judge_prompt(q, r, a)])
    print(f"a judge call: Q {q!r}, reference {r!r}, answer {a!r}\n  rationale {rationale!r} -> verdict {verdict}")


def bench(model, tok, world, repeats=3):
    """Multiple-choice scoring: every option of every question in a few batched forward passes
    vs the naive loop of one forward per (question, option). Same numbers, measured side by side."""
    rows = [(qa_prompt(c, a), f" {world[x][a]}") for c in world for a in ATTRIBUTES for x in list(world)[:4]]
    prompts, options = [p for p, _ in rows], [o for _, o in rows]
    timings = {}
    for name, run in [("batched (ours)", lambda: option_logprobs(model, tok, prompts, options)),
                      ("one forward per option", lambda: [option_logprobs(model, tok, [p], [o])[0] for p, o in rows])]:
        scores, best = gpt.best_time(run, repeats)
        timings[name] = (best, scores)
    (fast, ours), (slow, naive) = timings.values()
    worst = max(abs(x - y) for x, y in zip(ours, naive))
    print(f"multiple-choice scoring of {len(rows)} (question, option) rows, {gpt.count_params(model) / 1e6:.2f}M params")
    print(f"{'method':<24} {'rows/s':>9} {'ratio':>7}")
    print(f"{'one forward per option':<24} {len(rows) / slow:>9.0f} {1.0:>6.1f}x")
    print(f"{'batched (ours)':<24} {len(rows) / fast:>9.0f} {slow / fast:>6.1f}x")
    print(f"largest difference in log p between the two: {worst:.1e}")


if __name__ == "__main__":
    require_gpt()
    main(gpt.parse_args(EvalConfig))
