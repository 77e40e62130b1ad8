//! The kernel collectors: per-container statistics that only kernel
//! programs can give, each switchable in node_exporter's style
//! (`--collector.<name>` / `--no-collector.<name>`, see `cli::collectors`).
//! The programs of a disabled collector are neither loaded nor attached.
use std::fmt;

/// One kernel collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collector {
    /// OOM kills per container (tp_btf `mark_victim`).
    Oom,
    /// Network bytes and packets per container (cgroup_skb on the cgroup2 root).
    Network,
    /// Bytes read from and written to regular files (raw tracepoint `sys_exit`).
    Fsio,
    /// Run-queue latency histogram (tp_btf `sched_switch`).
    Runqlat,
}

impl Collector {
    pub const ALL: [Collector; 4] = [
        Collector::Oom,
        Collector::Network,
        Collector::Fsio,
        Collector::Runqlat,
    ];

    /// The name in `--collector.<name>`.
    pub const fn name(self) -> &'static str {
        match self {
            Collector::Oom => "oom",
            Collector::Network => "network",
            Collector::Fsio => "fsio",
            Collector::Runqlat => "runqlat",
        }
    }

    /// Whether the collector runs unless `--no-collector.<name>` is given.
    /// The ones off by default cost measurably on hot kernel paths (see
    /// docs/performance.md, "Kernel collectors").
    pub const fn default_enabled(self) -> bool {
        match self {
            Collector::Oom | Collector::Network => true,
            Collector::Fsio | Collector::Runqlat => false,
        }
    }
}

impl fmt::Display for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of collectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collectors(u8);

impl Collectors {
    pub const NONE: Collectors = Collectors(0);

    const fn bit(c: Collector) -> u8 {
        1 << c as u8
    }

    pub fn all() -> Self {
        Collector::ALL.into_iter().collect()
    }

    pub const fn contains(self, c: Collector) -> bool {
        self.0 & Self::bit(c) != 0
    }

    pub fn insert(&mut self, c: Collector) {
        self.0 |= Self::bit(c);
    }

    pub fn remove(&mut self, c: Collector) {
        self.0 &= !Self::bit(c);
    }

    pub fn iter(self) -> impl Iterator<Item = Collector> {
        Collector::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Collector> for Collectors {
    fn from_iter<I: IntoIterator<Item = Collector>>(iter: I) -> Self {
        let mut s = Collectors::NONE;
        for c in iter {
            s.insert(c);
        }
        s
    }
}

impl fmt::Display for Collectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Collector::name).collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let mut s = Collectors::all();
        assert_eq!(s.iter().count(), 4);
        s.remove(Collector::Fsio);
        assert!(!s.contains(Collector::Fsio));
        assert_eq!(s.to_string(), "oom,network,runqlat");
    }
}
