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

use apptheus_common::FileId;

use crate::error_chain::chain;
pub use crate::host::procfs::file_id;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trusted starter {path} does not exist (fix --trust.path, or install Apptainer there)")]
    Missing {
        path: PathBuf,
        #[source]
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
    #[error("launcher {path} does not exist (fix --trust.launcher)")]
    LauncherMissing {
        path: PathBuf,
        #[source]
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
    /// Resolves the paths given on the command line, each of which must
    /// exist, or, with none, those of [`default_starters`] that exist (none
    /// at all is not an error: Apptainer may be installed later).
    pub fn resolve(given: &[PathBuf]) -> Result<Self, TrustError> {
        let (paths, explicit): (Vec<PathBuf>, bool) = if given.is_empty() {
            let found = default_starters(Path::new("/"))
                .into_iter()
                .filter(|p| p.exists())
                .collect();
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
                    tracing::warn!(path = %path.display(), error = %chain(&e), "skipping standard starter")
                }
            }
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

/// The projects whose starters are trusted by default, and whose
/// command-line tools announce them.
const PROJECTS: [&str; 2] = ["apptainer", "singularity"];
const STARTERS: [&str; 2] = ["starter", "starter-suid"];

/// Where Apptainer and SingularityCE install their starters, below `root`:
/// `<prefix>/libexec/{apptainer,singularity}/bin/starter{,-suid}` for the
/// prefixes /usr and /usr/local (upstream packages, source installs), and
/// `/usr/lib/<multiarch>/{apptainer,singularity}/bin/starter{,-suid}`
/// (Debian, Ubuntu) for every multiarch directory present.
pub(crate) fn default_starters(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["usr/libexec", "usr/local/libexec"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    if let Ok(entries) = std::fs::read_dir(root.join("usr/lib")) {
        let mut multiarch: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                // A GNU triplet: x86_64-linux-gnu, aarch64-linux-gnu, ...
                name.matches('-').count() >= 2 && name.contains("linux")
            })
            .map(|e| e.path())
            .collect();
        multiarch.sort();
        dirs.extend(multiarch);
    }
    dirs.iter()
        .flat_map(|d| {
            PROJECTS
                .iter()
                .flat_map(move |p| STARTERS.iter().map(move |s| d.join(p).join("bin").join(s)))
        })
        .collect()
}

/// The command-line tools (`<prefix>/bin/apptainer`, `.../singularity`)
/// for starters installed in one of the [`default_starters`] layouts,
/// without duplicates; starters elsewhere suggest no launcher.
pub(crate) fn default_launchers<'a>(starters: impl IntoIterator<Item = &'a Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for starter in starters {
        let Some(prefix) = install_prefix(starter) else {
            continue;
        };
        for tool in PROJECTS {
            let p = prefix.join("bin").join(tool);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// `<prefix>` of `<prefix>/libexec/<project>/bin/<starter>` or of
/// `<prefix>/lib/<multiarch>/<project>/bin/<starter>`.
fn install_prefix(starter: &Path) -> Option<&Path> {
    let bin = starter.parent()?;
    let project = bin.parent()?;
    let above = project.parent()?;
    fn name(p: &Path) -> &str {
        p.file_name().and_then(|n| n.to_str()).unwrap_or("")
    }
    if name(bin) != "bin" || !PROJECTS.contains(&name(project)) {
        return None;
    }
    if name(above) == "libexec" {
        return above.parent();
    }
    let lib = above.parent()?;
    (name(lib) == "lib").then(|| lib.parent()).flatten()
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
pub(crate) fn identify(path: &Path) -> Result<FileId, TrustError> {
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
                "/srv/root/usr/lib/x86_64-linux-gnu/apptainer/bin/starter",
                "/usr/lib/x86_64-linux-gnu/apptainer/bin/starter",
                "/tmp/x/starter",
                "/lib/apptainer/bin/starter",
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
                PathBuf::from("/srv/root/usr/bin/apptainer"),
                PathBuf::from("/srv/root/usr/bin/singularity"),
            ]
        );
    }

    /// Every layout in use: upstream and source installs, Debian's and
    /// Ubuntu's multiarch directory, SingularityCE.
    #[test]
    fn default_starters_cover_every_layout() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/lib/x86_64-linux-gnu")).unwrap();
        std::fs::create_dir_all(root.path().join("usr/lib/python3")).unwrap();
        let got = default_starters(root.path());
        let rel: Vec<String> = got
            .iter()
            .map(|p| p.strip_prefix(root.path()).unwrap().display().to_string())
            .collect();
        for want in [
            "usr/libexec/apptainer/bin/starter",
            "usr/libexec/apptainer/bin/starter-suid",
            "usr/local/libexec/apptainer/bin/starter-suid",
            "usr/libexec/singularity/bin/starter-suid",
            "usr/local/libexec/singularity/bin/starter",
            "usr/lib/x86_64-linux-gnu/apptainer/bin/starter",
            "usr/lib/x86_64-linux-gnu/singularity/bin/starter-suid",
        ] {
            assert!(rel.contains(&want.to_string()), "{want} not in {rel:?}");
        }
        assert!(!rel.iter().any(|p| p.contains("python3")), "{rel:?}");
        // Each default starter suggests its tools.
        assert!(
            default_launchers(got.iter().map(PathBuf::as_path))
                .iter()
                .all(|l| l.starts_with(root.path()))
        );
    }

    #[test]
    fn no_starter_installed_is_an_empty_set_not_an_error() {
        // On this machine the standard places may or may not hold a
        // starter; either way resolution without paths succeeds.
        assert!(TrustedSet::resolve(&[]).is_ok());
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
