//! Connections of Apptainer's starters to the monitoring socket: one more
//! witness of a container the kernel already attributes, or, without the
//! kernel programs, the way containers are found at all.
use std::time::{Duration, Instant};

use super::{Agent, containers::NewContainer};
use crate::{
    registry::{self, Source},
    socket::SocketEvent,
};

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
                // With the kernel programs on, the master already belongs
                // to a container: one container, not two.
                let known = self
                    .kernel
                    .as_ref()
                    .and_then(|k| k.container_of(pid))
                    .filter(|key| self.registry.get(*key).is_some());
                let key = match known {
                    Some(key) => {
                        tracing::debug!(
                            pid,
                            key,
                            "monitoring socket confirms a container the kernel attributed"
                        );
                        key
                    }
                    None => {
                        let boot_ns = registry::boot_time_now().as_nanos() as u64;
                        let mut key = boot_ns;
                        while self.registry.get(key).is_some() {
                            key += 1;
                        }
                        if let Some(k) = self.kernel.as_mut() {
                            // Follow the tree from here on in the kernel too.
                            let tids = crate::proctree::tree(&self.args.procfs, pid);
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
                        self.start_container(NewContainer {
                            key,
                            starter_pid: pid,
                            uid,
                            boot_ns,
                            file: Some(exe),
                            source: Source::Socket,
                            cgroups: None,
                        });
                        key
                    }
                };
                self.socket_conns.insert(conn, key);
            }
            SocketEvent::Disconnected { conn } => {
                if let Some(key) = self.socket_conns.remove(&conn) {
                    // The master closes its connection when the container
                    // is cleaned up, just before it exits itself: the
                    // container ends once its last tasks are gone, or
                    // after CLOSE_SETTLE at the latest.
                    self.closing.insert(key, Instant::now());
                    self.end_closing();
                }
            }
        }
    }

    /// Ends the containers whose master closed its connection, once their
    /// tasks are gone (so the final sample has everything) or after
    /// [`CLOSE_SETTLE`].
    pub(super) fn end_closing(&mut self) {
        let procfs = &self.args.procfs;
        let done: Vec<u64> = self
            .closing
            .iter()
            .filter(|(key, since)| {
                let gone = match self.kernel.as_ref().and_then(|k| k.container(**key)) {
                    Some(st) => st.live_tasks == 0,
                    None => self
                        .registry
                        .get(**key)
                        .is_none_or(|c| !procfs.join(c.starter_pid.to_string()).exists()),
                };
                gone || since.elapsed() >= CLOSE_SETTLE
            })
            .map(|(key, _)| *key)
            .collect();
        for key in done {
            self.closing.remove(&key);
            self.end_container(key);
        }
    }
}

/// Longest wait, after a master closed its connection, for its container's
/// last tasks to exit before the container is ended anyway.
const CLOSE_SETTLE: Duration = Duration::from_secs(2);
