#!/usr/bin/env python3
"""Writes hf_cases.json: Qwen3 tokenizer cases computed by Hugging Face tokenizers/transformers.

Run with the reference environment (scripts/install-test-deps.sh), from anywhere:
  ~/.cache/tessera/pyenv/bin/python3 tests/runtime/text/tokenizer/make_cases.py

For each text it records the ids for the three ways of treating added tokens, computed with
`tokenizers` from tokenizer.json, and checks that transformers gives the same ids from
tokenizer.json and from the vocab.json + merges.txt + tokenizer_config.json trio:
  ids              added tokens recognised (the default)
  ids_no_special   every added token as plain text (transformers' _encode_without_added_tokens)
  ids_split        only special=true tokens as plain text (encode_special_tokens=True)
It also records decode results (with and without skip_special_tokens) for the encoded ids and for
id sequences that cut multi-byte characters, and builds flags_tokenizer.json, a small tokenizer
whose added tokens use lstrip / rstrip / single_word / normalized, with the ids HF gives for it.
The outputs are committed; tokenizer_test.cc reads them.
"""
import json
import os
import random
import shutil
import sys
import tempfile

import tokenizers
import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
DATA = os.path.join(ROOT, "tests", "data", "qwen3", "tokenizer-qwen3-0.6b")

TEXTS = {
    "multilingual": [
        "The quick brown fox jumps over the lazy dog.",
        "Ça, c'est l'été à Noël — déjà vu? Où êtes-vous?",
        "Straße, Größe, Fußgängerübergänge, ÄÖÜäöüß",
        "¿Dónde está el niño? ¡Mañana!",
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
        "نص عربي مع أرقام ١٢٣ وعلامات تشكيل: كَتَبَ",
        "עברית עם ניקוד: שָׁלוֹם",
        "हिन्दी में लिखा गया वाक्य। क़ ख़ ग़",
        "বাংলা ভাষা, தமிழ் மொழி, తెలుగు, ಕನ್ನಡ, മലയാളം",
        "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
        "中文文本，没有空格。繁體中文：臺灣。",
        "日本語のテキスト、ひらがなとカタカナと漢字。ｶﾀｶﾅ",
        "한국어 텍스트입니다. 안녕하세요!",
        "Tiếng Việt có nhiều dấu: Nguyễn, đường, ở đâu?",
        "ქართული ენა, Հայերեն լեզու, አማርኛ ቋንቋ",
        "ខ្មែរ ភាសា, မြန်မာဘာသာ, བོད་ཡིག",
        "Türkçe: İstanbul, ılık, IĞDIR",
        "ᠮᠣᠩᠭᠣᠯ\u180eᠠ ᠪᠢᠴᠢᠭ",
        "𠀀𠀁𪚥 (CJK extension B), 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝓜𝓪𝓽𝓱",
    ],
    "emoji": [
        "😀😃😄 smile",
        "👨‍👩‍👧‍👦 family, 👩🏽‍💻 technologist, 🏳️‍🌈 flag",
        "🇯🇵🇺🇸🇫🇷 flags",
        "👍🏻👍🏼👍🏽👍🏾👍🏿",
        "#️⃣ 1️⃣ keycaps, ❤️ ♥ ☺️",
        "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅",
        "emoji😀inside😀words",
    ],
    "code": [
        "def f(x):\n    return x ** 2  # square\n",
        "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
        '{"key": [1, 2.5, -3e10], "nested": {"a": null, "b": true}}',
        "<html><body class=\"x\">&amp;&lt;&gt;</body></html>",
        "#!/bin/bash\nset -euo pipefail\necho \"$HOME\" | grep -E '^/root' && exit 0\n",
        "if x != y && z >= 10:\r\n    pass\r\n",
        "SELECT * FROM t WHERE a='it''s' -- comment",
        "std::vector<std::pair<int,int>> v; v.emplace_back(1,2);",
    ],
    "whitespace": [
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n\n",
        "\r\n",
        "a  b   c    d",
        "    indented\n        more\n",
        "trailing   ",
        "   leading",
        " \n \n\t\n",
        "a\u00a0b\u3000c\u2003d\u2028e\u0085f",
        "x\x0by\x0cz",
        "\t\t\tx\t\t",
        " " * 300 + "x",
        "\n" * 50,
        "a \u180e b",
    ],
    "digits": [
        "1234567890",
        "3.14159265358979",
        "1,000,000 and 1 000 000",
        "٠١٢٣٤٥٦٧٨٩ ۰۱۲ १२३",
        "１２３４ full width",
        "x² + y³ = z⁴, ½ ¾, Ⅻ ⅻ",
        "version 2.0.1-rc3, IPv4 192.168.0.1",
        "00000000000000000000",
    ],
    "contractions": [
        "don't won't can't I'm you're we've they'll he'd it's",
        "DON'T WON'T I'M YOU'RE WE'VE THEY'LL HE'D IT'S",
        "Don'T wOn'T i'M yOu'Re",
        "it's 'tis 'S 'sup ''s",
        "it\u2019s curly apostrophe",
        "'ſ long s, 'ſt",
        "rock'n'roll o'clock",
    ],
    "special": [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
        "<think>\n\n</think>\n\nAnswer.",
        "<|endoftext|><|endoftext|>",
        "text<|im_end|>text",
        " <|im_end|> spaced ",
        "<|im_end",
        "<|im_end|>>",
        "<<|endoftext|>",
        "<|im_start|<|im_start|>",
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",
        "<tool_response>ok</tool_response>",
        "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|im_end|>\u0301 combining after a special token",
        "<think>ſ</think>",
        "<|box_start|>(1,2)<|box_end|><|quad_start|><|quad_end|><|object_ref_start|>x<|object_ref_end|>",
        "<|repo_name|>r<|file_sep|>f<|fim_pad|><|video_pad|><|vision_pad|>",
    ],
    "nfc": [
        "e\u0301",
        "cafe\u0301 re\u0301sume\u0301",
        "A\u030a \u212b \u00c5",
        "\u2126 Ohm",
        "\u1100\u1161\u11a8 \u1100\u1161",
        "a\u0327\u0301 a\u0301\u0327",
        "\u1e9b\u0323",
        "\uf900\uf901 compatibility ideographs",
        "\ufb01 ligature stays",
        "o\u0308\u0304 \u01d5",
        "\u0958 \u0915\u093c",
        "\u0301 leading combining mark",
        "n\u0303 n\u0303\u0303",
        # HF's NFC data is Unicode 9.0: a Unicode 13 mark (U+10EAC, class 230) is not reordered
        # after U+032A (class 220), and Dives Akuru (Unicode 13) does not compose.
        "a\U00010eac\u032a",
        "\U00011935\U00011930",
        "a\u0334\U0001e130\u0301",
        "\u1100\u1161\U00016ff0",
    ],
    "edge": [
        "",
        "\x00",
        "\x01\x02\x1f\x7f",
        "\ufeffBOM",
        "\ue000 private use \U000f0000",
        "\uffff \ufffe \U0010ffff noncharacters",
        "\ufffd replacement",
        "a" * 1000,
        "ab" * 300,
        "😀" * 50,
        "!!!???...,,,;;;",
        "\\\\n \\t \\\\",
        "a'b'c'd",
    ],
}


# A small tokenizer with added tokens that use every flag, to pin down how Hugging Face applies
# lstrip / rstrip / single_word / normalized / special. Its texts and the ids HF gives go to the
# "flags" section; the tokenizer itself to flags_tokenizer.json.
FLAG_TOKENS = [
    dict(content="<|sp|>", special=True, normalized=False),
    dict(content="<|s", special=False, normalized=False),
    dict(content="<L>", lstrip=True, special=True, normalized=False),
    dict(content="<R>", rstrip=True, special=False, normalized=False),
    dict(content="<LR>", lstrip=True, rstrip=True, special=True, normalized=False),
    dict(content="<W>", single_word=True, special=False, normalized=False),
    dict(content="caf\u00e9", special=False, normalized=True),
    dict(content="\u212b!", special=False, normalized=True),
    dict(content="he", special=False, normalized=False),
]
FLAG_TEXTS = [
    "a <|sp|> b <|s c",
    "<|sp|<|sp|>",
    "x   <L>y",
    "x\t\n <L> y",
    "<L><L>  <L>",
    "x<R>   y",
    "x <R>\n\n y<R>",
    "a   <LR>   b",
    "<LR> <LR>  <LR>",
    "<W> a<W> <W>b <W>.<W> x <W>",
    "\u00e9<W> <W>\u00e9 1<W> _<W>",
    "cafe\u0301 caf\u00e9 CAFE\u0301",
    "\u212b! A\u030a! \u00c5!",
    "the hello he she",
    "<R> <L>",
    "  <L>",
    "<R>  ",
]


def make_flags_tokenizer(qwen, path):
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
    merges = qwen["model"]["merges"][:400]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    base = set()
    for a, b in merges:
        base.update(a)
        base.update(b)
    vocab = {}
    for c in sorted(set(bytes_to_unicode().values())):
        vocab[c] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.NFC()
    regex = qwen["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(**t) for t in FLAG_TOKENS])
    tok.save(path)
    return Tokenizer.from_file(path)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def trio_dir():
    d = tempfile.mkdtemp(prefix="qwen3-trio-")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(DATA, name), d)
    return d


def encode_without_added(tok, text):
    """Every added token as plain text: normalizer -> pre-tokenizer -> model on the whole text."""
    if text == "":
        return []
    normalized = tok.normalizer.normalize_str(text)
    return [t.id for piece, _ in tok.pre_tokenizer.pre_tokenize_str(normalized)
            for t in tok.model.tokenize(piece)]


def main():
    tok = Tokenizer.from_file(os.path.join(DATA, "tokenizer.json"))
    split_tok = Tokenizer.from_file(os.path.join(DATA, "tokenizer.json"))
    split_tok.encode_special_tokens = True
    tf_json = AutoTokenizer.from_pretrained(DATA)
    tmp = trio_dir()
    tf_trio = AutoTokenizer.from_pretrained(tmp)
    shutil.rmtree(tmp)
    assert type(tf_trio).__name__ == "Qwen2Tokenizer", type(tf_trio)

    encode_cases = []
    all_ids = []
    for category, texts in TEXTS.items():
        for text in texts:
            ids = tok.encode(text).ids
            assert tf_json.encode(text, add_special_tokens=False) == ids, text
            assert tf_trio.encode(text, add_special_tokens=False) == ids, text
            ids_no_special = encode_without_added(tok, text)
            assert tf_json._encode_without_added_tokens(text) == ids_no_special or text == "", text
            ids_split = split_tok.encode(text).ids
            assert tf_trio.encode(text, add_special_tokens=False, split_special_tokens=True) == ids_split
            encode_cases.append({
                "category": category,
                "text": text,
                "ids": ids,
                "ids_no_special": ids_no_special,
                "ids_split": ids_split,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            })
            all_ids.extend(ids)

    # Id sequences that cut characters apart: single-byte tokens of multi-byte characters, in
    # order, out of order and truncated, mixed with special tokens.
    rng = random.Random(1234)
    byte_to_id = {b: tok.token_to_id(c) for b, c in bytes_to_unicode().items()}

    def ids_of_bytes(data):
        return [byte_to_id[b] for b in data]

    specials = [151643, 151644, 151645, 151667, 151668, 151657]
    decode_cases = []
    for text in ["😀", "é", "中", "👨‍👩‍👧", "a😀b", "ก"]:
        data = text.encode("utf-8")
        seqs = [ids_of_bytes(data), ids_of_bytes(data[:-1]), ids_of_bytes(data[1:]),
                ids_of_bytes(data[:1]) + [151645] + ids_of_bytes(data[1:]),
                ids_of_bytes(data[::-1])]
        decode_cases.extend(seqs)
    decode_cases.append(ids_of_bytes(bytes([0xC0, 0x80, 0xE0, 0x80, 0xED, 0xA0, 0x80, 0xF4, 0x90])))
    decode_cases.append(ids_of_bytes(bytes([0xF0, 0x9F, 0x98])) + [151643] + ids_of_bytes(b"x"))
    for _ in range(60):
        seq = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.4:
                seq.append(rng.choice(list(byte_to_id.values())))
            elif r < 0.5:
                seq.append(rng.choice(specials))
            else:
                seq.append(rng.choice(all_ids))
        decode_cases.append(seq)
    decode_out = [{
        "ids": seq,
        "text": tok.decode(seq, skip_special_tokens=False),
        "text_skip": tok.decode(seq, skip_special_tokens=True),
    } for seq in decode_cases]
    for case in decode_out:
        assert tf_trio.decode(case["ids"], skip_special_tokens=False) == case["text"]
        assert tf_trio.decode(case["ids"], skip_special_tokens=True) == case["text_skip"]

    with open(os.path.join(DATA, "tokenizer.json"), encoding="utf-8") as f:
        qwen = json.load(f)
    flags_path = os.path.join(HERE, "flags_tokenizer.json")
    flags_tok = make_flags_tokenizer(qwen, flags_path)
    flags_split = Tokenizer.from_file(flags_path)
    flags_split.encode_special_tokens = True
    flag_cases = [{
        "text": text,
        "ids": flags_tok.encode(text).ids,
        "ids_split": flags_split.encode(text).ids,
        "decoded": flags_tok.decode(flags_tok.encode(text).ids, skip_special_tokens=False),
        "decoded_skip": flags_tok.decode(flags_tok.encode(text).ids, skip_special_tokens=True),
    } for text in FLAG_TEXTS]

    out = {
        "generator": "tests/runtime/text/tokenizer/make_cases.py",
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
        "encode": encode_cases,
        "decode": decode_out,
        "flags": flag_cases,
    }
    path = os.path.join(HERE, "hf_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=1)
        f.write("\n")
    print(f"wrote {len(encode_cases)} encode, {len(decode_out)} decode and {len(flag_cases)} flag "
          f"cases to {path}, and {flags_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
