#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers (fp32 weights and activations, eager attention),
for detinfer's end-to-end tests (tests/model/test_reference.cpp). Not run in CI: its output is
committed under tests/data/reference/.

    pip install torch transformers accelerate gguf numpy
    python3 scripts/make_reference_logits.py [--default-model PATH_TO_SmolLM2-135M-Instruct.Q4_1.gguf]

For each small model in tests/data/models/ (HF directories) it records, for fixed prompts, the
logits at every position and a greedy continuation with each step's top-1/top-2 margin. For the
default model (loaded by transformers' own GGUF reader, which dequantizes Q4_1/Q8_0 to fp32) it
records the last positions' logits of chat prompts and a greedy continuation.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "reference")
TINY = ["llama", "llama_tied_bf16", "qwen2", "qwen3"]
GREEDY_TOKENS = 16


def greedy(model, ids, n):
    """Greedy continuation with the top-1/top-2 margin of each step, full recompute each step."""
    ids = list(ids)
    out, margins = [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            top = torch.topk(logits, 2)
            tok = int(top.indices[0])
            out.append(tok)
            margins.append(float(top.values[0] - top.values[1]))
            ids.append(tok)
    return out, margins


def record(name, model, prompts, positions_of, n_greedy):
    entries = []
    for i, ids in enumerate(prompts):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
        positions = positions_of(len(ids))
        fname = f"{name}_p{i}.f32"
        np.ascontiguousarray(logits[positions], dtype="<f4").tofile(os.path.join(OUT, fname))
        toks, margins = greedy(model, ids, n_greedy)
        entries.append({"ids": [int(t) for t in ids], "positions": positions, "logits": fname,
                        "greedy": toks, "margins": margins})
    return entries


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--default-model", help="path of SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    index = {"transformers": transformers.__version__, "torch": torch.__version__, "models": {}}

    rng = np.random.default_rng(7)
    for name in TINY:
        path = os.path.join(ROOT, "tests", "data", "models", name)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        vocab = model.config.vocab_size
        prompts = [rng.integers(0, vocab, size=9).tolist(), rng.integers(0, vocab, size=24).tolist()]
        index["models"][name] = {"path": f"models/{name}", "vocab": vocab,
                                 "prompts": record(name, model, prompts, lambda n: list(range(n)), GREEDY_TOKENS)}
        print(f"{name}: done", file=sys.stderr)

    if args.default_model:
        d, f = os.path.split(os.path.abspath(args.default_model))
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        questions = ["What is the capital of France?", "Write a haiku about reproducible builds."]
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
                   for q in questions]
        prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
        index["models"]["default"] = {"path": "default", "vocab": model.config.vocab_size,
                                      "prompts": record("default", model, prompts,
                                                        lambda n: list(range(max(0, n - 3), n)), 24)}
        print("default: done", file=sys.stderr)

    with open(os.path.join(OUT, "reference.json"), "w") as fh:
        json.dump(index, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
