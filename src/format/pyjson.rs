//! JSON written byte-for-byte as Python's `json.dumps(obj, indent=2, sort_keys=True)` does:
//! `", "`/`": "` separators (newlines with indent), keys sorted by code point, Python float
//! `repr` (`1e-05`, `6.0`), and `ensure_ascii` escaping when asked.

use serde_json::Value;

/// Serializes like `json.dumps(v, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)`.
pub fn dumps_indent2(v: &Value, ensure_ascii: bool) -> String {
    let mut s = String::new();
    write(&mut s, v, 0, ensure_ascii);
    s
}

fn write(s: &mut String, v: &Value, level: usize, ascii: bool) {
    match v {
        Value::Null => s.push_str("null"),
        Value::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                s.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                s.push_str(&u.to_string());
            } else if let Some(f) = n.as_f64() {
                s.push_str(&py_float_repr(f));
            }
        }
        Value::String(t) => write_str(s, t, ascii),
        Value::Array(a) => {
            if a.is_empty() {
                s.push_str("[]");
                return;
            }
            s.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                newline(s, level + 1);
                write(s, x, level + 1, ascii);
            }
            newline(s, level);
            s.push(']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                s.push_str("{}");
                return;
            }
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            s.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                newline(s, level + 1);
                write_str(s, k, ascii);
                s.push_str(": ");
                write(s, &m[*k], level + 1, ascii);
            }
            newline(s, level);
            s.push('}');
        }
    }
}

fn newline(s: &mut String, level: usize) {
    s.push('\n');
    for _ in 0..level {
        s.push_str("  ");
    }
}

fn write_str(s: &mut String, t: &str, ascii: bool) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            '\u{08}' => s.push_str("\\b"),
            '\u{0c}' => s.push_str("\\f"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c if ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    s.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits; scientific when the exponent is below
/// -4 or at least 16; always a `.0` or an exponent so it reads back as a float.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e3", "1e-5".
    let e = format!("{:e}", f);
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let m = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let es = if exp < 0 {
            format!("-{:02}", -exp)
        } else {
            format!("+{:02}", exp)
        };
        return format!("{sign}{m}e{es}");
    }
    let n = digits.len() as i32;
    if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        format!("{sign}0.{zeros}{digits}")
    } else if exp + 1 >= n {
        let zeros = "0".repeat((exp + 1 - n) as usize);
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (a, b) = digits.split_at((exp + 1) as usize);
        format!("{sign}{a}.{b}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        for (f, want) in [
            (1e-05, "1e-05"),
            (6.0, "6.0"),
            (10000.0, "10000.0"),
            (0.039459228515625, "0.039459228515625"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (-0.5, "-0.5"),
            (0.0, "0.0"),
            (0.02, "0.02"),
            (2.5e-7, "2.5e-07"),
        ] {
            assert_eq!(py_float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn objects_sort_keys_and_indent() {
        let v: Value = serde_json::from_str(r#"{"b":[1,2],"a":{"y":1e-5,"x":"é"},"c":[],"d":{}}"#).unwrap();
        assert_eq!(
            dumps_indent2(&v, true),
            "{\n  \"a\": {\n    \"x\": \"\\u00e9\",\n    \"y\": 1e-05\n  },\n  \"b\": [\n    1,\n    2\n  ],\n  \"c\": [],\n  \"d\": {}\n}"
        );
        assert!(dumps_indent2(&v, false).contains("\"x\": \"é\""));
    }
}
