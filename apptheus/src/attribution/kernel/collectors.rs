//! The kernel side of the collectors: which programs and maps each one
//! owns, and attaching them one collector at a time, so that one the
//! kernel refuses is left out (with a warning) instead of stopping the
//! agent.
use std::{fs::File, path::Path};

use apptheus_common::{MAP_CGROUPS, MAP_RUNQ, MAP_RUNQ_SLOTS, MAP_RUNQ_TASKS};
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError,
        RawTracePoint,
    },
};

use crate::error_chain::chain;
use crate::model::collectors::Collector;

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    /// A BTF tracepoint (tp_btf).
    Btf(&'static str),
    /// A raw tracepoint.
    Raw(&'static str),
    /// cgroup_skb on the cgroup2 root.
    Skb(SkbDirection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkbDirection {
    Ingress,
    Egress,
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::Btf(tp) => write!(f, "tp_btf/{tp}"),
            Hook::Raw(tp) => write!(f, "raw_tp/{tp}"),
            Hook::Skb(SkbDirection::Ingress) => f.write_str("cgroup_skb/ingress"),
            Hook::Skb(SkbDirection::Egress) => f.write_str("cgroup_skb/egress"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CollectorError {
    #[error("the kernel object has no program {0}: the build is broken")]
    Missing(&'static str),
    #[error("the kernel refused program {program} on {hook}")]
    Program {
        program: &'static str,
        hook: Hook,
        #[source]
        source: ProgramError,
    },
    #[error("cgroup2 is not mounted; the network collector attaches to its root")]
    NoCgroup2,
    #[error("opening the cgroup2 root {path}")]
    Cgroup2 {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The programs of a collector, by name in the kernel object.
pub(crate) const fn programs(c: Collector) -> &'static [(&'static str, Hook)] {
    match c {
        Collector::Oom => &[("apptheus_oom", Hook::Btf("mark_victim"))],
        Collector::Network => &[
            ("apptheus_netin", Hook::Skb(SkbDirection::Ingress)),
            ("apptheus_netout", Hook::Skb(SkbDirection::Egress)),
        ],
        Collector::Fsio => &[("apptheus_fsio", Hook::Raw("sys_exit"))],
        Collector::Runqlat => &[("apptheus_switch", Hook::Btf("sched_switch"))],
    }
}

/// The maps only a collector uses; the loader shrinks them to one entry
/// when the collector is off, so they cost no kernel memory.
pub(crate) const fn maps(c: Collector) -> &'static [&'static str] {
    match c {
        Collector::Network => &[MAP_CGROUPS],
        Collector::Runqlat => &[MAP_RUNQ, MAP_RUNQ_SLOTS, MAP_RUNQ_TASKS],
        Collector::Oom | Collector::Fsio => &[],
    }
}

/// Loads and attaches every program of `c`. On failure the programs of
/// `c` loaded so far are unloaded again (which detaches them).
pub(crate) fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    c: Collector,
    cgroup2: Option<&Path>,
) -> Result<(), CollectorError> {
    let cgroup = if c == Collector::Network {
        let path = cgroup2.ok_or(CollectorError::NoCgroup2)?;
        Some(File::open(path).map_err(|source| CollectorError::Cgroup2 {
            path: path.display().to_string(),
            source,
        })?)
    } else {
        None
    };
    let mut done = Vec::new();
    for &(program, hook) in programs(c) {
        done.push((program, hook));
        if let Err(e) = attach_one(ebpf, btf, program, hook, cgroup.as_ref()) {
            for (p, h) in done {
                unload(ebpf, p, h);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn attach_one(
    ebpf: &mut Ebpf,
    btf: &Btf,
    program: &'static str,
    hook: Hook,
    cgroup: Option<&File>,
) -> Result<(), CollectorError> {
    let err = |source| CollectorError::Program {
        program,
        hook,
        source,
    };
    let prog = ebpf
        .program_mut(program)
        .ok_or(CollectorError::Missing(program))?;
    match hook {
        Hook::Btf(tp) => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(err)?;
            p.load(tp, btf).map_err(err)?;
            p.attach().map(drop).map_err(err)
        }
        Hook::Raw(tp) => {
            let p: &mut RawTracePoint = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            p.attach(tp).map(drop).map_err(err)
        }
        Hook::Skb(dir) => {
            let cgroup = cgroup.ok_or(CollectorError::NoCgroup2)?;
            let p: &mut CgroupSkb = prog.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let ty = match dir {
                SkbDirection::Ingress => CgroupSkbAttachType::Ingress,
                SkbDirection::Egress => CgroupSkbAttachType::Egress,
            };
            // On 5.7+ aya attaches through a BPF link, which always runs
            // beside other programs on the cgroup (systemd's, say) and
            // takes no flags (ALLOW_MULTI there is EINVAL).
            p.attach(cgroup, ty, CgroupAttachMode::Single)
                .map(drop)
                .map_err(err)
        }
    }
}

fn unload(ebpf: &mut Ebpf, program: &str, hook: Hook) {
    let Some(prog) = ebpf.program_mut(program) else {
        return;
    };
    let result = match hook {
        Hook::Btf(_) => <&mut BtfTracePoint>::try_from(prog).and_then(|p| p.unload()),
        Hook::Raw(_) => <&mut RawTracePoint>::try_from(prog).and_then(|p| p.unload()),
        Hook::Skb(_) => <&mut CgroupSkb>::try_from(prog).and_then(|p| p.unload()),
    };
    if let Err(e) = result {
        tracing::debug!(program, error = %chain(&e), "unloading a program of a disabled collector");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_fit_the_kernel_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Collector::ALL {
            for (name, _) in programs(c) {
                // BPF_OBJ_NAME_LEN is 16, the NUL included: longer names
                // are cut in the kernel's (and bpftool's) listing.
                assert!(name.len() <= 15, "{name}");
                assert!(seen.insert(*name), "{name} twice");
            }
        }
    }
}
