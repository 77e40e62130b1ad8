//! The trusted set: which files are Apptainer starters, by identity.
//!
//! A path names a file only at one moment; the kernel compares the identity
//! (device and inode) of the file actually executed. A symlink or bind mount
//! of the genuine binary has the same identity and is trusted; a copy, or
//! another file placed at the same path in a private mount namespace, is not.
use std::{
    collections::BTreeSet,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use apptheus_common::{FileId, kernel_dev};

use crate::cli::DEFAULT_STARTERS;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "trusted starter {path} does not exist ({source}); fix --trust.path, or install Apptainer there"
    )]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trusted starter {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "refusing to trust {path}: {what} is writable by {who}, so a local user could replace the starter; \
         make it owned by root and not group- or world-writable"
    )]
    Writable {
        path: PathBuf,
        what: String,
        who: &'static str,
    },
    #[error(
        "no --trust.path given and no Apptainer starter found in the standard places ({}); \
         install Apptainer or pass --trust.path",
        DEFAULT_STARTERS.join(", ")
    )]
    NoneFound,
    #[error("launcher {path} does not exist ({source}); fix --trust.launcher")]
    LauncherMissing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("launcher {path} is not a regular file; fix --trust.launcher")]
    LauncherNotAFile { path: PathBuf },
}

/// A trusted starter: the path it was named by, and the file's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TrustedFile {
    pub path: PathBuf,
    pub id: FileId,
}

/// The resolved trusted set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedSet {
    pub files: Vec<TrustedFile>,
}

impl TrustedSet {
    /// Resolves the paths given on the command line, or, with none, the
    /// standard Apptainer locations that exist. Every given path must exist.
    pub fn resolve(given: &[PathBuf]) -> Result<Self, TrustError> {
        let (paths, explicit): (Vec<PathBuf>, bool) = if given.is_empty() {
            let found: Vec<PathBuf> = DEFAULT_STARTERS
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.exists())
                .collect();
            if found.is_empty() {
                return Err(TrustError::NoneFound);
            }
            (found, false)
        } else {
            (given.to_vec(), true)
        };
        let mut files = Vec::new();
        for path in paths {
            match identify(&path) {
                Ok(id) => files.push(TrustedFile { path, id }),
                Err(e) if explicit => return Err(e),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping standard starter")
                }
            }
        }
        if files.is_empty() {
            return Err(TrustError::NoneFound);
        }
        files.sort();
        files.dedup();
        Ok(Self { files })
    }

    /// Resolves the launchers (Apptainer's command-line tools): those
    /// given, each of which must exist, or with none given those of
    /// [`default_launchers`] for `starters` that exist. Their exec only
    /// prepares a placement (see `cgroup::prewarm`), so unlike a starter a
    /// launcher need not be safe from replacement.
    pub fn resolve_launchers(given: &[PathBuf], starters: &TrustedSet) -> Result<Self, TrustError> {
        let mut files = if given.is_empty() {
            default_launchers(starters.files.iter().map(|f| f.path.as_path()))
                .into_iter()
                .filter_map(|p| launcher(p).ok())
                .collect()
        } else {
            given
                .iter()
                .map(|p| launcher(p.clone()))
                .collect::<Result<Vec<_>, _>>()?
        };
        files.sort();
        files.dedup();
        Ok(Self { files })
    }

    /// The distinct file identities, as the kernel map holds them.
    pub fn ids(&self) -> BTreeSet<FileId> {
        self.files.iter().map(|f| f.id).collect()
    }

    /// The paths, for log lines.
    pub fn describe(&self) -> String {
        self.files
            .iter()
            .map(|f| {
                format!(
                    "{} (dev {:#x} ino {})",
                    f.path.display(),
                    f.id.dev,
                    f.id.ino
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `id` is one of the trusted files.
    pub fn contains(&self, id: &FileId) -> bool {
        self.files.iter().any(|f| f.id == *id)
    }
}

/// Where Apptainer's command-line tools are for starters installed as
/// `<prefix>/libexec/apptainer/bin/<starter>` (or `.../singularity/bin/`):
/// `<prefix>/bin/apptainer` and `<prefix>/bin/singularity`, without
/// duplicates. Starters elsewhere suggest no launcher.
pub fn default_launchers<'a>(starters: impl IntoIterator<Item = &'a Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for starter in starters {
        let Some(bin) = starter.parent() else {
            continue;
        };
        let project = bin.parent();
        let libexec = project.and_then(Path::parent);
        let prefix = libexec.and_then(Path::parent);
        let named = |p: Option<&Path>, names: &[&str]| {
            p.and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .is_some_and(|n| names.contains(&n))
        };
        if !(bin.file_name().is_some_and(|n| n == "bin")
            && named(project, &["apptainer", "singularity"])
            && named(libexec, &["libexec"]))
        {
            continue;
        }
        let Some(prefix) = prefix else {
            continue;
        };
        for tool in ["apptainer", "singularity"] {
            let p = prefix.join("bin").join(tool);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// A launcher: a regular file at `path` (symlinks followed).
fn launcher(path: PathBuf) -> Result<TrustedFile, TrustError> {
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(TrustedFile {
            id: file_id(&meta),
            path,
        }),
        Ok(_) => Err(TrustError::LauncherNotAFile { path }),
        Err(source) => Err(TrustError::LauncherMissing { path, source }),
    }
}

/// The identity of the file at `path` (symlinks followed), after checking
/// that no unprivileged user could replace it.
pub fn identify(path: &Path) -> Result<FileId, TrustError> {
    let meta = std::fs::metadata(path).map_err(|source| TrustError::Missing {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(TrustError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    check_not_replaceable(path, &meta)?;
    Ok(file_id(&meta))
}

/// A file's identity, with the device in the kernel's encoding.
pub fn file_id(meta: &std::fs::Metadata) -> FileId {
    let dev = meta.dev();
    FileId {
        dev: kernel_dev(libc::major(dev), libc::minor(dev)),
        ino: meta.ino(),
    }
}

/// The file and each directory above it must be owned by root and not
/// writable by group or others (a sticky directory such as /tmp is fine:
/// users cannot rename what they don't own there).
fn check_not_replaceable(path: &Path, meta: &std::fs::Metadata) -> Result<(), TrustError> {
    writable_by_others(meta, false).map_or(Ok(()), |who| {
        Err(TrustError::Writable {
            path: path.to_path_buf(),
            what: "the file".into(),
            who,
        })
    })?;
    let canonical = std::fs::canonicalize(path).map_err(|source| TrustError::Missing {
        path: path.to_path_buf(),
        source,
    })?;
    for dir in canonical.ancestors().skip(1) {
        let Ok(dmeta) = std::fs::metadata(dir) else {
            continue;
        };
        if let Some(who) = writable_by_others(&dmeta, true) {
            return Err(TrustError::Writable {
                path: path.to_path_buf(),
                what: format!("directory {}", dir.display()),
                who,
            });
        }
    }
    Ok(())
}

fn writable_by_others(meta: &std::fs::Metadata, is_dir: bool) -> Option<&'static str> {
    let mode = meta.permissions().mode();
    if meta.uid() != 0 {
        return Some("its owner (not root)");
    }
    // In a root-owned sticky directory only root can rename or remove
    // root's files.
    if is_dir && mode & 0o1000 != 0 {
        return None;
    }
    if mode & 0o002 != 0 {
        return Some("every user");
    }
    if mode & 0o020 != 0 && meta.gid() != 0 {
        return Some("its group");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_explicit_path_is_an_error_naming_it() {
        let err =
            TrustedSet::resolve(&[PathBuf::from("/nonexistent/apptheus/starter")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/apptheus/starter"), "{msg}");
        assert!(msg.contains("--trust.path"), "{msg}");
    }

    #[test]
    fn launchers_are_the_tools_of_the_starters_prefix() {
        let got = default_launchers(
            [
                "/usr/libexec/apptainer/bin/starter",
                "/usr/libexec/apptainer/bin/starter-suid",
                "/opt/sing/libexec/singularity/bin/starter",
                "/tmp/x/starter",
                "starter",
            ]
            .map(Path::new),
        );
        assert_eq!(
            got,
            vec![
                PathBuf::from("/usr/bin/apptainer"),
                PathBuf::from("/usr/bin/singularity"),
                PathBuf::from("/opt/sing/bin/apptainer"),
                PathBuf::from("/opt/sing/bin/singularity"),
            ]
        );
    }

    #[test]
    fn launchers_given_must_exist_and_defaults_may_be_absent() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("libexec/apptainer/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(bin.join("starter"), b"x").unwrap();
        let cli = dir.path().join("bin/apptainer");
        std::fs::write(&cli, b"y").unwrap();
        let starters = TrustedSet {
            files: vec![TrustedFile {
                path: bin.join("starter"),
                id: file_id(&std::fs::metadata(bin.join("starter")).unwrap()),
            }],
        };
        // bin/singularity is absent: left out without an error.
        let found = TrustedSet::resolve_launchers(&[], &starters).unwrap();
        assert_eq!(found.files.len(), 1);
        assert_eq!(found.files[0].path, cli);
        let err = TrustedSet::resolve_launchers(&[dir.path().join("bin/singularity")], &starters)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bin/singularity") && err.contains("--trust.launcher"),
            "{err}"
        );
        let err = TrustedSet::resolve_launchers(&[dir.path().join("bin")], &starters)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_directory_is_not_a_starter() {
        let err = TrustedSet::resolve(&[PathBuf::from("/")]).unwrap_err();
        assert!(matches!(err, TrustError::NotAFile { .. }), "{err}");
    }

    #[test]
    fn symlink_and_target_have_one_identity_and_a_copy_another() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("starter");
        std::fs::write(&f, b"#!/bin/true\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let copy = dir.path().join("copy");
        std::fs::copy(&f, &copy).unwrap();
        let id = |p: &Path| file_id(&std::fs::metadata(p).unwrap());
        assert_eq!(id(&f), id(&link));
        assert_ne!(id(&f), id(&copy));
    }

    #[test]
    fn group_or_world_writable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("starter");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o777)).unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        assert!(writable_by_others(&meta, false).is_some());
    }

    #[test]
    fn sticky_directory_is_fine_only_when_root_owns_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let expected = if meta.uid() == 0 {
            None
        } else {
            Some("its owner (not root)")
        };
        assert_eq!(writable_by_others(&meta, true), expected);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert!(writable_by_others(&meta, true).is_some());
    }
}
