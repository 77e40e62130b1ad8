//! Developer chores: `cargo xtask <command>`.
mod bench;
mod build_ebpf;
mod docs;
mod package;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "apptheus developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the kernel programs (apptheus-ebpf) for bpfel-unknown-none, with
    /// BTF, and check the object.
    BuildEbpf(build_ebpf::Options),
    /// Run the privileged integration tests in VMs: kernels x cgroup layouts.
    VmTest(vm::Options),
    /// Measure overhead, attribution latency, scale and accuracy (root);
    /// results to BENCHMARKS.md.
    Bench(bench::Options),
    /// Run the placement benchmark in VMs with default-kernel cgroup mounts
    /// (software emulation: compare its variants with each other).
    VmBench(vm::bench::Options),
    /// Write the metrics reference of docs/metrics.md from the metric
    /// catalogue (apptheus/src/export/catalogue.rs).
    Docs,
    /// Build the Debian package (cargo-deb): binary, systemd unit, defaults, man page.
    Package(package::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf(o) => build_ebpf::run(&o).map(|path| println!("{}", path.display())),
        Command::VmTest(o) => vm::run(&o),
        Command::Bench(o) => bench::run(&o),
        Command::VmBench(o) => vm::bench::run(&o),
        Command::Docs => docs::run(),
        Command::Package(o) => package::run(&o).map(|deb| println!("{}", deb.display())),
    }
}
