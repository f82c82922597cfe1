//! Chat templates: the Jinja templates that turn a conversation into a model's prompt text,
//! rendered with `minijinja` the way `transformers`' `apply_chat_template(..., tokenize=False)`
//! renders them with Jinja2.
//!
//! What a template sees, as in `transformers`:
//! * `messages` (a list of maps with `role`, `content`, and whatever else the caller put there),
//!   `add_generation_prompt`, `tools` and `documents` (`none` unless given), the tokenizer's
//!   special tokens (`bos_token`, `eos_token`, `unk_token`, `pad_token`), and any extra keyword
//!   arguments (which override the special tokens);
//! * `raise_exception(msg)`, `strftime_now(fmt)` (UTC), `namespace(...)`, `dict(...)`, `range`;
//! * a `tojson` filter that writes what Python's `json.dumps` writes (`ensure_ascii=False`,
//!   `indent`, `separators`, `sort_keys`), and printing of values as Python's `str()` does
//!   (`True`, `None`, `['a', 1]`);
//! * Python string/dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, `.get()`, ...);
//! * `trim_blocks` and `lstrip_blocks` on, a single trailing newline removed, `break`/`continue`,
//!   and `{% generation %}` blocks rendered as plain content.
//!
//! ```
//! use tensor_io::chat_template::{ChatMessage, ChatTemplate};
//! let t = ChatTemplate::new(
//!     "{% for m in messages %}<|{{ m.role }}|>{{ m.content.strip() }}\n{% endfor %}\
//!      {% if add_generation_prompt %}<|assistant|>{% endif %}",
//! )?;
//! let text = t.render(&[ChatMessage::new("user", " hi ")], true)?;
//! assert_eq!(text, "<|user|>hi\n<|assistant|>");
//! # Ok::<(), tensor_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The template value type (`minijinja`'s), re-exported for [`ChatTemplate::render_with`].
pub use minijinja::value::Value;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use tensor_core::{Error, Result};

use crate::tokenizer::GgufTokenizerSpec;

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template plus the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    special_tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

fn template_err(op: &'static str, e: minijinja::Error) -> Error {
    // The Display of a minijinja error names the kind, the line and the detail.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let _ = write!(msg, ": {s}");
        source = s.source();
    }
    Error::invalid(op, msg)
}

/// A special token as `tokenizer_config.json` spells it: a string, or an `AddedToken` object.
fn config_token(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(m) => m.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

impl ChatTemplate {
    /// Compile a template's source text.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let source: String = source.into();
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| template_err("chat_template", e))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(&source))
            .map_err(|e| template_err("chat_template", e))?;
        Ok(Self {
            env,
            source,
            special_tokens: BTreeMap::new(),
        })
    }

    /// The template named `name` (or the default one) of a `tokenizer_config.json`'s
    /// `chat_template`, a string or a list of `{"name", "template"}`; its special tokens come along.
    pub fn from_tokenizer_config(path: impl AsRef<Path>, name: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("parsing {}: {e}", path.display())))?;
        Self::from_tokenizer_config_value(&cfg, name)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }

    /// As [`ChatTemplate::from_tokenizer_config`], from the parsed JSON.
    pub fn from_tokenizer_config_value(
        cfg: &serde_json::Value,
        name: Option<&str>,
    ) -> Result<Self> {
        let source = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => {
                let want = name.unwrap_or("default");
                let named = list.iter().find_map(|t| {
                    (t.get("name")?.as_str()? == want).then(|| t.get("template")?.as_str())?
                });
                match named {
                    Some(s) => s.to_owned(),
                    None => {
                        let names: Vec<&str> = list
                            .iter()
                            .filter_map(|t| t.get("name")?.as_str())
                            .collect();
                        return Err(Error::invalid(
                            "chat_template",
                            format!(
                                "no chat template named {want:?} (have: {})",
                                names.join(", ")
                            ),
                        ));
                    }
                }
            }
            _ => {
                return Err(Error::invalid(
                    "chat_template",
                    "tokenizer_config.json has no chat_template",
                ))
            }
        };
        let mut t = Self::new(source)?;
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some(v) = config_token(cfg.get(key)) {
                t.special_tokens.insert(key.to_owned(), v);
            }
        }
        Ok(t)
    }

    /// A model folder's template as `transformers` finds it: `chat_template.jinja` if present,
    /// else `tokenizer_config.json`'s `chat_template`; special tokens from `tokenizer_config.json`.
    pub fn from_pretrained_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("tokenizer_config.json");
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source = std::fs::read_to_string(&jinja).map_err(|source| Error::Io {
                context: format!("reading {}", jinja.display()),
                source,
            })?;
            let mut t = Self::new(source)?;
            if cfg_path.is_file() {
                let text = std::fs::read_to_string(&cfg_path).map_err(|source| Error::Io {
                    context: format!("reading {}", cfg_path.display()),
                    source,
                })?;
                let cfg: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::msg(format!("parsing {}: {e}", cfg_path.display())))?;
                for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
                    if let Some(v) = config_token(cfg.get(key)) {
                        t.special_tokens.insert(key.to_owned(), v);
                    }
                }
            }
            return Ok(t);
        }
        Self::from_tokenizer_config(cfg_path, None)
    }

    /// The GGUF `tokenizer.chat_template`, with the special tokens its ids name.
    pub fn from_gguf_spec(spec: &GgufTokenizerSpec) -> Result<Self> {
        let source = spec.chat_template.clone().ok_or_else(|| {
            Error::invalid("chat_template", "the GGUF has no tokenizer.chat_template")
        })?;
        let mut t = Self::new(source)?;
        for (key, id) in [
            ("bos_token", spec.bos),
            ("eos_token", spec.eos),
            ("unk_token", spec.unk),
            ("pad_token", spec.pad),
        ] {
            if let Some(tok) = spec.token(id) {
                t.special_tokens.insert(key.to_owned(), tok.to_owned());
            }
        }
        Ok(t)
    }

    /// Set a special token variable (`bos_token`, `eos_token`, ...).
    pub fn with_special_token(mut self, name: &str, value: impl Into<String>) -> Self {
        self.special_tokens.insert(name.to_owned(), value.into());
        self
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The special token variables the template is rendered with.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }

    /// Render plain role/content messages.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        self.render_with(Value::from(messages), add_generation_prompt, &[])
    }

    /// Render any messages value (e.g. from [`json_to_value`], with tool calls), plus keyword
    /// arguments (`tools`, `documents`, `date_string`, `enable_thinking`, ...).
    pub fn render_with(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        kwargs: &[(&str, Value)],
    ) -> Result<String> {
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), messages),
            ("tools".into(), Value::from(())),
            ("documents".into(), Value::from(())),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
        ];
        let mut set = |k: &str, v: Value| {
            if let Some(slot) = ctx.iter_mut().find(|(name, _)| name == k) {
                slot.1 = v;
            } else {
                ctx.push((k.to_owned(), v));
            }
        };
        for (k, v) in &self.special_tokens {
            set(k, Value::from(v.as_str()));
        }
        for (k, v) in kwargs {
            set(k, v.clone());
        }
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_err("chat_template", e))?;
        tmpl.render(Value::from_pairs(ctx))
            .map_err(|e| template_err("chat_template.render", e))
    }
}

/// Parse JSON text into a template value, keeping the order of object keys (what Python's
/// `json.loads` keeps, and so what `tojson` and `.items()` show).
pub fn json_to_value(text: &str) -> Result<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = JsonValue::deserialize(&mut de)
        .map_err(|e| Error::invalid("json_to_value", e.to_string()))?;
    de.end()
        .map_err(|e| Error::invalid("json_to_value", e.to_string()))?;
    Ok(v.0)
}

/// A serde-built template value that keeps map order.
struct JsonValue(Value);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = JsonValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<JsonValue, E> {
        Ok(JsonValue(Value::from(v)))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<JsonValue, E> {
        Ok(JsonValue(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<JsonValue, E> {
        Ok(JsonValue(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<JsonValue, E> {
        Ok(JsonValue(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<JsonValue, E> {
        Ok(JsonValue(Value::from(v)))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<JsonValue, E> {
        Ok(JsonValue(Value::from(v)))
    }
    fn visit_unit<E>(self) -> std::result::Result<JsonValue, E> {
        Ok(JsonValue(Value::from(())))
    }
    fn visit_none<E>(self) -> std::result::Result<JsonValue, E> {
        Ok(JsonValue(Value::from(())))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<JsonValue, D::Error> {
        JsonValue::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<JsonValue, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(JsonValue(Value::from(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<JsonValue, A::Error> {
        let mut pairs = Vec::new();
        while let Some((k, JsonValue(v))) = map.next_entry::<String, JsonValue>()? {
            pairs.push((Value::from(k), v));
        }
        Ok(JsonValue(Value::from_pairs(pairs)))
    }
}

/// Templates may wrap assistant turns in `{% generation %}...{% endgeneration %}` (a
/// `transformers` extension that marks them for masking); rendered, those tags are no-ops.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let inner =
            tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(tag);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(format)`: the current UTC time, formatted like Python's `strftime` for the
/// directives chat templates use.
fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs).map(Value::from)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn strftime(
    format: &str,
    unix_secs: i64,
) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let tod = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (tod / 3600, (tod / 60) % 60, tod % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('m') => write!(out, "{m:02}"),
            Some('d') => write!(out, "{d:02}"),
            Some('e') => write!(out, "{d:2}"),
            Some('-') => match chars.next() {
                Some('d') => write!(out, "{d}"),
                Some('m') => write!(out, "{m}"),
                Some('H') => write!(out, "{hh}"),
                Some(other) => write!(out, "%-{other}"),
                None => write!(out, "%-"),
            },
            Some('B') => write!(out, "{}", MONTHS[m as usize - 1]),
            Some('b') | Some('h') => write!(out, "{}", &MONTHS[m as usize - 1][..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('H') => write!(out, "{hh:02}"),
            Some('I') => write!(out, "{:02}", if hh % 12 == 0 { 12 } else { hh % 12 }),
            Some('p') => write!(out, "{}", if hh < 12 { "AM" } else { "PM" }),
            Some('M') => write!(out, "{mm:02}"),
            Some('S') => write!(out, "{ss:02}"),
            Some('j') => write!(out, "{yday:03}"),
            Some('F') => write!(out, "{y}-{m:02}-{d:02}"),
            Some('%') => write!(out, "%"),
            Some(other) => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive %{other}"),
                ))
            }
            None => write!(out, "%"),
        }
        .expect("writing to a String cannot fail");
    }
    Ok(out)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside [1e-4, 1e16).
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{f:e}"); // e.g. "1.5e-5", shortest round-trip digits
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// Python's `repr(str)`.
fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn is_float(v: &Value) -> bool {
    v.kind() == ValueKind::Number && !v.is_integer()
}

fn number_f64(v: &Value) -> f64 {
    f64::try_from(v.clone()).unwrap_or(f64::NAN)
}

/// Python's `str(value)` (top level) / `repr(value)` (nested).
fn py_str(v: &Value, nested: bool, out: &mut String) -> std::result::Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number if is_float(v) => out.push_str(&py_float(number_f64(v))),
        ValueKind::String if nested => py_repr_str(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_str(&item, true, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_str(&key, true, out)?;
                out.push_str(": ");
                py_str(&v.get_item(&key)?, true, out)?;
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
    Ok(())
}

fn python_formatter(
    out: &mut minijinja::Output,
    _state: &mut State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    let mut s = String::new();
    py_str(value, false, &mut s)?;
    out.write_str(&s).map_err(minijinja::Error::from)
}

struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_write(
    v: &Value,
    opts: &JsonOptions,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: an undefined value is not JSON serializable",
            ))
        }
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if is_float(v) => {
            let f = number_f64(v);
            if f.is_nan() {
                out.push_str("NaN");
            } else if f.is_infinite() {
                out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
            } else {
                out.push_str(&py_float(f));
            }
        }
        ValueKind::Number => {
            let _ = write!(out, "{v}");
        }
        ValueKind::String => json_str(v.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, level + 1);
                json_write(item, opts, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, level + 1);
                let key_text = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::None => "null".to_owned(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
                    _ => key.to_string(),
                };
                json_str(&key_text, opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                json_write(&v.get_item(key)?, opts, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => json_str(&v.to_string(), opts.ensure_ascii, out),
    }
    Ok(())
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, no HTML escaping.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
        },
    };
    let (item_sep, key_sep) = match separators.filter(|s| !s.is_none()) {
        Some(s) => {
            let parts: Vec<Value> = s.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => (a.to_string(), b.to_string()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair (item_separator, key_separator)",
                    ))
                }
            }
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    json_write(&value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (f, want) in [
            (1.0, "1.0"),
            (21.5, "21.5"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(py_float(f), want, "{f}");
        }
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 12:34:56 UTC, a Friday
        let t = 1_721_997_296;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime("%A %B %-d %H:%M:%S %j %y %%", t).unwrap(),
            "Friday July 26 12:34:56 208 24 %"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0).unwrap(), "1970-01-01 Thu");
        assert_eq!(strftime("%F", 951_782_400).unwrap(), "2000-02-29");
        assert!(strftime("%Q", 0).is_err());
    }

    #[test]
    fn generation_tags_are_dropped() {
        assert_eq!(
            strip_generation_tags("a{% generation %}b{%- endgeneration -%}c{% if x %}"),
            "abc{% if x %}"
        );
    }
}
