//! Connections of Apptainer's starters to the monitoring socket: one more
//! witness of a run the kernel already attributes, or, without the kernel
//! programs, the way runs are found at all.
use super::{Agent, StartFacts};
use crate::{attribution::socket::SocketEvent, host::clock, model::container::Source};

impl Agent {
    pub(super) fn on_socket_event(&mut self, ev: SocketEvent) {
        match ev {
            SocketEvent::Connected {
                conn,
                pid,
                uid,
                exe,
                ..
            } => {
                // With the kernel programs on, the starter already belongs
                // to a run the kernel reported: one container, not two.
                let known = self
                    .kernel
                    .as_ref()
                    .and_then(|k| k.container_of(pid))
                    .filter(|key| self.registry.container_of(*key).is_some());
                if let Some(key) = known {
                    tracing::debug!(
                        pid,
                        key,
                        "monitoring socket confirms a run the kernel attributed"
                    );
                    self.registry.set_socket(key, conn.0);
                    return;
                }
                let boot_ns = clock::boot_time_now().as_nanos() as u64;
                let mut key = boot_ns;
                while self.registry.container_of(key).is_some() {
                    key += 1;
                }
                if let Some(k) = self.kernel.as_mut() {
                    // Follow the tree from here on in the kernel too.
                    let tids = crate::host::proctree::tree(self.procfs.root(), pid);
                    let state = apptheus_common::ContainerState {
                        start_boot_ns: boot_ns,
                        starter_tgid: pid,
                        uid,
                        starter: exe,
                        ..Default::default()
                    };
                    if let Err(e) = k.adopt(key, &state, &tids) {
                        tracing::warn!(pid, error = %e, "cannot hand a socket-registered container to the kernel programs");
                    }
                }
                self.on_start(StartFacts {
                    key,
                    starter_pid: pid,
                    uid,
                    boot_ns,
                    file: Some(exe),
                    parent_launcher: None,
                    arg0: None,
                    source: Source::Socket,
                    socket: Some(conn.0),
                    cgroups: None,
                });
                // A helper run is let go: the kernel need not follow it.
                if self.registry.container_of(key).is_none()
                    && let Some(k) = self.kernel.as_mut()
                {
                    k.forget(key);
                }
            }
            SocketEvent::Disconnected { conn } => {
                // The starter closes its connection when it cleans up, but
                // what it started may live on (`sh -c 'work & exit 0'`): the
                // run ends with its last task. The kernel programs report
                // that; without them, the agent looks for its tasks now and
                // at every housekeeping tick.
                if self.registry.take_socket(conn.0).is_some() && self.kernel.is_none() {
                    self.end_finished_without_kernel();
                }
            }
        }
    }
}
