//! Identifying the process at the other end of a connection.
//!
//! The steps are split so that a test can act between obtaining the
//! peer's credentials and checking its identity ([`VerifyHook`]), which is
//! where a pid could be reused.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use apptheus_common::FileId;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::attribution::trust::{TrustedSet, file_id};

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd for the process that connected.
/// 77 on every architecture but alpha, mips, parisc and sparc.
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const SO_PEERPIDFD: libc::c_int = 77;

/// Why a caller could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read the peer's credentials: {0}")]
    Credentials(#[source] nix::Error),
    #[error("the peer's pid is not visible in the daemon's pid namespace")]
    NoPid,
    #[error("peer process {pid} is gone")]
    Gone { pid: u32 },
    #[error("pid {pid} changed hands while it was being verified")]
    PidReused { pid: u32 },
    #[error("cannot open a pidfd for {pid}: {source}")]
    Pidfd { pid: u32, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Proc { path: PathBuf, source: io::Error },
    #[error("cannot parse the start time in {path}")]
    Malformed { path: PathBuf },
}

impl VerifyError {
    /// The caller exited (or its pid changed hands) before it could be
    /// identified: what a connect-and-exit client causes, not a fault.
    pub fn is_peer_gone(&self) -> bool {
        matches!(
            self,
            Self::NoPid | Self::Gone { .. } | Self::PidReused { .. }
        )
    }
}

/// The credentials the kernel recorded when the peer connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCreds {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

impl PeerCreds {
    /// `SO_PEERCRED` of a connected unix socket.
    pub fn of(sock: BorrowedFd<'_>) -> Result<Self, VerifyError> {
        let c = getsockopt(&sock, PeerCredentials).map_err(VerifyError::Credentials)?;
        // pid 0: the peer is not visible in our pid namespace (or exited and
        // was reaped before we asked).
        let pid = u32::try_from(c.pid())
            .ok()
            .filter(|&p| p != 0)
            .ok_or(VerifyError::NoPid)?;
        Ok(Self {
            pid,
            uid: c.uid(),
            gid: c.gid(),
        })
    }
}

/// The peer's credentials and a pidfd that pins the peer process: while the
/// pidfd refers to a live process, its pid cannot be given to another.
#[derive(Debug)]
pub struct Peer {
    creds: PeerCreds,
    pidfd: OwnedFd,
}

impl Peer {
    /// Reads the credentials of the peer of `sock` and pins it.
    #[cfg(feature = "testing")]
    pub fn from_socket(sock: BorrowedFd<'_>) -> Result<Self, VerifyError> {
        let creds = PeerCreds::of(sock)?;
        Self::open(sock, creds)
    }

    /// Pins the peer whose credentials were read from `sock`: the pidfd of
    /// the very process that connected (`SO_PEERPIDFD`) where the kernel
    /// offers it, otherwise `pidfd_open` of its pid (then a pid reused
    /// between `SO_PEERCRED` and here would go unnoticed, a window of
    /// microseconds on kernels older than 6.5).
    pub fn open(sock: BorrowedFd<'_>, creds: PeerCreds) -> Result<Self, VerifyError> {
        let pid = creds.pid;
        let pidfd = match peer_pidfd(sock) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EINVAL)) => {
                return Err(VerifyError::Gone { pid });
            }
            // ENOPROTOOPT (kernel < 6.5), ENODATA and the like.
            Err(_) => pidfd_open(pid).map_err(|source| {
                if source.raw_os_error() == Some(libc::ESRCH) {
                    VerifyError::Gone { pid }
                } else {
                    VerifyError::Pidfd { pid, source }
                }
            })?,
        };
        Ok(Self { creds, pidfd })
    }

    #[cfg(feature = "testing")]
    pub fn creds(&self) -> PeerCreds {
        self.creds
    }

    /// Whether the process the pidfd refers to is still alive (a zombie
    /// counts as alive; its `/proc/<pid>/exe` is unreadable anyway).
    pub fn is_alive(&self) -> Result<bool, VerifyError> {
        match pidfd_send_signal_0(&self.pidfd) {
            Ok(()) => Ok(true),
            Err(e) => match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(false),
                // Not permitted to signal it, but it exists.
                Some(libc::EPERM) => Ok(true),
                _ => Err(VerifyError::Pidfd {
                    pid: self.creds.pid,
                    source: e,
                }),
            },
        }
    }
}

/// Called between pinning the peer and checking its identity. Production
/// code passes [`NoHook`]; tests use it to make the peer exit and hand its
/// pid to another process at the worst moment.
pub trait VerifyHook {
    fn before_identify(&mut self, creds: &PeerCreds);
}

/// No hook.
pub struct NoHook;

impl VerifyHook for NoHook {
    fn before_identify(&mut self, _: &PeerCreds) {}
}

impl<F: FnMut(&PeerCreds)> VerifyHook for F {
    fn before_identify(&mut self, creds: &PeerCreds) {
        self(creds)
    }
}

/// What the peer turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    pub creds: PeerCreds,
    /// The executable the peer runs.
    pub exe: FileId,
    /// Where `/proc/<pid>/exe` points, for log lines only (in another mount
    /// namespace it names a path that means nothing here).
    pub exe_path: Option<PathBuf>,
    /// Field 22 of `/proc/<pid>/stat`, clock ticks since boot.
    pub start_time: u64,
    /// Whether `exe` is in the trusted set.
    pub trusted: bool,
}

/// Identifies the pinned peer: its executable, read through
/// `/proc/<pid>/exe`, guarded against pid reuse by the start time read
/// before and after and by the pidfd still referring to a live process
/// afterwards (a live process keeps its pid, so everything read under
/// `/proc/<pid>` in between was about it). Blocking: reads `/proc`.
pub fn identify(
    proc: &Path,
    peer: &Peer,
    trusted: &TrustedSet,
    hook: &mut dyn VerifyHook,
) -> Result<Identified, VerifyError> {
    let pid = peer.creds.pid;
    let dir = proc.join(pid.to_string());
    let stat_path = dir.join("stat");
    let before = read_start_time(&stat_path, pid)?;
    hook.before_identify(&peer.creds);
    let exe_link = dir.join("exe");
    let meta = std::fs::metadata(&exe_link).map_err(|e| proc_error(&exe_link, pid, e))?;
    let exe = file_id(&meta);
    let exe_path = std::fs::read_link(&exe_link).ok();
    let after = read_start_time(&stat_path, pid)?;
    if before != after {
        return Err(VerifyError::PidReused { pid });
    }
    if !peer.is_alive()? {
        return Err(VerifyError::Gone { pid });
    }
    Ok(Identified {
        creds: peer.creds,
        exe,
        exe_path,
        start_time: after,
        trusted: trusted.contains(&exe),
    })
}

fn proc_error(path: &Path, pid: u32, e: io::Error) -> VerifyError {
    match e.raw_os_error() {
        // The process exited (ENOENT), or is exiting (ESRCH on an open
        // /proc file).
        Some(libc::ENOENT | libc::ESRCH) => VerifyError::Gone { pid },
        _ => VerifyError::Proc {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

fn read_start_time(path: &Path, pid: u32) -> Result<u64, VerifyError> {
    let text = std::fs::read_to_string(path).map_err(|e| proc_error(path, pid, e))?;
    parse_start_time(&text).ok_or_else(|| VerifyError::Malformed {
        path: path.to_path_buf(),
    })
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The second field,
/// the command name in parentheses, may itself hold spaces and parentheses,
/// so fields are counted from the last `)`.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come fields 3 (state), 4, ...: field 22 is the 20th.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    #[cfg(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    {
        let _ = sock;
        Err(io::Error::from_raw_os_error(libc::ENOPROTOOPT))
    }
    #[cfg(not(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64"
    )))]
    {
        let mut fd: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `sock` is an open descriptor for the duration of the
        // borrow; the kernel writes at most `len` bytes (one c_int) into
        // `fd`, which outlives the call.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERPIDFD,
                (&mut fd as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if fd < 0 || len as usize != std::mem::size_of::<libc::c_int>() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: on success the kernel installed a new descriptor (with
        // O_CLOEXEC) that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags by value and touches no
    // memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success the kernel returned a new descriptor (always
    // O_CLOEXEC) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal_0(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: the pidfd is open for the duration of the call; signal 0 is
    // only an existence and permission check; a null siginfo is allowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0 as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsFd, unix::net::UnixStream};

    use super::*;
    use crate::attribution::trust::TrustedFile;

    const STAT: &str = "1234 (sleep) S 1 1234 1234 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 5678901 \
                        5722112 256 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn start_time_is_field_22() {
        assert_eq!(parse_start_time(STAT), Some(5678901));
    }

    #[test]
    fn start_time_survives_a_hostile_command_name() {
        let hostile = STAT.replace(
            "(sleep)",
            "(a) S 1 2 3 (b) 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9)",
        );
        assert_eq!(parse_start_time(&hostile), Some(5678901));
    }

    #[test]
    fn truncated_or_garbage_stat_is_none() {
        assert_eq!(parse_start_time("1234 (sleep) S 1 2 3"), None);
        assert_eq!(parse_start_time("no parenthesis at all"), None);
        assert_eq!(parse_start_time(""), None);
        let bad = STAT.replace("5678901", "-5");
        assert_eq!(parse_start_time(&bad), None);
    }

    fn own_exe_set() -> TrustedSet {
        let path = std::fs::read_link("/proc/self/exe").unwrap();
        let id = file_id(&std::fs::metadata("/proc/self/exe").unwrap());
        TrustedSet {
            files: vec![TrustedFile { path, id }],
        }
    }

    #[test]
    fn our_own_process_is_identified_through_a_socketpair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::from_socket(a.as_fd()).unwrap();
        assert_eq!(peer.creds().pid, std::process::id());
        assert_eq!(peer.creds().uid, nix::unistd::geteuid().as_raw());
        assert!(peer.is_alive().unwrap());

        let mut called = 0;
        let mut hook = |c: &PeerCreds| {
            assert_eq!(c.pid, std::process::id());
            called += 1;
        };
        let id = identify(Path::new("/proc"), &peer, &own_exe_set(), &mut hook).unwrap();
        assert_eq!(called, 1);
        assert!(id.trusted);
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(Some(id.start_time), parse_start_time(&stat));

        let id = identify(
            Path::new("/proc"),
            &peer,
            &TrustedSet::default(),
            &mut NoHook,
        )
        .unwrap();
        assert!(!id.trusted, "an empty set trusts nothing");
    }

    #[test]
    fn peer_pidfd_works_or_the_kernel_predates_it() {
        let (a, _b) = UnixStream::pair().unwrap();
        match peer_pidfd(a.as_fd()) {
            Ok(fd) => {
                // The pidfd is ours: signal 0 to ourselves succeeds.
                pidfd_send_signal_0(&fd).unwrap();
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT), "{e}"),
        }
    }

    #[test]
    fn pidfd_open_fallback_pins_a_live_process_and_refuses_a_missing_one() {
        let fd = pidfd_open(std::process::id()).unwrap();
        pidfd_send_signal_0(&fd).unwrap();
        // Beyond PID_MAX_LIMIT (4M): no such process.
        let err = pidfd_open(1 << 23).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
    }

    #[test]
    fn a_missing_proc_entry_means_the_peer_is_gone() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::from_socket(a.as_fd()).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let err = identify(empty.path(), &peer, &own_exe_set(), &mut NoHook).unwrap_err();
        assert!(err.is_peer_gone(), "{err}");
    }
}
