//! Docs a reader can find their way in (issue 26), checked as a reader
//! would: the README links every page under docs/; every flag of
//! `apptheus --help` is documented exactly once (in the flags table of
//! docs/operating.md); every relative link between the pages reaches a
//! file, and a heading there when it names one; and the metrics reference
//! in docs/metrics.md is what the metric catalogue gives (`cargo xtask
//! docs` writes it; this test fails until it is run after a change of the
//! catalogue).
mod markdown;
mod reference;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use apptheus::testing::export::{CATALOGUE, Kind, Metric, SECTIONS, Section};

const AGENT: &str = env!("CARGO_BIN_EXE_apptheus");

/// Set, `cargo xtask docs`: write docs/metrics.md instead of failing.
const UPDATE: &str = "APPTHEUS_UPDATE_DOCS";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pages of docs/, sorted.
fn docs_pages(root: &Path) -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map(|dir| {
            dir.map(|e| e.expect("a docs/ entry").path())
                .filter(|p| p.extension().is_some_and(|e| e == "md"))
                .collect()
        })
        .unwrap_or_default();
    pages.sort();
    pages
}

/// Every page a reader may open: the README, BENCHMARKS.md, docs/ and
/// the examples' READMEs.
fn all_pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
    pages.extend(docs_pages(root));
    if let Ok(examples) = std::fs::read_dir(root.join("examples")) {
        for e in examples {
            let readme = e.expect("an examples/ entry").path().join("README.md");
            if readme.is_file() {
                pages.push(readme);
            }
        }
    }
    pages
}

fn shown(root: &Path, page: &Path) -> String {
    page.strip_prefix(root)
        .unwrap_or(page)
        .display()
        .to_string()
}

/// A lexically normalised path (`a/b/../c` is `a/c`): the pages' links
/// name files that must exist, not symlinks to follow.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// What is wrong with the relative links of `pages`: a file that does not
/// exist, a heading that is not there.
fn link_problems(root: &Path, pages: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    for page in pages {
        let text = read(page);
        for link in markdown::relative_links(&text) {
            let (file, anchor) = match link.target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.target.as_str(), None),
            };
            let target = if file.is_empty() {
                page.clone()
            } else {
                normalise(&page.parent().expect("a page's directory").join(file))
            };
            let at = format!("{}:{}: {}", shown(root, page), link.line, link.target);
            if !target.exists() {
                problems.push(format!("{at}: no file {}", shown(root, &target)));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_page = target.extension().is_some_and(|e| e == "md");
                if !is_page
                    || !markdown::anchors(&read(&target))
                        .iter()
                        .any(|a| a == anchor)
                {
                    problems.push(format!(
                        "{at}: no heading with the anchor #{anchor} in {}",
                        shown(root, &target)
                    ));
                }
            }
        }
    }
    problems
}

/// The pages under docs/ the README does not link to.
fn unlinked_pages(root: &Path) -> Vec<String> {
    let readme = root.join("README.md");
    let linked: BTreeSet<PathBuf> = markdown::relative_links(&read(&readme))
        .into_iter()
        .map(|l| {
            let file = l.target.split('#').next().unwrap_or_default().to_string();
            normalise(&root.join(file))
        })
        .collect();
    docs_pages(root)
        .into_iter()
        .filter(|p| !linked.contains(&normalise(p)))
        .map(|p| shown(root, &p))
        .collect()
}

/// The flags `--help` lists, long and short (`-h, --help`, `--trust.path
/// <PATHS>`, `--collector.cpu          CPU time ...`).
fn help_flags(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| {
            let spec = l.split("  ").next().unwrap_or_default();
            spec.split([' ', ','])
                .filter(|w| w.starts_with('-'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The flags the flags tables of `pages` document (tables whose first
/// column is `flag`: each flag a code span of a row's first cell), with
/// the page of each.
fn documented_flags(pages: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, text) in pages {
        for table in markdown::tables(text) {
            if table.header.first().map(String::as_str) != Some("flag") {
                continue;
            }
            for row in &table.rows {
                let first = row.first().map(String::as_str).unwrap_or_default();
                for span in markdown::code_spans(first) {
                    if span.starts_with('-') {
                        out.push((span.to_string(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

/// What is wrong with the flags' documentation: a flag of `--help` no
/// table documents, or more than one row does; a documented flag the
/// binary does not have.
fn flag_problems(help: &[String], pages: &[(String, String)]) -> Vec<String> {
    let documented = documented_flags(pages);
    let mut problems = Vec::new();
    for flag in help {
        let rows: Vec<&str> = documented
            .iter()
            .filter(|(f, _)| f == flag)
            .map(|(_, page)| page.as_str())
            .collect();
        match rows.len() {
            0 => problems.push(format!("{flag}: in no flags table")),
            1 => {}
            _ => problems.push(format!(
                "{flag}: documented {} times ({rows:?})",
                rows.len()
            )),
        }
    }
    for (flag, page) in &documented {
        if !help.contains(flag) {
            problems.push(format!(
                "{page}: documents {flag}, which `apptheus --help` does not list"
            ));
        }
    }
    problems
}

#[test]
fn the_metrics_reference_is_the_catalogues() {
    let path = repo().join("docs/metrics.md");
    let page = read(&path);
    let wanted = reference::splice(&page, &reference::render(SECTIONS))
        .unwrap_or_else(|e| panic!("docs/metrics.md: {e}"));
    if wanted == page {
        return;
    }
    if std::env::var_os(UPDATE).is_some() {
        std::fs::write(&path, &wanted).unwrap();
        eprintln!("docs/metrics.md written from the catalogue");
        return;
    }
    let (line, (have, want)) = page
        .lines()
        .chain(std::iter::repeat(""))
        .zip(wanted.lines().chain(std::iter::repeat("")))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .expect("two different texts differ in a line");
    panic!(
        "docs/metrics.md is not what the metric catalogue \
         (apptheus/src/export/catalogue.rs) gives: run `cargo xtask docs`.\n\
         First difference, line {}:\n  page:      {have:?}\n  catalogue: {want:?}",
        line + 1
    );
}

#[test]
fn the_reference_names_every_metric_of_the_catalogue() {
    let generated = reference::render(SECTIONS);
    let tables = markdown::tables(&generated);
    assert_eq!(tables.len(), SECTIONS.len());
    let rows: Vec<&Vec<String>> = tables.iter().flat_map(|t| &t.rows).collect();
    assert_eq!(rows.len(), CATALOGUE.len());
    for (row, m) in rows.iter().zip(CATALOGUE) {
        assert_eq!(row.len(), 4, "{row:?}: a cell too many or too few");
        assert_eq!(row[0], format!("`{}`", m.name));
        assert_eq!(row[1], m.kind.as_str());
    }
    // What a HELP may hold stays in its cell and visible.
    const ODD: Metric = Metric {
        name: "apptheus_odd",
        kind: Kind::Histogram,
        help: "Joins of instance://<name> | a pipe.",
        labels: &[],
    };
    let odd = reference::render(&[Section {
        title: "Odd",
        metrics: &[&ODD],
    }]);
    let table = &markdown::tables(&odd)[0];
    assert_eq!(
        table.rows,
        [[
            "`apptheus_odd`",
            "histogram",
            "`le` (buckets)",
            "Joins of instance://&lt;name&gt; \\| a pipe."
        ]]
    );
    // The markers must be there, once, in order.
    let empty = reference::render(&[]);
    assert!(reference::splice("no markers", &empty).is_err());
    let twice = format!("{empty}\n{empty}");
    assert!(reference::splice(&twice, &empty).is_err());
    let reversed = format!("{}\n{}", reference::END, reference::BEGIN);
    assert!(reference::splice(&reversed, &empty).is_err());
    let page = format!("# Metrics\n\nbefore\n\n{empty}\n\nafter\n");
    let stale = page.replace(reference::END, "| `old` |\n<!-- metrics:end -->");
    assert_eq!(reference::splice(&stale, &empty).unwrap(), page);
}

#[test]
fn every_page_under_docs_is_linked_from_the_readme() {
    let root = repo();
    assert!(
        docs_pages(&root).len() >= 7,
        "docs/ holds the pages for each reader"
    );
    let unlinked = unlinked_pages(&root);
    assert!(
        unlinked.is_empty(),
        "pages under docs/ the README does not link to: {unlinked:?}"
    );
}

#[test]
fn every_flag_is_documented_once() {
    let out = Command::new(AGENT).arg("--help").output().unwrap();
    assert!(out.status.success(), "apptheus --help: {out:?}");
    let help = help_flags(&String::from_utf8(out.stdout).unwrap());
    assert!(
        help.len() > 40 && help.contains(&"--collector.pressure".to_string()),
        "the reader of --help is broken: {help:?}"
    );
    let root = repo();
    let mut pages = vec![root.join("README.md")];
    pages.extend(docs_pages(&root));
    let pages: Vec<(String, String)> = pages.iter().map(|p| (shown(&root, p), read(p))).collect();
    let problems = flag_problems(&help, &pages);
    assert!(
        problems.is_empty(),
        "flags of `apptheus --help` and the flags table \
         (docs/operating.md) differ:\n{}",
        problems.join("\n")
    );
}

#[test]
fn relative_links_between_pages_resolve() {
    let root = repo();
    let pages = all_pages(&root);
    let problems = link_problems(&root, &pages);
    assert!(
        problems.is_empty(),
        "links that lead nowhere:\n{}",
        problems.join("\n")
    );
}

/// The checks above find what they must: each is shown failing.
#[test]
fn the_checks_refuse_what_they_must() {
    // Anchors as GitHub makes them.
    assert_eq!(
        markdown::anchor("TLS and authentication (`--web.config.file`)"),
        "tls-and-authentication---webconfigfile"
    );
    assert_eq!(
        markdown::anchor("Pure cgroup v2: what a container gets, by [how](x.md) it was started"),
        "pure-cgroup-v2-what-a-container-gets-by-how-it-was-started"
    );
    assert_eq!(
        markdown::anchors("# A\n## A\n```\n# a comment\n```\n<a id=\"kept\"></a>\n#nope\n"),
        ["a", "a-1", "kept"]
    );
    // Links in code are not links; absolute ones are not checked.
    let links = markdown::relative_links(
        "[a](b.md#c) `[x](y)` [w](https://example.org)\n```\n[p](q)\n```\n[s](#t)\n",
    );
    let targets: Vec<(usize, &str)> = links.iter().map(|l| (l.line, l.target.as_str())).collect();
    assert_eq!(targets, [(1, "b.md#c"), (5, "#t")]);

    // A tree with a page the README forgets and links that lead nowhere.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("docs")).unwrap();
    std::fs::write(
        root.join("README.md"),
        "# Front\n[ops](docs/ops.md#flags) [gone](docs/gone.md) [bad](docs/ops.md#nothing)\n",
    )
    .unwrap();
    std::fs::write(
        root.join("docs/ops.md"),
        "# Ops\n## Flags\n[back](../README.md#front) [self](#flags) [up](../README.md#back)\n",
    )
    .unwrap();
    std::fs::write(root.join("docs/forgotten.md"), "# Forgotten\n").unwrap();
    assert_eq!(unlinked_pages(root), ["docs/forgotten.md"]);
    let pages = [root.join("README.md"), root.join("docs/ops.md")];
    assert_eq!(
        link_problems(root, &pages),
        [
            "README.md:2: docs/gone.md: no file docs/gone.md",
            "README.md:2: docs/ops.md#nothing: no heading with the anchor #nothing in docs/ops.md",
            "docs/ops.md:3: ../README.md#back: no heading with the anchor #back in README.md",
        ]
    );

    // Flags: one missing, one twice, one the binary lacks.
    let help = help_flags(
        "Options:\n      --a.b <X>\n          text\n  -h, --help\n          Print help\n\
         Sources:\n      --collector.cpu      CPU (cpu.stat). [default: on]\n",
    );
    assert_eq!(help, ["--a.b", "-h", "--help", "--collector.cpu"]);
    let pages = [
        (
            "README.md".to_string(),
            "| flag | default |\n|---|---|\n| `--a.b` | `1` |\n".to_string(),
        ),
        (
            "docs/ops.md".to_string(),
            "| flag | meaning |\n|---|---|\n| `--a.b`, `--gone` | see `--help` |\n\
             \n| what | command |\n|---|---|\n| `--help` | x |\n"
                .to_string(),
        ),
    ];
    assert_eq!(
        flag_problems(&help, &pages),
        [
            "--a.b: documented 2 times ([\"README.md\", \"docs/ops.md\"])",
            "-h: in no flags table",
            "--help: in no flags table",
            "--collector.cpu: in no flags table",
            "docs/ops.md: documents --gone, which `apptheus --help` does not list",
        ]
    );
}
