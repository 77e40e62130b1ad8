//! The agent: start-up wiring and the main loop. One task owns the state
//! (the registry, the kernel's maps, the cgroups); kernel and socket
//! events, readers' demand for samples, the housekeeping tick and signals
//! come to it, and each is handled by the module named for it:
//!
//! - `starts`: a starter run seen (kernel exec or socket connection):
//!   what it is (container, instance, join, helper) and its metadata;
//! - `placing`: a container's cgroups, its tasks moved there, a runtime's
//!   own cgroup followed;
//! - `sampling`: statistics read (for the readers that come), containers
//!   ended and expired, the snapshot readers get refreshed;
//! - `sources`: the statistics sources, each timed;
//! - `sockets`: the monitoring socket's connections;
//! - `trusting`: the trusted starters and launchers, re-resolved;
//! - `adopting`: containers an earlier run left, taken over at start.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    attribution::{
        kernel::{self, Kernel},
        socket::{self, SocketEvent},
    },
    cgroup::{delegation::Delegated, placement::Placer},
    cli::{Args, EbpfMode},
    export::{cadence::Trigger, demand::Demand, metrics::AgentMetrics},
    host::{preflight, procfs::Procfs},
    http,
    model::{event::KernelEvent, registry::Registry},
};

mod admission;
mod adopting;
mod drops;
mod placing;
mod processes;
mod recovering;
mod sampling;
mod sockets;
mod sources;
mod starts;
mod trusting;

use starts::StartFacts;
use trusting::Trust;

pub(crate) struct Agent {
    args: Args,
    metrics: Arc<AgentMetrics>,
    procfs: Procfs,
    kernel: Option<Kernel>,
    placer: Placer,
    registry: Registry,
    trust: Trust,
    /// cgroup v2 controllers apptheus enabled in starters' cgroups.
    delegated: Delegated,
    /// Held open while the kernel keeps BPF run-time statistics.
    bpf_stats: Option<std::os::fd::OwnedFd>,
    /// Kernel events lost so far, as last reported.
    lost_seen: u64,
    /// The kernel programs' other drops, as last reported.
    drops: crate::model::drops::Reported,
    /// The per-user caps on starter runs.
    caps: crate::model::caps::Caps,
    /// The statistics sources.
    sources: sources::Sources,
    /// A container ended since the last publication: its final sample
    /// is served within [`FINAL_SAMPLE_DELAY`], not at the next sample.
    publish_soon: bool,
    /// When the kernel's maps were last compared with the registry.
    reconciled: Option<std::time::Instant>,
}

/// How soon after a container ends its final sample is served.
const FINAL_SAMPLE_DELAY: Duration = Duration::from_millis(100);

/// How often ended containers' series are expired, placements and
/// removals retried, and the kernel's maps looked at for lost events.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Sleeps until `at` (a branch that is off when there is no `at`).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for a change in the trusted files' directories (never, without
/// a watch).
async fn dir_changed(w: &mut Option<crate::host::dirwatch::DirWatch>) -> std::io::Result<()> {
    match w {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// How often the trusted paths are re-resolved without a SIGHUP.
const TRUST_RECHECK: Duration = Duration::from_secs(5);

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    crate::memory::tune_allocator();
    let trust = Trust::resolve(&args)?;

    let host = match preflight::check(&args.procfs, &args.sysfs, args.ebpf != EbpfMode::False) {
        Ok(h) => h,
        Err(problems) => {
            for p in &problems {
                tracing::error!(problem = %p.what, fix = %p.fix, "cannot start");
            }
            bail!(
                "{} problem(s) prevent starting:\n  - {}",
                problems.len(),
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n  - ")
            );
        }
    };
    tracing::info!(layout = %host.kind, "cgroup layout");

    let metrics = AgentMetrics::with_demand(Demand::new(args.monitor_interval, args.on_demand));
    trust.publish(&metrics);
    let kernel = match args.ebpf {
        EbpfMode::False => None,
        mode => match Kernel::load(
            &host.btf,
            &trust.starters.ids(),
            &trust.launchers.ids(),
            &kernel::Options {
                collectors: args.collectors.selected(),
                cgroup2: host.layout.v2.clone(),
                procfs: args.procfs.clone(),
                sizes: kernel::Sizes {
                    tasks: args.ebpf_max_tasks,
                    containers: args.ebpf_max_containers,
                    runq_containers: args.collectors.runqlat_max_containers,
                },
            },
        ) {
            Ok(k) => Some(k),
            Err(e) if mode == EbpfMode::Auto => {
                tracing::warn!(error = %e, "kernel programs unavailable; attributing through the monitoring socket alone");
                None
            }
            Err(e) => {
                return Err(e).context("--ebpf=true and the kernel programs could not be loaded");
            }
        },
    };
    // Loading parsed the kernel's BTF twice (offsets, then aya): tens of
    // MiB freed but kept by the allocator; give them back.
    crate::memory::release_free_heap();
    let mode = if kernel.is_some() { "ebpf" } else { "socket" };
    metrics.set_mode(mode);
    tracing::info!(mode, "attribution mode");

    // Service managers often start daemons with a soft limit of 1024
    // descriptors; the socket's connection cap fits what we get.
    let fd_limit = match socket::raise_fd_limit() {
        Ok(n) => {
            tracing::debug!(limit = n, "open file limit");
            Some(n)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open file limit");
            None
        }
    };
    // A socket held by another live apptheus is a start error.
    let listener = socket::bind(&args.socket_path).await?;
    tracing::info!(path = %listener.path().display(), "monitoring socket ready (mode 0666: callers are verified, nothing is read from them)");
    let (trusted_tx, trusted_rx) = watch::channel(trust.starters.clone());
    let (socket_tx, socket_events) = mpsc::channel::<SocketEvent>(1024);
    let socket_task = tokio::spawn(socket::serve(
        listener,
        args.procfs.clone(),
        trusted_rx,
        socket_tx,
        metrics.clone(),
    ));

    // Listen before declaring ourselves up: a port in use is a start error.
    let ready = Arc::new(AtomicBool::new(false));
    // A bad web config is a start error; later bad changes are logged and
    // the last good configuration stays.
    let web = match &args.web_config_file {
        Some(path) => {
            let handle = crate::webconfig::WebConfigHandle::load(path)?;
            handle.watch(crate::webconfig::watch::RELOAD_EVERY);
            Some(handle)
        }
        None => None,
    };
    let server = Arc::new(http::Server::new(
        metrics.clone(),
        args.telemetry_path.clone(),
        ready.clone(),
        web,
    ));
    let mut listeners = Vec::new();
    for addr in &args.listen_address {
        for sa in http::parse_listen_address(addr)? {
            let l = http::bind(sa).await?;
            tracing::info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), path = %args.telemetry_path, "serving metrics");
            listeners.push(l);
        }
    }
    let http_tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(http::serve(l, server.clone())))
        .collect();
    // Pushing (optional) runs in its own tasks: it never delays sampling.
    let _push_tasks = crate::push::spawn(&args.push, metrics.clone())?;

    let procfs = Procfs::new(&args.procfs);
    let open_files = sources::open_files(args.cgroup_open_files, fd_limit);
    let caps = crate::model::caps::Caps::new(args.limits());
    let mut agent = Agent {
        sources: sources::Sources::new(&args, open_files),
        placer: Placer::new(&host.layout, &args.procfs),
        procfs,
        args,
        metrics,
        kernel,
        registry: Registry::default(),
        trust: trust.with_sender(trusted_tx),
        delegated: Delegated::default(),
        bpf_stats: None,
        lost_seen: 0,
        drops: Default::default(),
        caps,
        publish_soon: false,
        reconciled: None,
    };
    if agent.args.ebpf_stats && agent.kernel.is_some() {
        match crate::attribution::kernel::stats::enable() {
            Ok(fd) => agent.bpf_stats = Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "--ebpf.stats: the kernel refused BPF run-time statistics (Linux 5.8+ needed)")
            }
        }
    }
    agent.adopt_existing();
    let result = agent.main_loop(ready, socket_events).await;
    for t in http_tasks {
        t.abort();
    }
    // Ending the socket task closes the listener and removes the file.
    socket_task.abort();
    let _ = socket_task.await;
    // Dropping the kernel handle detaches the programs.
    agent.kernel.take();
    tracing::info!("stopped");
    result
}

impl Agent {
    async fn main_loop(
        &mut self,
        ready: Arc<AtomicBool>,
        mut socket_events: mpsc::Receiver<SocketEvent>,
    ) -> anyhow::Result<()> {
        let (tx, mut events) = mpsc::channel::<KernelEvent>(4096);
        if let Some(ring) = self.kernel.as_mut().and_then(Kernel::take_events) {
            // Launches and starts go to the cgroup warm-up first, straight
            // from the reader: a busy main loop must not delay it.
            let first = self.spawn_prewarm().map(|p| {
                Box::new(move |ev: &KernelEvent| p.observe(ev)) as Box<dyn Fn(&KernelEvent) + Send>
            });
            tokio::spawn(async move {
                if let Err(e) =
                    crate::attribution::kernel::events::read_events(ring, tx, first).await
                {
                    tracing::error!(error = %e, "reading kernel events stopped");
                }
            });
        } else {
            drop(tx);
        }
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        // Sampling follows the readers (`demand`), or, with
        // --monitor.on-demand=false, a clock; what is not a sample
        // (reconciling with the kernel, expiring series) has its own.
        let on_demand = self.args.on_demand;
        let metrics = self.metrics.clone();
        let mut tick = tokio::time::interval(self.args.monitor_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut soon = tokio::time::interval(FINAL_SAMPLE_DELAY);
        soon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trust_check = tokio::time::interval(TRUST_RECHECK);
        trust_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        trust_check.tick().await;
        let mut trust_watch = self.watch_trusted();
        // A first sample: ready, and the adopted containers' values.
        tokio::task::block_in_place(|| self.sample_all(&mut events, None));
        ready.store(true, Ordering::Release);
        let mut events_open = true;
        loop {
            let mut next_sample = None;
            if on_demand {
                match metrics.demand.due(std::time::Instant::now()) {
                    Ok(why) => {
                        // Sampling reads thousands of cgroup files: let the
                        // runtime move HTTP and socket work off this thread.
                        tokio::task::block_in_place(|| self.sample_all(&mut events, Some(why)));
                        continue;
                    }
                    Err(next) => next_sample = next.map(tokio::time::Instant::from_std),
                }
            }
            tokio::select! {
                ev = events.recv(), if events_open => match ev {
                    Some(ev) => self.on_kernel_event(ev),
                    None => events_open = false,
                },
                Some(ev) = socket_events.recv() => self.on_socket_event(ev),
                () = metrics.demand.changed(), if on_demand => {}
                () = sleep_until(next_sample), if next_sample.is_some() => {}
                _ = tick.tick(), if !on_demand => {
                    tokio::task::block_in_place(|| {
                        self.housekeep();
                        self.sample_all(&mut events, Some(Trigger::Interval));
                    });
                }
                _ = housekeeping.tick(), if on_demand => self.housekeep(),
                _ = soon.tick(), if self.publish_soon => {
                    tokio::task::block_in_place(|| self.publish_changes());
                }
                _ = sighup.recv() => {
                    if self.reload_trust("SIGHUP") {
                        trust_watch = self.watch_trusted();
                    }
                }
                r = dir_changed(&mut trust_watch) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "watching the trusted files' directories failed; a replaced starter is trusted within 5 s");
                        trust_watch = None;
                    } else {
                        // Watched afresh first (a directory may have been
                        // replaced): a change from now on is seen.
                        trust_watch = self.watch_trusted();
                        let _ = self.reload_trust("trusted file changed");
                    }
                }
                _ = trust_check.tick() => {
                    // A directory that did not exist may hold starters now.
                    if self.reload_trust("trusted path changed") {
                        trust_watch = self.watch_trusted();
                    }
                }
                _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()); }
                _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()); }
            }
        }
    }

    /// Starts the cgroup warm-up thread, unless --cgroup.prewarm=false.
    fn spawn_prewarm(&self) -> Option<crate::cgroup::prewarm::Handle> {
        if !self.args.cgroup_prewarm {
            return None;
        }
        let counters = crate::cgroup::prewarm::Counters {
            windows: self.metrics.prewarm_windows.clone(),
            writes: self.metrics.prewarm_writes.clone(),
        };
        match crate::cgroup::prewarm::Handle::spawn(self.placer.clone(), counters) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the cgroup warm-up thread; placements may wait for an RCU grace period");
                None
            }
        }
    }

    fn on_kernel_event(&mut self, ev: KernelEvent) {
        match ev {
            KernelEvent::Started {
                container,
                tgid,
                uid,
                boot_ns,
                file,
                parent_launcher,
                arg0,
                ..
            } => {
                // Its run-queue latency slot before anything else: its
                // first tasks look it up at their next switch.
                if let Some(k) = self.kernel.as_mut() {
                    k.runq_track(container);
                }
                self.on_start(StartFacts {
                    key: container,
                    starter_pid: tgid,
                    uid,
                    boot_ns,
                    file: Some(file),
                    parent_launcher: Some(parent_launcher),
                    arg0: Some(arg0),
                    source: crate::model::container::Source::Kernel,
                    socket: None,
                    cgroups: None,
                })
            }
            KernelEvent::Exited { container, .. } => self.on_member_exited(container),
            KernelEvent::OomKill {
                container,
                pid,
                comm,
                ..
            } => self.on_oom_kill(container, pid, &comm),
            KernelEvent::TaskMoved {
                container, tgid, ..
            } => self.on_task_moved(container, tgid),
            KernelEvent::WatchedExit { container, tgid } => self.on_watched_exit(container, tgid),
            KernelEvent::LauncherExec { .. } => {}
        }
    }

    /// The kernel chose a task of a container as an OOM victim.
    fn on_oom_kill(&mut self, key: u64, pid: u32, comm: &str) {
        // Kernels before 6.8 give only the pid; the task may still be there.
        let comm = if comm.is_empty() {
            self.procfs.comm(pid).unwrap_or_default()
        } else {
            comm.to_string()
        };
        let id = self
            .registry
            .container_of(key)
            .and_then(|c| self.registry.get(c))
            .map_or_else(|| format!("(unknown key {key})"), |c| c.id.clone());
        tracing::warn!(container_id = %id, pid, comm = %comm, "OOM killer chose a task of the container");
    }
}
