//! The `cpu` source: CPU time (usage, user, system) and CFS throttling.
//! Usage from cgroup2's cpu.stat when the container's cgroup2 directory has
//! it (every cgroup2 directory does, controllers or not: pure v2 and
//! hybrid hosts), else from v1 cpuacct. Throttling from cgroup2's cpu.stat
//! when the cpu controller is enabled there, else from the v1 cpu
//! controller's cpu.stat: a counter of its own, so taking it from v1 while
//! usage came from cgroup2 (hybrid) does not mix two series.
//!
//! The kernel counts throttled time only in the cgroup whose own CFS quota
//! ran out, never in the cgroups below it. A v1 cgroup without a quota of
//! its own (cpu.cfs_quota_us is -1: apptheus' own cgroups, beneath a
//! runtime's or a job's that holds the limit) keeps the time it has, so its
//! cpu.stat is read when the quota is looked at, every [`QUOTA_RECHECK`],
//! not at every sample: a file fewer per container and sample on hybrid and
//! v1 hosts. A quota set on such a cgroup later shows within that time.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::{
    Dirs, Family, Shared,
    files::{Ctx, File, Hier, read_small},
    parse,
};
use crate::model::stats::{CgroupStats, CpuStats};

pub(super) struct Cpu;

pub(super) enum Usage {
    /// cgroup2 cpu.stat: usage_usec, user_usec, system_usec (and
    /// throttled_usec with the cpu controller).
    V2(File),
    /// cpuacct.usage (ns) and cpuacct.stat (user and system in USER_HZ).
    V1 { usage: File, stat: File },
}

pub(super) struct Files {
    usage: Usage,
    /// The v1 cpu controller's throttling, where it exists
    /// (CONFIG_CFS_BANDWIDTH).
    throttle: Option<Throttle>,
}

/// How often a v1 cgroup's CFS quota is looked at (and, without one, its
/// throttled time read): both files opened, read and closed then cost
/// about what reading a kept cpu.stat at every sample costs when
/// Prometheus scrapes every 15 s, and far less at shorter intervals.
pub(super) const QUOTA_RECHECK: Duration = Duration::from_secs(60);

/// The v1 cpu controller's cpu.stat (throttled_time, ns) of one cgroup,
/// read at every sample only while the cgroup has a CFS quota of its own.
pub(super) struct Throttle {
    stat: File,
    /// When the quota was last looked at, and whether there was one (or
    /// it could not be told: then cpu.stat is read at every sample).
    quota: Option<(Instant, bool)>,
    /// The throttled time read last.
    last: Option<f64>,
}

impl Throttle {
    fn new() -> Self {
        Throttle {
            stat: File::new(Hier::V1("cpu"), "cpu.stat"),
            quota: None,
            last: None,
        }
    }

    /// The throttled time at `now`.
    pub(super) fn read_at(&mut self, ctx: &mut Ctx<'_>, now: Instant) -> Option<f64> {
        let due = self
            .quota
            .is_none_or(|(at, _)| now.saturating_duration_since(at) >= QUOTA_RECHECK);
        if due {
            let dir = Hier::V1("cpu").dir(ctx.cg);
            self.quota = Some((now, dir.is_none_or(has_quota)));
        }
        let limited = self.quota.is_some_and(|(_, quota)| quota);
        if due || limited {
            let stat = &mut self.stat;
            self.last = stat
                .optional(ctx, |text| {
                    Ok(parse::flat_keyed(text, ["throttled_time"])
                        .and_then(|kv| kv.require("throttled_time")))
                })
                .and_then(|r| ctx.ok(stat, r))
                .map(nsec);
        }
        if !limited {
            // Read every QUOTA_RECHECK at most: not worth a descriptor.
            self.stat.close();
        }
        self.last
    }
}

/// Whether the v1 cgroup `dir` has a CFS quota of its own: anything but
/// "-1" in cpu.cfs_quota_us, or a file that cannot be read, counts as one.
fn has_quota(dir: &Path) -> bool {
    !matches!(read_small(&dir.join("cpu.cfs_quota_us")), Ok(t) if t.trim() == "-1")
}

fn usec(v: u64) -> f64 {
    v as f64 / 1e6
}

fn nsec(v: u64) -> f64 {
    v as f64 / 1e9
}

impl Family for Cpu {
    const NAME: &'static str = "cpu";
    type Files = Files;

    fn plan(dirs: &Dirs<'_>) -> Option<Files> {
        let usage = match dirs.v2_with("cpu.stat") {
            Some(_) => Usage::V2(File::new(Hier::V2, "cpu.stat")),
            None => {
                dirs.v1("cpuacct")?;
                Usage::V1 {
                    usage: File::new(Hier::V1("cpuacct"), "cpuacct.usage"),
                    stat: File::new(Hier::V1("cpuacct"), "cpuacct.stat"),
                }
            }
        };
        let throttle = dirs
            .v1("cpu")
            .filter(|d| d.join("cpu.stat").exists())
            .map(|_| Throttle::new());
        Some(Files { usage, throttle })
    }

    fn read(f: &mut Files, ctx: &mut Ctx<'_>, shared: &mut Shared, out: &mut CgroupStats) {
        let cpu = match &mut f.usage {
            Usage::V2(file) => v2(file, ctx),
            Usage::V1 { usage, stat } => v1(usage, stat, shared.user_hz, ctx),
        };
        let Some(mut cpu) = cpu else { return };
        if cpu.throttled_seconds.is_none()
            && let Some(t) = &mut f.throttle
        {
            cpu.throttled_seconds = t.read_at(ctx, shared.now);
        }
        out.cpu = Some(cpu);
    }
}

/// cpu.stat: usage_usec, user_usec and system_usec are always there;
/// throttled_usec only when the cpu controller is enabled for the cgroup.
fn v2(f: &mut File, ctx: &mut Ctx<'_>) -> Option<CpuStats> {
    let (usage, user, system, throttled) = f.required(ctx, |t| {
        let kv = parse::flat_keyed(
            t,
            ["usage_usec", "user_usec", "system_usec", "throttled_usec"],
        )?;
        Ok((
            kv.require("usage_usec"),
            kv.require("user_usec"),
            kv.require("system_usec"),
            kv.get("throttled_usec"),
        ))
    })?;
    let usage = ctx.ok(f, usage)?;
    Some(CpuStats {
        usage_seconds: usec(usage),
        user_seconds: ctx.ok(f, user).map(usec),
        system_seconds: ctx.ok(f, system).map(usec),
        throttled_seconds: ctx.ok(f, throttled).flatten().map(usec),
    })
}

/// cpuacct: cpuacct.usage (nanoseconds) and cpuacct.stat (user and system
/// in USER_HZ ticks).
fn v1(usage: &mut File, stat: &mut File, user_hz: u64, ctx: &mut Ctx<'_>) -> Option<CpuStats> {
    let total = usage.required(ctx, parse::single_u64)?;
    let hz = user_hz.max(1) as f64;
    let (user, system) = match stat.required(ctx, |t| {
        let kv = parse::flat_keyed(t, ["user", "system"])?;
        Ok((kv.require("user"), kv.require("system")))
    }) {
        Some((u, s)) => (ctx.ok(stat, u), ctx.ok(stat, s)),
        None => (None, None),
    };
    Some(CpuStats {
        usage_seconds: nsec(total),
        user_seconds: user.map(|t| t as f64 / hz),
        system_seconds: system.map(|t| t as f64 / hz),
        throttled_seconds: None,
    })
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;
    use crate::{cgroup::read::Budget, model::cgroups::ContainerCgroups};

    fn throttled(ns: u64) -> String {
        format!("nr_periods 10\nnr_throttled 2\nthrottled_time {ns}\n")
    }

    /// Reads `t`'s throttled time of the v1 cpu cgroup `dir` at `at`.
    fn read(t: &mut Throttle, dir: &Path, at: Instant) -> Option<f64> {
        let cg = ContainerCgroups {
            v2: None,
            v1: [("cpu", PathBuf::from(dir))].into(),
        };
        let (mut buf, budget) = (Vec::new(), Budget::new(0));
        let mut ctx = Ctx::new(&cg, &mut buf, &budget);
        let got = t.read_at(&mut ctx, at);
        assert!(ctx.warnings.is_empty(), "{:?}", ctx.warnings);
        got
    }

    #[test]
    fn without_a_quota_of_its_own_a_cgroup_keeps_its_throttled_time() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(d.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        fs::write(d.join("cpu.stat"), throttled(1_500_000_000)).unwrap();
        let mut th = Throttle::new();
        let t0 = Instant::now();
        // Read when the quota is first looked at.
        assert_eq!(read(&mut th, d, t0), Some(1.5));
        // No quota: the kernel cannot throttle it, the time stays what it
        // was (a change here would be a quota set meanwhile: seen below).
        fs::write(d.join("cpu.stat"), throttled(2_000_000_000)).unwrap();
        assert_eq!(read(&mut th, d, t0 + QUOTA_RECHECK / 2), Some(1.5));
        // A quota set since shows when the quota is looked at again, and
        // from then on the time is read at every sample.
        fs::write(d.join("cpu.cfs_quota_us"), "50000\n").unwrap();
        assert_eq!(read(&mut th, d, t0 + QUOTA_RECHECK), Some(2.0));
        fs::write(d.join("cpu.stat"), throttled(2_250_000_000)).unwrap();
        assert_eq!(read(&mut th, d, t0 + QUOTA_RECHECK), Some(2.25));
    }

    #[test]
    fn cpu_stat_is_kept_open_only_where_it_is_read_at_every_sample() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(d.join("cpu.stat"), throttled(0)).unwrap();
        let cg = ContainerCgroups {
            v2: None,
            v1: [("cpu", d.to_path_buf())].into(),
        };
        let (mut buf, budget) = (Vec::new(), Budget::new(8));
        for (quota, kept) in [("-1\n", false), ("50000\n", true)] {
            fs::write(d.join("cpu.cfs_quota_us"), quota).unwrap();
            let mut th = Throttle::new();
            let mut ctx = Ctx::new(&cg, &mut buf, &budget);
            assert_eq!(th.read_at(&mut ctx, Instant::now()), Some(0.0));
            assert_eq!(th.stat.is_kept(), kept, "quota {quota:?}");
            assert_eq!(budget.in_use(), usize::from(kept), "quota {quota:?}");
        }
    }

    #[test]
    fn with_a_quota_or_none_to_be_seen_the_time_is_read_at_every_sample() {
        for quota in [Some("100000\n"), None, Some("garbage")] {
            let t = tempfile::tempdir().unwrap();
            let d = t.path();
            if let Some(q) = quota {
                fs::write(d.join("cpu.cfs_quota_us"), q).unwrap();
            }
            fs::write(d.join("cpu.stat"), throttled(1_000_000_000)).unwrap();
            let mut th = Throttle::new();
            let t0 = Instant::now();
            assert_eq!(read(&mut th, d, t0), Some(1.0), "{quota:?}");
            fs::write(d.join("cpu.stat"), throttled(3_000_000_000)).unwrap();
            assert_eq!(read(&mut th, d, t0), Some(3.0), "{quota:?}");
        }
    }
}
