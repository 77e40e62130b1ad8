//! A small PromQL reader that finds the names a query depends on: every
//! series selector (metric name and label matchers) and every label the
//! query names (by, without, on, ignoring, group_left, group_right, the
//! source labels of label_replace/label_join) or makes (their target,
//! count_values). It is not a full parser: Prometheus' own parser (promtool)
//! checks the syntax; this only has to find names, and it refuses what it
//! cannot read rather than guessing.
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    /// Operators and brackets; a whole `[...]` range is one `[]`.
    Punct(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    pub op: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names {
    pub selectors: Vec<Selector>,
    /// Labels the query refers to outside selectors.
    pub labels_used: BTreeSet<String>,
    /// Labels the query creates (label_replace, label_join, count_values).
    pub labels_made: BTreeSet<String>,
}

const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OTHER_KEYWORDS: [&str; 6] = ["bool", "and", "or", "unless", "offset", "atan2"];

pub fn lex(q: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = q.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            toks.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err(format!("unterminated string in {q:?}"));
                };
                i += 1;
                if d == c {
                    break;
                }
                if d == '\\' && c != '`' {
                    let Some(&e) = chars.get(i) else {
                        return Err(format!("unterminated string in {q:?}"));
                    };
                    i += 1;
                    s.push(e);
                } else {
                    s.push(d);
                }
            }
            toks.push(Tok::Str(s));
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            if i == chars.len() {
                return Err(format!("unterminated range in {q:?}"));
            }
            i += 1;
            toks.push(Tok::Punct("[]".into()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) {
                toks.push(Tok::Punct(two));
                i += 2;
            } else if "(){},=<>+-*/%^@".contains(c) {
                toks.push(Tok::Punct(c.to_string()));
                i += 1;
            } else {
                return Err(format!("unexpected character {c:?} in {q:?}"));
            }
        }
    }
    Ok(toks)
}

fn is_punct(t: Option<&Tok>, p: &str) -> bool {
    matches!(t, Some(Tok::Punct(x)) if x == p)
}

/// Reads `label op "value", ...}` starting after a `{`; returns the index
/// after the `}`.
fn matchers(toks: &[Tok], mut i: usize, q: &str) -> Result<(Vec<Matcher>, usize), String> {
    let mut out = Vec::new();
    loop {
        match toks.get(i) {
            Some(Tok::Punct(p)) if p == "}" => return Ok((out, i + 1)),
            Some(Tok::Punct(p)) if p == "," => i += 1,
            Some(Tok::Ident(label)) => {
                let op = match toks.get(i + 1) {
                    Some(Tok::Punct(op)) if ["=", "!=", "=~", "!~"].contains(&op.as_str()) => op,
                    other => {
                        return Err(format!(
                            "expected a matcher operator, got {other:?} in {q:?}"
                        ));
                    }
                };
                let Some(Tok::Str(value)) = toks.get(i + 2) else {
                    return Err(format!("expected a string after {label}{op} in {q:?}"));
                };
                out.push(Matcher {
                    label: label.clone(),
                    op: op.clone(),
                    value: value.clone(),
                });
                i += 3;
            }
            other => return Err(format!("unexpected {other:?} in a selector of {q:?}")),
        }
    }
}

/// The top-level arguments of the call whose `(` is at `open`: for each, the
/// token index where it starts.
fn call_args(toks: &[Tok], open: usize) -> Vec<usize> {
    let mut depth = 0;
    let mut starts = vec![open + 1];
    for (j, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct(p) if p == "(" || p == "{" => depth += 1,
            Tok::Punct(p) if p == ")" || p == "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Punct(p) if p == "," && depth == 1 => starts.push(j + 1),
            _ => {}
        }
    }
    starts
}

fn string_arg(toks: &[Tok], args: &[usize], n: usize, q: &str) -> Result<String, String> {
    match args.get(n).and_then(|&i| toks.get(i)) {
        Some(Tok::Str(s)) => Ok(s.clone()),
        other => Err(format!(
            "argument {n} should be a string, got {other:?} in {q:?}"
        )),
    }
}

pub fn names(q: &str) -> Result<Names, String> {
    let toks = lex(q)?;
    let mut n = Names::default();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Ident(w) if LABEL_LIST_KEYWORDS.contains(&w.as_str()) => {
                i += 1;
                if is_punct(toks.get(i), "(") {
                    i += 1;
                    while !is_punct(toks.get(i), ")") {
                        match toks.get(i) {
                            Some(Tok::Ident(l)) => {
                                n.labels_used.insert(l.clone());
                            }
                            Some(Tok::Punct(p)) if p == "," => {}
                            other => {
                                return Err(format!("unexpected {other:?} in {w}(...) of {q:?}"));
                            }
                        }
                        i += 1;
                    }
                    i += 1;
                }
            }
            Tok::Ident(w) if OTHER_KEYWORDS.contains(&w.as_str()) => i += 1,
            // An aggregation with its modifier first: `sum by (x) (...)`.
            Tok::Ident(_) if matches!(toks.get(i + 1), Some(Tok::Ident(k)) if k == "by" || k == "without") => {
                i += 1
            }
            Tok::Ident(w) if is_punct(toks.get(i + 1), "(") => {
                let args = call_args(&toks, i + 1);
                match w.as_str() {
                    "label_replace" => {
                        n.labels_made.insert(string_arg(&toks, &args, 1, q)?);
                        let src = string_arg(&toks, &args, 3, q)?;
                        n.labels_used.insert(src);
                    }
                    "label_join" => {
                        n.labels_made.insert(string_arg(&toks, &args, 1, q)?);
                        for k in 3..args.len() {
                            n.labels_used.insert(string_arg(&toks, &args, k, q)?);
                        }
                    }
                    "count_values" => {
                        n.labels_made.insert(string_arg(&toks, &args, 0, q)?);
                    }
                    _ => {}
                }
                i += 1;
            }
            Tok::Ident(metric) => {
                let (m, next) = if is_punct(toks.get(i + 1), "{") {
                    matchers(&toks, i + 2, q)?
                } else {
                    (Vec::new(), i + 1)
                };
                n.selectors.push(Selector {
                    metric: metric.clone(),
                    matchers: m,
                });
                i = next;
            }
            Tok::Punct(p) if p == "{" => {
                let (m, next) = matchers(&toks, i + 1, q)?;
                let Some(name) = m.iter().find(|m| m.label == "__name__" && m.op == "=") else {
                    return Err(format!(
                        "a selector without a fixed metric name cannot be checked: {q:?}"
                    ));
                };
                n.selectors.push(Selector {
                    metric: name.value.clone(),
                    matchers: m
                        .iter()
                        .filter(|m| m.label != "__name__")
                        .cloned()
                        .collect(),
                });
                i = next;
            }
            _ => i += 1,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_selectors_and_labels() {
        let n = names(
            r#"sum by (instance, container_id) (rate(apptheus_container_cpu_usage_seconds_total{instance=~"a|b"}[5m]))
               * on(container_id, instance) group_left(user) apptheus_container_info{user!=""} offset 1m"#,
        )
        .unwrap();
        let metrics: Vec<&str> = n.selectors.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(
            metrics,
            [
                "apptheus_container_cpu_usage_seconds_total",
                "apptheus_container_info"
            ]
        );
        assert_eq!(n.selectors[0].matchers[0].label, "instance");
        assert_eq!(n.selectors[0].matchers[0].value, "a|b");
        let used: Vec<&str> = n.labels_used.iter().map(String::as_str).collect();
        assert_eq!(used, ["container_id", "instance", "user"]);
    }

    #[test]
    fn label_functions_and_name_matchers() {
        let n = names(
            r#"label_replace(histogram_quantile(0.99, sum without (le2) (rate({__name__="x_bucket", le!=""}[1m]))), "node", "$1", "instance", "(.*):.*")"#,
        )
        .unwrap();
        assert_eq!(n.selectors[0].metric, "x_bucket");
        assert_eq!(n.selectors[0].matchers.len(), 1);
        assert!(n.labels_made.contains("node"));
        assert!(n.labels_used.contains("instance") && n.labels_used.contains("le2"));
        assert!(names(r#"{job=~".+"}"#).is_err());
        assert!(names(r#"x{a="b"#).is_err());
    }
}
