//! `cargo xtask vm-bench`: the placement benchmark (`cargo xtask bench
//! --only placement`) inside the VMs of `vm-test`, on kernels whose cgroup
//! mounts have the kernel's defaults. The machine this project runs on has
//! `favordynmods` on its cgroup2 mount for good, which hides the RCU grace
//! period a placement waits for on a default kernel; a VM shows it.
//!
//! The VMs run under software emulation: the agent's own work is many
//! times slower than on real hardware, while the grace period is timed by
//! the (emulated) clock. Compare the variants with each other, not with
//! the host's absolute numbers.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use apptheus_testkit::sim::STARTER_SIM;

use super::{Layout, kernels, qemu, report, rootfs};

#[derive(clap::Args)]
pub struct Options {
    /// Kernels: 5.10, 6.1, 6.12 (Debian cloud kernels) [default: 6.1]
    #[arg(long = "kernel", value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// cgroup layouts [default: hybrid, v2]
    #[arg(long = "layout", value_delimiter = ',', value_enum)]
    pub layouts: Vec<Layout>,
    /// Containers started one after another by each placement variant
    #[arg(long, default_value_t = 100)]
    pub placements: usize,
    /// Time limit per VM, in seconds
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    /// Print every console line
    #[arg(long, short)]
    pub verbose: bool,
}

/// One variant's result, as the benchmark prints it.
#[derive(Debug, PartialEq)]
struct Row {
    variant: String,
    n: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// `placement-result variant="..." n=N p50_ms=X p99_ms=Y`
fn parse_row(line: &str) -> Option<Row> {
    let rest = line.split("placement-result ").nth(1)?;
    let rest = rest.strip_prefix("variant=\"")?;
    let (variant, rest) = rest.split_once('"')?;
    let field = |k: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
    };
    Some(Row {
        variant: variant.to_string(),
        n: field("n")?.parse().ok()?,
        p50_ms: field("p50_ms")?.parse().ok()?,
        p99_ms: field("p99_ms")?.parse().ok()?,
    })
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let root = crate::build_ebpf::workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "--locked", "--release"])
        .args(["--package", "apptheus", "--package", "apptheus-testkit"])
        .args(["--bin", "apptheus", "--bin", STARTER_SIM])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the agent failed ({status})");
    }
    let release = root.join("target/release");
    let executables: Vec<PathBuf> = ["apptheus", STARTER_SIM]
        .iter()
        .map(|n| release.join(n))
        .collect();
    let xtask = std::env::current_exe().context("finding the xtask executable")?;

    let cache = super::download_cache()?;
    let work = root.join("target/vm-test");
    std::fs::create_dir_all(&work)?;
    let names = if o.kernels.is_empty() {
        vec!["6.1".to_string()]
    } else {
        o.kernels.clone()
    };
    let lock = kernels::lock(&cache)?;
    let mut rows = Vec::new();
    for name in &names {
        if name == "host" {
            bail!("vm-bench runs Debian's kernels only (5.10, 6.1, 6.12)");
        }
        let k = kernels::get(&cache, name, false)?
            .with_context(|| format!("no kernel named {name}"))?;
        rows.push(k);
    }
    let layouts = if o.layouts.is_empty() {
        vec![Layout::Hybrid, Layout::V2]
    } else {
        o.layouts.clone()
    };
    if layouts.contains(&Layout::Systemd) {
        bail!(
            "vm-bench runs in the busybox VMs only (layouts v1, hybrid, v2), not on the systemd node"
        );
    }
    let busybox = kernels::busybox(&cache, false)?;
    drop(lock);
    let initramfs = work.join("initramfs-bench.cpio");
    let args = ["bench", "--only", "placement", "--prebuilt", "--placements"]
        .iter()
        .map(|a| format!("'{a}'"))
        .chain(std::iter::once(format!("'{}'", o.placements)))
        .collect::<Vec<_>>()
        .join(" ");
    rootfs::build(
        &rootfs::Inputs {
            busybox: &busybox,
            init: include_str!("init.sh"),
            tests: &[("placement".to_string(), xtask)],
            executables: &executables,
            test_args: &args,
        },
        &initramfs,
    )?;

    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut table = Vec::new();
    let mut failed = Vec::new();
    // One VM at a time: two would compete for the host's cores.
    for k in &rows {
        for layout in &layouts {
            let log = logs.join(format!("bench-{}-{layout}.log", k.name));
            let run = qemu::boot(
                &super::busybox_machine(k, *layout, &initramfs, "apptheus.time_scale=1"),
                &log,
                Duration::from_secs(o.timeout),
                o.verbose,
            )?;
            let console = report::parse(&run.lines);
            let results: Vec<Row> = run.lines.iter().filter_map(|l| parse_row(l)).collect();
            let exit = console.binaries.first().and_then(|b| b.exit);
            println!(
                "[{} {layout}] {} results, exit {exit:?}, {:.0} s (log {})",
                k.name,
                results.len(),
                run.seconds,
                log.display()
            );
            if results.is_empty() || exit != Some(0) {
                failed.push(format!("{} {layout}", k.name));
                for l in console.binaries.first().map_or(&console.tail, |b| &b.tail) {
                    println!("    {l}");
                }
            }
            for r in results {
                table.push(vec![
                    format!(
                        "{} ({})",
                        k.name,
                        console.release.clone().unwrap_or_default()
                    ),
                    layout.to_string(),
                    r.variant,
                    r.n.to_string(),
                    format!("{:.2} ms", r.p50_ms),
                    format!("{:.2} ms", r.p99_ms),
                ]);
            }
        }
    }
    let header: Vec<String> = ["kernel", "layout", "variant", "containers", "p50", "p99"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    println!(
        "\nvm-bench: placement latency in VMs (software emulation), {} containers per variant\n",
        o.placements
    );
    print!("{}", report::table(&header, &table));
    if !failed.is_empty() {
        bail!("no result from: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_benchmarks_result_lines() {
        let r = parse_row(
            "placement-result variant=\"through a launcher (30 ms), --cgroup.prewarm\" n=100 p50_ms=1.25 p99_ms=3.50",
        )
        .unwrap();
        assert_eq!(
            r,
            Row {
                variant: "through a launcher (30 ms), --cgroup.prewarm".into(),
                n: 100,
                p50_ms: 1.25,
                p99_ms: 3.5
            }
        );
        assert_eq!(parse_row("placement-result n=1"), None);
        assert_eq!(parse_row("something else"), None);
    }
}
