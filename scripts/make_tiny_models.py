#!/usr/bin/env python3
"""Writes the tiny random-weight test models under tests/data/models/.

Each model is a Hugging Face directory (config.json, safetensors weights, tokenizer files) plus
a GGUF equivalent laid out as llama.cpp's convert_hf_to_gguf.py would write it. The models are
tiny (hidden 64, 2 layers) and random, but their logits are not degenerate, so loaders and
kernels can be checked against a reference implementation.

    pip install numpy safetensors gguf tokenizers
    python3 scripts/make_tiny_models.py

Deterministic: the same package versions give byte-identical files. The tokenizers come from
tests/data/tokenizers/ (scripts/make_test_tokenizers.py); run that first if they are missing.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

import gguf
from safetensors import safe_open
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
TOKENIZERS = ROOT / "tests" / "data" / "tokenizers"
OUT = ROOT / "tests" / "data" / "models"

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FF, MAX_POS = 64, 2, 4, 2, 16, 128, 256

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}

MODELS = [
    # name, arch, tokenizer, tied, dtype, shards, rope_theta, rope_scaling, rms_eps, seed
    dict(name="llama", arch="llama", tok="llama3", tied=False, dtype="F32", shards=1,
         theta=500000.0, rope_scaling=LLAMA3_ROPE, eps=1e-5, seed=101),
    dict(name="llama_tied_bf16", arch="llama", tok="llama3", tied=True, dtype="BF16", shards=2,
         theta=100000.0, rope_scaling=None, eps=1e-5, seed=102),
    dict(name="qwen2", arch="qwen2", tok="qwen2", tied=True, dtype="F32", shards=1,
         theta=1000000.0, rope_scaling=None, eps=1e-6, seed=103),
    dict(name="qwen3", arch="qwen3", tok="qwen2", tied=False, dtype="F16", shards=1,
         theta=1000000.0, rope_scaling=None, eps=1e-6, seed=104),
]

# Extra GGUF files of the llama model: (suffix, ggml type of the 2-D weights, general.file_type).
LLAMA_VARIANTS = [
    ("q8_0", gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    ("q4_0", gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    ("q4_1", gguf.GGMLQuantizationType.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    ("f16", gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
]

ARCH_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


# ---------------------------------------------------------------------------------------------
# Tokenizer facts

def load_vocab(tok_dir: Path) -> dict[str, int]:
    """token -> id, added tokens included; the ids must run 0..n-1 (the model's vocab_size)."""
    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab(with_added_tokens=True)
    if sorted(vocab.values()) != list(range(len(vocab))):
        sys.exit(f"{tok_dir / 'tokenizer.json'}: token ids are not contiguous from 0")
    return vocab


# ---------------------------------------------------------------------------------------------
# Hugging Face side

def make_config(m: dict, vocab: dict[str, int]) -> dict:
    arch = m["arch"]
    if m["tok"] == "llama3":
        bos = vocab["<|begin_of_text|>"]
        # Llama 3.x Instruct lists several end tokens; the tied variant uses the plain-int form.
        eos = vocab["<|eot_id|>"] if m["tied"] else [vocab["<|end_of_text|>"], vocab["<|eot_id|>"]]
    else:
        bos, eos = vocab["<|endoftext|>"], vocab["<|im_end|>"]
    c = {
        "architectures": [ARCH_CLASS[arch]],
        "model_type": arch,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": FF,
        "max_position_embeddings": MAX_POS,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": m["eps"],
        "rope_scaling": m["rope_scaling"],
        "rope_theta": m["theta"],
        "tie_word_embeddings": m["tied"],
        "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[m["dtype"]],
        "use_cache": True,
        "vocab_size": len(vocab),
    }
    if arch == "llama":
        c.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        if m["rope_scaling"]:
            # convert_hf_to_gguf.py reads original_max_position_embeddings from the top level of
            # the config (default 8192), transformers from rope_scaling; real Llama 3.x checkpoints
            # use 8192 either way. Stating it in both places keeps the two tools in agreement.
            c["original_max_position_embeddings"] = m["rope_scaling"]["original_max_position_embeddings"]
    else:
        c.update(max_window_layers=LAYERS, sliding_window=None, use_sliding_window=False)
        if arch == "qwen3":
            c["attention_bias"] = False
    return c


def make_weights(m: dict, vocab_n: int) -> dict[str, np.ndarray]:
    """Random weights in Hugging Face names and shapes ([out, in] for Linear), in the order
    transformers' state_dict lists them. float32, already rounded to the model's storage type
    (so the F32 GGUF holds exactly the same values)."""
    rng = np.random.default_rng(m["seed"])

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight(n):  # RMSNorm gains: around 1, not exactly 1, so a skipped norm shows
        return (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32)

    q_dim, kv_dim = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    w = {"model.embed_tokens.weight": normal((vocab_n, HIDDEN), 0.1)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal((q_dim, HIDDEN), 0.08)
        if m["arch"] == "qwen2":
            w[p + "self_attn.q_proj.bias"] = normal((q_dim,), 0.05)
        w[p + "self_attn.k_proj.weight"] = normal((kv_dim, HIDDEN), 0.08)
        if m["arch"] == "qwen2":
            w[p + "self_attn.k_proj.bias"] = normal((kv_dim,), 0.05)
        w[p + "self_attn.v_proj.weight"] = normal((kv_dim, HIDDEN), 0.08)
        if m["arch"] == "qwen2":
            w[p + "self_attn.v_proj.bias"] = normal((kv_dim,), 0.05)
        w[p + "self_attn.o_proj.weight"] = normal((HIDDEN, q_dim), 0.08)
        if m["arch"] == "qwen3":
            w[p + "self_attn.q_norm.weight"] = norm_weight(HEAD_DIM)
            w[p + "self_attn.k_norm.weight"] = norm_weight(HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = normal((FF, HIDDEN), 0.06)
        w[p + "mlp.up_proj.weight"] = normal((FF, HIDDEN), 0.06)
        w[p + "mlp.down_proj.weight"] = normal((HIDDEN, FF), 0.06)
        w[p + "input_layernorm.weight"] = norm_weight(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = norm_weight(HIDDEN)
    w["model.norm.weight"] = norm_weight(HIDDEN)
    if not m["tied"]:
        w["lm_head.weight"] = normal((vocab_n, HIDDEN), 0.1)
    if m["dtype"] == "BF16":
        w = {k: (bf16_bits(v).astype(np.uint32) << 16).view(np.float32) for k, v in w.items()}
    elif m["dtype"] == "F16":
        w = {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}
    return w


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, round to nearest even (no NaNs here)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """A plain safetensors writer (numpy has no bf16, so the library's numpy API cannot write it).
    Tensors are stored in the given order; the header is padded with spaces to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, t in tensors.items():
        raw = bf16_bits(t).tobytes() if dtype == "BF16" else t.astype({"F32": "<f4", "F16": "<f2"}[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_hf_dir(m: dict, d: Path, config: dict, weights: dict[str, np.ndarray]) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZERS / m["tok"] / f, d / f)
    if m["shards"] == 1:
        write_safetensors(d / "model.safetensors", weights, m["dtype"])
        return
    # Split by size into shards, in state_dict order, as save_pretrained(max_shard_size=...) does.
    elem = 4 if m["dtype"] == "F32" else 2
    total = sum(t.size * elem for t in weights.values())
    limit = math.ceil(total / m["shards"])
    groups: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in weights.items():
        if groups[-1] and size + t.size * elem > limit and len(groups) < m["shards"]:
            groups.append({})
            size = 0
        groups[-1][name] = t
        size += t.size * elem
    n = len(groups)
    weight_map = {}
    for i, g in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        write_safetensors(d / fname, g, m["dtype"])
        weight_map.update({k: fname for k in g})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# GGUF side (the conventions of llama.cpp's convert_hf_to_gguf.py)

def gguf_name(hf: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")  # model.layers.N.<module>.<proj>.<weight|bias>
    layer, rest = parts[2], ".".join(parts[3:])
    role = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }[rest]
    return f"blk.{layer}.{role}"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The converter's reordering of Llama Q/K rows: within each head, the rotate-half pairs
    (i, i + head_dim/2) become interleaved pairs (2i, 2i + 1), as GGML's normal RoPE expects."""
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).swapaxes(1, 2).reshape(out, inp)


def llama3_rope_factors(config: dict) -> np.ndarray:
    """rope_freqs.weight as the converter computes it (float32 arithmetic, like its torch code):
    per rotary pair, the divisor applied to the base frequency."""
    rs = config["rope_scaling"]
    base = np.float32(config["rope_theta"])
    dim = config["head_dim"]
    freqs = np.float32(1.0) / (base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old_ctx = config.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wavelen = np.float32(2 * math.pi) / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (np.float32(old_ctx) / wavelen - np.float32(low)) / np.float32(high - low)
            out.append(np.float32(1) / ((np.float32(1) - smooth) / np.float32(factor) + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(path: Path, m: dict, hf_dir: Path, config: dict, weights: dict[str, np.ndarray],
               qtype: gguf.GGMLQuantizationType, ftype: gguf.LlamaFileType) -> None:
    arch = m["arch"]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type("model")
    w.add_name(f"tiny-{m['name']}")
    # TextModel.set_gguf_parameters
    w.add_block_count(LAYERS)
    w.add_context_length(MAX_POS)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_file_type(ftype)
    # LlamaModel adds these two; written for every arch here (llama.cpp treats them as optional).
    w.add_vocab_size(config["vocab_size"])
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # _set_vocab_gpt2: every id in order; added special tokens are CONTROL.
    tj = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = load_vocab(hf_dir)
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_id]
    types = []
    for t in tokens:
        if t in added:
            types.append(gguf.TokenType.CONTROL if added[t].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    # The converter picks "pre" by hashing a tokenization of a fixed text; these tiny tokenizers
    # match no known hash, so the pre-tokenizer their regex mirrors is named directly.
    w.add_tokenizer_pre("llama-bpe" if m["tok"] == "llama3" else "qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    # merges, bos/eos/pad ids, add_bos_token, chat_template: read exactly as the converter does.
    gguf.SpecialVocab(hf_dir, load_merges=True).add_to_gguf(w)

    # Tensors: generate_extra_tensors() (rope_freqs) first, then the checkpoint's in order.
    if config.get("rope_scaling") and config["rope_scaling"].get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(config))
    for hf, t in weights.items():
        name = gguf_name(hf)
        if arch == "llama" and hf.endswith("q_proj.weight"):
            t = permute_qk(t, HEADS)
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            t = permute_qk(t, KV_HEADS)
        # Vectors (norms, biases) stay F32 in every file type, as the converter keeps them.
        if t.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, t.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------------------------------
# Self-check: read back what was written with the libraries' own readers.

def check(m: dict, d: Path, weights: dict[str, np.ndarray], ggufs: list[Path]) -> None:
    files = sorted(d.glob("*.safetensors"))
    seen = {}
    for f in files:
        with safe_open(str(f), framework="numpy") as st:
            for k in st.keys():
                seen[k] = st.get_slice(k).get_shape()
    assert set(seen) == set(weights), f"{d}: tensor names differ"
    for k, t in weights.items():
        assert list(seen[k]) == list(t.shape), f"{d}: {k} shape"
    if m["dtype"] != "BF16":  # numpy cannot hold bf16
        with safe_open(str(files[0]), framework="numpy") as st:
            for k in st.keys():
                assert np.array_equal(st.get_tensor(k), weights[k]), f"{d}: {k} values"
    for g in ggufs:
        r = gguf.GGUFReader(str(g))
        names = {t.name for t in r.tensors}
        expect = {gguf_name(k) for k in weights}
        if m["rope_scaling"]:
            expect.add("rope_freqs.weight")
        assert names == expect, f"{g}: tensor names {sorted(names ^ expect)}"
        for t in r.tensors:
            if t.name == "rope_freqs.weight":
                continue
            hf = next(k for k in weights if gguf_name(k) == t.name)
            ref = weights[hf]
            if m["arch"] == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight")):
                ref = permute_qk(ref, HEADS if "attn_q" in t.name else KV_HEADS)
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)
            tol = {gguf.GGMLQuantizationType.F32: 0.0, gguf.GGMLQuantizationType.F16: 1e-3,
                   gguf.GGMLQuantizationType.Q8_0: 0.01, gguf.GGMLQuantizationType.Q4_0: 0.1,
                   gguf.GGMLQuantizationType.Q4_1: 0.1}[t.tensor_type]
            err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
            assert err <= tol, f"{g}: {t.name} differs by {err}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output directory (default: tests/data/models)")
    args = ap.parse_args()
    logging.getLogger("gguf").setLevel(logging.ERROR)  # SpecialVocab chatters about pair templates
    for tok in {m["tok"] for m in MODELS}:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if not (TOKENIZERS / tok / f).is_file():
                sys.exit(f"missing {TOKENIZERS / tok / f}: run scripts/make_test_tokenizers.py first")
    args.out.mkdir(parents=True, exist_ok=True)
    for m in MODELS:
        tok_dir = TOKENIZERS / m["tok"]
        vocab = load_vocab(tok_dir)
        config = make_config(m, vocab)
        weights = make_weights(m, len(vocab))
        d = args.out / m["name"]
        write_hf_dir(m, d, config, weights)
        ggufs = [args.out / f"{m['name']}.gguf"]
        write_gguf(ggufs[0], m, d, config, weights, gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32)
        if m["name"] == "llama":
            for suffix, qtype, ftype in LLAMA_VARIANTS:
                ggufs.append(args.out / f"llama-{suffix}.gguf")
                write_gguf(ggufs[-1], m, d, config, weights, qtype, ftype)
        check(m, d, weights, ggufs)
        print(f"{m['name']}: vocab {len(vocab)}, {sum(t.size for t in weights.values())} parameters, "
              f"{', '.join(p.name for p in ggufs)}")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"total {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
