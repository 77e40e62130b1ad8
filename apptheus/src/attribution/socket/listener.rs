//! Binding the socket file, and removing it again.
use std::{
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::net::{UnixListener, UnixStream};

use super::SocketError;
use crate::error_chain::chain;

/// How long a live server may take to answer the probe of an existing
/// socket file.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The bound socket. Dropping it closes the socket and removes the socket
/// file, if the file at the path is still the one it created.
#[derive(Debug)]
pub struct SocketListenerHandle {
    pub(crate) listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created.
    file: (u64, u64),
}

impl SocketListenerHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketListenerHandle {
    fn drop(&mut self) {
        // Another instance may have replaced the file since (after we were
        // found unresponsive, say): leave its socket alone.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %chain(&e), "cannot remove the monitoring socket");
        }
    }
}

/// Binds the monitoring socket at `path`.
///
/// The parent directory is created (mode 0755) if missing, and must not be
/// writable by users other than root (or the daemon's own user), who could
/// otherwise replace the socket. An existing socket file is probed: if a
/// server answers, another apptheus is running and we refuse to start; if
/// not, the file is stale and is replaced.
///
/// The socket file is made mode 0666 so that any local user can connect:
/// Apptainer's starter runs as the user who started the container. That is
/// safe because nothing is read from a caller, and a caller only counts once
/// the kernel's credentials show it runs a trusted starter binary (see
/// [`super::verify`]); anyone else is disconnected at once, within the
/// bounds of [`super::ConnectionCaps`].
pub async fn bind(path: &Path) -> Result<SocketListenerHandle, SocketError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| SocketError::NoParent {
            path: path.to_path_buf(),
        })?;
    ensure_dir(dir)?;
    clear_stale(path).await?;

    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = std::fs::symlink_metadata(path).map_err(|source| SocketError::Inspect {
        path: path.to_path_buf(),
        source,
    })?;
    let handle = SocketListenerHandle {
        listener,
        path: path.to_path_buf(),
        file: (meta.dev(), meta.ino()),
    };
    // On error the handle is dropped, which removes the file again.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|source| {
        SocketError::Permissions {
            path: path.to_path_buf(),
            source,
        }
    })?;
    tracing::info!(path = %path.display(), "monitoring socket listening");
    Ok(handle)
}

fn ensure_dir(dir: &Path) -> Result<(), SocketError> {
    let create_err = |source| SocketError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(create_err)?;
        // The umask may have taken bits away; 0755 lets every user reach
        // the socket.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(create_err)?;
    }
    let meta = std::fs::metadata(dir).map_err(create_err)?;
    if !meta.is_dir() {
        return Err(SocketError::UnsafeDir {
            dir: dir.to_path_buf(),
            reason: "it is not a directory",
        });
    }
    if let Some(reason) = replaceable_by_others(&meta, nix::unistd::geteuid().as_raw()) {
        return Err(SocketError::UnsafeDir {
            dir: dir.to_path_buf(),
            reason,
        });
    }
    Ok(())
}

/// Why other users could rename or remove files in a directory, if they can.
fn replaceable_by_others(meta: &std::fs::Metadata, euid: u32) -> Option<&'static str> {
    let mode = meta.permissions().mode();
    if meta.uid() != 0 && meta.uid() != euid {
        return Some("it is owned by another user");
    }
    // In a sticky directory only a file's owner can rename or remove it.
    if mode & 0o1000 != 0 {
        return None;
    }
    if mode & 0o002 != 0 {
        return Some("it is writable by every user");
    }
    if mode & 0o020 != 0 && meta.gid() != 0 {
        return Some("it is writable by its group");
    }
    None
}

/// Removes a socket file nobody serves; refuses if somebody does.
async fn clear_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Inspect {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let in_use = || SocketError::InUse {
        path: path.to_path_buf(),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        // Something accepted the connection, or is too busy to (full
        // backlog: EAGAIN, or no answer in time).
        Ok(Ok(_)) | Err(_) => return Err(in_use()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Err(in_use()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Ok(Err(source)) => {
            return Err(SocketError::Inspect {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    tracing::info!(path = %path.display(), "removing a stale monitoring socket");
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SocketError::RemoveStale {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener as StdListener;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn creates_the_directory_and_a_world_connectable_socket_removed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/apptheus/gateway.sock");
        let rt = rt();
        let handle = rt.block_on(bind(&path)).unwrap();
        assert_eq!(handle.path(), path);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o7777, 0o755);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o666);
        drop(handle);
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[test]
    fn refuses_when_another_server_answers() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.sock");
        let _other = StdListener::bind(&path).unwrap();
        let err = rt().block_on(bind(&path)).unwrap_err();
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(path.to_str().unwrap()), "{msg}");
        assert!(msg.contains("--socket.path"), "{msg}");
        assert!(path.exists(), "the other server's socket is left alone");
    }

    #[test]
    fn replaces_a_stale_socket_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.sock");
        drop(StdListener::bind(&path).unwrap());
        assert!(path.exists());
        let rt = rt();
        let handle = rt.block_on(bind(&path)).unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(handle);
    }

    #[test]
    fn refuses_to_remove_something_that_is_not_a_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.sock");
        std::fs::write(&path, b"precious").unwrap();
        let err = rt().block_on(bind(&path)).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn leaves_a_socket_file_that_is_no_longer_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.sock");
        let rt = rt();
        let handle = rt.block_on(bind(&path)).unwrap();
        std::fs::remove_file(&path).unwrap();
        let _successor = StdListener::bind(&path).unwrap();
        drop(handle);
        assert!(path.exists(), "the successor's socket survives our drop");
    }

    #[test]
    fn refuses_a_world_writable_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("open");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = rt().block_on(bind(&dir.join("gateway.sock"))).unwrap_err();
        assert!(matches!(err, SocketError::UnsafeDir { .. }), "{err}");
        assert!(err.to_string().contains("every user"), "{err}");
    }

    #[test]
    fn a_path_without_a_directory_is_an_error() {
        let err = rt().block_on(bind(Path::new("gateway.sock"))).unwrap_err();
        assert!(matches!(err, SocketError::NoParent { .. }), "{err}");
    }
}
