#!/usr/bin/env python3
"""Writes a Hugging Face model directory of a Llama model with random bf16 weights, for speed
measurements at real model shapes without downloading a checkpoint.

    pip install torch safetensors numpy
    python3 scripts/make_random_llama.py --out /data/llama3-8b-random          # Llama-3-8B shape
    python3 scripts/make_random_llama.py --out /tmp/tiny --layers 2 --hidden 256 \\
        --intermediate 512 --heads 4 --kv-heads 2 --vocab 1024 --device cpu    # a tiny one

The directory holds config.json, generation_config.json, the weights (model.safetensors, or
model-0000i-of-0000N.safetensors shards listed by model.safetensors.index.json when larger than
--shard-gb), and the tokenizer (tokenizer.json, tokenizer_config.json). It loads with detinfer
(`detinfer info --model DIR`) and with transformers (AutoModelForCausalLM / AutoTokenizer).

Weights are deterministic for a (seed, device) pair: each tensor has its own generator, seeded
from the seed and the tensor's name, so the other tensors do not change with --layers. CPU and
CUDA generators give different numbers: a directory made with --device cuda differs from one
made with --device cpu.

The tokenizer is the small trained Llama-3-style tokenizer of tests/data/tokenizers/llama3
(1000 byte-level BPE tokens and 5 special tokens, ids 1000..1004). Its vocabulary is padded with
unreachable filler tokens "<fill_N>" up to --vocab, so every id the model can produce decodes to
text (a random model produces any id) and the tokenizer's size equals the model's, as in a real
Llama-3 checkpoint. The fillers contain letters and digits, which the Llama-3 pre-tokenizer always
splits apart, so encoding is unchanged.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "tests" / "data" / "tokenizers" / "llama3"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory to write (created; old weight files in it are replaced)")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=0, help="default: hidden / heads")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--max-position", type=int, default=None,
                    help="max_position_embeddings (default 8192; 131072 with --llama3-rope, as Llama-3.1)")
    ap.add_argument("--rope-theta", type=float, default=500000.0)
    ap.add_argument("--llama3-rope", action="store_true",
                    help="add Llama-3.1 rope scaling (factor 8, low 1, high 4, original 8192)")
    ap.add_argument("--std", type=float, default=0.02, help="std of the projection and embedding weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where the random numbers are drawn (auto: cuda when available)")
    ap.add_argument("--shard-gb", type=float, default=5.0, help="largest shard in GB (1e9 bytes)")
    a = ap.parse_args()
    if a.max_position is None:
        a.max_position = 131072 if a.llama3_rope else 8192
    if a.head_dim == 0:
        if a.hidden % a.heads:
            ap.error(f"--hidden {a.hidden} is not a multiple of --heads {a.heads}; give --head-dim")
        a.head_dim = a.hidden // a.heads
    for name in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab", "max_position"):
        if getattr(a, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if a.heads % a.kv_heads:
        ap.error(f"--heads {a.heads} is not a multiple of --kv-heads {a.kv_heads}")
    if a.head_dim % 2:
        ap.error(f"head_dim {a.head_dim} must be even (RoPE)")
    if a.shard_gb <= 0:
        ap.error("--shard-gb must be positive")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available to torch")
    return a


def tensor_plan(a: argparse.Namespace) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) of every tensor, in checkpoint order; kind is 'norm' or 'proj'."""
    D, F, Q, KV = a.hidden, a.intermediate, a.heads * a.head_dim, a.kv_heads * a.head_dim
    plan = [("model.embed_tokens.weight", (a.vocab, D), "proj")]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        plan += [
            (p + "input_layernorm.weight", (D,), "norm"),
            (p + "self_attn.q_proj.weight", (Q, D), "proj"),
            (p + "self_attn.k_proj.weight", (KV, D), "proj"),
            (p + "self_attn.v_proj.weight", (KV, D), "proj"),
            (p + "self_attn.o_proj.weight", (D, Q), "proj"),
            (p + "post_attention_layernorm.weight", (D,), "norm"),
            (p + "mlp.gate_proj.weight", (F, D), "proj"),
            (p + "mlp.up_proj.weight", (F, D), "proj"),
            (p + "mlp.down_proj.weight", (D, F), "proj"),
        ]
    plan += [("model.norm.weight", (D,), "norm"), ("lm_head.weight", (a.vocab, D), "proj")]
    return plan


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def make_tensor(name: str, shape: tuple[int, ...], kind: str, a: argparse.Namespace) -> torch.Tensor:
    # Why N(0, 0.02) (transformers' initializer_range) keeps a 32-layer stack sane: every
    # projection follows an RMSNorm (or, for o_proj/down_proj, a product of such outputs), so its
    # input has RMS about 1 and its outputs have std 0.02 * sqrt(fan_in): 1.3 for fan_in 4096,
    # 2.4 for 14336. Each layer adds O(1) to the residual stream, which grows like sqrt(layers),
    # far inside bf16's range; the logits (normed input, lm_head std 0.02) have std about 1.3, so
    # greedy picks are not near-ties everywhere and softmax is neither flat nor one-hot. Norm
    # weights are 1.0 as in a freshly initialised model.
    if kind == "norm":
        return torch.ones(shape, dtype=torch.bfloat16)
    digest = hashlib.sha256(f"{a.seed}:{name}".encode()).digest()
    g = torch.Generator(device=a.device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    t = torch.randn(shape, generator=g, device=a.device, dtype=torch.float32)
    return t.mul_(a.std).to(torch.bfloat16).cpu()


def write_tokenizer(out: Path, a: argparse.Namespace) -> tuple[int, int, int]:
    """Copies the Llama-3-style test tokenizer, padded to the model's vocabulary; returns
    (bos id, eot id, end-of-text id)."""
    tok = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    cfg = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    size = 1 + max(max(vocab.values()), max(added.values()))
    if a.vocab < size:
        sys.exit(f"--vocab {a.vocab} is smaller than the tokenizer ({size} tokens, "
                 f"{TOKENIZER_DIR.relative_to(ROOT)}): the prompt tokens would be outside the model's vocabulary")
    for i in range(size, a.vocab):
        vocab[f"<fill_{i}>"] = i
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    cfg["model_max_length"] = a.max_position
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n",
                                               encoding="utf-8")
    return added[cfg["bos_token"]], added[cfg["eos_token"]], added["<|end_of_text|>"]


def write_configs(out: Path, a: argparse.Namespace, bos: int, eot: int, eos: int) -> None:
    rope = {"rope_type": "default", "rope_theta": a.rope_theta}
    if a.llama3_rope:
        rope = {"rope_type": "llama3", "rope_theta": a.rope_theta, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.head_dim,
        "vocab_size": a.vocab,
        "max_position_embeddings": a.max_position,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": a.std,
        "tie_word_embeddings": False,
        "bos_token_id": bos,
        "eos_token_id": [eos, eot],
        "use_cache": True,
        # transformers >= 5 reads rope_parameters; earlier versions rope_theta and rope_scaling.
        "rope_parameters": rope,
        "rope_theta": a.rope_theta,
        "rope_scaling": {k: v for k, v in rope.items() if k != "rope_theta"} if a.llama3_rope else None,
        "dtype": "bfloat16",
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"bos_token_id": bos, "eos_token_id": [eos, eot], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def main() -> None:
    a = parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # Weight files of an earlier run would confuse loaders (model.safetensors is read before the
    # index, and a stale shard could be listed nowhere).
    for old in list(out.glob("model*.safetensors")) + [out / "model.safetensors.index.json"]:
        if old.is_file():
            old.unlink()

    t_start = time.perf_counter()
    bos, eot, eos = write_tokenizer(out, a)
    write_configs(out, a, bos, eot, eos)

    # Shards: greedy in checkpoint order, each at most --shard-gb (a lone larger tensor gets its own).
    plan = tensor_plan(a)
    limit = int(a.shard_gb * 1e9)
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for item in plan:
        nbytes = 2 * numel(item[1])
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    total = 2 * sum(numel(s) for _, s, _ in plan)
    params = total // 2
    print(f"{out}: Llama, {a.layers} layers, hidden {a.hidden}, intermediate {a.intermediate}, "
          f"heads {a.heads}/{a.kv_heads} (head_dim {a.head_dim}), vocab {a.vocab}: {params / 1e9:.3f} B parameters, "
          f"{total / 1e9:.3f} GB bf16 in {n} file(s); random N(0, {a.std}) on {a.device}, seed {a.seed}", flush=True)
    weight_map = {}
    written = 0
    for fname, items in zip(names, shards):
        t0 = time.perf_counter()
        tensors = {name: make_tensor(name, shape, kind, a) for name, shape, kind in items}
        t1 = time.perf_counter()
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        os.chmod(out / fname, 0o644)  # safetensors creates it readable by the owner only
        del tensors
        t2 = time.perf_counter()
        fbytes = (out / fname).stat().st_size
        written += fbytes
        weight_map.update({name: fname for name, _, _ in items})
        print(f"  {fname}: {len(items)} tensors, {fbytes / 1e9:.3f} GB (generate {t1 - t0:.1f} s, "
              f"write {t2 - t1:.1f} s)", flush=True)
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    for f in out.iterdir():
        if f.is_file() and not f.name.startswith("model"):
            written += f.stat().st_size
    if n > 1:
        written += (out / "model.safetensors.index.json").stat().st_size
    elapsed = time.perf_counter() - t_start
    print(f"wrote {written} bytes ({written / 1e9:.3f} GB) in {elapsed:.1f} s "
          f"({written / 1e9 / max(elapsed, 1e-9):.2f} GB/s)")


if __name__ == "__main__":
    main()
