#!/usr/bin/env python3
"""Build the BERT fixtures under tensor-models/tests/fixtures/bert/.

`transformers` and `sentence-transformers` are the references. Run with the project's torch
interpreter (`$TORCH_PY`, which has torch + transformers + sentence-transformers + tokenizers):

    $TORCH_PY tools/make_bert_fixtures.py [--minilm DIR]

What it writes:

* `tiny/`        -- a tiny random `BertModel` (2 layers, hidden 32) saved as `model.safetensors` +
                    `config.json`, a small WordPiece `tokenizer.json`, and `expected.json`:
                    `last_hidden_state` for a padded batch of ids, and the mean-pooled,
                    L2-normalised sentence embeddings of a few texts (sentence-transformers'
                    recipe), so CI has a parity test without any download.
* `minilm.json`  -- sentence-transformers' embeddings of varied sentences with
                    all-MiniLM-L6-v2 (fetched by `scripts/fetch-models.sh minilm`; default DIR is
                    `${TENSOR_ENGINE_CACHE:-~/.cache/tensor-engine}/models/all-minilm-l6-v2`).
                    Skipped with a note when the model is absent.
"""

import argparse
import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, decoders
from transformers import BertConfig, BertModel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tensor-models", "tests", "fixtures", "bert")

SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A",
    "Café naïve façade résumé — «quotes» Ångström, 中文分词测试 and emoji 😀👍",
    "Rust is a systems programming language focused on safety, speed and concurrency; "
    "its ownership model guarantees memory safety without a garbage collector, and its "
    "type system catches data races at compile time.",
    "  leading and trailing spaces   ",
    "What is the capital of France? Paris is the capital and most populous city of France.",
    # Longer than the tokenizer.json's 128-token truncation and than max_seq_length (256): the
    # reference truncates at 256, so this checks that limit.
    " ".join(f"word{i} sentence number {i} goes on." for i in range(60)),
]

TINY_VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    + ["the", "a", "is", "hello", "world", "cat", "dog", "sat", "on", "mat", "##s", "##ing"]
)

TINY_TEXTS = ["hello world", "the cat sat on the mat.", "a dog is running!", "zebra?"]


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def tiny():
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    model = BertModel(cfg, add_pooling_layer=False).eval()
    # Non-trivial LayerNorm parameters (the default init is ones/zeros).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))

    out = os.path.join(OUT, "tiny")
    os.makedirs(out, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "position_ids" not in k}
    save_file(state, os.path.join(out, "model.safetensors"))
    cfg.to_json_file(os.path.join(out, "config.json"))

    vocab = {t: i for i, t in enumerate(TINY_VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    # Like the real checkpoint's tokenizer.json: fixed padding and truncation that the
    # embedder must switch off.
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=16)
    tok.enable_truncation(max_length=16)
    tok.save(os.path.join(out, "tokenizer.json"))

    # A padded batch of raw ids, token types included.
    ids = torch.tensor(
        [[2, 60, 61, 5, 9, 30, 3, 0, 0], [2, 7, 8, 9, 10, 11, 12, 13, 3]], dtype=torch.long
    )
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    types[1, 5:] = 1
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    tok.no_padding()
    tok.no_truncation()
    encs = [tok.encode(t) for t in TINY_TEXTS]
    longest = max(len(e.ids) for e in encs)
    tids = torch.tensor([e.ids + [0] * (longest - len(e.ids)) for e in encs])
    tmask = torch.tensor([[1] * len(e.ids) + [0] * (longest - len(e.ids)) for e in encs])
    with torch.no_grad():
        th = model(input_ids=tids, attention_mask=tmask).last_hidden_state
    emb = mean_pool(th, tmask)

    expected = {
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "token_type_ids": types.tolist(),
        "last_hidden_state": hidden.tolist(),
        "texts": TINY_TEXTS,
        "text_ids": [e.ids for e in encs],
        "embeddings": emb.tolist(),
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)
    print("wrote", out)


def minilm(model_dir):
    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        print(f"note: {model_dir} has no model.safetensors; run scripts/fetch-models.sh minilm")
        return
    from sentence_transformers import SentenceTransformer

    # Load from a private copy so sentence-transformers writes nothing beside the cache.
    with tempfile.TemporaryDirectory() as tmp:
        dst = os.path.join(tmp, "m")
        shutil.copytree(model_dir, dst)
        st = SentenceTransformer(dst, device="cpu")
        emb = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
        lens = [len(st.preprocess([s])["input_ids"][0]) for s in SENTENCES]
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "max_seq_length": st.max_seq_length,
        "sentences": SENTENCES,
        "token_counts": lens,
        "embeddings": [[round(float(x), 7) for x in row] for row in emb],
    }
    with open(os.path.join(OUT, "minilm.json"), "w") as f:
        json.dump(out, f)
    print("wrote minilm.json; token counts", lens)


def main():
    cache = os.environ.get("TENSOR_ENGINE_CACHE", os.path.expanduser("~/.cache/tensor-engine"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minilm", default=os.path.join(cache, "models", "all-minilm-l6-v2"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    tiny()
    minilm(args.minilm)


if __name__ == "__main__":
    main()
