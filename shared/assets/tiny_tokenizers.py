"""Tiny but real tokenizers in FLUX.1-schnell's file layout, trained on the built-in caption corpus.

``tokenizer_2/`` (T5) is a sentencepiece unigram model with T5's special ids (pad 0, eos 1, unk 2) plus
100 ``<extra_id_N>`` sentinels at the top of the vocabulary, as in ``google/t5-v1_1-xxl``.
``tokenizer/`` (CLIP) is a byte-level BPE in CLIP's ``vocab.json``/``merges.txt`` format with
``<|startoftext|>``/``<|endoftext|>`` as its last two ids, as in ``openai/clip-vit-large-patch14``.
The config files mirror the real repository's (written by transformers 4), so the tiny assets go
through the same loading path as the real ones. Both tokenizers are a pure function of the corpus
(no seed): training is single-threaded and ties are broken by order, so the files are byte-identical.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

from shared.assets import corpus

T5_PIECES = 700
"""Sentencepiece vocabulary; with the 100 sentinels the T5 vocabulary is 800."""
T5_EXTRA_IDS = 100
CLIP_VOCAB = 1000
"""256 bytes + 256 end-of-word bytes + merges + 2 special tokens."""
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
_SPECIAL = {"special": True}


def write_t5_tokenizer(out: Path) -> int:
    """Write ``spiece.model``, ``tokenizer.json`` and the configs to ``out``; return the full vocab size."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "spiece.model").write_bytes(_train_sentencepiece())
    extra = [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    decoder = {str(i): _token(tok) | _SPECIAL for i, tok in enumerate(("<pad>", "</s>", "<unk>"))}
    # Sentinels count down from the top: <extra_id_0> is the last id.
    decoder |= {str(T5_PIECES + T5_EXTRA_IDS - 1 - i): _token(tok) | _SPECIAL for i, tok in enumerate(extra)}
    _write_json(out / "tokenizer_config.json", {
        "add_prefix_space": True,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra,
        "clean_up_tokenization_spaces": True,
        "extra_ids": T5_EXTRA_IDS,
        "legacy": True,
        "model_max_length": 512,
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        **special,
    })
    _write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": extra,
        **{k: _token(v) for k, v in special.items()},
    })
    # tokenizer.json as the real repository ships it: what transformers converts spiece.model to.
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(str(out), local_files_only=True)
    (out / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    return len(tokenizer)


def write_clip_tokenizer(out: Path) -> dict[str, int]:
    """Write ``vocab.json``, ``merges.txt`` and the configs to ``out``; return the vocabulary."""
    out.mkdir(parents=True, exist_ok=True)
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # CLIP's byte -> character table

    base = list(bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    merges = _train_bpe(corpus.training_corpus(), CLIP_VOCAB - len(vocab_list) - 2)
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            vocab_list.append(a + b)
    vocab = {tok: i for i, tok in enumerate([*vocab_list, CLIP_BOS, CLIP_EOS])}
    _write_json(out / "vocab.json", vocab)
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    _write_json(out / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(vocab[CLIP_BOS]): _token(CLIP_BOS, normalized=True) | _SPECIAL,
            str(vocab[CLIP_EOS]): _token(CLIP_EOS) | _SPECIAL,
        },
        "bos_token": CLIP_BOS,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": CLIP_EOS,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": CLIP_EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": CLIP_EOS,
    })
    _write_json(out / "special_tokens_map.json", {
        "bos_token": _token(CLIP_BOS, normalized=True),
        "eos_token": _token(CLIP_EOS),
        "pad_token": CLIP_EOS,
        "unk_token": _token(CLIP_EOS),
    })
    return vocab


def _train_sentencepiece() -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.training_corpus()),
        model_writer=model,
        model_type="unigram",
        vocab_size=T5_PIECES,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def _train_bpe(texts: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE over words split exactly as ``CLIPTokenizer`` splits them (ties: smallest pair)."""
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer  # CLIP's normaliser and pre-tokeniser, nothing else
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))
    words = {(*w[:-1], w[-1] + "</w>"): n for w, n in sorted(counts.items())}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        words = {_merge(symbols, best): n for symbols, n in words.items()}
    return merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def _token(content: str, normalized: bool = False) -> dict:
    """An AddedToken as transformers 4 serialised it (``added_tokens_decoder`` entries add ``special``)."""
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
