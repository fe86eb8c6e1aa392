#!/usr/bin/env python3
"""HF `tokenizers` baseline for bench/tokenizer.cpp: encode the same ~1 MB text (the golden corpus
joined by newlines, repeated) with SmolLM2's tokenizer on one thread and print tokens/s.

    taskset -c 0 python3 scripts/bench_tokenizer_hf.py
"""
import json
import os
import pathlib
import statistics
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_tokenizer_goldens import DATA, smollm2_hf  # noqa: E402


def main():
    vocab = json.loads((DATA / "smollm2/vocab.json").read_text(encoding="utf-8"))
    tok = smollm2_hf(vocab)
    corpus = json.loads((DATA / "corpus.json").read_text(encoding="utf-8"))
    unit = "".join(line + "\n" for line in corpus)
    unit_bytes = len(unit.encode("utf-8"))
    text = unit * -(-1000000 // unit_bytes)

    ids = tok.encode(text, add_special_tokens=False).ids  # warm-up
    enc, dec = [], []
    for _ in range(7):
        t0 = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        enc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tok.decode(ids, skip_special_tokens=False)
        dec.append(time.perf_counter() - t0)
    lines = [line + "\n" for line in text.split("\n")[:-1]]  # as the C++ bench: split at '\n' only
    per_line = []
    for _ in range(7):
        t0 = time.perf_counter()
        line_tokens = sum(len(e.ids) for e in (tok.encode(l, add_special_tokens=False) for l in lines))
        per_line.append(time.perf_counter() - t0)
    h = 1469598103934665603  # FNV-1a over the ids, as bench_tokenizer prints
    for i in ids:
        h = ((h ^ i) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    n = len(ids)
    e, d = statistics.median(enc), statistics.median(dec)
    print(f"HF tokenizers {__import__('tokenizers').__version__}: smollm2")
    print(f"text: {len(text.encode('utf-8'))} bytes, {n} tokens, ids FNV-1a {h:016x}")
    print(f"encode: median {e:.4f} s  best {min(enc):.4f} s  -> {n / e / 1e6:.2f} M tokens/s (median)")
    pl = statistics.median(per_line)
    print(f"encode per line ({len(lines)} calls, {line_tokens} tokens): median {pl:.4f} s -> "
          f"{line_tokens / pl / 1e6:.2f} M tokens/s")
    print(f"decode: median {d:.4f} s -> {n / d / 1e6:.1f} M tokens/s")


if __name__ == "__main__":
    main()
