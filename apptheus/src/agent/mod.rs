//! The agent: start-up, the main loop, shutdown. One task owns the state
//! (registry, kernel maps, cgroups); events, the sampling tick and signals
//! come to it.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::{Context as _, bail};
use apptheus_common::Stat;
use std::collections::HashMap;

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    cgroup::placement::Placer,
    cli::{Args, EbpfMode},
    families, http,
    kernel::{Kernel, events::KernelEvent},
    metrics::AgentMetrics,
    preflight,
    registry::{Registry, Source},
    socket::{self, ConnId, SocketEvent},
    trust::TrustedSet,
};

mod containers;
mod socket_events;

use containers::NewContainer;

pub struct Agent {
    args: Args,
    metrics: Arc<AgentMetrics>,
    kernel: Option<Kernel>,
    placer: Option<Placer>,
    registry: Registry,
    trusted: TrustedSet,
    /// Apptainer's command-line tools (cgroup::prewarm).
    launchers: TrustedSet,
    lost_seen: u64,
    /// cgroup directories whose removal failed (tasks not yet reaped).
    pending_removal: Vec<std::path::PathBuf>,
    /// The trusted set, as the monitoring socket sees it.
    trusted_tx: watch::Sender<TrustedSet>,
    /// Monitoring-socket connections and the container each belongs to.
    socket_conns: HashMap<ConnId, u64>,
    /// Held open while the kernel keeps BPF run-time statistics.
    bpf_stats: Option<std::os::fd::OwnedFd>,
    /// The last error re-resolving the trusted paths, said once.
    trust_error: Option<String>,
    /// Containers whose master closed its monitoring-socket connection,
    /// and since when.
    closing: HashMap<u64, Instant>,
    /// A container ended since the last publication: its final sample
    /// must be served before the next sampling tick, however far.
    publish_soon: bool,
    /// Starters' cgroups (cgroup v2) where apptheus enabled controllers
    /// for a container's cgroup, and which: disabled again once they have
    /// no child cgroup left.
    delegated: std::collections::BTreeMap<std::path::PathBuf, Vec<String>>,
}

/// How soon after a container ends its final sample is served.
const FINAL_SAMPLE_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Containers sampled between two looks at pending kernel events (a
/// container's sample takes a few hundred microseconds).
const EVENTS_EVERY: usize = 16;

/// How often the trusted paths are re-resolved without a SIGHUP.
const TRUST_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let trusted = TrustedSet::resolve(&args.trusted_paths())?;
    tracing::info!(starters = %trusted.describe(), "trusting starters");
    let launchers = TrustedSet::resolve_launchers(&args.launcher_paths(), &trusted)?;
    if launchers.files.is_empty() {
        tracing::info!(
            "no Apptainer launcher found (--trust.launcher): placements are not prepared ahead"
        );
    } else {
        tracing::info!(launchers = %launchers.describe(), "trusting launchers");
    }

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

    let metrics = AgentMetrics::new();
    let kernel = match args.ebpf {
        EbpfMode::False => None,
        mode => match Kernel::load(
            &host.btf,
            &trusted.ids(),
            &launchers.ids(),
            &containers::kernel_options(&args, &host),
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
    match socket::raise_fd_limit() {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    // A socket held by another live apptheus is a start error.
    let socket = socket::bind(&args.socket_path).await?;
    tracing::info!(path = %socket.path().display(), "monitoring socket ready (mode 0666: callers are verified, nothing is read from them)");
    let (trusted_tx, trusted_rx) = watch::channel(trusted.clone());
    let (socket_tx, socket_events) = mpsc::channel::<SocketEvent>(1024);
    let socket_task = tokio::spawn(socket::serve(
        socket,
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
    let push_tasks = crate::push::spawn(&args.push, args.monitor_interval, metrics.clone())?;
    if push_tasks.is_empty() {
        metrics.scrapes_only();
    }

    let placer = Some(Placer::new(&host.layout, &args.procfs));
    let mut agent = Agent {
        args,
        metrics,
        kernel,
        placer,
        registry: Registry::default(),
        trusted,
        launchers,
        lost_seen: 0,
        pending_removal: Vec::new(),
        trusted_tx,
        socket_conns: HashMap::new(),
        bpf_stats: None,
        trust_error: None,
        publish_soon: false,
        closing: HashMap::new(),
        delegated: Default::default(),
    };
    if agent.args.ebpf_stats && agent.kernel.is_some() {
        match crate::kernel::stats::enable() {
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
            let prewarm = self.spawn_prewarm();
            tokio::spawn(async move {
                if let Err(e) = crate::kernel::events::read_events(ring, tx, prewarm).await {
                    tracing::error!(error = %e, "reading kernel events stopped");
                }
            });
        } else {
            drop(tx);
        }
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let mut tick = tokio::time::interval(self.args.monitor_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut final_samples = tokio::time::interval(FINAL_SAMPLE_DELAY);
        final_samples.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trust_check = tokio::time::interval(TRUST_RECHECK);
        trust_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        trust_check.tick().await;
        let mut events_open = true;
        loop {
            tokio::select! {
                ev = events.recv(), if events_open => match ev {
                    Some(ev) => self.on_kernel_event(ev),
                    None => events_open = false,
                },
                Some(ev) = socket_events.recv() => self.on_socket_event(ev),
                _ = tick.tick() => {
                    // Sampling reads thousands of cgroup files: let the
                    // runtime move HTTP and socket work off this thread.
                    tokio::task::block_in_place(|| self.sample(&mut events));
                    ready.store(true, Ordering::Release);
                }
                _ = final_samples.tick(), if self.publish_soon || !self.closing.is_empty() => {
                    self.end_closing();
                    if self.publish_soon {
                        tokio::task::block_in_place(|| self.publish());
                    }
                }
                _ = sighup.recv() => self.reload_trust("SIGHUP"),
                _ = trust_check.tick() => self.reload_trust("trusted path changed"),
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
        let placer = self.placer.clone()?;
        let counters = crate::cgroup::prewarm::Counters {
            windows: self.metrics.prewarm_windows.clone(),
            writes: self.metrics.prewarm_writes.clone(),
        };
        match crate::cgroup::prewarm::Handle::spawn(placer, counters) {
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
                ..
            } => self.start_container(NewContainer {
                key: container,
                starter_pid: tgid,
                uid,
                boot_ns,
                file: Some(file),
                source: Source::Kernel,
                cgroups: None,
            }),
            KernelEvent::Exited { container, .. } => self.end_container(container),
            KernelEvent::OomKill {
                container,
                pid,
                comm,
                ..
            } => self.on_oom_kill(container, pid, &comm),
            KernelEvent::LauncherExec { .. } => {}
        }
    }

    /// Samples every running container. Kernel events that arrive
    /// meanwhile are handled between containers, so that a sample of
    /// thousands of containers does not hold up the placement of new ones.
    fn sample(&mut self, events: &mut mpsc::Receiver<KernelEvent>) {
        let started = Instant::now();
        self.reconcile();
        let keys: Vec<u64> = self.registry.running().map(|c| c.key).collect();
        for (i, key) in keys.into_iter().enumerate() {
            if i % EVENTS_EVERY == EVENTS_EVERY - 1 {
                while let Ok(ev) = events.try_recv() {
                    self.on_kernel_event(ev);
                }
            }
            self.sample_container(key);
        }
        self.end_empty_containers();
        self.retry_removals();
        for c in self.registry.expire(Instant::now(), self.args.grace_period) {
            if let Some(k) = self.kernel.as_mut() {
                k.forget(c.key);
            }
            tracing::debug!(container_id = %c.id, "series removed after the grace period");
        }
        self.publish();
        if let Some(k) = &self.kernel {
            let lost = k.stat(Stat::EventsLost);
            if lost > self.lost_seen {
                self.metrics.ebpf_events_lost.inc_by(lost - self.lost_seen);
                self.lost_seen = lost;
            }
        }
        self.metrics
            .sample_duration
            .set(started.elapsed().as_secs_f64());
    }

    /// Makes the registry's current state what scrapes see.
    fn publish(&mut self) {
        self.publish_soon = false;
        let mut families = families::build(&self.registry);
        if let (Some(k), Some(_)) = (&self.kernel, &self.bpf_stats) {
            families.extend(families::program_stats(&k.program_stats()));
        }
        self.metrics.publish(families);
        self.metrics.containers.set(self.registry.len() as i64);
    }

    /// Recovers from lost events: the kernel's map is the truth.
    fn reconcile(&mut self) {
        let Some(k) = &self.kernel else { return };
        let states = k.containers();
        for (key, st) in &states {
            if self.registry.get(*key).is_none() && st.exited == 0 {
                tracing::warn!(
                    key,
                    "container missed by the event stream; recovered from the kernel's map"
                );
                self.on_kernel_event(KernelEvent::Started {
                    container: *key,
                    tgid: st.starter_tgid,
                    uid: st.uid,
                    gid: st.gid,
                    boot_ns: st.start_boot_ns,
                    file: st.starter,
                });
            }
        }
        let ended: Vec<u64> = self
            .registry
            .running()
            .filter(|c| c.source == Source::Kernel)
            .filter(|c| {
                states
                    .iter()
                    .find(|(k, _)| *k == c.key)
                    .is_none_or(|(_, st)| st.exited != 0)
            })
            .map(|c| c.key)
            .collect();
        for key in ended {
            self.end_container(key);
        }
    }

    /// Re-resolves the trusted paths (on SIGHUP, and every
    /// [`TRUST_RECHECK`]: a package upgrade replaces the file at the path).
    fn reload_trust(&mut self, reason: &str) {
        let resolved = TrustedSet::resolve(&self.args.trusted_paths()).and_then(|t| {
            let l = TrustedSet::resolve_launchers(&self.args.launcher_paths(), &t)?;
            Ok((t, l))
        });
        match resolved {
            Ok((t, l)) if t == self.trusted && l == self.launchers => {
                self.trust_error = None;
                if reason == "SIGHUP" {
                    tracing::info!("SIGHUP: trusted starters unchanged");
                }
            }
            Ok((t, l)) => {
                self.trust_error = None;
                if let Some(k) = self.kernel.as_mut()
                    && let Err(e) = k.set_trusted(&t.ids(), &l.ids())
                {
                    tracing::error!(error = %e, "updating the kernel's trusted set failed; keeping the old one");
                    return;
                }
                if l != self.launchers {
                    tracing::info!(before = %self.launchers.describe(), after = %l.describe(), "{reason}: launchers changed");
                    self.launchers = l;
                }
                if t != self.trusted {
                    tracing::info!(before = %self.trusted.describe(), after = %t.describe(), "{reason}: trusted starters changed");
                    self.trusted_tx.send_replace(t.clone());
                    self.trusted = t;
                }
            }
            Err(e) => {
                // Said once per distinct problem, not at every re-check.
                let text = e.to_string();
                if self.trust_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "{reason}: cannot resolve trusted starters; keeping the old set");
                    self.trust_error = Some(text);
                }
            }
        }
    }
}
