//! Chat templates against `transformers`' `apply_chat_template(..., tokenize=False)`: the
//! fixture `fixtures/tokenizer/chat/templates.json` (written by
//! `tools/make_tokenizer_fixtures.py`) holds SmolLM2's template and Llama-3 / Mistral style ones,
//! with conversations, keyword arguments and the text (or error) Jinja2 produced.

use std::io::Read;
use std::path::{Path, PathBuf};

use tensor_io::chat_template::{json_to_value, ChatMessage, ChatTemplate, Value};
use tensor_io::tokenizer::GgufTokenizerSpec;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn templates() -> Value {
    let text = std::fs::read_to_string(fixtures().join("chat/templates.json")).unwrap();
    json_to_value(&text).unwrap()
}

fn get(v: &Value, key: &str) -> Value {
    v.get_attr(key).unwrap()
}

fn s(v: &Value, key: &str) -> String {
    get(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("{key} is a string"))
        .to_owned()
}

fn kwargs(case: &Value) -> Vec<(String, Value)> {
    let kw = get(case, "kwargs");
    kw.try_iter()
        .unwrap()
        .map(|k| (k.as_str().unwrap().to_owned(), kw.get_item(&k).unwrap()))
        .collect()
}

#[test]
fn fixture_templates_match_transformers() {
    let mut rendered = 0;
    let mut errors = 0;
    let all = templates();
    let names: Vec<String> = all.try_iter().unwrap().map(|t| s(&t, "name")).collect();
    assert_eq!(names, ["smollm2", "llama3", "mistral", "features"]);
    for t in all.try_iter().unwrap() {
        let name = s(&t, "name");
        let tmpl = ChatTemplate::new(s(&t, "template"))
            .unwrap()
            .with_special_token("bos_token", s(&t, "bos_token"))
            .with_special_token("eos_token", s(&t, "eos_token"));
        for case in get(&t, "cases").try_iter().unwrap() {
            let kw = kwargs(&case);
            let kw: Vec<(&str, Value)> = kw.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            let out = tmpl.render_with(
                get(&case, "messages"),
                get(&case, "add_generation_prompt").is_true(),
                &kw,
            );
            let expected = get(&case, "expected");
            if let Some(want) = expected.as_str() {
                let got = out.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(got, want, "{name}");
                rendered += 1;
            } else {
                let want = s(&case, "error");
                let err = out.expect_err("transformers raised here").to_string();
                assert!(
                    err.contains(&want),
                    "{name}: {err:?} should contain {want:?}"
                );
                errors += 1;
            }
        }
    }
    assert_eq!((rendered, errors), (11, 1));
}

#[test]
fn smollm2_template_from_tokenizer_config_and_gguf() {
    let all = templates();
    let smol = all.get_item(&Value::from(0)).unwrap();
    let case = get(&smol, "cases").get_item(&Value::from(0)).unwrap();
    let want = s(&case, "expected");
    let messages = [
        ChatMessage::new("system", "You are a terse assistant."),
        ChatMessage::new("user", "What is the capital of France?"),
    ];

    let from_config =
        ChatTemplate::from_tokenizer_config(fixtures().join("smollm2/tokenizer_config.json"), None)
            .unwrap();
    assert_eq!(
        from_config
            .special_tokens()
            .get("eos_token")
            .map(String::as_str),
        Some("<|im_end|>")
    );
    assert_eq!(from_config.render(&messages, true).unwrap(), want);

    let gz = std::fs::read(fixtures().join("smollm2/gguf_spec.json.gz")).unwrap();
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut text)
        .unwrap();
    let spec: GgufTokenizerSpec = serde_json::from_slice(&text).unwrap();
    let from_gguf = ChatTemplate::from_gguf_spec(&spec).unwrap();
    assert_eq!(from_gguf.source(), from_config.source());
    assert_eq!(
        from_gguf
            .special_tokens()
            .get("bos_token")
            .map(String::as_str),
        Some("<|im_start|>")
    );
    assert_eq!(from_gguf.render(&messages, true).unwrap(), want);
    // Without the generation prompt the text stops after the user turn.
    let no_prompt = from_gguf.render(&messages, false).unwrap();
    assert_eq!(no_prompt, want.trim_end_matches("<|im_start|>assistant\n"));
}

#[test]
fn named_templates_and_pretrained_dir() {
    let cfg = serde_json::json!({
        "bos_token": {"content": "<s>", "special": true},
        "eos_token": "</s>",
        "chat_template": [
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}"},
            {"name": "tool_use", "template": "tools={{ tools | length }}"}
        ]
    });
    let msgs = [ChatMessage::new("user", "hi")];
    let default = ChatTemplate::from_tokenizer_config_value(&cfg, None).unwrap();
    assert_eq!(default.render(&msgs, false).unwrap(), "<s>hi</s>");
    let tools = ChatTemplate::from_tokenizer_config_value(&cfg, Some("tool_use")).unwrap();
    let t = json_to_value(r#"[{"name": "a"}, {"name": "b"}]"#).unwrap();
    assert_eq!(
        tools
            .render_with(Value::from(Vec::<Value>::new()), false, &[("tools", t)])
            .unwrap(),
        "tools=2"
    );
    let err = ChatTemplate::from_tokenizer_config_value(&cfg, Some("rag")).unwrap_err();
    assert!(err.to_string().contains("tool_use"), "{err}");
    let err = ChatTemplate::from_tokenizer_config_value(&serde_json::json!({}), None).unwrap_err();
    assert!(err.to_string().contains("no chat_template"), "{err}");

    // A model folder with `chat_template.jinja` (as transformers 5 saves it).
    let dir = std::env::temp_dir().join(format!("tensor-io-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chat_template.jinja"), "[{{ eos_token }}]\n").unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = ChatTemplate::from_pretrained_dir(&dir).unwrap();
    // Jinja2 drops a single trailing newline of the template.
    assert_eq!(t.render(&msgs, false).unwrap(), "[</s>]");
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    let t = ChatTemplate::from_pretrained_dir(&dir).unwrap();
    assert_eq!(t.render(&msgs, false).unwrap(), "<s>hi</s>");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn render(src: &str, kwargs: &[(&str, Value)]) -> String {
    ChatTemplate::new(src)
        .unwrap()
        .render_with(Value::from(Vec::<Value>::new()), false, kwargs)
        .unwrap()
}

#[test]
fn tojson_writes_what_python_json_dumps_writes() {
    let x = json_to_value(
        r#"{"b": [1, 2.0, null, true], "a": "é\"\n\u0001😀", "c": {}, "d": [], "e": 1e20, "f": 0.00001}"#,
    )
    .unwrap();
    let kw = [("x", x)];
    // Expected strings are Python's json.dumps output for the same object.
    assert_eq!(
        render("{{ x | tojson }}", &kw),
        r#"{"b": [1, 2.0, null, true], "a": "é\"\n\u0001😀", "c": {}, "d": [], "e": 1e+20, "f": 1e-05}"#
    );
    assert_eq!(
        render("{{ x | tojson(ensure_ascii=True, sort_keys=True) }}", &kw),
        r#"{"a": "\u00e9\"\n\u0001\ud83d\ude00", "b": [1, 2.0, null, true], "c": {}, "d": [], "e": 1e+20, "f": 1e-05}"#
    );
    assert_eq!(
        render("{{ x | tojson(indent=2) }}", &kw),
        "{\n  \"b\": [\n    1,\n    2.0,\n    null,\n    true\n  ],\n  \"a\": \"é\\\"\\n\\u0001😀\",\n  \"c\": {},\n  \"d\": [],\n  \"e\": 1e+20,\n  \"f\": 1e-05\n}"
    );
    assert_eq!(
        render("{{ x | tojson(separators=(',', ':')) }}", &kw),
        r#"{"b":[1,2.0,null,true],"a":"é\"\n\u0001😀","c":{},"d":[],"e":1e+20,"f":1e-05}"#
    );
    // No HTML escaping (minijinja's own tojson would write \u003c).
    assert_eq!(render("{{ '<a & b>' | tojson }}", &[]), "\"<a & b>\"");
}

#[test]
fn python_semantics() {
    // Values print as Python's str() does.
    let v = json_to_value(r#"[1, "a", null, true, {"k": "it's"}, 2.5]"#).unwrap();
    assert_eq!(
        render("{{ v }}|{{ true }}|{{ none }}|{{ 3.0 }}", &[("v", v)]),
        r#"[1, 'a', None, True, {'k': "it's"}, 2.5]|True|None|3.0"#
    );
    // String methods through pycompat, and loop variables.
    assert_eq!(
        render(
            "{{ '  Hi  '.strip() }}{{ 'a,b'.split(',') | length }}{{ 'xyz'.startswith('x') }}\
             {{ 'abc'.upper() }}{{ 'a-b'.replace('-', '+') }}\
             {% for i in [1, 2, 3] %}{{ loop.index0 }}{% if loop.last %}!{% endif %}{% endfor %}",
            &[]
        ),
        "Hi2TrueABCa+b012!"
    );
    // Dict methods, namespaces and loop controls.
    let m = json_to_value(r#"{"z": 1, "a": 2}"#).unwrap();
    assert_eq!(
        render(
            "{% set ns = namespace(n=0) %}{% for k, v in m.items() %}{{ k }}{{ v }}{% set ns.n = ns.n + v %}{% endfor %}\
             ={{ ns.n }} {{ m.get('q', 'dflt') }}\
             {% for i in range(10) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}",
            &[("m", m)]
        ),
        "z1a2=3 dflt01"
    );
    // trim_blocks + lstrip_blocks: block lines leave no blank lines or indentation.
    assert_eq!(
        render(
            "{% if true %}\n    {% if true %}\nx\n    {% endif %}\n{% endif %}\ny",
            &[]
        ),
        "x\ny"
    );
    // `tools` and `documents` are defined (as none) unless given; kwargs override special tokens.
    let t = ChatTemplate::new("{{ tools is none }} {{ documents is defined }} {{ bos_token }}")
        .unwrap()
        .with_special_token("bos_token", "<s>");
    let empty = Value::from(Vec::<Value>::new());
    assert_eq!(
        t.render_with(empty.clone(), false, &[]).unwrap(),
        "True True <s>"
    );
    assert_eq!(
        t.render_with(empty, false, &[("bos_token", Value::from("<B>"))])
            .unwrap(),
        "True True <B>"
    );
    // {% generation %} blocks render their content.
    assert_eq!(render("{% generation %}gen{% endgeneration %}", &[]), "gen");
    // strftime_now gives today's date.
    let year = render("{{ strftime_now('%Y') }}", &[]);
    assert!(year.len() == 4 && year.starts_with('2'), "{year}");
}

#[test]
fn template_errors_are_reported() {
    let err = ChatTemplate::new("{% if %}").unwrap_err().to_string();
    assert!(err.contains("chat_template"), "{err}");
    let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
    let err = t
        .render(&[ChatMessage::new("user", "x")], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("roles must alternate"), "{err}");
    let err = ChatTemplate::from_gguf_spec(&GgufTokenizerSpec::default()).unwrap_err();
    assert!(
        err.to_string().contains("no tokenizer.chat_template"),
        "{err}"
    );
    assert!(json_to_value("{\"a\": ").is_err());
}
