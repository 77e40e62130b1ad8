//! The metrics reference of docs/metrics.md, written from the catalogue
//! (apptheus/src/export/catalogue.rs): every name, type, label and HELP,
//! in the catalogue's groups. Only the part between the markers is
//! written; the prose around it is the page's own.
use apptheus::testing::export::{Kind, Section};

pub const BEGIN: &str = "<!-- metrics:begin (written by `cargo xtask docs` from \
                         apptheus/src/export/catalogue.rs; edit the catalogue, not this) -->";
pub const END: &str = "<!-- metrics:end -->";

/// Text made safe for a table cell: `|` escaped, `<` and `>` as entities
/// (a HELP's `<name>` would otherwise be taken for an HTML tag).
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The generated part, markers included.
pub fn render(sections: &[Section]) -> String {
    let mut out = String::new();
    out.push_str(BEGIN);
    out.push('\n');
    for s in sections {
        out.push_str(&format!("\n### {}\n\n", s.title));
        out.push_str("| metric | type | labels | HELP |\n|---|---|---|---|\n");
        for m in s.metrics {
            let mut labels: Vec<String> = m.labels.iter().map(|l| format!("`{l}`")).collect();
            if m.kind == Kind::Histogram {
                labels.push("`le` (buckets)".to_string());
            }
            let labels = if labels.is_empty() {
                "none".to_string()
            } else {
                labels.join(", ")
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                m.name,
                m.kind.as_str(),
                labels,
                cell(m.help)
            ));
        }
    }
    out.push('\n');
    out.push_str(END);
    out
}

/// `page` with its generated part replaced by `generated`; an error when
/// the markers are missing, repeated or out of order.
pub fn splice(page: &str, generated: &str) -> Result<String, String> {
    let begins: Vec<usize> = page.match_indices(BEGIN).map(|(i, _)| i).collect();
    let ends: Vec<usize> = page.match_indices(END).map(|(i, _)| i).collect();
    match (begins.as_slice(), ends.as_slice()) {
        ([b], [e]) if b < e => Ok(format!(
            "{}{}{}",
            &page[..*b],
            generated,
            &page[e + END.len()..]
        )),
        _ => Err(format!(
            "the page must hold the line `{BEGIN}` once, then `{END}` once \
             (found {} and {})",
            begins.len(),
            ends.len()
        )),
    }
}
