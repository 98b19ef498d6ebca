"""Evaluating LLMs: reference metrics, LLM-as-a-judge and benchmark harnesses, on one report card.

BLEU (Papineni et al. 2002), ROUGE (Lin 2004) and METEOR (Banerjee & Lavie 2005) equal sacrebleu,
rouge-score and NLTK. Model-based: perplexity, pass@k (Chen et al. 2021), maj@k, multiple choice
by log-likelihood (MMLU, Hendrycks et al. 2021), FActScore-style factuality (Min et al. 2023), and
an LLM judge (Zheng et al. 2023): a rationale, then PASS/FAIL forced by constrained decoding,
judged in both orders, probed for verbosity bias, calibrated against labels by Cohen's kappa.

    python evaluate.py                          # a tiny model fine-tuned on a made-up world
    python evaluate.py --init=out/train/ckpt.pt # fine-tune your checkpoint instead
    python evaluate.py --ckpt=out/sft/ckpt.pt   # score a chat checkpoint as it is
    python evaluate.py --resume --plot          # continue out/evaluate/ckpt.pt; loss.png
    python bench/evaluate.py                    # multiple choice: batched vs a pass per option

On CPU (a few minutes): a report card of a tiny model before and after fine-tuning on made-up
facts, on held-out items. --ckpt trains nothing: held-out perplexity and gpt.py's held-out
instructions. The metrics need only the standard library. Left out: METEOR's WordNet synonyms,
real benchmark data (MMLU, HumanEval's sandbox), and a judge stronger than the model it grades.
"""
import collections
import math
import os
import random
import re
from dataclasses import dataclass
from statistics import fmean as mean

try:  # the model-based part needs torch and gpt.py; the metrics do not
    import torch
    import gpt
except ImportError:
    torch = gpt = None

@dataclass
class EvalConfig:
    init: str = ""  # a checkpoint to fine-tune on the world; empty: a tiny model from scratch
    ckpt: str = ""  # instead, score this chat checkpoint as it is (trains nothing)
    instructions: int = 200  # held-out instructions that --ckpt scores
    countries: int = 16  # made-up countries in the built-in world, 3 facts each
    held_out: int = 6  # countries never described nor judged in training: the held-out tests
    repeat: int = 30  # copies of each fact and description in the fine-tuning mix
    judge_cases: int = 4000  # graded cases the judge learns from, half pointwise, half pairwise
    steps: int = 3000  # fine-tuning steps
    lr: float = 3e-3  # peak fine-tuning learning rate (cosine decay)
    batch_size: int = 16  # fine-tuning sequences per step
    n_layer: int = 2  # layers of the from-scratch model
    n_embd: int = 96  # its width (4 heads)
    vocab_size: int = 900  # its BPE vocabulary, trained on corpus text plus the world's names
    samples: int = 8  # samples per question for pass@k and maj@k
    temperature: float = 1.0  # sampling temperature for pass@k
    ckpt_every: int = 500  # fine-tuning steps between checkpoints (out_dir/ckpt.pt) for --resume
    stop_after: int = 0  # stop the fine-tuning after this many steps, as if pre-empted (0: never)
    resume: bool = False  # continue the fine-tuning from out_dir/ckpt.pt exactly where it stopped
    plot: bool = False  # the fine-tuning loss curve as out_dir/loss.png (needs matplotlib)
    out_dir: str = "out/evaluate"  # log.jsonl, ckpt.pt and loss.png go here
    device: str = "auto"  # auto | cpu | cuda | mps
    seed: int = 0  # the world, the data order and the samples

    def __post_init__(self):
        lowest = dict(instructions=1, countries=4, held_out=1, repeat=1, judge_cases=0, steps=1,
                      lr=1e-9, batch_size=1, n_layer=1, n_embd=8, vocab_size=256, samples=1,
                      temperature=0, ckpt_every=1, stop_after=0)
        for name, low in lowest.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} must be at least {low}")
        if not self.held_out < self.countries <= 100:
            raise ValueError(f"countries={self.countries}, held_out={self.held_out}: at most 100"
                             " countries, and some of them not held out")
        if self.n_embd % 8:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of 8: 4 heads of even width")
        for name in ("init", "ckpt"):
            if getattr(self, name) and not os.path.exists(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)} does not exist: fix the path")
        if self.ckpt and (self.init or self.resume):
            raise ValueError("ckpt= scores a checkpoint as it is; init= and resume= fine-tune one")

GPU = dict(n_layer=4, n_embd=256)

# ----------------------------------------------------------------------------- BLEU (= sacrebleu)

_13A_PUNCT = re.compile(r"([ -&(-+/:-@\[-`{-~])")  # ASCII punctuation but ' , - . (mteval-v13a)

def tokenize_13a(line):  # mteval-v13a.pl's tokenisation, WMT's and sacrebleu's default
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        line = line.replace(entity, char)
    line = _13A_PUNCT.sub(r" \1 ", f" {line} ")
    line = re.sub(r"([^0-9])([.,])", r"\1 \2 ", line)  # . or , after a non-digit
    line = re.sub(r"([.,])([^0-9])", r" \1 \2", line)  # . or , before a non-digit
    return " ".join(re.sub(r"([0-9])(-)", r"\1 \2 ", line).split())  # a dash after a digit

def ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

def bleu(hypotheses, references, tokenize="13a", smooth="exp", smooth_value=None,
         lowercase=False, effective_order=False):
    """Corpus BLEU (0-100) = BP * exp(mean_n log p_n) from counts summed over segments, equal to
    sacrebleu's BLEU(); references[i] lists hypotheses[i]'s (sacrebleu's streams: refs[j][i])."""
    if isinstance(hypotheses, str) or not hypotheses or len(hypotheses) != len(references) or \
            any(isinstance(refs, str) or not refs for refs in references):
        raise ValueError("bleu needs a list of hypotheses and a non-empty list of references for"
                         " each; for one reference per hypothesis pass [[r] for r in refs]")
    if tokenize not in ("13a", "none") or smooth not in ("exp", "floor", "add-k", "none"):
        raise ValueError(f"tokenize={tokenize!r} (13a, none) or smooth={smooth!r} (exp, floor,"
                         " add-k, none) is unknown")

    def words(text):
        text = (text.lower() if lowercase else text).rstrip()
        return (tokenize_13a(text) if tokenize == "13a" else text).split()

    c = r = 0  # the hypotheses' length; the closest reference lengths (the shorter on ties)
    correct, total = [0] * 4, [0] * 4  # BLEU's n-grams run from 1 to 4
    for hyp, refs in zip(map(words, hypotheses), ([words(x) for x in refs] for refs in references)):
        c += len(hyp)
        r += min((abs(len(x) - len(hyp)), len(x)) for x in refs)[1]
        for n in range(1, 5):
            ref_grams = [ngrams(x, n) for x in refs]  # clip: at most as often as in one reference
            correct[n - 1] += sum(min(m, max(x[g] for x in ref_grams))
                                  for g, m in ngrams(hyp, n).items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if not any(correct):
        return 0.0
    # Zero-match orders (Chen & Cherry 2014): exp halves a pseudo-count at each, p_n = 100 / (2^j
    # total_n); floor uses smooth_value (0.1) / total_n; add-k adds k (1) to both for n >= 2.
    k = smooth_value if smooth_value is not None else {"floor": 0.1, "add-k": 1}.get(smooth)
    precisions = [0.0] * 4
    order = 4
    halvings = 1
    for n, (m, t) in enumerate(zip(correct, total)):
        m, t = (m + k, t + k) if smooth == "add-k" and n > 0 else (m, t)
        if t == 0:
            break  # longer n-grams do not exist either
        order = n + 1 if effective_order else order  # drop the orders a short text cannot have
        halvings *= 2 if m == 0 and smooth == "exp" else 1
        precisions[n] = 100 * (m if m else {"exp": 1 / halvings, "floor": k}.get(smooth, 0)) / t
    bp = 1.0 if c >= r else (math.exp(1 - r / c) if c > 0 else 0.0)  # min(1, exp(1 - r / c))
    log_p = [math.log(p) if p > 0 else -9999999999 for p in precisions[:order]]  # as sacrebleu
    return bp * math.exp(sum(log_p) / order)

def sentence_bleu(hypothesis, references, **options):  # sacrebleu's: effective order on
    references = [references] if isinstance(references, str) else references
    return bleu([hypothesis], [references], **{"effective_order": True, **options})

# --------------------------------------------------------- ROUGE (= rouge-score), METEOR (= NLTK)

def rouge_tokens(text, stem=False):  # rouge-score's: [a-z0-9] words, stemmed if longer than 3
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return [porter_stem(w) if stem and len(w) > 3 else w for w in words]

def prf(matches, n_pred, n_ref):  # (precision, recall, F1), 0 for empty denominators
    p = matches / max(n_pred, 1)
    r = matches / max(n_ref, 1)
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)

def lcs_table(a, b):  # T[i][j] = the length of the longest common subsequence of a[:i], b[:j]
    T = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, j in ((i, j) for i in range(1, len(a) + 1) for j in range(1, len(b) + 1)):
        T[i][j] = T[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(T[i - 1][j], T[i][j - 1])
    return T

def rouge_lsum(pred_sents, ref_sents):
    """Summary-level LCS (Lin 2004, 3.2): per reference sentence, the union of its LCS with each."""
    union = collections.Counter()  # the tokens of each reference sentence's union
    for ref in ref_sents:
        hit = set()
        for cand in pred_sents:  # read one LCS back from the table, as rouge-score breaks ties
            T = lcs_table(ref, cand)
            i, j = len(ref), len(cand)
            while i > 0 and j > 0:
                if ref[i - 1] == cand[j - 1]:
                    hit.add(i - 1)
                    i, j = i - 1, j - 1
                elif T[i][j - 1] > T[i - 1][j]:
                    j -= 1
                else:
                    i -= 1
        union.update(ref[i] for i in hit)
    n_pred = collections.Counter(t for s in pred_sents for t in s)
    n_ref = collections.Counter(t for s in ref_sents for t in s)
    hits = sum(min(n, n_pred[t], n_ref[t]) for t, n in union.items())  # as often as on both sides
    return prf(hits, n_pred.total(), n_ref.total())

def rouge(prediction, reference, stem=False):
    """{"rouge1", "rouge2", "rougeL", "rougeLsum": (p, r, f)} as rouge-score's RougeScorer(...,
    use_stemmer=stem).score(reference, prediction), or score_multi; rougeLsum a sentence a line."""
    if not isinstance(reference, str):
        if not reference:
            raise ValueError("rouge needs at least one reference")
        per_ref = [rouge(prediction, r, stem) for r in reference]
        return {k: max(per_ref, key=lambda s: s[k][2])[k] for k in per_ref[0]}  # first of ties
    pred = rouge_tokens(prediction, stem)
    ref = rouge_tokens(reference, stem)
    scores = {}
    for n in (1, 2):
        p_grams, r_grams = ngrams(pred, n), ngrams(ref, n)
        scores[f"rouge{n}"] = prf((p_grams & r_grams).total(), p_grams.total(), r_grams.total())
    scores["rougeL"] = prf(lcs_table(ref, pred)[-1][-1], len(pred), len(ref))
    lines = [[rouge_tokens(s, stem) for s in text.split("\n")] for text in (prediction, reference)]
    scores["rougeLsum"] = rouge_lsum(*lines)
    return scores

def meteor(hypothesis, reference, alpha=0.9, beta=3.0, gamma=0.5):
    """METEOR of lowercased words, the best over several references: NLTK's meteor_score without
    its WordNet synonyms. Like NLTK, unlike METEOR 1.x, the alignment is greedy."""
    if not isinstance(reference, str):
        if not reference:
            raise ValueError("meteor needs at least one reference")
        return max(meteor(hypothesis, r, alpha, beta, gamma) for r in reference)
    hyp = list(enumerate(w.lower() for w in hypothesis.split()))
    ref = list(enumerate(w.lower() for w in reference.split()))
    matches = []  # (hypothesis position, reference position)
    for key in (lambda word: word, porter_stem):  # exact, then Porter stems of the words left
        free = collections.defaultdict(list)
        for j, word in ref:
            free[key(word)].append(j)
        for i, word in reversed(hyp):  # from the last word back, each takes the last free match
            if free[key(word)]:
                matches.append((i, free[key(word)].pop()))
        hyp = [(i, w) for i, w in hyp if i not in {h for h, _ in matches}]
        ref = [(j, w) for j, w in ref if j not in {r for _, r in matches}]
    if not matches:
        return 0.0
    matches.sort()
    precision = len(matches) / len(hypothesis.split())
    recall = len(matches) / len(reference.split())
    f_mean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    # chunks: runs of matches adjacent on both sides; penalty = gamma (chunks / matches)^beta
    chunks = 1 + sum((b[0] - a[0], b[1] - a[1]) != (1, 1) for a, b in zip(matches, matches[1:]))
    return (1 - gamma * (chunks / len(matches)) ** beta) * f_mean

# ----------------------------------------------------------------------------- sampling, agreement

def pass_at_k(n, c, k):
    """Unbiased pass@k of n samples, c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)
    = 1 - prod_{i=n-c+1}^{n} (1 - k / i), a product with no huge binomials."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}:"
                         " draw at least k samples per problem")
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1)) if n - c >= k else 1.0

def majority_vote(answers):  # None (no answer) never wins; a tie goes to the first to appear
    counts = collections.Counter(a for a in answers if a is not None)
    return next((a for a in answers if a is not None and counts[a] == max(counts.values())), None)

def maj_at_k(samples, correct, k):  # maj@k (cons@k): the majority of the first k is correct
    if any(len(s) < k for s in samples):
        raise ValueError(f"maj@{k} needs at least {k} samples per problem")
    return sum(majority_vote(s[:k]) == c for s, c in zip(samples, correct)) / len(samples)

def raw_agreement(a, b):  # p_o: the share of items two raters label the same
    if len(a) != len(b) or not a:
        raise ValueError(f"two raters must label the same non-empty list ({len(a)} vs {len(b)})")
    return sum(x == y for x, y in zip(a, b)) / len(a)

def cohen_kappa(a, b):  # (p_o - p_e) / (1 - p_e), p_e = sum_k p_a(k) p_b(k); nan when p_e = 1
    p_o = raw_agreement(a, b)
    count_a, count_b = collections.Counter(a), collections.Counter(b)
    p_e = sum(count_a[k] * count_b[k] for k in count_a) / len(a) ** 2
    return (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan

def fleiss_kappa(counts):
    """Fleiss (1971), counts[i][j] of n raters put item i in category j: kappa = (mean P_i - P_e)
    / (1 - P_e), P_i = (sum_j n_ij^2 - n) / (n (n-1)), P_e = sum_j (sum_i n_ij / (N n))^2."""
    n = sum(counts[0]) if counts else 0
    if n < 2 or any(sum(row) != n for row in counts):
        raise ValueError("fleiss_kappa needs each row to sum to the same number of raters, >= 2")
    P_bar = sum((sum(x * x for x in row) - n) / (n * (n - 1)) for row in counts) / len(counts)
    P_e = sum((sum(col) / (len(counts) * n)) ** 2 for col in zip(*counts))
    return (P_bar - P_e) / (1 - P_e) if P_e < 1 else math.nan  # nan: 0/0

def precision_recall_f1(predicted, actual, positive=True):  # TP/(TP+FP), TP/(TP+FN), F1
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions but {len(actual)} labels")
    tp = sum(p == positive and a == positive for p, a in zip(predicted, actual))
    return prf(tp, sum(p == positive for p in predicted), sum(a == positive for a in actual))

# ----------------------------------------------------------------------------- model-based

def option_logprobs(model, prompts, options, batch_size=64):
    """log p(option | prompt) summed over the option's tokens, for each row of token ids."""
    scores = []
    with gpt.evaluating(model), gpt.autocast(next(model.parameters()).device):
        for i in range(0, len(prompts), batch_size):
            logp, _ = gpt.completion_logprobs(model, prompts[i:i + batch_size],
                                              options[i:i + batch_size])
            scores += logp.sum(-1).tolist()  # masked positions are already 0
    return scores

def perplexity(model, sequences, batch_size=32):
    """exp(sum NLL / sum predicted tokens) pooled over sequences, not a mean of perplexities."""
    T = model.config.block_size  # longer sequences: windows overlapping by one token
    windows = [s[i:i + T] for s in sequences for i in range(0, len(s) - 1, T - 1)]
    if not windows:
        raise ValueError("perplexity needs at least one sequence of 2 or more tokens")
    logps = option_logprobs(model, [w[:1] for w in windows], [w[1:] for w in windows], batch_size)
    return math.exp(-sum(logps) / sum(len(w) - 1 for w in windows))

def multiple_choice(model, tok, questions, batch_size=64):
    """MMLU-style cloze over (prompt ids, option texts, right index): the highest log p(option
    <|end|> | prompt) wins; accuracy_norm per UTF-8 byte (lm-eval's acc_norm) undoes length bias."""
    rows = [(p, o) for p, opts, _ in questions for o in opts]
    end = tok.special("<|end|>")
    scores = iter(option_logprobs(model, [p for p, _ in rows],
                                  [tok.encode(o) + [end] for _, o in rows], batch_size))
    hits = collections.Counter()
    for _, opts, right in questions:
        s = [next(scores) for _ in opts]
        hits["accuracy"] += s.index(max(s)) == right
        norm = [x / len(o.encode("utf-8")) for x, o in zip(s, opts)]
        hits["accuracy_norm"] += norm.index(max(norm)) == right
    return {key: hits[key] / len(questions) for key in ("accuracy", "accuracy_norm")}

def replies(model, tok, prompts, n=1, temperature=0.0, max_new_tokens=12, seed=0):
    """n replies ([[str] * n]) to each prompt of token ids, cut at <|end|>, stripped."""
    end = tok.special("<|end|>")
    g = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    outs = model.generate([p for p in prompts for _ in range(n)], max_new_tokens, temperature,
                          stop_tokens=[end], generator=g)
    texts = [tok.decode([t for t in o if t != end]).strip() for o in outs]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

CLAIM = re.compile(r"(?:Its|The) (\w+) is (\w+)\.?")  # the one claim shape the built-in world uses

def fact_check(text, subject, knowledge):
    """FActScore-style: each atomic claim (here a sentence) verified against a knowledge source
    of (subject, relation, value), never by the model that wrote it: [(claim, supported)]."""
    claims = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    parsed = [(claim, CLAIM.fullmatch(claim)) for claim in claims]  # unparsed: unsupported
    return [(claim, bool(m) and (subject, *m.groups()) in knowledge) for claim, m in parsed]

# ----------------------------------------------------------------------------- LLM-as-a-judge

def judge_prompt(question, reference, *answers):
    """One answer graded PASS/FAIL or two A/B against a reference; the rationale first, as CoT."""
    criteria = "it names what the reference names; length and style do not count"
    shown = f"Answer: {answers[0]}" if len(answers) == 1 else "A: {}\nB: {}".format(*answers)
    return (f"{'PASS or FAIL' if len(answers) == 1 else 'A or B'}: {criteria}.\nQ: {question}\n"
            f"Reference: {reference}\n{shown}\nRationale:")

def verdict_constraint(tok, labels, budget, vocab_size):
    """generate's allowed_tokens: a free rationale of at most `budget` tokens that a newline
    ends, then exactly "Verdict: <label>" and <|end|>, so the output parses whatever the weights."""
    newline = tok.encode("\n")
    end = tok.special("<|end|>")
    if len(newline) != 1:
        raise ValueError("the judge needs a tokenizer in which a newline is one token")
    tails = [tok.encode(f"Verdict: {label}") + [end] for label in labels]
    free = torch.zeros(vocab_size, dtype=torch.bool)  # tokens with no newline, and the newline
    free[[i for i in range(len(tok.ranks)) if b"\n" not in tok.decode_bytes([i])] + newline] = True

    def allowed(generated):  # (B, t) tokens so far -> (B, vocab) mask
        masks = torch.zeros(len(generated), vocab_size, dtype=torch.bool)
        for row, g in enumerate(generated.tolist()):
            if newline[0] not in g:  # in the rationale; at the budget, only the newline ends it
                masks[row] = free if len(g) < budget else torch.arange(vocab_size) == newline[0]
                continue
            forced = g[g.index(newline[0]) + 1:]  # walk the trie of the allowed tails
            nxt = {t[len(forced)] for t in tails if t[:len(forced)] == forced and t[len(forced):]}
            masks[row, list(nxt or {end})] = True
        return masks.to(generated.device)
    return allowed

def run_judge(model, tok, prompts, labels=("PASS", "FAIL"), budget=40, batch_size=64):
    """A greedy rationale (reproducible), then a constrained verdict: (verdicts, rationales)."""
    ids = [tok.encode(p) for p in prompts]
    end = tok.special("<|end|>")
    tail = 2 + max(len(tok.encode(f"Verdict: {label}")) for label in labels)  # \n, verdict, end
    budget = min(budget, model.config.block_size - max(map(len, ids)) - tail)  # the room left
    if budget < 1:
        raise ValueError(f"a judge prompt of {max(map(len, ids))} tokens leaves no room for a"
                         f" rationale in block_size={model.config.block_size}: shorten it")
    constraint = verdict_constraint(tok, labels, budget, model.config.vocab_size)
    outs = [out for i in range(0, len(ids), batch_size) for out in model.generate(
        ids[i:i + batch_size], budget + tail, temperature=0, stop_tokens=[end],
        allowed_tokens=constraint)]
    split = [tok.decode([t for t in out if t != end]).rpartition("\nVerdict: ") for out in outs]
    return [verdict for _, _, verdict in split], [rationale.strip() for rationale, _, _ in split]

def judge_pairwise(model, tok, items):
    """Position-bias mitigation: each (question, reference, answer 1, answer 2) judged as A=1,B=2
    and as A=2,B=1; a winner (1 or 2) stands only where both orders agree, else a tie (None)."""
    forward = [judge_prompt(q, r, a, b) for q, r, a, b in items]
    swapped = [judge_prompt(q, r, b, a) for q, r, a, b in items]
    verdicts, _ = run_judge(model, tok, forward + swapped, labels=("A", "B"))
    winners = [(1 if v1 == "A" else 2) if (v1 == "A") != (v2 == "A") else None
               for v1, v2 in zip(verdicts[:len(items)], verdicts[len(items):])]
    return {"winners": winners, "consistency": sum(w is not None for w in winners) / len(items),
            "chose_A": verdicts.count("A") / len(verdicts)}

def verbosity_probe(model, tok, items, padding=", as any atlas shows"):
    """PASS rate with content-free padding on each answer: an unbiased judge's is the plain one."""
    padded, _ = run_judge(model, tok, [judge_prompt(q, r, a + padding) for q, r, a in items])
    return padded.count("PASS") / len(items)

# ----------------------------------------------------------------------------- the built-in world

SYLLABLES = "zor bi quel mir tha ven dor ka lis on ru sel ta mo gri fen ul pra nes vo ar li".split()
ATTRIBUTES = ("capital", "river", "language")
QUESTION = "What is the {} of {}?"  # every fact is trained in this wording, Q: ... A: around it
# Held out: some countries' descriptions and judge cases, and this wording, in which the QA and
# multiple-choice rows ask every fact (tested: no training text holds it).
PARAPHRASES = {"capital": "Which city is the capital of {}?",
               "river": "Which river flows through {}?",
               "language": "Which language do the people of {} speak?"}

def make_world(n_countries, seed):
    """{country: {attribute: value}}, distinct made-up names: what a model knows, tuning taught."""
    rng = random.Random(seed)
    names = []  # a country (up to 3 syllables), then its 3 values (up to 2 each), and so on
    while len(names) < 4 * n_countries:
        k = rng.randint(1, 2 if len(names) % 4 else 3)
        name = "".join(rng.choice(SYLLABLES) for _ in range(k)).capitalize()
        if name not in names:
            names.append(name)
    return {names[i]: dict(zip(ATTRIBUTES, names[i + 1:i + 4])) for i in range(0, len(names), 4)}

def description(world, country):  # three atomic claims, one sentence each
    return " ".join(f"Its {a} is {v}." for a, v in world[country].items())

def judge_example(world, rng, countries, pairwise):
    """A case right or wrong by construction: (prompt, rationale and verdict). The reference is any
    value, so the judge must read it; the rationale sets the names side by side to compare."""
    c, a = rng.choice(countries), rng.choice(ATTRIBUTES)
    values = sorted({world[x][a] for x in world})
    reference = rng.choice(values)
    wrong = rng.choice([v for v in values if v != reference])
    order = [(reference, wrong), (wrong, reference)][rng.random() >= 0.5]  # a random order
    shown = order[:1 + pairwise]  # pointwise: one answer, right or wrong
    labels = ("A", "B") if pairwise else ("PASS", "FAIL")
    steps = "; ".join(f"{reference} vs {x}: {'same' if x == reference else 'different'}"
                      for x in shown)
    return (judge_prompt(QUESTION.format(a, c), reference, *shown),
            f" {steps}.\nVerdict: {labels[shown[0] != reference]}")

def unseen_items(world, tok):
    """Every fact in PARAPHRASES' wording: (prompt ids, right reply, the attribute's others)."""
    return [(tok.encode(f"Q: {PARAPHRASES[a].format(c)}\nA:"), f" {v}", [f" {x}" for x in sorted(
        {world[other][a] for other in world} - {v})]) for c in world for a, v in world[c].items()]

def training_pairs(world, train, tok, cfg, rng):
    """(prompt ids, reply ids): every fact as a question, the training countries' descriptions,
    judge cases point- and pairwise in turn; a reply's leading space keeps " Quel" one BPE token."""
    qa = [(f"Q: {QUESTION.format(a, c)}\nA:", f" {v}") for c in world for a, v in world[c].items()]
    described = [(f"Describe {c}.\n", description(world, c)) for c in train]
    texts = qa * cfg.repeat + described * cfg.repeat
    texts += [judge_example(world, rng, train, i % 2 == 1) for i in range(cfg.judge_cases)]
    return [(tok.encode(p), tok.encode(c) + [tok.special("<|end|>")]) for p, c in texts]

# ----------------------------------------------------------------- the report card, fine-tuning

def qa_rows(model, tok, items, cfg, wording):
    """items: (prompt ids, right, wrongs) -> pass@k, maj@n, and the right among up to 3 wrongs."""
    n = cfg.samples
    k = min(4, n)
    rng = random.Random(cfg.seed + 1)
    samples = replies(model, tok, [p for p, _, _ in items], n, cfg.temperature, seed=cfg.seed)
    right = [a.strip() for _, a, _ in items]
    n_right = [sum(s == a for s in answers) for answers, a in zip(samples, right)]
    questions = []
    for prompt, a, wrong in items:
        options = [a] + rng.sample(wrong, min(3, len(wrong)))
        rng.shuffle(options)
        questions.append((prompt, options, options.index(a)))
    mc = multiple_choice(model, tok, questions)
    return [(f"QA pass@1 %, {wording}", 100 * mean([pass_at_k(n, c, 1) for c in n_right])),
            (f"QA pass@{k} %, {wording}", 100 * mean([pass_at_k(n, c, k) for c in n_right])),
            (f"QA maj@{n} %, {wording}", 100 * maj_at_k(samples, right, n)),
            ("multiple choice %", 100 * mc["accuracy"]),
            ("multiple choice, length-normalised %", 100 * mc["accuracy_norm"])]

def corpus_row(model, tok):  # the end of the corpus, which train.py holds out too
    held_out = tok.encode(gpt.embedded_corpus()[-20_000:])
    return "perplexity, corpus text", perplexity(model, [held_out])

def instruction_card(model, tok, cfg):
    """A chat checkpoint as it is: gpt.py's held-out instructions (sft.py's and dpo.py's task)."""
    task = gpt.make_task(0, cfg.instructions, cfg.seed)[1]  # (task, instruction, answer)
    accuracy, nll, _ = gpt.evaluate_instructions(model, tok, task)
    items = [(gpt.render_chat(gpt.chat(x), tok, add_generation_prompt=True), a,  # as sft.py asks
              sorted({b for t, _, b in task if t == name} - {a})) for name, x, a in task]
    return [corpus_row(model, tok), ("instructions: greedy exact match %", 100 * accuracy),
            ("instructions: NLL per answer token", nll)] + \
        qa_rows(model, tok, items, cfg, "held-out instructions")

def world_card(model, tok, world, held_out, cfg):
    """Every evaluation of this file on one model: [(row, value)], and an example of each kind."""
    refs = [description(world, c) for c in held_out]
    prompts = [f"Describe {c}.\n" for c in held_out]
    hyps = [r[0] for r in replies(model, tok, [tok.encode(p) for p in prompts], 1, 0, 48)]
    facts = [(c, a, v) for c in world for a, v in world[c].items()]
    checks = [fact_check(h, c, set(facts)) for h, c in zip(hyps, held_out)]
    texts = [tok.encode(p + r) for p, r in zip(prompts, refs)]
    rouge_l = [rouge(h, r)["rougeL"][2] for h, r in zip(hyps, refs)]
    supported = [ok for claims in checks for _, ok in claims] or [0]
    rows = [("perplexity, held-out descriptions", perplexity(model, texts)), corpus_row(model, tok),
            ("BLEU, held-out descriptions", bleu(hyps, [[r] for r in refs])),
            ("ROUGE-L F1 (x100)", 100 * mean(rouge_l)),
            ("METEOR (x100)", 100 * mean([meteor(h, r) for h, r in zip(hyps, refs)])),
            ("factual precision of their claims %", 100 * mean(supported))]
    rows += qa_rows(model, tok, unseen_items(world, tok), cfg, "unseen wording")
    trained = [tok.encode(f"Q: {QUESTION.format(a, c)}\nA:") for c, a, _ in facts]
    recalled = replies(model, tok, trained, cfg.samples, cfg.temperature, seed=cfg.seed)
    memorised = mean([s == v for (*_, v), answers in zip(facts, recalled) for s in answers])
    rows.append(("QA pass@1 %, trained wording (memorisation)", 100 * memorised))
    rng = random.Random(cfg.seed)
    cases = []  # about countries the judge never graded: each fact right, then wrong
    for c, a in [(c, a) for c in held_out for a in ATTRIBUTES]:
        wrong = rng.choice([world[x][a] for x in world if x != c])
        cases += [(QUESTION.format(a, c), world[c][a], world[c][a]),
                  (QUESTION.format(a, c), world[c][a], wrong)]
    labels = ["PASS", "FAIL"] * (len(cases) // 2)
    verdicts, rationales = run_judge(model, tok, [judge_prompt(*case) for case in cases])
    pairs = judge_pairwise(model, tok, [(q, r, r, w) for q, r, w in cases[1::2]])
    claims = "; ".join(f"{c} {'supported' if ok else 'NOT supported'}" for c, ok in checks[0])
    example = (f"a held-out description: {hyps[0]!r}\n  reference: {refs[0]!r}\n  fact check: "
               f"{claims}\na judge call: {cases[1]}\n  rationale {rationales[1]!r} -> verdict"
               f" {verdicts[1]}")
    return rows + [("judge agreement with labels %", 100 * raw_agreement(verdicts, labels)),
                   ("judge Cohen's kappa", cohen_kappa(verdicts, labels)),
                   ("judge F1 of PASS", precision_recall_f1(verdicts, labels, positive="PASS")[2]),
                   ("pairwise: same winner in both orders %", 100 * pairs["consistency"]),
                   ("pairwise: right answer wins both orders %",
                    100 * mean([w == 1 for w in pairs["winners"]])),
                   ("pairwise: picks position A %", 100 * pairs["chose_A"]),
                   ("verbosity: PASS rate, plain answers %",
                    100 * verdicts.count("PASS") / len(cases)),
                   ("verbosity: PASS rate, same answers padded %",
                    100 * verbosity_probe(model, tok, cases))], example

def tiny_model(cfg, world, device):
    """An untrained GPT; a BPE of corpus text and the world's names, each a token as in big ones."""
    names = " ".join(f"{c} {a} {v}." for c in world for a, v in world[c].items())
    template = judge_prompt("What is the capital of X?", "Y", "Z") + judge_prompt(*"QRAB")
    text = gpt.embedded_corpus()[:20_000] + f"\n{names}" * 40 + template * 40
    tok = gpt.Tokenizer.from_spec("bpe", text, vocab_size=cfg.vocab_size)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=tok.model_vocab_size, block_size=128,
                                  n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=4))
    return model.to(device), tok

def finetune(model, tok, pairs, cfg, log, ckpt, before):
    """gpt.finetune, saving every ckpt_every steps what --resume needs to continue bit for bit,
    the global RNGs too. False if stop_after ended it."""
    def on_step(step, loss, state):
        if (step - 1) % max(1, cfg.steps // 100) == 0:  # about 100 points on the curve
            log(step=step - 1, loss=loss)
        if step % cfg.ckpt_every == 0 or step in (cfg.stop_after, cfg.steps):
            state = state()
            gpt.save_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), model, tok, step, cfg,
                                state["optimizer"], generator=state["generator"],
                                rng=gpt.rng_state(), before=before)
        return step == cfg.stop_after
    gpt.finetune(model, pairs, cfg.steps, cfg.lr, cfg.batch_size, seed=cfg.seed, desc="fine-tune",
                 resume=ckpt, on_step=on_step)
    return not (ckpt["step"] if ckpt else 0) < cfg.stop_after < cfg.steps

def main(cfg):
    if gpt is None:
        raise SystemExit("error: models need torch and gpt.py beside evaluate.py; metrics do not")
    device = gpt.pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    plt = gpt.pyplot(cfg.plot)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = None
    with gpt.bad_input():
        if cfg.ckpt or cfg.init or cfg.resume:
            model, tok, ckpt = gpt.load_model(path if cfg.resume else cfg.ckpt or cfg.init)
            model.to(device)  # the checkpoint's RNG states stay on the CPU, where torch wants them
            gpt.check_chat_model(model, tok, 64)  # the instructions' context, as in sft.py
        if cfg.resume:
            gpt.check_resume(path, ckpt, cfg)
            gpt.set_rng_state(ckpt["rng"])  # the global RNGs too: an --init model may have dropout
    ckpt = ckpt if cfg.resume else None  # what --resume continues
    log = gpt.RunLog(cfg.out_dir, step=ckpt["step"] if ckpt else 0)
    if cfg.ckpt:
        rows = instruction_card(model.eval(), tok, cfg)
        print(f"{cfg.ckpt}, as it is")
        for name, value in rows:
            log(step=0, metric=name, value=value)
            print(f"{name:<48} {value:>9.2f}")
        return rows
    world = make_world(cfg.countries, cfg.seed)
    held_out = list(world)[-cfg.held_out:]
    if not (cfg.init or cfg.resume):
        model, tok = tiny_model(cfg, world, device)
    pairs = training_pairs(world, list(world)[:-cfg.held_out], tok, cfg, random.Random(cfg.seed))
    with gpt.bad_input():  # an --init checkpoint too short for the task: say so before training
        gpt.check_chat_model(model, tok, max(len(p) + len(c) for p, c in pairs))
    print(f"{gpt.count_params(model) / 1e6:.2f}M parameters; {len(world)} countries x 3 facts,"
          f" {len(held_out)} held out")
    before = ckpt["before"] if ckpt else world_card(model, tok, world, held_out, cfg)[0]
    if not finetune(model, tok, pairs, cfg, log, ckpt, before):
        return print(f"stopped after {cfg.stop_after} steps: {path} (--resume continues)")
    after, example = world_card(model, tok, world, held_out, cfg)
    print(f"\n{'report card':<48} {'base':>9} {'fine-tuned':>11}")
    for (name, base), (_, tuned) in zip(before, after):
        log(step=cfg.steps, metric=name, base=base, fine_tuned=tuned)
        print(f"{name:<48} {base:>9.2f} {tuned:>11.2f}")
    print(f"\n{example}")
    if plt:
        gpt.plot_curves(plt, log, ["loss"], os.path.join(cfg.out_dir, "loss.png"))
    return after

# ----------------------------------------------------------------------------- Porter's stemmer
# For ROUGE's and METEOR's stemming, not the lecture: Porter (1980) exactly as NLTK's
# PorterStemmer() in its default NLTK_EXTENSIONS mode, which rouge-score and NLTK's METEOR use.

_IRREGULAR = {"skies": "sky", "dying": "die", "lying": "lie", "tying": "tie", "innings": "inning",
              "outings": "outing", "cannings": "canning"}  # NLTK's, beside the words it keeps:
_KEPT = {"sky", "news", "inning", "outing", "canning", "howe", "proceed", "exceed", "succeed"}
# suffix:replacement per step, the first suffix the word ends with decides (longer ones first)
_RULES = {step: [rule.partition(":")[::2] for rule in rules.split()] for step, rules in [
    (1, "sses:ss ies:i ss:ss s:"),
    (2, "ational:ate tional:tion enci:ence anci:ance izer:ize bli:ble alli:al entli:ent eli:e "
        "ousli:ous ization:ize ation:ate ator:ate alism:al iveness:ive fulness:ful ousness:ous "
        "aliti:al iviti:ive biliti:ble fulli:ful"),
    (3, "icate:ic ative: alize:al iciti:ic ical:ic ful: ness:"),
    (4, "al ance ence er ic able ible ant ement ment ent ion ou ism ate iti ous ive ize")]}

def _form(word):  # Porter's c/v string: a vowel is a e i o u, or a y after a consonant
    form = ""
    for ch in word:
        form += "c" if ch not in "aeiou" and not (ch == "y" and form.endswith("c")) else "v"
    return form

def _measure(stem):  # m in [C](VC)^m[V]: how often a vowel turns into a consonant
    return _form(stem).count("vc")

def _ends_cvc(stem):  # *o: c-v-c, the last not w, x, y (NLTK: or a whole 2-letter vc)
    return _form(stem).endswith("cvc") and stem[-1] not in "wxy" or _form(stem) == "vc"

def _apply(word, step, above=-1):  # the first rule whose suffix ends word, if the stem's m > above
    for suffix, replacement in _RULES[step]:
        if word.endswith(suffix):
            stem = word[:len(word) - len(suffix)]
            ok = _measure(stem) > above and (suffix != "ion" or stem.endswith(("s", "t")))
            return stem + replacement if ok else word  # a failed condition ends the step
    return word

def porter_stem(word):  # five steps of rules guarded by m, with NLTK's tweaks and irregular forms
    w = word.lower()
    if w in _IRREGULAR or w in _KEPT or len(w) <= 2:
        return _IRREGULAR.get(w, w)
    w = w[:-1] if w.endswith("ies") and len(w) == 4 else _apply(w, 1)  # 1a (NLTK: dies -> die)
    stem = next((w[:-len(s)] for s in ("ed", "ing") if w.endswith(s)), None)  # 1b
    if w.endswith("ied"):  # NLTK: died -> die, spied -> spi
        w = w[:-3] + ("ie" if len(w) == 4 else "i")
    elif w.endswith("eed"):
        w = w[:-1] if _measure(w[:-3]) > 0 else w
    elif stem is not None and "v" in _form(stem):  # a vowel before -ed / -ing
        double = len(stem) >= 2 and stem[-1] == stem[-2] and _form(stem)[-1] == "c"
        if stem.endswith(("at", "bl", "iz")) or (_measure(stem) == 1 and _ends_cvc(stem)):
            w = stem + "e"  # conflat(ed) -> conflate, fil(ing) -> file
        else:  # hopp(ing) -> hop, but fall(ing) -> fall
            w = stem[:-1] if double and stem[-1] not in "lsz" else stem
    if w.endswith("y") and len(w) > 2 and _form(w)[-2] == "c":  # 1c: happy -> happi
        w = w[:-1] + "i"
    if w.endswith("alli") and _measure(w[:-4]) > 0:  # 2 (NLTK: alli -> al first, then again)
        w = w[:-2]
    if w.endswith("logi"):  # NLTK: the l stays with the stem (geology -> geolog)
        w = w[:-1] if _measure(w[:-3]) > 0 else w
    w = _apply(_apply(_apply(w, 2, 0), 3, 0), 4, 1)
    m = _measure(w[:-1])
    if w.endswith("e") and (m > 1 or m == 1 and not _ends_cvc(w[:-1])):  # 5a
        w = w[:-1]
    return w[:-1] if w.endswith("ll") and _measure(w[:-1]) > 1 else w  # 5b: controll -> control

if __name__ == "__main__":
    main(gpt.parse_args(EvalConfig, gpu=GPU) if gpt else None)  # without gpt.py main says so
