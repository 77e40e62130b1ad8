//! Connections of Apptainer's starters to the monitoring socket: one more
//! witness of a container the kernel already attributes, or, without the
//! kernel programs, the way containers are found at all.
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
                            let tids = crate::proctree::descendants(&self.args.procfs, pid);
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
                    // is cleaned up: the container ends.
                    self.end_container(key);
                }
            }
        }
    }
}
