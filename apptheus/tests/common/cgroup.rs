//! What the tests of cgroups share (cgroups.rs, shared_cgroups.rs): the
//! memory cgroups they make, and waiting for a container's statistics.
use std::{path::PathBuf, time::Duration};

use super::*;

pub const WAIT: Duration = Duration::from_secs(30);
pub const MIB: f64 = 1024.0 * 1024.0;

/// A memory cgroup (v1 or v2) made for a test, removed on drop.
pub struct ParentCgroup(pub PathBuf);

impl ParentCgroup {
    pub fn memory(mc: &MemoryController, limit: Option<u64>) -> Self {
        let dir = mc.root.join(format!("atest-{}", unique()));
        std::fs::create_dir(&dir).expect("create a memory cgroup");
        if let Some(l) = limit {
            std::fs::write(dir.join(mc.limit_file()), l.to_string()).unwrap();
            // No swap to escape to, where the kernel accounts swap.
            let (file, value) = mc.swap_limit(l);
            let _ = std::fs::write(dir.join(file), value);
        }
        Self(dir)
    }
}

/// The memory controller, or the test's skip (a failure in CI).
pub fn memory_controller() -> Option<MemoryController> {
    let mc = MemoryController::find();
    if mc.is_none() {
        apptheus_testkit::skip("a memory controller in this cgroup layout");
    }
    mc
}

/// How the tests of memory cgroups start: `None` (the skip reported)
/// unless [`privileged`] with a [`memory_controller`]; else the
/// controller, the lock that keeps agents apart and a trusted directory.
/// Bind them in this order (`let Some((mc, _serial, trust)) = ...`), so
/// that they go in the reverse.
pub fn memory_setup() -> Option<(MemoryController, Serial, TrustDir)> {
    if !privileged() {
        return None;
    }
    let mc = memory_controller()?;
    Some((mc, serial(), TrustDir::new()))
}

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits until the agent reports `metric` for a container of `starter`;
/// returns its id.
pub fn wait_container(agent: &Agent, starter: &Path, metric: &str) -> String {
    let s = starter.display().to_string();
    let mut id = None;
    agent.wait_for(WAIT, &format!("{metric} for a container of {s}"), || {
        let m = agent.metrics();
        id = container_id(&m, "starter", &s)
            .filter(|id| value(&m, metric, &[("container_id", id)]).is_some());
        id.is_some()
    });
    id.unwrap()
}
