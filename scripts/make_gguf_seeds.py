#!/usr/bin/env python3
"""Writes the seed corpus for fuzz/gguf.cpp: small valid GGUF files (every metadata type, every
supported tensor type, version 2 and 3, custom alignment) and a few truncated ones.

Usage: python3 scripts/make_gguf_seeds.py [OUT_DIR]   (default: fuzz/corpus/gguf)
Needs only the standard library; the output is deterministic.
"""
import os
import random
import struct
import sys

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
       U64: "<Q", I64: "<q", F64: "<d"}
# ggml type -> (elements, bytes) per block
BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 30: (1, 2)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    if t == STRING:
        return gstr(v)
    if t == ARRAY:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(value(et, x) for x in items)
    return struct.pack(FMT[t], v)


def gguf(kvs, tensors, version=3, alignment=32, rng=None):
    """kvs: [(key, type, value)]; tensors: [(name, ggml_type, ne)] (ne fastest first)."""
    rng = rng or random.Random(0)
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + value(t, v)
    data, offset = b"", 0
    for name, ty, ne in tensors:
        n = 1
        for d in ne:
            n *= d
        elems, nbytes = BLOCKS[ty]
        size = n // elems * nbytes
        offset = (offset + alignment - 1) // alignment * alignment
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<q", d) for d in ne)
        out += struct.pack("<IQ", ty, offset)
        data = data.ljust(offset, b"\0") + bytes(rng.randrange(256) for _ in range(size))
        offset += size
    if tensors:
        out = out.ljust((len(out) + alignment - 1) // alignment * alignment, b"\0") + data
    return out


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "corpus", "gguf")
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(1234)

    every_type = [
        ("general.architecture", STRING, "llama"),
        ("t.u8", U8, 200), ("t.i8", I8, -5), ("t.u16", U16, 65535), ("t.i16", I16, -300),
        ("t.u32", U32, 4000000000), ("t.i32", I32, -7), ("t.f32", F32, 0.5), ("t.bool", BOOL, 1),
        ("t.u64", U64, 2**63 + 1), ("t.i64", I64, -2**40), ("t.f64", F64, 1e-300),
        ("t.arr_f32", ARRAY, (F32, [1.0, -2.5, 3e-8])),
        ("t.arr_bool", ARRAY, (BOOL, [0, 1, 1])),
        ("t.nested", ARRAY, (ARRAY, [(I16, [1, -2]), (STRING, ["x", "yz"]), (ARRAY, [(U8, [7])])])),
        ("general.alignment", U32, 32),
    ]
    tokenizer = [
        ("tokenizer.ggml.model", STRING, "gpt2"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "</s>", "a", "b", "ab", "\u0120t"])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [3, 3, 1, 1, 1, 1])),
        ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, 0.0, -1.0, -2.0, -3.0, -4.0])),
        ("tokenizer.ggml.merges", ARRAY, (STRING, ["a b", "\u0120 t"])),
        ("tokenizer.ggml.bos_token_id", U32, 0),
        ("llama.block_count", U32, 1),
    ]
    quant_tensors = [("token_embd.weight", 8, [32, 4]), ("blk.0.attn_q.weight", 3, [64, 2]),
                     ("blk.0.ffn_down.weight", 2, [32, 3]), ("blk.0.attn_norm.weight", 0, [32]),
                     ("h", 1, [5, 1]), ("b", 30, [3, 1, 2, 1])]

    seeds = {
        "every_type.gguf": gguf(every_type, [("w", 0, [4, 2])], rng=rng),
        "quant_types.gguf": gguf(tokenizer, quant_tensors, rng=rng),
        "v2_align64.gguf": gguf([("general.alignment", U32, 64)] + tokenizer[:3],
                                [("a", 0, [3]), ("q", 8, [32])], version=2, alignment=64, rng=rng),
        "empty.gguf": gguf([], []),
        "metadata_only.gguf": gguf(tokenizer, []),
    }
    seeds["every_type_truncated.gguf"] = seeds["every_type.gguf"][:400]
    seeds["quant_types_truncated.gguf"] = seeds["quant_types.gguf"][:-7]
    seeds["header_only_truncated.gguf"] = seeds["quant_types.gguf"][:20]
    for name, data in seeds.items():
        assert len(data) < 4096, (name, len(data))
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
