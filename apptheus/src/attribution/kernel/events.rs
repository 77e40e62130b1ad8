//! Events from the kernel programs: decoding (pure) and the async reader
//! that wakes on the ring buffer's descriptor.
use apptheus_common::{EVENT_SIZE, Event, EventKind, START_PARENT_LAUNCHER, TASK_COMM_LEN};
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::error_chain::chain;
pub(crate) use crate::model::event::KernelEvent;

/// A NUL-padded `task_struct.comm` as text (lossy, control characters
/// dropped: the command is chosen by the container's user).
pub(crate) fn comm_text(comm: &[u8; TASK_COMM_LEN]) -> String {
    nul_padded_text(comm)
}

/// NUL-terminated (or padded) bytes as text, lossy, without control
/// characters.
fn nul_padded_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("kernel event of {0} bytes, expected {EVENT_SIZE}")]
    Size(usize),
    #[error("kernel event of unknown kind {0}")]
    Kind(u32),
}

/// Decodes one ring-buffer record.
pub(crate) fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() != EVENT_SIZE {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length is checked; Event is repr(C) plain integers, valid
    // for every bit pattern; read_unaligned copes with any alignment.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
    match EventKind::from_u32(ev.kind) {
        Some(EventKind::ContainerStarted) => Ok(KernelEvent::Started {
            container: ev.container,
            tgid: ev.tgid,
            uid: ev.uid,
            gid: ev.gid,
            boot_ns: ev.boot_ns,
            file: ev.file,
            parent_launcher: ev.flags & START_PARENT_LAUNCHER != 0,
            arg0: nul_padded_text(&ev.args),
        }),
        Some(EventKind::ContainerExited) => Ok(KernelEvent::Exited {
            container: ev.container,
            boot_ns: ev.boot_ns,
        }),
        Some(EventKind::OomKill) => Ok(KernelEvent::OomKill {
            container: ev.container,
            pid: ev.tgid,
            comm: comm_text(&ev.comm),
            boot_ns: ev.boot_ns,
        }),
        Some(EventKind::LauncherExec) => Ok(KernelEvent::LauncherExec {
            tgid: ev.tgid,
            boot_ns: ev.boot_ns,
        }),
        Some(EventKind::TaskMoved) => Ok(KernelEvent::TaskMoved {
            container: ev.container,
            tgid: ev.tgid,
            tid: ev.tid,
        }),
        Some(EventKind::WatchedExit) => Ok(KernelEvent::WatchedExit {
            container: ev.container,
            tgid: ev.tgid,
        }),
        None => Err(DecodeError::Kind(ev.kind)),
    }
}

/// Sees each kernel event before it is queued for the main loop.
pub(crate) type Observer = Box<dyn Fn(&KernelEvent) + Send>;

/// Reads the ring buffer until `tx` closes, waking on its descriptor.
/// Every event goes to `first` before anything else (the cgroup warm-up:
/// a busy main loop must not delay it); a launcher's exec goes nowhere
/// else.
pub(crate) async fn read_events(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<KernelEvent>,
    first: Option<Observer>,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map descriptor, which stays open and
    // unchanged until the RingBuf (owned by the AsyncFd) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(ev) => {
                    if let Some(f) = &first {
                        f(&ev);
                    }
                    // A launcher's exec concerns the warm-up alone.
                    if !matches!(ev, KernelEvent::LauncherExec { .. }) {
                        batch.push(ev);
                    }
                }
                Err(e) => tracing::warn!(error = %chain(&e), "dropping malformed kernel event"),
            }
        }
        guard.clear_ready();
        for ev in batch {
            if tx.send(ev).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apptheus_common::FileId;

    fn bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: Event is repr(C) plain integers without padding.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), EVENT_SIZE) }
            .to_vec()
    }

    #[test]
    fn round_trip() {
        let file = FileId {
            dev: 0xfe00001,
            ino: 42,
        };
        let mut args = [0u8; apptheus_common::START_ARGS_LEN];
        args[..28].copy_from_slice(b"Apptainer instance: a [web]\n");
        let ev = Event {
            kind: EventKind::ContainerStarted as u32,
            tgid: 1234,
            container: 99,
            boot_ns: 5,
            uid: 1000,
            gid: 100,
            file,
            flags: START_PARENT_LAUNCHER,
            args,
            ..Event::default()
        };
        assert_eq!(
            decode(&bytes(&ev)),
            Ok(KernelEvent::Started {
                container: 99,
                tgid: 1234,
                uid: 1000,
                gid: 100,
                boot_ns: 5,
                file,
                parent_launcher: true,
                arg0: "Apptainer instance: a [web]".into(),
            })
        );
        let ev = Event {
            kind: EventKind::ContainerExited as u32,
            container: 7,
            boot_ns: 9,
            ..Event::default()
        };
        assert_eq!(
            decode(&bytes(&ev)),
            Ok(KernelEvent::Exited {
                container: 7,
                boot_ns: 9
            })
        );
    }

    #[test]
    fn oom_kill_carries_the_victim() {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..7].copy_from_slice(b"stress\n");
        let ev = Event {
            kind: EventKind::OomKill as u32,
            tgid: 4321,
            container: 7,
            boot_ns: 11,
            comm,
            ..Event::default()
        };
        assert_eq!(
            decode(&bytes(&ev)),
            Ok(KernelEvent::OomKill {
                container: 7,
                pid: 4321,
                comm: "stress".into(),
                boot_ns: 11
            })
        );
        assert_eq!(comm_text(&[b'x'; TASK_COMM_LEN]), "x".repeat(16));
        assert_eq!(comm_text(&[0; TASK_COMM_LEN]), "");
    }

    #[test]
    fn launcher_exec_carries_its_pid() {
        let ev = Event {
            kind: EventKind::LauncherExec as u32,
            tgid: 555,
            boot_ns: 13,
            ..Event::default()
        };
        assert_eq!(
            decode(&bytes(&ev)),
            Ok(KernelEvent::LauncherExec {
                tgid: 555,
                boot_ns: 13
            })
        );
    }

    #[test]
    fn moves_and_watched_exits_name_their_task() {
        let ev = Event {
            kind: EventKind::TaskMoved as u32,
            tgid: 10,
            tid: 11,
            container: 3,
            ..Event::default()
        };
        assert_eq!(
            decode(&bytes(&ev)),
            Ok(KernelEvent::TaskMoved {
                container: 3,
                tgid: 10,
                tid: 11
            })
        );
        let ev = Event {
            kind: EventKind::WatchedExit as u32,
            tgid: 10,
            container: 3,
            ..Event::default()
        };
        assert_eq!(
            decode(&bytes(&ev)),
            Ok(KernelEvent::WatchedExit {
                container: 3,
                tgid: 10
            })
        );
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[0u8; 3]), Err(DecodeError::Size(3)));
        let ev = Event {
            kind: 77,
            ..Event::default()
        };
        assert_eq!(decode(&bytes(&ev)), Err(DecodeError::Kind(77)));
    }
}
