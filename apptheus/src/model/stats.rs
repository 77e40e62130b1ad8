//! A container's cgroup statistics, as read. A family the host cannot
//! provide is None, never 0.

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuStats {
    pub usage_seconds: f64,
    pub user_seconds: Option<f64>,
    pub system_seconds: Option<f64>,
    pub throttled_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    pub working_set_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub cache_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub max_usage_bytes: Option<u64>,
    /// None when there is no limit ("max").
    pub limit_bytes: Option<u64>,
    pub oom_events: Option<u64>,
    pub oom_kills: Option<u64>,
    /// Major page faults (memory.stat pgmajfault; v1: total_pgmajfault,
    /// which includes the cgroups below).
    pub major_faults: Option<u64>,
    /// Whether the cgroup is stopped in the OOM handler (v1 only:
    /// memory.oom_control's under_oom, with oom_kill_disable set).
    pub under_oom: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PidsStats {
    pub current: u64,
    /// None when there is no limit ("max").
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlkioDevice {
    /// "major:minor"
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// PSI totals, in seconds ("some" and "full" lines' total=).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pressure {
    pub cpu_some: Option<f64>,
    pub memory_some: Option<f64>,
    pub memory_full: Option<f64>,
    pub io_some: Option<f64>,
    pub io_full: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    pub threads: Option<u64>,
    pub blkio: Option<Vec<BlkioDevice>>,
    pub pressure: Option<Pressure>,
}

impl CgroupStats {
    /// Its limits alone (memory and tasks): what a cgroup shared with
    /// other processes gives a container.
    pub fn limits_only(&self) -> CgroupStats {
        CgroupStats {
            memory: self.memory.as_ref().map(|m| MemoryStats {
                limit_bytes: m.limit_bytes,
                ..MemoryStats::default()
            }),
            pids: self.pids.as_ref().map(|p| PidsStats {
                current: 0,
                limit: p.limit,
            }),
            ..CgroupStats::default()
        }
    }
}

/// One cgroup's statistics as they go into a container's total.
#[derive(Debug, Clone, Copy)]
pub struct PartStats<'a> {
    pub stats: &'a CgroupStats,
    /// The cgroup still exists: its gauges (memory in use, tasks) count.
    /// A removed cgroup's counters still count: they are what its tasks
    /// used before it went.
    pub live: bool,
    /// Its limits are the container's: the runtime's cgroup, where the
    /// workload runs, over apptheus' own.
    pub limits: bool,
}

/// A container's statistics from the cgroups it ran in (its own, a
/// runtime's, an instance's joins'): counters summed over every cgroup,
/// gauges over the live ones, limits from the cgroup that holds them. A family none of them had stays out.
pub fn combine(parts: &[PartStats<'_>]) -> CgroupStats {
    match parts {
        [] => CgroupStats::default(),
        [only] if only.live => only.stats.clone(),
        _ => CgroupStats {
            cpu: fold(parts, |s| s.cpu.as_ref(), |a, b, _| add_cpu(a, b)),
            memory: fold(parts, |s| s.memory.as_ref(), add_memory),
            pids: fold(
                parts,
                |s| s.pids.as_ref(),
                |a, b, p| PidsStats {
                    current: a.current + if p.live { b.current } else { 0 },
                    limit: pick_limit(a.limit, b.limit, p),
                },
            ),
            threads: parts
                .iter()
                .filter(|p| p.live)
                .filter_map(|p| p.stats.threads)
                .reduce(|a, b| a + b),
            blkio: fold(parts, |s| s.blkio.as_ref(), |a, b, _| add_blkio(a, b)),
            pressure: fold(parts, |s| s.pressure.as_ref(), |a, b, _| add_pressure(a, b)),
        },
    }
}

/// Folds one family over the parts that have it; the first part's value
/// starts (its gauges zeroed when it is gone).
fn fold<T: Clone + Default + Zeroable>(
    parts: &[PartStats<'_>],
    get: impl Fn(&CgroupStats) -> Option<&T>,
    add: impl Fn(T, &T, &PartStats<'_>) -> T,
) -> Option<T> {
    let mut with = parts.iter().filter_map(|p| get(p.stats).map(|v| (v, p)));
    let (first, p) = with.next()?;
    let start = if p.live {
        first.clone()
    } else {
        first.clone().without_gauges()
    };
    Some(with.fold(start, |acc, (v, p)| add(acc, v, p)))
}

/// Values whose gauges (what is in use now) drop out once their cgroup is
/// gone.
trait Zeroable {
    fn without_gauges(self) -> Self;
}

impl Zeroable for CpuStats {
    fn without_gauges(self) -> Self {
        self
    }
}

impl Zeroable for MemoryStats {
    fn without_gauges(self) -> Self {
        MemoryStats {
            usage_bytes: 0,
            working_set_bytes: self.working_set_bytes.map(|_| 0),
            rss_bytes: self.rss_bytes.map(|_| 0),
            cache_bytes: self.cache_bytes.map(|_| 0),
            swap_bytes: self.swap_bytes.map(|_| 0),
            under_oom: self.under_oom.map(|_| false),
            ..self
        }
    }
}

impl Zeroable for PidsStats {
    fn without_gauges(self) -> Self {
        PidsStats { current: 0, ..self }
    }
}

impl Zeroable for Vec<BlkioDevice> {
    fn without_gauges(self) -> Self {
        self
    }
}

impl Zeroable for Pressure {
    fn without_gauges(self) -> Self {
        self
    }
}

fn add_opt<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// `b`'s limit over `a`'s when `b`'s part holds the limits (and has one).
fn pick_limit<T>(a: Option<T>, b: Option<T>, p: &PartStats<'_>) -> Option<T> {
    if p.limits && p.live && b.is_some() {
        b
    } else {
        a
    }
}

fn add_cpu(a: CpuStats, b: &CpuStats) -> CpuStats {
    CpuStats {
        usage_seconds: a.usage_seconds + b.usage_seconds,
        user_seconds: add_opt(a.user_seconds, b.user_seconds),
        system_seconds: add_opt(a.system_seconds, b.system_seconds),
        throttled_seconds: add_opt(a.throttled_seconds, b.throttled_seconds),
    }
}

fn add_memory(a: MemoryStats, b: &MemoryStats, p: &PartStats<'_>) -> MemoryStats {
    let gauge = |a: Option<u64>, b: Option<u64>| {
        if p.live {
            add_opt(a, b)
        } else {
            a.or(b.map(|_| 0))
        }
    };
    MemoryStats {
        usage_bytes: a.usage_bytes + if p.live { b.usage_bytes } else { 0 },
        working_set_bytes: gauge(a.working_set_bytes, b.working_set_bytes),
        rss_bytes: gauge(a.rss_bytes, b.rss_bytes),
        cache_bytes: gauge(a.cache_bytes, b.cache_bytes),
        swap_bytes: gauge(a.swap_bytes, b.swap_bytes),
        // The peaks of several cgroups may not coincide: their sum bounds
        // the container's peak from above and stays at least its usage.
        max_usage_bytes: add_opt(a.max_usage_bytes, b.max_usage_bytes),
        limit_bytes: pick_limit(a.limit_bytes, b.limit_bytes, p),
        oom_events: add_opt(a.oom_events, b.oom_events),
        oom_kills: add_opt(a.oom_kills, b.oom_kills),
        major_faults: add_opt(a.major_faults, b.major_faults),
        under_oom: match (a.under_oom, b.under_oom) {
            (Some(x), Some(y)) => Some(x || (p.live && y)),
            (x, y) => x.or(y.map(|y| p.live && y)),
        },
    }
}

fn add_blkio(mut a: Vec<BlkioDevice>, b: &[BlkioDevice]) -> Vec<BlkioDevice> {
    for d in b {
        match a.iter_mut().find(|x| x.device == d.device) {
            Some(x) => {
                x.read_bytes += d.read_bytes;
                x.write_bytes += d.write_bytes;
                x.read_ops += d.read_ops;
                x.write_ops += d.write_ops;
            }
            None => a.push(d.clone()),
        }
    }
    a
}

fn add_pressure(a: Pressure, b: &Pressure) -> Pressure {
    Pressure {
        cpu_some: add_opt(a.cpu_some, b.cpu_some),
        memory_some: add_opt(a.memory_some, b.memory_some),
        memory_full: add_opt(a.memory_full, b.memory_full),
        io_some: add_opt(a.io_some, b.io_some),
        io_full: add_opt(a.io_full, b.io_full),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(cpu: f64, mem: u64, limit: Option<u64>, threads: u64) -> CgroupStats {
        CgroupStats {
            cpu: Some(CpuStats {
                usage_seconds: cpu,
                user_seconds: Some(cpu / 2.0),
                ..CpuStats::default()
            }),
            memory: Some(MemoryStats {
                usage_bytes: mem,
                rss_bytes: Some(mem),
                max_usage_bytes: Some(mem * 2),
                limit_bytes: limit,
                ..MemoryStats::default()
            }),
            pids: Some(PidsStats {
                current: threads,
                limit: None,
            }),
            threads: Some(threads),
            blkio: Some(vec![BlkioDevice {
                device: "8:0".into(),
                read_bytes: 100,
                ..BlkioDevice::default()
            }]),
            pressure: None,
        }
    }

    /// apptheus' own cgroup holds the starter's master; the runtime's (an
    /// Apptainer `--memory` run) the workload, under its limit.
    #[test]
    fn a_runtime_cgroup_adds_its_use_and_brings_its_limit() {
        let own = stats(0.02, 10 << 20, None, 3);
        let runtime = stats(1.5, 30 << 20, Some(64 << 20), 2);
        let c = combine(&[
            PartStats {
                stats: &own,
                live: true,
                limits: false,
            },
            PartStats {
                stats: &runtime,
                live: true,
                limits: true,
            },
        ]);
        let cpu = c.cpu.unwrap();
        assert!((cpu.usage_seconds - 1.52).abs() < 1e-9);
        assert!((cpu.user_seconds.unwrap() - 0.76).abs() < 1e-9);
        let m = c.memory.unwrap();
        assert_eq!(m.usage_bytes, 40 << 20);
        assert_eq!(m.rss_bytes, Some(40 << 20));
        assert_eq!(m.max_usage_bytes, Some(80 << 20), "the peaks' sum");
        assert_eq!(m.limit_bytes, Some(64 << 20), "the runtime's limit");
        assert_eq!(c.threads, Some(5));
        assert_eq!(c.pids.unwrap().current, 5);
        assert_eq!(c.blkio.unwrap()[0].read_bytes, 200);
    }

    /// Once the runtime removed its cgroup (the workload ended), what it
    /// used stays counted; what it held no longer does.
    #[test]
    fn a_removed_cgroup_keeps_its_counters_not_its_gauges() {
        let own = stats(0.02, 10 << 20, None, 1);
        let gone = stats(1.5, 30 << 20, Some(64 << 20), 2);
        let parts = [
            PartStats {
                stats: &gone,
                live: false,
                limits: true,
            },
            PartStats {
                stats: &own,
                live: true,
                limits: false,
            },
        ];
        let c = combine(&parts);
        assert!((c.cpu.unwrap().usage_seconds - 1.52).abs() < 1e-9);
        let m = c.memory.unwrap();
        assert_eq!(m.usage_bytes, 10 << 20);
        assert_eq!(m.max_usage_bytes, Some(80 << 20));
        assert_eq!(c.threads, Some(1));
        assert_eq!(c.pids.unwrap().current, 1);
    }

    #[test]
    fn one_live_cgroup_is_taken_as_is_and_none_gives_nothing() {
        let own = stats(0.5, 1, Some(2), 1);
        let c = combine(&[PartStats {
            stats: &own,
            live: true,
            limits: false,
        }]);
        assert_eq!(c, own);
        assert_eq!(combine(&[]), CgroupStats::default());
        // A family no cgroup had stays out.
        assert_eq!(c.pressure, None);
    }
}
