"""bert.py against independent references: a float64 BERT written from Hugging Face's BertModel
layout, exact masking statistics, the padding mask checked by perturbation, the distillation
loss against its formula, a safetensors file written from the format's spec, WordPiece against
worked examples, and a resumed run against an uninterrupted one."""
import copy
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import random
import struct
import sys

import pytest
import torch

import bert
import gpt


# ----------------------------------------------------------------------------- the forward pass

def random_hf_state_dict(vocab=50, max_len=24, n_layer=2, hidden=32, intermediate=48, seed=0):
    """A BertModel-layout state dict with random weights (LayerNorm gains away from 1, so a
    missed gain would show) in float64, plus the keys a real checkpoint carries that we ignore."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.1, shift=0.0):
        return shift + scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    sd = {"embeddings.word_embeddings.weight": rnd(vocab, hidden, scale=0.5),
          "embeddings.position_embeddings.weight": rnd(max_len, hidden, scale=0.5),
          "embeddings.token_type_embeddings.weight": rnd(2, hidden, scale=0.5),
          "embeddings.LayerNorm.weight": rnd(hidden, shift=1.0),
          "embeddings.LayerNorm.bias": rnd(hidden),
          "embeddings.position_ids": torch.arange(max_len)[None],
          "pooler.dense.weight": rnd(hidden, hidden, scale=0.3), "pooler.dense.bias": rnd(hidden)}
    for l in range(n_layer):
        p = f"encoder.layer.{l}."
        square = ["attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense"]
        shapes = [(name, (hidden, hidden)) for name in square]
        shapes += [("intermediate.dense", (intermediate, hidden)),
                   ("output.dense", (hidden, intermediate))]
        for name, (n_out, n_in) in shapes:
            sd[p + name + ".weight"] = rnd(n_out, n_in, scale=0.3)
            sd[p + name + ".bias"] = rnd(n_out)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[p + name + ".weight"] = rnd(hidden, shift=1.0)
            sd[p + name + ".bias"] = rnd(hidden)
    return sd


def hf_config(vocab=50, max_len=24, n_layer=2, hidden=32, intermediate=48, n_head=4, eps=1e-12):
    """The config.json of such a BertModel, keys and spelling as Hugging Face writes them."""
    return {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
            "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": n_layer,
            "num_attention_heads": n_head, "intermediate_size": intermediate,
            "max_position_embeddings": max_len, "type_vocab_size": 2, "layer_norm_eps": eps,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


def hf_reference(sd, idx, segments, attention_mask, n_head, eps=1e-12):
    """BertModel's forward written from its layout in float64: embeddings summed then LayerNorm
    (eps 1e-12 unless told); per layer separate Q, K, V projections, an additive -1e9 mask on
    padded keys, softmax, output dense + residual + LayerNorm, then the erf GELU feed-forward +
    residual + LayerNorm; the pooler is tanh(dense(h_[CLS]))."""
    W = {k: v.double() for k, v in sd.items()}
    B, T = idx.shape
    C = W["embeddings.word_embeddings.weight"].size(1)
    hd = C // n_head

    def layer_norm(x, name):
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * W[name + ".weight"] + W[name + ".bias"]

    def dense(x, name):
        return x @ W[name + ".weight"].T + W[name + ".bias"]

    x = (W["embeddings.word_embeddings.weight"][idx]
         + W["embeddings.position_embeddings.weight"][:T]
         + W["embeddings.token_type_embeddings.weight"][segments])
    x = layer_norm(x, "embeddings.LayerNorm")
    additive = (1.0 - attention_mask.double())[:, None, None, :] * -1e9
    n_layer = 1 + max(int(k.split(".")[2]) for k in W if k.startswith("encoder.layer."))
    for l in range(n_layer):
        p = f"encoder.layer.{l}."
        q, k, v = (dense(x, p + f"attention.self.{n}").view(B, T, n_head, hd).transpose(1, 2)
                   for n in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + additive, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(B, T, C)
        x = layer_norm(dense(context, p + "attention.output.dense") + x,
                       p + "attention.output.LayerNorm")
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
        x = layer_norm(dense(h, p + "output.dense") + x, p + "output.LayerNorm")
    return x, torch.tanh(dense(x[:, 0], "pooler.dense"))


def test_forward_matches_float64_hf_reference():
    sd = random_hf_state_dict()
    model = bert.from_hf_bert(sd, hf_config()).eval()
    assert model.tok_emb.weight.dtype == torch.float64
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(bert.N_SPECIAL, 50, (3, 20), generator=g)
    idx[:, 0] = bert.CLS
    idx[1, 14:] = bert.PAD  # two rows end in padding
    idx[2, 9:] = bert.PAD
    segments = (torch.arange(20) >= 10).long().expand(3, -1)
    hidden = model(idx, segments)
    ref_hidden, ref_pooled = hf_reference(sd, idx, segments, idx != bert.PAD, n_head=4)
    torch.testing.assert_close(hidden, ref_hidden, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.pool(hidden), ref_pooled, rtol=1e-10, atol=1e-10)


def test_from_hf_bert_reads_bert_prefixed_pretraining_dicts():
    """BertForPreTraining keys start with "bert." and carry cls.* heads, which are ignored."""
    sd = random_hf_state_dict(seed=2)
    wrapped = {"bert." + k: v for k, v in sd.items()}
    wrapped["cls.seq_relationship.weight"] = torch.zeros(2, 32)
    a = bert.from_hf_bert(sd, hf_config()).eval()
    b = bert.from_hf_bert(wrapped, hf_config()).eval()
    idx = torch.randint(bert.N_SPECIAL, 50, (2, 12))
    torch.testing.assert_close(a(idx), b(idx), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a BERT state dict"):
        bert.from_hf_bert({"transformer.wte.weight": torch.zeros(3, 3)}, hf_config())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_attention_mask_may_be_hugging_faces_0_1_integers(dtype):
    """HF's tokenizers give attention_mask as 0/1 integers (1 = real token). Position 5 of row 0
    is masked although it is no [PAD], so the mask is read, not rebuilt from the ids."""
    sd = random_hf_state_dict()
    model = bert.from_hf_bert(sd, hf_config()).eval()
    idx = torch.randint(bert.N_SPECIAL, 50, (2, 12), generator=torch.Generator().manual_seed(3))
    idx[1, 8:] = bert.PAD
    mask = idx != bert.PAD
    mask[0, 5] = False
    segments = torch.zeros_like(idx)
    ref_hidden, _ = hf_reference(sd, idx, segments, mask, n_head=4)
    hidden = model(idx, segments, mask.to(dtype))
    torch.testing.assert_close(hidden, ref_hidden, rtol=1e-10, atol=1e-10)


def test_head_count_and_eps_come_from_the_config_never_a_guess():
    """hidden 128 in 8 heads of 16: the old hidden / 64 guess would have built 2 heads of 64, a
    different function (checked below). A config that lacks a key, or disagrees with the
    weights, is an error that says so."""
    sd = random_hf_state_dict(hidden=128, intermediate=64, seed=4)
    config = hf_config(hidden=128, intermediate=64, n_head=8, eps=1e-5)
    model = bert.from_hf_bert(sd, config).eval()
    assert (model.config.n_head, model.config.norm_eps) == (8, 1e-5)
    idx = torch.randint(bert.N_SPECIAL, 50, (2, 10), generator=torch.Generator().manual_seed(5))
    segments = torch.zeros_like(idx)
    ref_hidden, _ = hf_reference(sd, idx, segments, idx != bert.PAD, n_head=8, eps=1e-5)
    torch.testing.assert_close(model(idx, segments), ref_hidden, rtol=1e-10, atol=1e-10)
    guessed, _ = hf_reference(sd, idx, segments, idx != bert.PAD, n_head=2, eps=1e-5)
    assert (guessed - ref_hidden).abs().max() > 1e-3
    with pytest.raises(KeyError, match="num_attention_heads"):
        bert.from_hf_bert(sd, {k: v for k, v in config.items() if k != "num_attention_heads"})
    with pytest.raises(TypeError, match="config"):
        bert.from_hf_bert(sd)
    for n_layer in (1, 3):  # a layer too many in the weights, or one missing
        with pytest.raises(ValueError, match=f"2 layers in the weights, {n_layer} in the config"):
            bert.from_hf_bert(sd, config | {"num_hidden_layers": n_layer})
    with pytest.raises(RuntimeError, match="size mismatch for tok_emb.weight"):
        bert.from_hf_bert(sd, config | {"vocab_size": 60})


def test_too_long_input_and_bad_shapes_are_clear_errors():
    model = bert.Bert(bert.BertConfig(vocab_size=40, max_len=8, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="longer than max_len=8"):
        model(torch.full((1, 9), 7))
    with pytest.raises(ValueError, match="not divisible"):
        bert.BertConfig(n_embd=30, n_head=4)


# ----------------------------------------------------------------------------- padding

def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    shape = dict(vocab_size=40, max_len=16, n_layer=2, n_head=2, n_embd=16)
    cfg = bert.BertConfig(**{**shape, **overrides})
    return bert.Bert(cfg).double().eval()


def test_pad_receives_no_attention():
    """Changing what sits at a padded position changes nothing at any real position; changing a
    real token does (so the comparison can fail)."""
    model = tiny_model()
    idx = torch.tensor([[bert.CLS, 9, 12, 30, 7, bert.SEP, bert.PAD, bert.PAD, bert.PAD]])
    mask = idx != bert.PAD
    out = model(idx, attn_mask=mask)
    other = idx.clone()
    other[0, 6:] = torch.tensor([21, 5, 33])  # different tokens, still marked as padding
    torch.testing.assert_close(model(other, attn_mask=mask)[0, :6], out[0, :6], rtol=0, atol=1e-12)
    changed = idx.clone()
    changed[0, 3] = 22
    others = [0, 1, 2, 4, 5]
    assert (model(changed, attn_mask=mask)[0, others] - out[0, others]).abs().max() > 1e-3


def test_padding_equals_the_unpadded_sequence():
    model = tiny_model(seed=1)
    idx = torch.tensor([[bert.CLS, 9, 12, 30, bert.SEP]])
    padded = torch.cat([idx, torch.full((1, 4), bert.PAD)], dim=1)
    torch.testing.assert_close(model(padded)[0, :5], model(idx)[0], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- masking

def test_masking_proportions():
    """15% of ordinary tokens are selected; of those 80% -> [MASK], 10% -> a random ordinary
    token, 10% kept. Each count is checked within 4 standard deviations of its binomial mean."""
    vocab = 30
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(bert.N_SPECIAL, vocab, (400, 250), generator=g)
    inputs, targets = bert.mask_tokens(idx, vocab, generator=g)
    selected = targets != -100
    assert torch.equal(targets[selected], idx[selected])

    def within(count, n, p):
        assert abs(count - n * p) < 4 * math.sqrt(n * p * (1 - p)), (count, n, p)
    n = idx.numel()
    s = int(selected.sum())
    within(s, n, 0.15)
    masked = int((inputs[selected] == bert.MASK).sum())
    randomised = int(((inputs[selected] != bert.MASK) & (inputs[selected] != idx[selected])).sum())
    within(masked, s, 0.8)
    p_other = 1 / (vocab - bert.N_SPECIAL)  # a random draw may land on the original token
    within(randomised, s, 0.1 * (1 - p_other))
    within(s - masked - randomised, s, 0.1 + 0.1 * p_other)
    assert torch.equal(inputs[~selected], idx[~selected])  # unselected tokens are untouched
    # random tokens are never special
    assert int((inputs[selected] < bert.N_SPECIAL).sum()) == masked


def test_special_tokens_are_never_masked_and_masks_are_dynamic():
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 20, (200, 64), generator=g)  # plenty of [PAD] [UNK] [CLS] [SEP] [MASK]
    special = idx < bert.N_SPECIAL
    inputs, targets = bert.mask_tokens(idx, 20, generator=g)
    assert torch.equal(inputs[special], idx[special])
    assert bool((targets[special] == -100).all())
    _, again = bert.mask_tokens(idx, 20, generator=g)
    assert not torch.equal(again, targets)  # a fresh mask every call: dynamic masking


# ----------------------------------------------------------------------------- pretraining heads

def test_pretraining_heads_and_loss_by_hand():
    """BERT's heads written out in float64 from the weights (Devlin et al. 2018; the layout of
    HF's BertPreTrainingHeads): MLM logits = LN(GELU_erf(h W_d^T + b_d)) E^T + b_vocab, where E
    is the token embedding matrix itself (tied, no second copy); NSP logits =
    tanh(h_[CLS] W_p^T + b_p) W_nsp^T + b_nsp; loss = the mean over the selected positions only of
    -log softmax(MLM)[original token] + the mean over the batch of -log softmax(NSP)[is_next]."""
    model = bert.BertPretraining(tiny_model(seed=2), nsp=True).double().eval()
    with torch.no_grad():  # zero biases, unit gains and 0.02-wide weights would hide a missed term
        for name, p in model.named_parameters():
            if not name.startswith("bert.layers"):
                p.copy_(torch.randn_like(p) * 0.5 + (name.endswith("ln.weight")))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(bert.N_SPECIAL, 40, (3, 10), generator=g)
    idx[:, 0] = bert.CLS
    segments = (torch.arange(10) >= 5).long().expand(3, -1)
    is_next = torch.tensor([1, 0, 1])
    targets = torch.full_like(idx, -100)
    for b, t in [(0, 2), (0, 7), (1, 3), (2, 1), (2, 8)]:
        targets[b, t] = int(torch.randint(bert.N_SPECIAL, 40, (), generator=g))
    W = {name: p.detach() for name, p in model.named_parameters()}
    h = model.bert(idx, segments).detach()  # the encoder: checked against HF's layout above

    u = h @ W["mlm_dense.weight"].T + W["mlm_dense.bias"]
    u = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))
    u = (u - u.mean(-1, keepdim=True)) / torch.sqrt(u.var(-1, unbiased=False, keepdim=True) + 1e-12)
    E = W["bert.tok_emb.weight"]  # (vocab, C)
    mlm_logits = (u * W["mlm_ln.weight"] + W["mlm_ln.bias"]) @ E.T + W["mlm_bias"]
    pooled = torch.tanh(h[:, 0] @ W["bert.pooler.weight"].T + W["bert.pooler.bias"])
    nsp_logits = pooled @ W["nsp.weight"].T + W["nsp.bias"]
    torch.testing.assert_close(model.mlm_logits(h), mlm_logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.nsp(model.bert.pool(h)), nsp_logits, rtol=1e-10, atol=1e-10)
    assert [n for n, p in model.named_parameters() if p.shape == E.shape] == ["bert.tok_emb.weight"]

    picked = targets != -100
    mlm = -torch.log_softmax(mlm_logits[picked], -1)[torch.arange(5), targets[picked]].mean()
    nsp = -torch.log_softmax(nsp_logits, -1)[torch.arange(3), is_next].mean()
    loss, stats = model(idx, segments, targets, is_next)
    # the loss is taken in float32 (logits.float(), for bf16 autocast): float32 rounding, rtol 1e-6
    assert math.isclose(loss.item(), mlm + nsp, rel_tol=1e-6)
    assert math.isclose(stats["mlm"], mlm, rel_tol=1e-6)
    assert math.isclose(stats["nsp"], nsp, rel_tol=1e-6)
    everywhere = -torch.log_softmax(mlm_logits, -1).gather(-1, idx[..., None]).mean()
    assert abs(everywhere - mlm) > 1e-2  # a loss over every position would be told apart
    assert round(stats["mlm_acc"] * 5) == (mlm_logits[picked].argmax(-1) == targets[picked]).sum()
    assert round(stats["nsp_acc"] * 3) == (nsp_logits.argmax(-1) == is_next).sum()


# ----------------------------------------------------------------------------- NSP and batches

def test_nsp_pairs_are_half_and_half_and_true_pairs_are_consecutive():
    # sentence j of document d is the single token 100 * d + j, so a pair tells its own story
    docs = [[[100 * d + j] for j in range(2 + d % 5)] for d in range(30)]
    rng = random.Random(0)
    n = 4000
    pairs = [bert.nsp_pair(docs, rng) for _ in range(n)]
    positives = sum(label for *_, label in pairs)
    assert abs(positives - n / 2) < 4 * math.sqrt(n / 4)
    for a, b, label in pairs:
        same_doc = a[0] // 100 == b[0] // 100
        assert (b[0] == a[0] + 1 and same_doc) if label else not same_doc


def test_pack_pair_layout_and_truncation():
    ids, seg = bert.pack_pair([5, 6, 7, 8, 9, 10], [11, 12], max_len=9)
    # the longer sentence lost 2 tokens
    assert ids == [bert.CLS, 5, 6, 7, 8, bert.SEP, 11, 12, bert.SEP]
    assert seg == [0, 0, 0, 0, 0, 0, 1, 1, 1]


def test_roberta_batches_are_contiguous_single_segment_text():
    stream = list(range(bert.N_SPECIAL, 200))
    inputs, seg, targets, is_next = bert.pretraining_batch(
        [], stream, 4, 12, 200, False, random.Random(0), torch.Generator().manual_seed(0))
    assert is_next is None and not seg.any()
    original = torch.where(targets != -100, targets, inputs)
    for row in original.tolist():
        assert row[0] == bert.CLS and row[-1] == bert.SEP
        assert row[1:-1] == list(range(row[1], row[1] + 10))  # a window of the stream
    model = bert.BertPretraining(tiny_model(vocab_size=200).float().train(), nsp=False)
    _, stats = model(inputs, seg, targets)
    assert set(stats) == {"mlm", "mlm_acc"}


def test_held_out_blocks_partition_each_document():
    tok = bert.WordPiece(bert.SPECIALS + ["alpha", "beta", "gamma", "delta", "."])
    texts = [" ".join(f"alpha beta{'.' if j % 2 else ' gamma.'}" for j in range(n))
             for n in (30, 17, 5, 40)]
    train, heldout = bert.split_documents(texts, tok, 0.3, random.Random(0), block=4)
    for n, t, h in zip((30, 17, 5, 40), train, heldout):
        # sentence j, read off the text by hand: alpha beta gamma . (j even) or alpha beta .
        every = [[5, 6, 7, 9] if j % 2 == 0 else [5, 6, 9] for j in range(n)]
        assert sorted(t + h) == sorted(every)  # nothing lost, nothing shared
    assert 0 < sum(map(len, heldout)) < sum(map(len, train))
    with pytest.raises(SystemExit, match="too few or too short"):
        bert.split_documents(["one sentence."], tok, 0.3, random.Random(0))


def test_topic_task_labels_sentences_by_their_document():
    # sentence j of document d is [100 + d] * (4 + j % 3), so its label can be read off it
    train_docs = [[[100 + d] * (4 + j % 3) for j in range(40 - 5 * d)] for d in range(5)]
    heldout_docs = [[[100 + d] * 5 for _ in range(3)] for d in range(5)]
    train, test, classes = bert.topic_task(train_docs, heldout_docs, 3, 10, 16, random.Random(0))
    assert classes == [0, 1, 2]  # the three longest documents
    assert len(train) == 30 and len(test) == 9
    for ids, label in train + test:
        assert ids[0] == bert.CLS and ids[-1] == bert.SEP
        assert set(ids[1:-1]) == {100 + classes[label]}


# ----------------------------------------------------------------------------- distillation

def test_distillation_loss_against_its_formula_and_zero_for_identical_models():
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(6, 3, generator=g)
    zt = torch.randn(6, 3, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    T = 2.5
    alpha = 0.7
    pt = torch.softmax(zt.double() / T, -1)
    ps = torch.softmax(zs.double() / T, -1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean()  # KL(teacher || student), mean over the batch
    ce = -torch.log_softmax(zs.double(), -1)[torch.arange(6), y].mean()
    expected = alpha * T * T * kl + (1 - alpha) * ce
    ours = bert.distillation_loss(zs, zt, y, T, alpha).double()  # float32 inside: rtol 1e-5
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)

    teacher = bert.BertClassifier(tiny_model().float(), 3).eval()
    student = copy.deepcopy(teacher)
    idx = torch.randint(bert.N_SPECIAL, 40, (4, 10))
    same = bert.distillation_loss(student(idx), teacher(idx), y[:4], 2.0, alpha=1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_half_depth_student_keeps_every_other_layer():
    teacher = bert.BertClassifier(tiny_model(n_layer=4).float(), 2)
    student = bert.half_depth(teacher)
    assert len(student.bert.layers) == student.bert.config.n_layer == 2
    assert len(teacher.bert.layers) == 4
    for s, t in zip(student.bert.layers, teacher.bert.layers[::2]):
        for ps, pt in zip(s.parameters(), t.parameters()):
            assert torch.equal(ps, pt) and ps.data_ptr() != pt.data_ptr()  # a copy, not shared


# ----------------------------------------------------------------------------- WordPiece

def test_basic_tokens_match_berts_published_examples():
    # Google's BERT README ("Tokenization"): whitespace to spaces, lower-case, strip accents, and
    # split every punctuation mark; then the expected outputs of Hugging Face's BasicTokenizer
    # tests (tests/models/bert/test_tokenization_bert.py in transformers).
    assert bert.basic_tokens("John Johanson's, house") == [
        "john", "johanson", "'", "s", ",", "house"]
    assert bert.basic_tokens(" \tHeLLo!how  \n Are yoU?  ") == [
        "hello", "!", "how", "are", "you", "?"]
    assert bert.basic_tokens("H\u00e9llo") == ["hello"]
    assert bert.basic_tokens(" \tHeLLo!how  \n Are yoU?  ", lower=False) == [
        "HeLLo", "!", "how", "Are", "yoU", "?"]
    assert bert.basic_tokens("ah\u535a\u63a8zz") == ["ah", "\u535a", "\u63a8", "zz"]  # CJK
    assert bert.basic_tokens("a\x00b\ufffdc\xad") == ["abc"]  # NUL, U+FFFD and a soft hyphen go


def test_basic_tokens_split_ascii_punctuation_as_bert_defines_it():
    """BERT's _is_punctuation: the code points 33-47, 58-64, 91-96 and 123-126 (every ASCII
    symbol, $ + < = > ^ ` | ~ included though Unicode does not call them punctuation)."""
    ranges = [range(33, 48), range(58, 65), range(91, 97), range(123, 127)]
    symbols = {chr(c) for r in ranges for c in r}
    for c in map(chr, range(33, 127)):
        expected = ["a", c, "b"] if c in symbols else ["a" + c.lower() + "b"]
        assert bert.basic_tokens(f"a{c}b") == expected, c


def tokenize(tok, text):  # the pieces, read back off their ids
    return [tok.itos[i] for i in tok.encode(text)]


def test_wordpiece_is_greedy_longest_match_first():
    # Hugging Face's WordPiece tests (transformers, test_tokenization_bert.py)
    tok = bert.WordPiece(["[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn",
                          "##ing"])
    assert tokenize(tok, "") == []
    assert tokenize(tok, "unwanted running") == ["un", "##want", "##ed", "runn", "##ing"]
    assert tokenize(tok, "unwantedX running") == ["[UNK]", "runn", "##ing"]  # X: no piece
    # the full tokenizer test: lower-case, strip the accent, split the comma, then the pieces
    tok = bert.WordPiece(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "want", "##want", "##ed",
                          "wa", "un", "runn", "##ing", ",", "low", "lowest"])
    assert tok.encode("UNwant\u00e9d,running") == [9, 6, 7, 12, 10, 11]
    # Google's tokenization.py docstring and README: un ##aff ##able, john johan ##son ' s
    tok = bert.WordPiece(["[UNK]", "un", "##aff", "##able", "john", "johan", "##son", "'", "s"])
    assert tokenize(tok, "unaffable") == ["un", "##aff", "##able"]
    assert tokenize(tok, "John Johanson's") == ["john", "johan", "##son", "'", "s"]
    assert tokenize(tok, "un" + "aff" * 33) == ["[UNK]"]  # 101 characters: too long to try
    assert tok.pieces("") == []  # an empty word has no pieces (Hugging Face's gives none)
    assert len(tokenize(tok, "un" + "aff" * 30 + "able" * 2)) == 33  # 100 characters: cut


# ----------------------------------------------------------------------------- Hugging Face folders

def write_safetensors(path, tensors):
    """The format by its spec: an 8-byte little-endian header length n, n bytes of JSON
    {name: {dtype, shape, data_offsets: [start, end]}} (offsets from the end of the header), then
    the raw little-endian data."""
    kinds = {torch.float64: ("F64", "<f8"), torch.float32: ("F32", "<f4"),
             torch.int64: ("I64", "<i8")}
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        kind, layout = kinds[t.dtype]
        blob = t.numpy().astype(layout).tobytes()
        header[name] = {"dtype": kind, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_read_safetensors_is_gpts_copied_byte_for_byte():
    assert inspect.getsource(bert.read_safetensors) == inspect.getsource(gpt.read_safetensors)
    assert bert.SAFETENSORS_DTYPES == gpt.SAFETENSORS_DTYPES


VOCAB = bert.SPECIALS + ["the", "cat", "sat", ".", "un", "##aff", "##able", "caf", "##e"]
VOCAB += [f"word{i}" for i in range(50 - len(VOCAB))]  # 50 rows, as random_hf_state_dict's


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_from_pretrained_reads_a_hugging_face_folder(tmp_path, weights):
    """A folder as BertForPreTraining's download: keys under "bert." with cls.* heads, the
    config, vocab.txt. The model equals the float64 BertModel reference; the ids are read off
    the vocabulary by hand."""
    sd = random_hf_state_dict(seed=6)
    saved = {"bert." + k: v for k, v in sd.items()} | {"cls.predictions.bias": torch.zeros(50)}
    if weights.endswith(".bin"):
        torch.save(saved, tmp_path / weights)
    else:
        write_safetensors(tmp_path / weights, saved)
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    model, tok = bert.from_pretrained(str(tmp_path))
    ids = tok.encode("The cat sat. Unaffable CAFÉ!")
    assert ids == [5, 6, 7, 8, 9, 10, 11, 12, 13, 1]  # the cat sat . un ##aff ##able caf ##e [UNK]
    idx = torch.tensor([[bert.CLS, *ids, bert.SEP]])
    ref_hidden, _ = hf_reference(sd, idx, torch.zeros_like(idx), idx != bert.PAD, n_head=4)
    torch.testing.assert_close(model.eval()(idx), ref_hidden, rtol=1e-10, atol=1e-10)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = bert.from_pretrained(str(tmp_path))[1]
    assert cased.encode("The cat") == [1, 6]  # "The" is not in the vocabulary
    os.remove(tmp_path / "vocab.txt")
    with pytest.raises(FileNotFoundError, match="needs config.json, vocab.txt and model.safet"):
        bert.from_pretrained(str(tmp_path))


# ----------------------------------------------------------------------------- config and flags

@pytest.mark.parametrize("argv, message", [
    ("--layers=2", "unrecognized arguments: --layers=2"),
    ("--n_layer=two", "invalid int value: 'two'"),
    ("--alpha=1.5", "alpha=1.5 must be in [0, 1]"),
    ("--n_embd=90", "n_embd=90 is not divisible by n_head=4"),
    ("--vocab_size=5", "vocab_size=5 must be > 5, the special tokens"),
    ("--max_len=4", "max_len=4 must be >= 8"),
    ("--n_classes=1", "n_classes=1 must be >= 2"),
    ("--temperature=0", "temperature=0.0 must be > 0"),
    ("--ckpt_interval=0", "ckpt_interval=0 must be > 0"),
    ("--stop_after=-1", "stop_after=-1 must be >= 0"),
    ("--nsp=maybe", "expected true or false, got 'maybe'")])
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        bert.parse_args(bert.Config, [argv], gpu=bert.GPU)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_device_that_is_not_here_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bert.parse_args(bert.Config, ["--device=cuda"], gpu=bert.GPU)
    assert "--device=cuda, but this machine has only cpu" in capsys.readouterr().err


def test_cpu_and_gpu_defaults(monkeypatch):
    """CPU: README's 4 x 128 model. CUDA: BERT-base, whose BertModel (bert-base-uncased: 30,522
    tokens, 512 positions) has 109,482,240 parameters (Devlin et al. 2018's "110M"); counted on
    the meta device, nothing is allocated."""
    cpu = bert.parse_args(bert.Config, ["--nsp", "--device=cpu"], gpu=bert.GPU)
    assert (cpu.n_layer, cpu.n_embd, cpu.n_head, cpu.pretrain_steps) == (4, 128, 4, 1000)
    assert cpu.nsp is True  # a bare boolean flag means true
    monkeypatch.setattr(bert, "pick_device", lambda name="auto": "cuda")
    cuda = bert.parse_args(bert.Config, [], gpu=bert.GPU)
    with torch.device("meta"):
        base = bert.Bert(bert.BertConfig(vocab_size=30522, max_len=512, n_layer=cuda.n_layer,
                                         n_head=cuda.n_head, n_embd=cuda.n_embd))
    assert bert.count_params(base) == 109_482_240
    assert bert.parse_args(bert.Config, ["--n_layer=6"], gpu=bert.GPU).n_layer == 6  # flags win


# ----------------------------------------------------------------------------- resume, log, plot

@pytest.fixture
def small_run(tmp_path):
    """Eight documents of Python's reference docs (about 45 sentences each) and a model that
    runs every phase in a second or two; dropout stays on, so a lost RNG state would show."""
    from pydoc_data import topics
    longest = sorted(topics.topics, key=lambda k: -len(topics.topics[k]))[:8]
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(" ".join(topics.topics[k].split())[:6000] for k in longest))
    return bert.Config(data=str(path), vocab_size=300, max_len=16, n_layer=2, n_embd=16, n_head=2,
                       batch_size=4, pretrain_steps=6, finetune_steps=3, n_classes=3, n_per_class=4,
                       ckpt_interval=2, out_dir=str(tmp_path / "whole"), device="cpu", seed=0)


def saved_run(cfg):
    ckpt = torch.load(os.path.join(cfg.out_dir, "ckpt.pt"), weights_only=True)
    with open(os.path.join(cfg.out_dir, "log.jsonl")) as f:
        return ckpt, [json.loads(line) for line in f]


def test_resume_is_exact(small_run):
    """A run stopped after k steps and resumed ends bit for bit as one that never stopped: every
    phase's weights, and the log's rows, each step once (a row logged after the last checkpoint,
    by a run killed before its next one, is dropped)."""
    bert.main(small_run)
    whole, whole_log = saved_run(small_run)
    assert list(whole["models"]) == ["pretrain", "finetune", "scratch", "distill", "labels_only"]
    assert [r["step"] for r in whole_log] == list(range(6 + 4 * 3))
    for stop_after in (3, 10):  # inside pretraining; inside the "scratch" phase
        split = dataclasses.replace(small_run, out_dir=f"{small_run.out_dir}_{stop_after}",
                                    stop_after=stop_after)
        with pytest.raises(SystemExit, match=f"stopped after {stop_after} steps"):
            bert.main(split)
        assert len(saved_run(split)[1]) == stop_after
        with open(os.path.join(split.out_dir, "log.jsonl"), "a") as f:  # logged, then killed
            f.write(json.dumps({"step": stop_after, "phase": "pretrain", "mlm": 0.0}) + "\n")
        bert.main(dataclasses.replace(split, stop_after=0, resume=True))
        resumed, resumed_log = saved_run(split)
        for phase, weights in whole["models"].items():
            same = [torch.equal(w, resumed["models"][phase][k]) for k, w in weights.items()]
            assert all(same), (stop_after, phase)
        assert resumed_log == whole_log


def test_every_classifier_sees_the_same_batches(small_run):
    """Pretrained vs scratch and distilled vs labels-only are fair comparisons: at each step,
    each phase draws the same batch and the same dropout masks."""
    run = bert.Run(small_run)
    draws = {}
    for phase in ("finetune", "scratch"):
        model = torch.nn.Linear(2, 1)

        def step_loss(rng, phase=phase):
            draws.setdefault(phase, []).append((rng.random(), torch.rand(()).item()))
            return model(torch.ones(2)).sum(), {}
        bert.fit(model, step_loss, 3, 1e-3, run, phase)
    assert draws["finetune"] == draws["scratch"] and len(set(draws["scratch"])) == 3


def test_bad_resume_is_a_clear_error_before_any_work(small_run):
    cfg = dataclasses.replace(small_run, resume=True)
    with pytest.raises(SystemExit, match="ckpt.pt does not exist: start without --resume"):
        bert.main(cfg)
    os.makedirs(cfg.out_dir)
    with open(os.path.join(cfg.out_dir, "ckpt.pt"), "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(SystemExit, match="ckpt.pt is not a readable checkpoint") as exit:
        bert.main(cfg)
    assert "weights_only" not in str(exit.value)
    with pytest.raises(SystemExit, match="stopped after 2 steps"):  # a checkpoint to resume from
        bert.main(dataclasses.replace(small_run, stop_after=2))
    with pytest.raises(SystemExit, match="saved with other n_layer, n_head, finetune_lr: resume"):
        bert.main(dataclasses.replace(cfg, n_layer=1, n_head=1, finetune_lr=1e-3))


def test_bad_data_is_a_clear_error_before_any_work(small_run, tmp_path):
    for name, content, message in [
            ("latin1.txt", "caf\xe9 ol\xe9".encode("latin-1"),
             "latin1.txt as UTF-8 text ('utf-8' codec can't decode byte 0xe9 in position 3"),
            ("blank.txt", b" \n\n \n", "the corpus is empty: ")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
            bert.main(dataclasses.replace(small_run, data=str(tmp_path / name)))
    with pytest.raises(SystemExit, match="cannot read --data=.*missing.txt"):
        bert.main(dataclasses.replace(small_run, data=str(tmp_path / "missing.txt")))
    assert not os.path.exists(small_run.out_dir)  # nothing was written: no work began


class Recorder:  # stands in for matplotlib.pyplot: records what would be drawn
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_plot_draws_the_logged_pretraining_losses(small_run, monkeypatch, capsys):
    """With NSP on: its held-out accuracy is printed, and its loss curve drawn beside MLM's."""
    plt = Recorder()
    monkeypatch.setattr(bert, "pyplot", lambda plot: plt if plot else None)
    cfg = dataclasses.replace(small_run, nsp=True, plot=True)
    bert.main(cfg)
    assert "NSP accuracy" in capsys.readouterr().out
    rows = [r for r in saved_run(cfg)[1] if r["phase"] == "pretrain"]
    curves = {kw["label"]: [list(a) for a in args] for call, args, kw in plt.calls
              if call == "plot"}
    assert curves == {f"{key} loss": [list(range(6)), [r[key] for r in rows]]
                      for key in ("mlm", "nsp")}
    assert [args for call, args, _ in plt.calls if call == "savefig"] == [
        (os.path.join(cfg.out_dir, "pretrain.png"),)]


def test_plot_without_matplotlib_is_a_note_before_any_work(small_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit, match="stopped after 1 steps"):
        bert.main(dataclasses.replace(small_run, plot=True, stop_after=1))
    out = capsys.readouterr().out
    assert out.startswith("note: --plot needs matplotlib")


def test_main_smoke(capsys, tmp_path):
    """The default data and the RoBERTa path; NSP's run is the plot test's."""
    bert.main(bert.Config(vocab_size=512, max_len=32, n_layer=2, n_embd=32, n_head=2, batch_size=8,
                          pretrain_steps=6, finetune_steps=4, n_per_class=8, out_dir=str(tmp_path),
                          device="cpu"))
    out = capsys.readouterr().out
    for text in ("masked-token accuracy", "from scratch", "student, distilled", "retained"):
        assert text in out
    assert "NSP accuracy" not in out


def test_bench_smoke(capsys):
    """bench/bert.py times the teacher and its half-depth student on one batch."""
    spec = importlib.util.spec_from_file_location(
        "bench_bert", os.path.join(os.path.dirname(__file__), "..", "bench", "bert.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    speeds = bench.main(bench.BenchConfig(n_layer=2, n_embd=16, n_head=2, vocab_size=40,
                                          max_len=8, batch_size=4, repeats=1, device="cpu"))
    assert len(speeds) == 2 and all(v > 0 for v in speeds.values())
    out = capsys.readouterr().out
    assert "student (every other layer)" in out and "1.00x" in out
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        bench.BenchConfig(n_embd=30)


def test_accuracy_in_batches_equals_each_sentence_alone():
    """Held-out accuracy scores any number of sentences in batches; each prediction equals the
    model's on the sentence alone, unpadded (padding is masked out)."""
    torch.manual_seed(0)
    model = bert.BertClassifier(tiny_model().float(), 3).eval()
    rng = random.Random(0)
    data = [([rng.randrange(5, 40) for _ in range(rng.randint(2, 12))], rng.randrange(3))
            for _ in range(11)]
    with torch.no_grad():
        alone = [model(torch.tensor([row])).argmax(-1).item() for row, _ in data]
    want = sum(p == y for p, (_, y) in zip(alone, data)) / len(data)
    assert 0 < want < 1
    assert bert.accuracy(model, data, "cpu", batch=4) == want
