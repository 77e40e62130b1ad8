//! Connections of Apptainer's starters to the monitoring socket: one more
//! witness of a run the kernel already attributes, or, without the kernel
//! programs, the way runs are found at all.
use std::time::Instant;

use super::{Agent, StartFacts, sampling::CLOSE_SETTLE};
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
                    read_from: None,
                });
                // A helper run is let go: the kernel need not follow it.
                if self.registry.container_of(key).is_none()
                    && let Some(k) = self.kernel.as_mut()
                {
                    k.forget(key);
                }
            }
            SocketEvent::Disconnected { conn } => {
                let Some(mk) = self.registry.take_socket(conn.0) else {
                    return;
                };
                let Some(ck) = self.registry.container_of(mk) else {
                    return;
                };
                if ck != mk {
                    // A join's starter leaves: the instance goes on.
                    if self.kernel.is_none() {
                        self.on_member_exited(mk);
                    }
                    return;
                }
                // The starter closes its connection when the container is
                // cleaned up, just before it exits itself: the container
                // ends once its last tasks are gone, or after CLOSE_SETTLE
                // at the latest.
                if let Some(c) = self.registry.get_mut(ck) {
                    c.life.closing(Instant::now(), CLOSE_SETTLE);
                }
                self.end_closed();
            }
        }
    }
}
