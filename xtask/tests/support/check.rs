//! Checks a query against the catalogue of what the agent exports: every
//! series it selects must exist, every matcher must name a label of that
//! series, and every label the query names elsewhere (by, on, group_left,
//! label_replace, ...) must be on one of the series it selects or be made
//! by the query. Also: reading the queries out of a Grafana dashboard and a
//! Prometheus rule file.
use std::collections::BTreeSet;

use serde_json::Value;

use super::{catalogue::Catalogue, promql};

/// The labels a query's result can carry (an upper bound: the union of the
/// labels of every series it selects, and those it makes).
pub fn check_query(c: &Catalogue, q: &str) -> Result<BTreeSet<String>, Vec<String>> {
    let n = promql::names(q).map_err(|e| vec![e])?;
    let mut problems = Vec::new();
    if n.selectors.is_empty() {
        problems.push("the query selects no series".to_string());
    }
    let mut available = BTreeSet::new();
    for s in &n.selectors {
        let Some(labels) = c.labels(&s.metric) else {
            problems.push(format!("{} is not a series apptheus exports", s.metric));
            continue;
        };
        for m in &s.matchers {
            if !labels.contains(&m.label) {
                problems.push(format!(
                    "{} has no label {} (it has {labels:?})",
                    s.metric, m.label
                ));
            }
        }
        available.extend(labels.iter().cloned());
    }
    available.extend(n.labels_made.iter().cloned());
    for l in &n.labels_used {
        if !available.contains(l) {
            problems.push(format!(
                "label {l} is on none of the series the query selects"
            ));
        }
    }
    if problems.is_empty() {
        Ok(available)
    } else {
        Err(problems)
    }
}

/// `{{ name }}` and `{{name}}` in a Grafana legend; `$labels.name` in a
/// Prometheus template.
pub fn template_labels(s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = s;
    while let Some(i) = rest.find("$labels.") {
        rest = &rest[i + "$labels.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find("}}") else { break };
        let inner = rest[..end].trim();
        // A bare name is a Grafana legend's label; Go template actions
        // ({{ end }}) are not labels.
        let action = ["end", "else", "if", "with", "range"].contains(&inner);
        if !inner.is_empty()
            && !action
            && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.insert(inner.to_string());
        }
        rest = &rest[end..];
    }
    out
}

/// One query of a dashboard or rule file, and where it is.
#[derive(Debug, Clone)]
pub struct Query {
    pub origin: String,
    pub expr: String,
    /// Legend or alert template text that names labels of the result.
    pub templates: Vec<String>,
}

/// Grafana's built-in interval variables, as a Prometheus duration.
const BUILTIN: [(&str, &str); 5] = [
    ("__rate_interval", "5m"),
    ("__interval", "1m"),
    ("__range", "1h"),
    ("__range_s", "3600"),
    ("__interval_ms", "60000"),
];

/// Replaces `$name` and `${name}` by a value: the template variables by
/// `.*` (what "All" selects), the built-in intervals by a duration. An
/// unknown variable is an error.
pub fn substitute(expr: &str, vars: &BTreeSet<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        if braced {
            rest = &rest[1..];
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[name.len()..];
        if braced {
            let Some(end) = rest.find('}') else {
                return Err(format!("unclosed ${{ in {expr:?}"));
            };
            rest = &rest[end + 1..];
        }
        if let Some((_, v)) = BUILTIN.iter().find(|(n, _)| *n == name) {
            out.push_str(v);
        } else if vars.contains(&name) {
            out.push_str(".*");
        } else {
            return Err(format!(
                "${name} is not a variable of the dashboard ({expr:?})"
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn panels<'a>(list: &'a [Value], out: &mut Vec<&'a Value>) {
    for p in list {
        if let Some(inner) = p["panels"].as_array() {
            panels(inner, out);
        }
        if p["type"] != "row" {
            out.push(p);
        }
    }
}

/// Every query of a dashboard: panel targets, and the selectors of the
/// template variables' `label_values(selector, label)` (with the label to
/// check as a legend-like template).
pub fn dashboard_queries(d: &Value) -> Result<Vec<Query>, Vec<String>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let templating = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let vars: BTreeSet<String> = templating
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    for v in &templating {
        let name = v["name"].as_str().unwrap_or("?");
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .unwrap_or("");
        let Some(args) = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
        else {
            problems.push(format!(
                "variable {name}: only label_values(selector, label) is checked, got {q:?}"
            ));
            continue;
        };
        let Some((selector, label)) = args.rsplit_once(',') else {
            problems.push(format!(
                "variable {name}: label_values needs a selector: {q:?}"
            ));
            continue;
        };
        match substitute(selector, &vars) {
            Ok(expr) => out.push(Query {
                origin: format!("variable {name}"),
                expr,
                templates: vec![format!("{{{{{}}}}}", label.trim())],
            }),
            Err(e) => problems.push(format!("variable {name}: {e}")),
        }
    }
    let mut all = Vec::new();
    panels(
        d["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]),
        &mut all,
    );
    for p in all {
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?} has no query"));
        }
        for t in targets {
            let origin = format!(
                "panel {title:?} query {}",
                t["refId"].as_str().unwrap_or("?")
            );
            let Some(expr) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                problems.push(format!("{origin}: no expr"));
                continue;
            };
            match substitute(expr, &vars) {
                Ok(expr) => out.push(Query {
                    origin,
                    expr,
                    templates: t["legendFormat"]
                        .as_str()
                        .map(|s| vec![s.to_string()])
                        .unwrap_or_default(),
                }),
                Err(e) => problems.push(format!("{origin}: {e}")),
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Every rule of a Prometheus rule file, with its labels and annotations
/// as templates.
pub fn rule_queries(rules: &serde_norway::Value) -> Result<Vec<Query>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let groups = rules["groups"].as_sequence().cloned().unwrap_or_default();
    if groups.is_empty() {
        problems.push("no rule groups".to_string());
    }
    for g in groups {
        for r in g["rules"].as_sequence().cloned().unwrap_or_default() {
            let name = r["alert"]
                .as_str()
                .or_else(|| r["record"].as_str())
                .unwrap_or("?")
                .to_string();
            let Some(expr) = r["expr"].as_str() else {
                problems.push(format!("rule {name}: no expr"));
                continue;
            };
            let mut templates = Vec::new();
            for key in ["labels", "annotations"] {
                if let Some(m) = r[key].as_mapping() {
                    templates.extend(m.values().filter_map(|v| v.as_str().map(str::to_string)));
                }
            }
            out.push(Query {
                origin: format!("rule {name}"),
                expr: expr.to_string(),
                templates,
            });
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Checks every query; returns the problems, each with its origin.
pub fn check_all(c: &Catalogue, queries: &[Query]) -> Vec<String> {
    let mut problems = Vec::new();
    for q in queries {
        match check_query(c, &q.expr) {
            Ok(available) => {
                for t in &q.templates {
                    for l in template_labels(t) {
                        if !available.contains(&l) {
                            problems.push(format!(
                                "{}: the template {t:?} names label {l}, which the query's result cannot have",
                                q.origin
                            ));
                        }
                    }
                }
            }
            Err(ps) => problems.extend(ps.into_iter().map(|p| format!("{}: {p}", q.origin))),
        }
    }
    problems
}

/// Metric names in prose or queries (README.md, docs/, the dashboard, the rules):
/// `apptheus_...` and `process_...` words, with `{a,b}` alternatives
/// expanded and a trailing `{labels}` dropped, and `..._suffix` for a name
/// sharing a prefix with the name before it. Returns how many were found
/// and those `known` refuses.
pub fn unknown_metrics(text: &str, known: impl Fn(&str) -> bool) -> (usize, Vec<String>) {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut found = 0;
    let mut unknown = Vec::new();
    let mut previous: Option<String> = None;
    let mut i = 0;
    while i < bytes.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let starts = ["apptheus_", "process_", "..._"]
            .iter()
            .any(|p| rest.starts_with(p));
        let boundary = i == 0 || !(word(bytes[i - 1]) || bytes[i - 1] == b'-');
        if !(starts && boundary) {
            i += 1;
            continue;
        }
        let len = rest
            .bytes()
            .position(|b| !(word(b) || b == b'.' || b == b'{' || b == b'}' || b == b','))
            .unwrap_or(rest.len());
        i += len.max(1);
        let mut token = rest[..len].trim_end_matches(['.', ',']).to_string();
        // An unmatched `{` starts a selector: what follows is labels.
        if token.matches('{').count() > token.matches('}').count()
            && let Some(at) = token.rfind('{')
        {
            token.truncate(at);
        }
        // A trailing group is the series' labels.
        if token.ends_with('}')
            && let Some(at) = token.rfind('{')
        {
            token.truncate(at);
        }
        // A prefix (`apptheus_`, `process_*`) names no metric.
        if token.ends_with('_') || token.is_empty() {
            continue;
        }
        for name in expand(&token) {
            found += 1;
            match name.strip_prefix("...") {
                Some(suffix) => {
                    let resolved = previous.as_deref().and_then(|p| {
                        let mut cut = p.len();
                        while let Some(at) = p[..cut].rfind('_') {
                            let candidate = format!("{}{suffix}", &p[..at]);
                            if known(&candidate) {
                                return Some(candidate);
                            }
                            cut = at;
                        }
                        None
                    });
                    if resolved.is_none() {
                        unknown.push(match &previous {
                            Some(p) => format!("{name} (after {p})"),
                            None => format!("{name} (no full name before it)"),
                        });
                    }
                }
                None => {
                    if !known(&name) {
                        unknown.push(name.clone());
                    }
                    previous = Some(name);
                }
            }
        }
    }
    (found, unknown)
}

/// `a_{b,c}_d` -> `a_b_d`, `a_c_d` (groups nest in sequence, not inside
/// each other).
fn expand(token: &str) -> Vec<String> {
    let Some(open) = token.find('{') else {
        return vec![token.to_string()];
    };
    let Some(close) = token[open..].find('}').map(|c| open + c) else {
        return vec![token.to_string()];
    };
    let (head, tail) = (&token[..open], &token[close + 1..]);
    token[open + 1..close]
        .split(',')
        .flat_map(|alt| expand(&format!("{head}{alt}{tail}")))
        .collect()
}
