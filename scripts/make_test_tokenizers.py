#!/usr/bin/env python3
"""Train two small byte-level BPE tokenizers shaped like Llama 3's and Qwen2's and write them to
tests/data/tokenizers/{llama3,qwen2}/{tokenizer.json,tokenizer_config.json}.

The files have the real models' structure (pre-tokenizer regex, ByteLevel, added special tokens,
post-processor, chat template) with a vocabulary of 1000 tokens (256 bytes + 744 merges) plus the
special tokens, so tests can exercise every code path without shipping a 128k/150k vocabulary.

Deterministic: the training text is fixed, training runs on one thread, and the JSON is written
with sorted structure from the library's own serialisation. Run twice and diff to check.

    pip install tokenizers
    python3 scripts/make_test_tokenizers.py [--out tests/data/tokenizers]
"""
import argparse
import json
import os
import pathlib

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers is imported
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Meta-Llama-3-8B-Instruct's template, verbatim.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# Qwen2.5-Instruct's template, verbatim (the '\n' inside it are Jinja string escapes).
QWEN2_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. It's a sentence that uses every letter; we'll use it again.
They're sure you've seen it before, and I'm sure she'd agree. THE DOG'S BOWL ISN'T EMPTY, YOU'LL SEE.
Deterministic inference means the same request gives the same tokens, run after run, in any batch.
Tokenizers split text into words, then merge bytes into tokens by rank: lower rank merges first.
In 2024 the model read 1234567890 tokens at 3.14159 tokens per second; version 1.2.3 shipped on 12/31.
def encode(text: str) -> list[int]:
    ids = []
    for word in split(text):
        ids.extend(bpe(word))  # merge by rank
    return ids

int main(int argc, char** argv) {
  std::vector<int32_t> ids = tokenizer.encode("hello world", true);
  if (ids.empty()) return 1;
  for (size_t i = 0; i < ids.size(); ++i) printf("%d\\n", ids[i]);
  return 0;
}
{"name": "detinfer", "version": "0.1.0", "tags": ["llm", "inference", "cuda"], "ok": true}
Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Mädchen, Übung, schön.
Le renard brun rapide saute par-dessus le chien paresseux. Où est la bibliothèque ? Déjà vu, très bien.
El rápido zorro marrón salta sobre el perro perezoso. ¿Dónde está la estación? ¡Mañana será otro día!
Быстрая коричневая лиса прыгает через ленивую собаку. Привет, как дела? Хорошо, спасибо.
Η γρήγορη καφέ αλεπού πηδάει πάνω από το τεμπέλικο σκυλί. Καλημέρα κόσμε.
敏捷的棕色狐狸跳过了懒狗。今天天气很好，我们去公园散步吧。机器学习和自然语言处理。
素早い茶色の狐が怠け者の犬を飛び越える。こんにちは、世界。東京は日本の首都です。ひらがなとカタカナ。
빠른 갈색 여우가 게으른 개를 뛰어넘는다. 안녕하세요, 세계. 한국어 텍스트입니다.
الثعلب البني السريع يقفز فوق الكلب الكسول. مرحبا بالعالم. اللغة العربية جميلة.
तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है। नमस्ते दुनिया। हिंदी भाषा सुंदर है।
שועל חום מהיר קופץ מעל הכלב העצלן. שלום עולם.
Con cáo nâu nhanh nhẹn nhảy qua con chó lười. Xin chào thế giới. Tiếng Việt có dấu.
สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ สวัสดีชาวโลก
Emoji: 😀 😃 😄 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧‍👦 🏳️‍🌈 ✨ 🚀 — and symbols: © ® ™ € £ ¥ § ¶ • … ≠ ≤ ≥ ∞ √ ∑ π.
Combining marks: e\u0301 a\u0300 n\u0303 o\u0308 — precomposed: é à ñ ö.
Tabs\tand  double  spaces,   triple   spaces,\ttabs\t\tagain.
Windows line endings\r\nare here\r\n\r\nand blank lines follow.


    Indented code line with four spaces.
        Eight spaces here.
"""


def training_lines():
    lines = TRAINING_TEXT.splitlines(keepends=True)
    # Deterministic extra material: numbers, identifiers and repeated phrases so common merges win.
    for i in range(200):
        lines.append(f"item_{i} = {i * 37 % 1000} + {i * i} ; value{i % 7} is {i / 8:.3f}\n")
    for i in range(50):
        lines.append(" ".join(["the", "and", "of", "to", "in", "is", "that", "for", "it", "with"][: 3 + i % 8]) + ".\n")
    return lines * 3


def build(pattern, specials, ignore_merges, merges_as_strings, vocab_size=1000):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(training_lines(), trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    doc = json.loads(tok.to_str())
    doc["model"]["ignore_merges"] = ignore_merges
    if merges_as_strings:  # the older "a b" form, as in Llama 3's file; newer files use [a, b]
        doc["model"]["merges"] = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in doc["model"]["merges"]]
    else:
        doc["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in doc["model"]["merges"]]
    return doc


def write(dirpath, doc, config):
    dirpath.mkdir(parents=True, exist_ok=True)
    # Round-trip through the library so the file is one it accepts as-is.
    Tokenizer.from_str(json.dumps(doc))
    (dirpath / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (dirpath / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                                   encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent.parent / "tests/data/tokenizers"))
    out = pathlib.Path(ap.parse_args().out)

    # Llama 3: BOS prepended by a TemplateProcessing post-processor, ignore_merges, "a b" merges.
    l3_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    doc = build(LLAMA3_PATTERN, l3_specials, ignore_merges=True, merges_as_strings=True)
    bos_id = next(t["id"] for t in doc["added_tokens"] if t["content"] == "<|begin_of_text|>")
    doc["post_processor"] = json.loads(processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", bos_id)]).__getstate__())
    write(out / "llama3", doc, {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": LLAMA3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })

    # Qwen2: no BOS (ByteLevel post-processor only), ChatML, [a, b] merges, ignore_merges off as in
    # Qwen2.5's file.
    q2_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    doc = build(QWEN2_PATTERN, q2_specials, ignore_merges=False, merges_as_strings=False)
    doc["post_processor"] = json.loads(processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False).__getstate__())
    write(out / "qwen2", doc, {
        "add_bos_token": False,
        "bos_token": None,
        "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True},
        "pad_token": "<|endoftext|>",
        "chat_template": QWEN2_CHAT_TEMPLATE,
        "model_max_length": 131072,
        "tokenizer_class": "Qwen2Tokenizer",
    })
    for name in ("llama3", "qwen2"):
        for f in sorted((out / name).iterdir()):
            print(f"{f}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
