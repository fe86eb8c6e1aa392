#!/usr/bin/env python3
"""The peer baseline for detinfer's speed: PyTorch + transformers (eager attention, bf16) on the
same Hugging Face directory, measured the way `detinfer bench` measures.

    pip install torch transformers safetensors numpy
    python3 scripts/bench_torch_peer.py --model DIR [--batches 1,8,64,256] [--json out.json]
    python3 scripts/bench_torch_peer.py --model DIR --only-logits --check-logits ref.npy --ids 1,2,3

Decode: for each batch size, random prompts of --prompt-len tokens are prefilled (not timed),
then --gen greedy steps run one token at a time through the KV cache (model(next_ids,
past_key_values=cache, use_cache=True)). The timed window holds only those steps, between two
device synchronisations; tokens/s = gen * batch / seconds. Each batch size runs once untimed
first (warm-up: kernels chosen, allocator grown). A batch that runs out of GPU memory prints OOM
and the next one goes on.

Prefill: one sequence of --prefill-len random tokens into an empty cache (logits of the last
position only, as an engine computes them), median of 3 timed runs after one warm-up.

--check-logits FILE writes the logits (fp32, every position, [n_ids, vocab]) of the prompt --ids
for comparison with detinfer's: .npy when FILE ends in .npy, else raw little-endian f32.
TF32 is off for matmuls and cuDNN, so fp32 work is not silently done at lower precision.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import shlex
import statistics
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

DEFAULT_IDS = "1000,9,100,200,300,400,500,600,700,800,900,42"  # < 1005: valid for the test tokenizer's vocab
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--attn", default="eager", help="attn_implementation (eager, sdpa, ...)")
    ap.add_argument("--batches", default="1,8,64,256", help="decode batch sizes, comma-separated ('' = none)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64, help="timed greedy decode steps per batch")
    ap.add_argument("--warmup-gen", type=int, default=8, help="decode steps of each batch's warm-up run")
    ap.add_argument("--prefill-len", type=int, default=4096, help="0 = skip the prefill measurement")
    ap.add_argument("--prefill-runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1, help="seed of the random prompt ids")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--check-logits", metavar="FILE", help="write the fp32 logits of --ids to FILE")
    ap.add_argument("--ids", default=DEFAULT_IDS, help="comma-separated prompt ids for --check-logits")
    ap.add_argument("--only-logits", action="store_true", help="with --check-logits: skip the speed runs")
    a = ap.parse_args()
    try:
        a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
        a.ids = [int(i) for i in a.ids.split(",") if i.strip()]
    except ValueError as e:
        ap.error(f"--batches / --ids: {e}")
    if any(b < 1 for b in a.batches) or a.prompt_len < 1 or a.gen < 1 or a.warmup_gen < 0 or a.prefill_len < 0:
        ap.error("batch sizes, --prompt-len and --gen must be positive; --warmup-gen, --prefill-len not negative")
    if a.only_logits and not a.check_logits:
        ap.error("--only-logits needs --check-logits FILE")
    if not a.ids:
        ap.error("--ids is empty")
    return a


class Timer:
    """Device-synchronised wall time, plus per-step times (CUDA events on a GPU, so the steps
    themselves are not serialised by synchronising each one)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def between_ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3


def forward_kwargs(model) -> dict:
    """Asks for the last position's logits only, where this transformers version allows it."""
    import inspect
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    return {}


def random_ids(gen: torch.Generator, vocab: int, batch: int, length: int, device: torch.device) -> torch.Tensor:
    # Drawn on the CPU, so the prompts are the same whatever the device.
    return torch.randint(0, vocab, (batch, length), generator=gen, dtype=torch.long).to(device)


@torch.inference_mode()
def decode_run(model, ids: torch.Tensor, steps: int, last_only: dict, timer: Timer):
    """Prefill ids (untimed), then `steps` greedy steps; returns (seconds, per-step ms list)."""
    out = model(input_ids=ids, use_cache=True, **last_only)
    cache = out.past_key_values
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    del out
    timer.sync()
    marks = [timer.mark()]
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        marks.append(timer.mark())
    timer.sync()
    seconds = time.perf_counter() - t0
    step_ms = [timer.between_ms(marks[i], marks[i + 1]) for i in range(steps)]
    return seconds, step_ms


@torch.inference_mode()
def prefill_run(model, ids: torch.Tensor, last_only: dict, timer: Timer) -> float:
    timer.sync()
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, **last_only)
    out.logits[:, -1].argmax(-1)
    timer.sync()
    return time.perf_counter() - t0


def is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(e, oom)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def machine(device: torch.device) -> dict:
    m = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
         "numpy": np.__version__, "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        m.update({"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                  "compute_capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version(), "driver_gpus": torch.cuda.device_count()})
    else:
        m["cpu_threads"] = torch.get_num_threads()
    m["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    m["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    m["matmul_allow_bf16_reduced_precision_reduction"] = \
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    return m


def load(a: argparse.Namespace, device: torch.device):
    dtype = DTYPES[a.dtype]
    kw = {"attn_implementation": a.attn}
    # transformers >= 4.56 calls it dtype; earlier versions torch_dtype.
    kw["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = dtype
    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(a.model, device_map=str(device), **kw)
    except (ImportError, ValueError):  # device_map needs accelerate in some versions
        model = AutoModelForCausalLM.from_pretrained(a.model, **kw).to(device)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return model, time.perf_counter() - t0


def check_logits(model, a: argparse.Namespace, device: torch.device, vocab: int) -> dict:
    bad = [i for i in a.ids if not 0 <= i < vocab]
    if bad:
        sys.exit(f"--ids: {bad} outside the vocabulary [0, {vocab})")
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([a.ids], device=device)).logits[0].float().cpu().numpy()
    logits = np.ascontiguousarray(logits, dtype="<f4")
    if a.check_logits.endswith(".npy"):
        np.save(a.check_logits, logits)
    else:
        logits.tofile(a.check_logits)
    top = logits.argmax(-1).tolist()
    print(f"logits of {len(a.ids)} ids [{','.join(map(str, a.ids))}]: shape {list(logits.shape)} fp32 -> "
          f"{a.check_logits}\n  argmax per position {top}\n  last row: mean {logits[-1].mean():.6f} "
          f"std {logits[-1].std():.6f} first {logits[-1][:4].tolist()}", flush=True)
    return {"file": a.check_logits, "ids": a.ids, "shape": list(logits.shape), "argmax": top,
            "format": "npy" if a.check_logits.endswith(".npy") else "raw little-endian f32, row-major"}


def main() -> None:
    a = parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device (use --device cpu for a functional run)")
    if device.type == "cuda" and device.index is None:  # torch's per-device calls want an index
        device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cuda":
        torch.cuda.set_device(device)

    cfg = AutoConfig.from_pretrained(a.model)
    vocab = cfg.vocab_size
    model, load_s = load(a, device)
    timer = Timer(device)
    last_only = forward_kwargs(model)
    info = machine(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"peer: transformers {transformers.__version__}, torch {torch.__version__}, {a.attn} attention, "
          f"{a.dtype}, on {info.get('gpu', 'cpu')} ({device})\n"
          f"model {a.model}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {vocab}, "
          f"{params / 1e9:.3f} B parameters, loaded in {load_s:.1f} s", flush=True)
    result = {"command": " ".join(shlex.quote(x) for x in sys.argv), "machine": info, "model": a.model,
              "dtype": a.dtype, "attn_implementation": a.attn, "parameters": params,
              "prompt_len": a.prompt_len, "gen": a.gen, "decode": [], "prefill": None}

    if a.check_logits:
        result["check_logits"] = check_logits(model, a, device, vocab)
    if a.only_logits:
        a.batches, a.prefill_len = [], 0

    gen = torch.Generator().manual_seed(a.seed)
    if a.batches:
        # One untimed run first, so the first batch size does not pay for start-up.
        try:
            decode_run(model, random_ids(gen, vocab, 1, a.prompt_len, device), min(4, a.gen), last_only, timer)
        except Exception as e:  # noqa: BLE001 (an OOM here is reported by the batch itself)
            if not is_oom(e):
                raise
        release(device)
        print(f"\ndecode: prompt {a.prompt_len} tokens, {a.gen} greedy steps timed (KV cache)", flush=True)
        print(f"{'batch':>6} {'decode tok/s':>13} {'ms/step':>9} {'median ms':>10} {'min ms':>8} {'peak MiB':>10}",
              flush=True)
    for b in a.batches:
        row = {"batch": b}
        try:
            ids = random_ids(gen, vocab, b, a.prompt_len, device)
            decode_run(model, ids, a.warmup_gen, last_only, timer)  # warm-up at this shape
            release(device)
            reset_peak(device)
            seconds, step_ms = decode_run(model, ids, a.gen, last_only, timer)
            row.update({"decode_tok_s": a.gen * b / seconds, "seconds": seconds, "ms_per_step": 1e3 * seconds / a.gen,
                        "median_step_ms": statistics.median(step_ms), "min_step_ms": min(step_ms),
                        "peak_mib": peak_mib(device)})
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            row["oom"] = True
        ids = None
        release(device)
        if row.get("oom"):
            print(f"{b:>6} {'OOM':>13}", flush=True)
        else:
            pk = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            print(f"{b:>6} {row['decode_tok_s']:>13.1f} {row['ms_per_step']:>9.3f} {row['median_step_ms']:>10.3f} "
                  f"{row['min_step_ms']:>8.3f} {pk:>10}", flush=True)
        result["decode"].append(row)

    if a.prefill_len > 0:
        if a.prefill_len > cfg.max_position_embeddings:
            print(f"note: --prefill-len {a.prefill_len} exceeds max_position_embeddings "
                  f"{cfg.max_position_embeddings}", flush=True)
        row = {"tokens": a.prefill_len}
        try:
            ids = random_ids(gen, vocab, 1, a.prefill_len, device)
            prefill_run(model, ids, last_only, timer)  # warm-up
            release(device)
            reset_peak(device)
            times = []
            for _ in range(a.prefill_runs):
                times.append(prefill_run(model, ids, last_only, timer))
                release(device)
            med = statistics.median(times)
            row.update({"prefill_tok_s": a.prefill_len / med, "median_s": med, "runs_s": times,
                        "peak_mib": peak_mib(device)})
            print(f"\nprefill: {a.prefill_len} tokens, batch 1: {row['prefill_tok_s']:.1f} tok/s "
                  f"(median of {a.prefill_runs}: {med * 1e3:.1f} ms; runs {[round(t * 1e3, 1) for t in times]} ms)",
                  flush=True)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            row["oom"] = True
            print(f"\nprefill: {a.prefill_len} tokens: OOM", flush=True)
        ids = None
        release(device)
        result["prefill"] = row

    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
