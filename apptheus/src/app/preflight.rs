//! Start-up checks: everything apptheus needs from the host (capabilities,
//! BTF, a cgroup filesystem), each failure named with its fix, all
//! reported at once. Part of the wiring: it asks host/ and cgroup/ alike.
use std::path::{Path, PathBuf};

use crate::cgroup::layout::{Layout, LayoutKind};

/// Capabilities apptheus uses, by number (linux/capability.h).
pub(crate) const NEEDED_CAPS: [(u32, &str, &str); 6] = [
    (
        1,
        "CAP_DAC_OVERRIDE",
        "create cgroups and the socket directory",
    ),
    (2, "CAP_DAC_READ_SEARCH", "read other users' /proc entries"),
    (
        19,
        "CAP_SYS_PTRACE",
        "read containers' environment and executable identity",
    ),
    (
        21,
        "CAP_SYS_ADMIN",
        "move tasks between cgroups and load programs on older kernels",
    ),
    (38, "CAP_PERFMON", "attach tracepoint programs"),
    (39, "CAP_BPF", "load the kernel programs"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.what, self.fix)
    }
}

/// What the host offers, as found by [`check`].
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub layout: Layout,
    pub kind: LayoutKind,
    pub btf: PathBuf,
}

/// Parses the CapEff line of /proc/<pid>/status.
pub(crate) fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The needed capabilities missing from `caps`.
pub(crate) fn missing_caps(caps: u64) -> Vec<&'static str> {
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _, _)| caps & (1u64 << bit) == 0)
        .map(|(_, name, _)| *name)
        .collect()
}

/// Checks the host. `ebpf` says whether the kernel programs will be loaded.
pub(crate) fn check(procfs: &Path, sysfs: &Path, ebpf: bool) -> Result<Host, Vec<Problem>> {
    let mut problems = Vec::new();

    match std::fs::read_to_string(procfs.join("self/status")) {
        Ok(status) => {
            let missing = effective_caps(&status)
                .map(missing_caps)
                .unwrap_or_default();
            if !missing.is_empty() {
                problems.push(Problem {
                    what: format!("missing capabilities: {}", missing.join(", ")),
                    fix: "run apptheus as root (sudo apptheus ...) or from its systemd unit".into(),
                });
            }
        }
        Err(e) => problems.push(Problem {
            what: format!("cannot read {}/self/status: {e}", procfs.display()),
            fix: "mount procfs (mount -t proc proc /proc) or fix --path.procfs".into(),
        }),
    }

    let btf = sysfs.join("kernel/btf/vmlinux");
    if ebpf && !btf.exists() {
        problems.push(Problem {
            what: format!("the kernel has no BTF ({} is missing)", btf.display()),
            fix:
                "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian and Ubuntu kernels are), \
                  or run with --ebpf=false to rely on Apptainer's monitoring socket alone"
                    .into(),
        });
    }

    let layout = match Layout::read(&procfs.join("self/mountinfo")) {
        Ok(l) => Some(l),
        Err(e) => {
            problems.push(Problem {
                what: crate::error_chain::chain(&e).to_string(),
                fix: "apptheus places each container in a cgroup of its own and needs a cgroup filesystem".into(),
            });
            None
        }
    };

    match layout {
        Some(layout) if problems.is_empty() => {
            let kind = layout.kind().unwrap_or(LayoutKind::V2);
            Ok(Host { layout, kind, btf })
        }
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parsing() {
        let status = "Name:\tapptheus\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert!(missing_caps(0x1ff_ffff_ffff).is_empty());
        assert_eq!(missing_caps(0), NEEDED_CAPS.map(|c| c.1).to_vec());
        assert_eq!(missing_caps(!(1u64 << 39)), vec!["CAP_BPF"]);
        assert_eq!(effective_caps("nothing"), None);
    }

    #[test]
    fn every_problem_is_reported_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let procfs = dir.path().join("proc");
        std::fs::create_dir_all(procfs.join("self")).unwrap();
        std::fs::write(procfs.join("self/status"), "CapEff:\t0000000000000000\n").unwrap();
        std::fs::write(procfs.join("self/mountinfo"), "").unwrap();
        let problems = check(&procfs, &dir.path().join("sys"), true).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{text:?}");
        assert!(
            text[0].contains("CAP_BPF") && text[0].contains("root"),
            "{text:?}"
        );
        assert!(
            text[1].contains("BTF") && text[1].contains("--ebpf=false"),
            "{text:?}"
        );
        assert!(text[2].contains("cgroup"), "{text:?}");
        // Without the kernel programs, BTF is not needed.
        let problems = check(&procfs, &dir.path().join("sys"), false).unwrap_err();
        assert_eq!(problems.len(), 2);
    }
}
