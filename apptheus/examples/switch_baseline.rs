//! For `scripts/bench-kernel-collectors.sh`: attaches a `sched_switch`
//! program that returns at once, prints `attached`, and holds it until
//! SIGTERM or SIGINT. What the benchmark measures with it running is what
//! any program on that hook costs, apart from the run-queue latency
//! collector's own work.
//!
//!   sudo target/debug/examples/switch_baseline [BTF, default /sys/kernel/btf/vmlinux]
use std::path::PathBuf;

use anyhow::Context;
use apptheus::testing::kernel::Kernel;
use nix::sys::signal::{SigSet, Signal};

fn main() -> anyhow::Result<()> {
    let btf = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("/sys/kernel/btf/vmlinux"), PathBuf::from);
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("blocking SIGTERM and SIGINT")?;
    let _program = Kernel::attach_switch_baseline(&btf)
        .with_context(|| format!("attaching the baseline program (BTF {})", btf.display()))?;
    println!("attached");
    let signal = signals.wait().context("waiting for SIGTERM or SIGINT")?;
    eprintln!("{signal}: detaching");
    Ok(())
}
