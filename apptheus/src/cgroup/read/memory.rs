//! The `memory` source: usage, working set, RSS, cache, swap, peak, the
//! limit in force, OOM events and kills, major faults. From cgroup2 when the
//! container's cgroup2 directory has the memory controller (memory.current),
//! else from the v1 memory controller.
//!
//! v1 reads four files: memory.usage_in_bytes, memory.stat (whose total_*
//! keys include the cgroups below, as cAdvisor reads them, and whose
//! hierarchical_memory_limit is the smallest limit on the way up, the
//! same walk a reader would do through memory.limit_in_bytes and
//! memory.use_hierarchy), memory.max_usage_in_bytes and memory.oom_control.
//! memory.stat cannot be replaced by a cheaper file: memory.numa_stat has
//! anon and file totals but neither inactive_file (the working set) nor
//! pgmajfault, and nothing else has them.
use std::path::Path;

use super::{
    Dirs, Family, Shared,
    files::{Ctx, File, Hier},
    parse::{self, ParseError},
};
use crate::model::stats::{CgroupStats, MemoryStats};

pub(super) struct Memory;

pub(super) enum Files {
    V2 {
        current: File,
        stat: File,
        /// Linux 5.19 and later.
        peak: Option<File>,
        /// Only with swap accounting (and CONFIG_SWAP).
        swap: Option<File>,
        max: File,
        events: File,
    },
    V1 {
        usage: File,
        stat: File,
        max_usage: File,
        /// memory + swap; with swap accounting only. memory.stat's
        /// total_swap is read first.
        memsw: Option<File>,
        oom_control: File,
    },
}

impl Family for Memory {
    const NAME: &'static str = "memory";
    type Files = Files;

    fn plan(dirs: &Dirs<'_>) -> Option<Files> {
        let has = |d: &Path, f: &str| d.join(f).exists();
        if let Some(d) = dirs.v2_with("memory.current") {
            let v2 = |name| File::new(Hier::V2, name);
            return Some(Files::V2 {
                current: v2("memory.current"),
                stat: v2("memory.stat"),
                peak: has(d, "memory.peak").then(|| v2("memory.peak")),
                swap: has(d, "memory.swap.current").then(|| v2("memory.swap.current")),
                max: v2("memory.max"),
                events: v2("memory.events"),
            });
        }
        let d = dirs.v1("memory")?;
        let v1 = |name| File::new(Hier::V1("memory"), name);
        Some(Files::V1 {
            usage: v1("memory.usage_in_bytes"),
            stat: v1("memory.stat"),
            max_usage: v1("memory.max_usage_in_bytes"),
            memsw: has(d, "memory.memsw.usage_in_bytes").then(|| v1("memory.memsw.usage_in_bytes")),
            oom_control: v1("memory.oom_control"),
        })
    }

    fn read(f: &mut Files, ctx: &mut Ctx<'_>, shared: &mut Shared, out: &mut CgroupStats) {
        out.memory = match f {
            Files::V2 {
                current,
                stat,
                peak,
                swap,
                max,
                events,
            } => v2(current, stat, peak, swap, max, events, ctx, shared),
            Files::V1 {
                usage,
                stat,
                max_usage,
                memsw,
                oom_control,
            } => v1(usage, stat, max_usage, memsw, oom_control, ctx, shared),
        };
    }
}

/// The values of memory.stat that are used, each as parsed.
struct Stat {
    rss: Result<u64, ParseError>,
    cache: Result<u64, ParseError>,
    inactive_file: Result<u64, ParseError>,
    major_faults: Result<Option<u64>, ParseError>,
    swap: Result<Option<u64>, ParseError>,
    limit: Result<Option<u64>, ParseError>,
}

fn stat(text: &str, v1: bool) -> Result<Stat, ParseError> {
    Ok(if v1 {
        let kv = parse::flat_keyed(
            text,
            [
                "total_rss",
                "total_cache",
                "total_inactive_file",
                "total_pgmajfault",
                "total_swap",
                "hierarchical_memory_limit",
            ],
        )?;
        Stat {
            rss: kv.require("total_rss"),
            cache: kv.require("total_cache"),
            inactive_file: kv.require("total_inactive_file"),
            major_faults: kv.get("total_pgmajfault"),
            swap: kv.get("total_swap"),
            limit: kv.get("hierarchical_memory_limit"),
        }
    } else {
        let kv = parse::flat_keyed(text, ["anon", "file", "inactive_file", "pgmajfault"])?;
        Stat {
            rss: kv.require("anon"),
            cache: kv.require("file"),
            inactive_file: kv.require("inactive_file"),
            major_faults: kv.get("pgmajfault"),
            swap: Ok(None),
            limit: Ok(None),
        }
    })
}

/// Fills what memory.stat gives; returns its swap and limit (v1).
fn apply_stat(
    m: &mut MemoryStats,
    f: &File,
    s: Stat,
    ctx: &mut Ctx<'_>,
) -> (Option<u64>, Option<u64>) {
    m.rss_bytes = ctx.ok(f, s.rss);
    m.cache_bytes = ctx.ok(f, s.cache);
    // cAdvisor's working set: what cannot be reclaimed without hurting,
    // i.e. usage less the inactive page cache.
    m.working_set_bytes = ctx
        .ok(f, s.inactive_file)
        .map(|inactive| m.usage_bytes.saturating_sub(inactive));
    m.major_faults = ctx.ok(f, s.major_faults).flatten();
    (ctx.ok(f, s.swap).flatten(), ctx.ok(f, s.limit).flatten())
}

#[allow(clippy::too_many_arguments)]
fn v2(
    current: &mut File,
    stat_file: &mut File,
    peak: &mut Option<File>,
    swap: &mut Option<File>,
    max: &mut File,
    events: &mut File,
    ctx: &mut Ctx<'_>,
    shared: &mut Shared,
) -> Option<MemoryStats> {
    let usage = current.required(ctx, parse::single_u64)?;
    let mut m = MemoryStats {
        usage_bytes: usage,
        ..MemoryStats::default()
    };
    if let Some(s) = stat_file.required(ctx, |t| stat(t, false)) {
        apply_stat(&mut m, stat_file, s, ctx);
    }
    m.max_usage_bytes = peak
        .as_mut()
        .and_then(|f| f.optional(ctx, parse::single_u64));
    m.swap_bytes = swap
        .as_mut()
        .and_then(|f| f.optional(ctx, parse::single_u64));
    // The container's own limit, then the enclosing ones.
    let own = max.required(ctx, parse::limit).flatten();
    let above = match ctx.cg.v2.clone() {
        Some(dir) => {
            shared
                .enclosing
                .min_above(&dir, "memory.max", parse::limit, ctx, |_, _, _| true)
        }
        None => None,
    };
    m.limit_bytes = min(own, above);
    if let Some((oom, kill)) = events.required(ctx, |t| {
        let kv = parse::flat_keyed(t, ["oom", "oom_kill"])?;
        // oom_kill: Linux 4.13 and later.
        Ok((kv.require("oom"), kv.get("oom_kill")))
    }) {
        m.oom_events = ctx.ok(events, oom);
        m.oom_kills = ctx.ok(events, kill).flatten();
    }
    Some(m)
}

fn v1(
    usage_file: &mut File,
    stat_file: &mut File,
    max_usage: &mut File,
    memsw: &mut Option<File>,
    oom_control: &mut File,
    ctx: &mut Ctx<'_>,
    shared: &mut Shared,
) -> Option<MemoryStats> {
    let usage = usage_file.required(ctx, parse::single_u64)?;
    let mut m = MemoryStats {
        usage_bytes: usage,
        ..MemoryStats::default()
    };
    let (swap, limit) = match stat_file.required(ctx, |t| stat(t, true)) {
        Some(s) => apply_stat(&mut m, stat_file, s, ctx),
        None => (None, None),
    };
    m.max_usage_bytes = max_usage.required(ctx, parse::single_u64);
    m.limit_bytes = match limit {
        // The huge "unset" value is no limit.
        Some(v) => parse::v1_limit_value(v),
        None => walk_v1_limit(ctx, shared),
    };
    // Swap accounting is on where memsw (memory plus swap) exists; then
    // memory.stat has total_swap too, which saves reading memsw.
    m.swap_bytes = memsw.as_mut().and_then(|f| {
        swap.or_else(|| {
            f.optional(ctx, parse::single_u64)
                .map(|memsw| memsw.saturating_sub(usage))
        })
    });
    if let Some((kill, under)) = oom_control.required(ctx, |t| {
        let kv = parse::flat_keyed(t, ["oom_kill", "under_oom"])?;
        // oom_kill: Linux 4.13 and later.
        Ok((kv.get("oom_kill"), kv.get("under_oom")))
    }) {
        m.oom_kills = ctx.ok(oom_control, kill).flatten();
        m.under_oom = ctx.ok(oom_control, under).flatten().map(|v| v != 0);
    }
    Some(m)
}

/// Where memory.stat has no hierarchical_memory_limit: the container's
/// memory.limit_in_bytes and its ancestors', up while they use the
/// hierarchy (a parent with use_hierarchy 0 does not charge its children,
/// so its limit, and any above it, does not hold for them).
fn walk_v1_limit(ctx: &mut Ctx<'_>, shared: &mut Shared) -> Option<u64> {
    let dir = ctx.cg.v1.get("memory")?.clone();
    let mut own = File::new(Hier::V1("memory"), "memory.limit_in_bytes");
    let own = own.required(ctx, parse::v1_limit).flatten();
    let above = shared.enclosing.min_above(
        &dir,
        "memory.limit_in_bytes",
        parse::v1_limit,
        ctx,
        |a, p, ctx| a.use_hierarchy(p, ctx),
    );
    min(own, above)
}

fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
