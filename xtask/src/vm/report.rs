//! Reading a VM's console (the init script's "@@vm@@" lines and libtest's
//! own output), judging it against the documented exceptions, and the
//! kernel x layout table and the rest of the run's report.
use std::{collections::BTreeMap, path::Path};

use super::{
    Cell, Layout, Outcome,
    exceptions::{EXCEPTIONS, Exception, Skip},
    kernels::Kernel,
};

pub const MARK: &str = "@@vm@@ ";

/// One test binary's run inside a VM.
#[derive(Debug, Default)]
pub struct Binary {
    pub name: String,
    pub exit: Option<i32>,
    pub seconds: u64,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// libtest's "---- <test> stdout ----" section of each failed test.
    pub output: BTreeMap<String, Vec<String>>,
    /// The binary's last lines, for a crash without a test to blame.
    pub tail: Vec<String>,
}

/// What the console of one VM said.
#[derive(Debug, Default)]
pub struct Console {
    pub release: Option<String>,
    pub done: bool,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
    pub binaries: Vec<Binary>,
    /// The last lines of the console, for a VM that never finished.
    pub tail: Vec<String>,
}

const TAIL: usize = 60;

fn push_tail(v: &mut Vec<String>, line: &str) {
    if v.len() == TAIL {
        v.remove(0);
    }
    v.push(line.to_string());
}

/// `key=value` from a marker line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

pub fn parse(lines: &[String]) -> Console {
    let mut c = Console::default();
    let mut current: Option<Binary> = None;
    let mut capturing: Option<String> = None;
    for raw in lines {
        let line = raw.trim_end_matches('\r');
        push_tail(&mut c.tail, line);
        if let Some(m) = line.find(MARK).map(|i| &line[i + MARK.len()..]) {
            let (kind, rest) = m.split_once(' ').unwrap_or((m, ""));
            match kind {
                "env" => c.release = field(rest, "release").map(str::to_string),
                "note" => c.notes.push(rest.to_string()),
                "error" => c.errors.push(rest.to_string()),
                "done" => c.done = true,
                "begin" => {
                    current = Some(Binary {
                        name: field(rest, "test").unwrap_or("?").to_string(),
                        ..Binary::default()
                    });
                    capturing = None;
                }
                "end" => {
                    if let Some(mut b) = current.take() {
                        b.exit = field(rest, "exit").and_then(|v| v.parse().ok());
                        b.seconds = field(rest, "seconds")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        c.binaries.push(b);
                    }
                    capturing = None;
                }
                _ => {}
            }
            continue;
        }
        let Some(b) = current.as_mut() else { continue };
        push_tail(&mut b.tail, line);
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some(name) = rest.strip_suffix(" ... ok") {
                b.passed.push(name.to_string());
                continue;
            }
            if let Some(name) = rest.strip_suffix(" ... FAILED") {
                b.failed.push(name.to_string());
                continue;
            }
        }
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            capturing = Some(name.to_string());
            b.output.entry(name.to_string()).or_default();
            continue;
        }
        if line == "failures:" || line.starts_with("test result:") {
            capturing = None;
            continue;
        }
        if let Some(name) = &capturing {
            b.output
                .entry(name.clone())
                .or_default()
                .push(line.to_string());
        }
    }
    // A VM that stopped inside a binary: keep what it had.
    if let Some(b) = current {
        c.binaries.push(b);
    }
    c
}

/// Something that went wrong in a cell: a test (`binary::test`), a binary
/// that died without naming a test, or the VM itself.
#[derive(Debug, Clone)]
pub struct Failure {
    pub what: String,
    pub output: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub unexpected: Vec<Failure>,
    pub excused: Vec<(Failure, &'static Exception)>,
    pub passed: usize,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.unexpected.is_empty()
    }

    /// The table cell.
    pub fn cell(&self) -> String {
        match (self.unexpected.len(), self.excused.len()) {
            (0, 0) => format!("pass ({})", self.passed),
            (0, e) => format!("pass ({}), {e} exc.", self.passed),
            (u, _) => format!("FAIL {u} ({} pass)", self.passed),
        }
    }
}

/// Judges a console against the plan (`expected` binaries) and the
/// exceptions for this kernel and layout.
pub fn judge(
    c: &Console,
    expected: &[String],
    timed_out: bool,
    kernel: &str,
    layout: Layout,
    exceptions: &'static [Exception],
) -> Verdict {
    let mut failures = Vec::new();
    for e in &c.errors {
        failures.push(Failure {
            what: format!("(vm init) {e}"),
            output: Vec::new(),
        });
    }
    let mut passed = 0;
    for name in expected {
        let Some(b) = c.binaries.iter().find(|b| &b.name == name) else {
            continue;
        };
        passed += b.passed.len();
        for t in &b.failed {
            failures.push(Failure {
                what: format!("{name}::{t}"),
                output: b.output.get(t).cloned().unwrap_or_default(),
            });
        }
        if b.failed.is_empty() && b.exit != Some(0) {
            let how = match b.exit {
                Some(code) => format!("exit {code}"),
                None => "did not finish".into(),
            };
            failures.push(Failure {
                what: format!("{name} ({how}, no failed test named)"),
                output: b.tail.clone(),
            });
        }
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|n| !c.binaries.iter().any(|b| &b.name == *n))
        .collect();
    if timed_out || !c.done || !missing.is_empty() {
        let why = if timed_out {
            "timed out"
        } else if !c.done {
            "stopped before the end"
        } else {
            "skipped binaries"
        };
        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        failures.push(Failure {
            what: format!("(vm) {why}; not run: {}", names.join(", ")),
            output: c.tail.clone(),
        });
    }
    let mut v = Verdict {
        passed,
        ..Verdict::default()
    };
    for f in failures {
        match exceptions
            .iter()
            .find(|e| e.covers(kernel, layout, &f.what))
        {
            Some(e) => v.excused.push((f, e)),
            None => v.unexpected.push(f),
        }
    }
    v
}

/// A plain text table: rows, then columns, left-aligned.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        format!("| {} |\n", s.join(" | "))
    };
    let mut out = line(header);
    let sep: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", sep.join("-|-")));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Prints the table, the failures with their output, the exceptions met;
/// returns the number of failed cells.
pub(super) fn print_matrix(
    rows: &[Kernel],
    layouts: &[Layout],
    cells: &[Cell],
    outcomes: &[Outcome],
    tests: &[String],
    whole_binaries: bool,
) -> usize {
    let mut header = vec!["kernel".to_string(), "release".to_string()];
    header.extend(layouts.iter().map(|l| l.to_string()));
    let mut table = Vec::new();
    for k in rows {
        let mut r = vec![k.name.clone(), k.release.clone()];
        for l in layouts {
            let i = cells
                .iter()
                .position(|c| c.kernel.name == k.name && c.layout == *l);
            r.push(i.map_or("-".into(), |i| {
                format!("{} {:.0}s", outcomes[i].verdict.cell(), outcomes[i].seconds)
            }));
        }
        table.push(r);
    }
    println!(
        "\nvm-test: kernel x cgroup layout, tests {} (systemd: {}) (pass (n): n tests passed; exc.: documented exceptions)\n",
        tests.join(", "),
        super::NODE_TESTS.join(", ")
    );
    print!("{}", self::table(&header, &table));

    let mut failed = 0;
    let mut excused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (c, out) in cells.iter().zip(outcomes) {
        let cell = format!("{} {}", c.kernel.name, c.layout);
        if !out.console.notes.is_empty() {
            println!("\n[{cell}] notes: {}", out.console.notes.join("; "));
        }
        for (f, e) in &out.verdict.excused {
            excused
                .entry(format!("{}: {}", f.what, e.why))
                .or_default()
                .push(cell.clone());
        }
        if out.verdict.ok() {
            continue;
        }
        failed += 1;
        for f in &out.verdict.unexpected {
            println!("\n=== FAILED [{cell}] {}", f.what);
            let skip = f.output.len().saturating_sub(80);
            for l in &f.output[skip..] {
                println!("    {l}");
            }
        }
    }
    if !excused.is_empty() {
        println!("\ndocumented exceptions met:");
        for (what, cells) in &excused {
            println!("  - [{}] {what}", cells.join(", "));
        }
    }
    if whole_binaries {
        for e in EXCEPTIONS {
            for (c, out) in cells.iter().zip(outcomes) {
                let ran = c
                    .expected
                    .iter()
                    .any(|t| e.test.starts_with(&format!("{t}::")));
                if ran
                    && e.kernels.contains(&c.kernel.name.as_str())
                    && e.layouts.contains(&c.layout)
                    && !out.verdict.excused.iter().any(|(_, x)| std::ptr::eq(*x, e))
                {
                    println!(
                        "\nwarning: [{} {}] {} passed: the exception for it may be obsolete",
                        c.kernel.name, c.layout, e.test
                    );
                }
            }
        }
    }
    failed
}

/// How long each step of a run took.
pub(super) struct Timings {
    pub build: f64,
    pub kernels: f64,
    pub initramfs: f64,
    pub size_mib: f64,
    pub vms: f64,
    pub jobs: usize,
    pub total: f64,
}

/// Prints what was left out, a host kernel not in the matrix, the timings
/// and where the console logs are.
pub(super) fn print_tail(skips: &[&Skip], missing_host: Option<&str>, t: &Timings, logs: &Path) {
    if !skips.is_empty() {
        println!("\nleft out:");
        for s in skips {
            println!("  - {}: {}", s.test, s.why);
        }
    }
    if let Some(release) = missing_host {
        println!(
            "\nhost kernel {release}: /boot has no image of it (/boot/vmlinuz-{release}), so it is not in the matrix"
        );
    }
    println!(
        "\ntimings: build {:.0} s, kernels {:.0} s, initramfs {:.0} s ({:.0} MiB), VMs {:.0} s (jobs {}), total {:.0} s",
        t.build, t.kernels, t.initramfs, t.size_mib, t.vms, t.jobs, t.total
    );
    println!("console logs: {}", logs.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(|l| format!("{l}\r")).collect()
    }

    const CONSOLE: &str = "\
[    0.5] noise
@@vm@@ note no-v1-hierarchy=memory
@@vm@@ env release=6.12.1-cloud-amd64 layout=v1
@@vm@@ begin test=cgroups

running 2 tests
test a_fine_test ... ok
test memory_is_reported ... FAILED

failures:

---- memory_is_reported stdout ----
thread 'memory_is_reported' panicked at tests/cgroups.rs:1:1:
test needs: a memory controller

failures:
    memory_is_reported

test result: FAILED. 1 passed; 1 failed; 0 ignored
@@vm@@ end test=cgroups exit=101 seconds=12
@@vm@@ begin test=socket
test s ... ok
@@vm@@ end test=socket exit=0 seconds=3
@@vm@@ done
";

    #[test]
    fn reads_the_console() {
        let c = parse(&lines(CONSOLE));
        assert!(c.done);
        assert_eq!(c.release.as_deref(), Some("6.12.1-cloud-amd64"));
        assert_eq!(c.notes, ["no-v1-hierarchy=memory"]);
        assert_eq!(c.binaries.len(), 2);
        let b = &c.binaries[0];
        assert_eq!((b.exit, b.seconds), (Some(101), 12));
        assert_eq!(b.passed, ["a_fine_test"]);
        assert_eq!(b.failed, ["memory_is_reported"]);
        assert_eq!(
            b.output["memory_is_reported"],
            [
                "thread 'memory_is_reported' panicked at tests/cgroups.rs:1:1:",
                "test needs: a memory controller",
                ""
            ]
        );
    }

    static EXC: [Exception; 1] = [Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1],
        test: "cgroups::memory_is_reported",
        why: "no v1 memory controller",
    }];

    #[test]
    fn exceptions_excuse_only_their_cells() {
        let c = parse(&lines(CONSOLE));
        let plan = ["cgroups".to_string(), "socket".to_string()];
        let v = judge(&c, &plan, false, "6.12", Layout::V1, &EXC);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.excused.len(), 1);
        assert_eq!(v.passed, 2);
        let v = judge(&c, &plan, false, "6.1", Layout::V1, &EXC);
        assert!(!v.ok());
        assert_eq!(v.unexpected[0].what, "cgroups::memory_is_reported");
    }

    #[test]
    fn a_vm_that_stops_early_fails() {
        let cut: Vec<String> = lines(CONSOLE).into_iter().take(7).collect();
        let c = parse(&cut);
        let plan = ["cgroups".to_string(), "socket".to_string()];
        let v = judge(&c, &plan, true, "6.1", Layout::V2, &EXC);
        let what: Vec<&str> = v.unexpected.iter().map(|f| f.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "cgroups (did not finish, no failed test named)",
                "(vm) timed out; not run: socket"
            ]
        );
    }
}
