//! Just enough Markdown for the docs' checks: headings and the anchors
//! GitHub gives them, inline links, and tables, all outside code blocks.

/// A relative link of a page: the 1-based line it is on and its target
/// (`file.md`, `file.md#anchor`, `#anchor`).
#[derive(Debug, PartialEq, Eq)]
pub struct Link {
    pub line: usize,
    pub target: String,
}

/// A table: its header cells and its rows' cells, trimmed.
#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The lines of `text` outside fenced code blocks, with their 1-based
/// numbers.
pub fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// `text` without its inline code spans (their content could look like a
/// link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The anchor GitHub gives a heading's text: lower case, links and
/// emphasis reduced to their text, every character but letters, digits,
/// spaces, `-` and `_` dropped, spaces made `-`.
pub fn anchor(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // [text](target) -> text
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| {
            after[close + 2..]
                .find(')')
                .map(|end| (close, close + 2 + end + 1))
        }) {
            Some((close, end)) => {
                text.push_str(&after[..close]);
                rest = &after[end..];
            }
            None => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor of a page: its headings' (a repeated one gets `-1`, `-2`,
/// ... as on GitHub) and the `id`s of its `<a id="...">` tags.
pub fn anchors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = anchor(line[hashes..].trim());
            let mut name = base.clone();
            let mut n = 0;
            while out.contains(&name) {
                n += 1;
                name = format!("{base}-{n}");
            }
            out.push(name);
        }
        let mut rest = line;
        while let Some(at) = rest.find("<a id=\"") {
            let after = &rest[at + 7..];
            let Some(end) = after.find('"') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// Every inline link of a page whose target is relative (not `http:`,
/// `https:` or `mailto:`), outside code blocks and code spans.
pub fn relative_links(text: &str) -> Vec<Link> {
    let mut out = Vec::new();
    for (line_no, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].trim();
            let absolute = ["http://", "https://", "mailto:"]
                .iter()
                .any(|s| target.starts_with(s));
            if !absolute && !target.is_empty() {
                out.push(Link {
                    line: line_no,
                    target: target.to_string(),
                });
            }
            rest = &after[end..];
        }
    }
    out
}

/// A table row's cells: split at every `|` not escaped as `\|`, the outer
/// pipes dropped.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in inner.chars() {
        match c {
            '|' if !escaped => out.push(String::new()),
            _ => out.last_mut().expect("one cell at least").push(c),
        }
        escaped = c == '\\';
    }
    out.iter().map(|c| c.trim().to_string()).collect()
}

/// Every table of a page (a header row, a `|---|` delimiter row, rows).
pub fn tables(text: &str) -> Vec<Table> {
    let lines = prose_lines(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        let (n, header) = lines[i];
        let (m, delimiter) = lines[i + 1];
        let is_delimiter = delimiter.trim().starts_with('|')
            && delimiter
                .trim()
                .chars()
                .all(|c| matches!(c, '|' | '-' | ':' | ' '));
        if header.trim().starts_with('|') && m == n + 1 && is_delimiter {
            let mut table = Table {
                header: cells(header),
                rows: Vec::new(),
            };
            i += 2;
            while i < lines.len()
                && lines[i].0 == lines[i - 1].0 + 1
                && lines[i].1.trim().starts_with('|')
            {
                table.rows.push(cells(lines[i].1));
                i += 1;
            }
            out.push(table);
        } else {
            i += 1;
        }
    }
    out
}

/// The code spans of a cell, in order (`` `--a`, `--b` `` gives both).
pub fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}
