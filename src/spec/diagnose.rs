//! Turning parse and validation failures into one-paragraph messages: file, line and column,
//! the key, what was expected, and a "did you mean" for misspellings.

use std::path::Path;

/// "did you mean `x`?" when a candidate is close enough, else "".
pub fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    let best = candidates
        .iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                *c,
            )
        })
        .min();
    match best {
        Some((d, c)) if d > 0 && d <= 2.max(word.len() / 3) => format!(" (did you mean `{c}`?)"),
        _ => String::new(),
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" -> the hint for `x`.
fn hint_from_message(msg: &str) -> String {
    if !(msg.contains("unknown field") || msg.contains("unknown variant")) {
        return String::new();
    }
    let quoted: Vec<&str> = msg.split('`').skip(1).step_by(2).collect();
    match quoted.split_first() {
        Some((word, rest)) if !rest.is_empty() => did_you_mean(word, rest),
        _ => String::new(),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|p| before.len() - p)
        .unwrap_or(before.len() + 1);
    (line, col)
}

pub fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let msg = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let hint = hint_from_message(&msg);
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("{}:{line}:{col}: {msg}{hint} (in `{src}`)", path.display())
        }
        None => format!("{}: {msg}{hint}", path.display()),
    }
}

pub fn figment_error(path: &Path, e: &figment::Error, overrides: bool) -> String {
    let mut parts = Vec::new();
    for err in e.clone() {
        let key = if err.path.is_empty() {
            String::new()
        } else {
            format!("key `{}`: ", err.path.join("."))
        };
        let msg = err.kind.to_string();
        let hint = match &err.kind {
            figment::error::Kind::UnknownField(f, expected)
            | figment::error::Kind::UnknownVariant(f, expected) => did_you_mean(f, expected),
            _ => hint_from_message(&msg),
        };
        parts.push(format!("{key}{msg}{hint}"));
    }
    let origin = if overrides {
        " (after RUNNER_* environment and --set overrides)"
    } else {
        ""
    };
    format!("{}{origin}: {}", path.display(), parts.join("; "))
}

/// An error about `section.key`, located at the line that sets it when the file does.
pub fn key_error(path: &Path, text: &str, section: &str, key: &str, msg: &str) -> String {
    // top-level keys (`name`, `seed`) have no section
    let full = if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().to_string();
            continue;
        }
        let k = t.split('=').next().unwrap_or("").trim().trim_matches('"');
        if t.contains('=')
            && ((current == section && k == key) || (current.is_empty() && k == full))
        {
            let col = line.len() - line.trim_start().len() + 1;
            return format!("{}:{}:{col}: key `{full}`: {msg}", path.display(), i + 1);
        }
    }
    format!(
        "{}: key `{full}` (default or override): {msg}",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("freez", &["arch", "weights", "freeze"]),
            " (did you mean `freeze`?)"
        );
        assert_eq!(did_you_mean("zzzzzz", &["arch", "weights", "freeze"]), "");
        assert_eq!(
            hint_from_message(
                "unknown field `wieghts`, expected one of `arch`, `weights`, `freeze`"
            ),
            " (did you mean `weights`?)"
        );
    }
}
