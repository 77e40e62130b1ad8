//! The `cpu` source: CPU time (usage, user, system) and CFS throttling.
//! Usage from cgroup2's cpu.stat when the container's cgroup2 directory has
//! it (every cgroup2 directory does, controllers or not: pure v2 and
//! hybrid hosts), else from v1 cpuacct. Throttling from cgroup2's cpu.stat
//! when the cpu controller is enabled there, else from the v1 cpu
//! controller's cpu.stat: a counter of its own, so taking it from v1 while
//! usage came from cgroup2 (hybrid) does not mix two series.
use super::{
    Dirs, Family, Shared,
    files::{Ctx, File, Hier},
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
    /// The v1 cpu controller's cpu.stat (throttled_time, ns), where it
    /// exists (CONFIG_CFS_BANDWIDTH).
    throttle: Option<File>,
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
            .map(|_| File::new(Hier::V1("cpu"), "cpu.stat"));
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
            cpu.throttled_seconds = t
                .optional(ctx, |text| {
                    Ok(parse::flat_keyed(text).and_then(|kv| kv.require("throttled_time")))
                })
                .and_then(|r| ctx.ok(t, r))
                .map(nsec);
        }
        out.cpu = Some(cpu);
    }
}

/// cpu.stat: usage_usec, user_usec and system_usec are always there;
/// throttled_usec only when the cpu controller is enabled for the cgroup.
fn v2(f: &mut File, ctx: &mut Ctx<'_>) -> Option<CpuStats> {
    let (usage, user, system, throttled) = f.required(ctx, |t| {
        let kv = parse::flat_keyed(t)?;
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
        let kv = parse::flat_keyed(t)?;
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
