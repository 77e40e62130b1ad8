//! `cargo xtask vm-test`: the privileged integration tests on other kernels
//! and cgroup layouts, in qemu VMs under software emulation. Kernels are
//! Debian's cloud kernels (5.10, 6.1, 6.12; and the host's if /boot has
//! it); layouts are pure v1, hybrid and pure v2. One initramfs holds the
//! test binaries at the paths compiled into them; the kernel command line
//! picks the layout. See `init.sh` for what runs inside.
mod artifacts;
pub mod bench;
mod cpio;
mod exceptions;
mod kernels;
mod qemu;
mod report;
mod rootfs;

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{
    exceptions::{EXCEPTIONS, HOST_ONLY, SLOW, Skip, UNDER_EMULATION},
    kernels::Kernel,
    report::Verdict,
};

/// A cgroup layout, as the VM's init mounts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Layout {
    /// v1 hierarchies only (older HPC clusters)
    V1,
    /// v1 controllers plus cgroup2 at /sys/fs/cgroup/unified, no controllers there
    Hybrid,
    /// cgroup2 only, on /sys/fs/cgroup, every controller enabled below the root
    V2,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::V1 => "v1",
            Layout::Hybrid => "hybrid",
            Layout::V2 => "v2",
        })
    }
}

const LAYOUTS: [Layout; 3] = [Layout::V1, Layout::Hybrid, Layout::V2];

/// The privileged integration tests (apptheus/tests/<name>.rs) that need
/// nothing but the agent, the starter simulator, sh, true, unshare,
/// python3 and Slurm (exporter and multinode start Prometheus and friends;
/// the real Apptainer's tests need its cached root).
const TESTS: [&str; 8] = [
    "attribution",
    "cgroups",
    "shared_cgroups",
    "monitoring_socket",
    "socket",
    "kernel_metrics",
    "lifecycle",
    "slurm_jobs",
];

#[derive(clap::Args)]
pub struct Options {
    /// Kernels (rows): 5.10, 6.1, 6.12 (Debian cloud kernels), host (the
    /// running kernel, if /boot has its image) [default: all]
    #[arg(long = "kernel", value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// cgroup layouts (columns) [default: all]
    #[arg(long = "layout", value_delimiter = ',', value_enum)]
    pub layouts: Vec<Layout>,
    /// Test binaries run in each VM [default: attribution, cgroups,
    /// shared_cgroups, monitoring_socket, socket, kernel_metrics, lifecycle,
    /// slurm_jobs]
    #[arg(long = "test", value_delimiter = ',')]
    pub tests: Vec<String>,
    /// VMs run at once
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Time limit per VM, in seconds
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// How much longer than on a real machine the tests may wait for
    /// something (APPTHEUS_TEST_TIME_SCALE; software emulation is slow)
    #[arg(long, default_value_t = 5.0)]
    pub time_scale: f64,
    /// Fetch the newest kernels and busybox even when cached
    #[arg(long)]
    pub refresh: bool,
    /// Leave out the slow tests (exceptions::SLOW), as CI does
    #[arg(long)]
    pub quick: bool,
    /// Also run the tests left out under emulation (exceptions::UNDER_EMULATION)
    #[arg(long)]
    pub all_tests: bool,
    /// Print every console line
    #[arg(long, short)]
    pub verbose: bool,
    /// Arguments for every test binary, after `--` (e.g. a test name filter)
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// Where downloads are kept across clones and runs (kernels, busybox,
/// apt's lists): `$APPTHEUS_CACHE_DIR/vm`, by default
/// `/var/cache/apptheus/vm`. CI clones afresh, so `target/` is no cache.
pub fn download_cache() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("APPTHEUS_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/apptheus"));
    let dir = base.join("vm");
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "creating the download cache {} (run as root, or set APPTHEUS_CACHE_DIR to a directory you can write)",
            dir.display()
        )
    })?;
    Ok(dir)
}

struct Cell {
    kernel: Kernel,
    layout: Layout,
}

struct Outcome {
    verdict: Verdict,
    console: report::Console,
    seconds: f64,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = crate::build_ebpf::workspace_root();
    let tests: Vec<String> = if o.tests.is_empty() {
        TESTS.iter().map(|s| s.to_string()).collect()
    } else {
        o.tests.clone()
    };
    let layouts: Vec<Layout> = if o.layouts.is_empty() {
        LAYOUTS.to_vec()
    } else {
        o.layouts.clone()
    };
    let kernel_names: Vec<String> = if o.kernels.is_empty() {
        kernels::NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        o.kernels.clone()
    };

    let t = Instant::now();
    let built = build_tests(&root)?;
    let cache = download_cache()?;
    let work = built.target_dir.join("vm-test");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut plan = Vec::new();
    for name in &tests {
        let path = built
            .tests
            .get(name)
            .with_context(|| format!("cargo built no test binary named {name}"))?;
        plan.push((name.clone(), path.clone()));
    }
    let build_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let lock = kernels::lock(&cache)?;
    let mut rows = Vec::new();
    let mut missing_host = None;
    for name in &kernel_names {
        match kernels::get(&cache, name, o.refresh)? {
            Some(k) => rows.push(k),
            None => missing_host = Some(kernels::host_release()),
        }
    }
    let busybox = kernels::busybox(&cache, o.refresh)?;
    drop(lock);
    let fetch_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let initramfs = work.join("initramfs.cpio");
    let skips = skipped(o, &tests);
    let mut args = o.test_args.clone();
    for s in &skips {
        let name = s.test.split_once("::").map_or(s.test, |(_, t)| t);
        args.extend(["--skip".to_string(), name.to_string()]);
    }
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let fresh = rootfs::build(
        &rootfs::Inputs {
            busybox: &busybox,
            init: include_str!("init.sh"),
            tests: &plan,
            executables: &built.executables,
            test_args: &quoted.join(" "),
        },
        &initramfs,
    )?;
    let size_mib = std::fs::metadata(&initramfs)?.len() as f64 / (1 << 20) as f64;
    let rootfs_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "vm-test: initramfs {} ({size_mib:.0} MiB, {}) in {rootfs_secs:.1} s",
        initramfs.display(),
        if fresh { "built" } else { "unchanged" }
    );

    let cells: Vec<Cell> = rows
        .iter()
        .flat_map(|k| {
            layouts.iter().map(|l| Cell {
                kernel: k.clone(),
                layout: *l,
            })
        })
        .collect();
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let outcomes = run_cells(o, &cells, &initramfs, &logs, &tests)?;

    let failed = report::print_matrix(
        &rows,
        &layouts,
        &cells,
        &outcomes,
        &tests,
        o.test_args.is_empty(),
    );
    report::print_tail(
        &skips,
        missing_host.as_deref(),
        &report::Timings {
            build: build_secs,
            kernels: fetch_secs,
            initramfs: rootfs_secs,
            size_mib,
            vms: outcomes.iter().map(|x| x.seconds).sum::<f64>(),
            jobs: o.jobs.max(1),
            total: started.elapsed().as_secs_f64(),
        },
        &logs,
    );
    if failed > 0 {
        bail!("{failed} cell(s) of the matrix failed");
    }
    Ok(())
}

/// The tests of `tests` left out of this run.
fn skipped(o: &Options, tests: &[String]) -> Vec<&'static Skip> {
    let mut out: Vec<&'static Skip> = HOST_ONLY.iter().collect();
    if !o.all_tests {
        out.extend(UNDER_EMULATION);
    }
    if o.quick {
        out.extend(SLOW);
    }
    out.retain(|s| tests.iter().any(|t| s.test.starts_with(&format!("{t}::"))));
    out
}

fn run_cells(
    o: &Options,
    cells: &[Cell],
    initramfs: &Path,
    logs: &Path,
    tests: &[String],
) -> anyhow::Result<Vec<Outcome>> {
    let queue = Mutex::new((0..cells.len()).collect::<VecDeque<usize>>());
    let results: Mutex<Vec<Option<anyhow::Result<Outcome>>>> =
        Mutex::new((0..cells.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..o.jobs.clamp(1, cells.len().max(1)) {
            s.spawn(|| {
                loop {
                    let Some(i) = queue.lock().unwrap().pop_front() else {
                        return;
                    };
                    let c = &cells[i];
                    let log = logs.join(format!("{}-{}.log", c.kernel.name, c.layout));
                    let r = qemu::boot(
                        &c.kernel,
                        c.layout,
                        initramfs,
                        &log,
                        Duration::from_secs(o.timeout),
                        o.time_scale,
                        o.verbose,
                    )
                    .map(|run| {
                        let console = report::parse(&run.lines);
                        let verdict = report::judge(
                            &console,
                            tests,
                            run.timed_out,
                            &c.kernel.name,
                            c.layout,
                            EXCEPTIONS,
                        );
                        println!(
                            "[{} {}] {} in {:.0} s",
                            c.kernel.name,
                            c.layout,
                            verdict.cell(),
                            run.seconds
                        );
                        Outcome {
                            verdict,
                            console,
                            seconds: run.seconds,
                        }
                    });
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("a cell did not run"))))
        .collect()
}

struct Built {
    target_dir: PathBuf,
    /// Test binaries by target name.
    tests: BTreeMap<String, PathBuf>,
    /// The executables the tests start by path: the apptheus package's
    /// (CARGO_BIN_EXE_* of its tests) and apptheus-testkit's (the starter
    /// simulator, which the tests find beside their own executables).
    executables: Vec<PathBuf>,
}

/// `cargo test --no-run` as scripts/test.sh builds the tests (so CI re-uses
/// its artifacts: keep the two commands alike), and where cargo put them.
fn build_tests(root: &Path) -> anyhow::Result<Built> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let meta = Command::new(&cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    let target_dir = artifacts::target_directory(&String::from_utf8_lossy(&meta.stdout))
        .context("cargo metadata named no target directory")?;

    eprintln!("vm-test: cargo test --locked --no-run");
    let out = Command::new(&cargo)
        .current_dir(root)
        .args(["test", "--locked", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let manifest = root.join("apptheus").join("Cargo.toml");
    let helpers = root.join("apptheus-testkit").join("Cargo.toml");
    let artifacts::Artifacts { tests, executables } =
        artifacts::parse(&String::from_utf8_lossy(&out.stdout), &manifest, &helpers);
    for name in ["apptheus", apptheus_testkit::sim::STARTER_SIM] {
        if !executables
            .iter()
            .any(|e| e.file_name().is_some_and(|n| n == name))
        {
            bail!("cargo reported no executable {name}: {executables:?}");
        }
    }
    Ok(Built {
        target_dir,
        tests,
        executables,
    })
}
