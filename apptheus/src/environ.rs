//! What a container's environment says about it (image, instance, Slurm
//! job), read from /proc/<pid>/environ once, safely: the process may be
//! gone, and its environment may be huge or hostile.
use std::{io::Read as _, path::Path};

/// Most bytes read from one environ file.
pub const MAX_ENVIRON_BYTES: u64 = 1 << 20;
/// Longest label value kept; longer values are cut at a character boundary.
pub const MAX_VALUE_LEN: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub image: Option<String>,
    pub instance: Option<String>,
    pub slurm_job_id: Option<String>,
}

impl Metadata {
    /// Fills fields still empty from `other`.
    pub fn merge(&mut self, other: Metadata) {
        self.image = self.image.take().or(other.image);
        self.instance = self.instance.take().or(other.instance);
        self.slurm_job_id = self.slurm_job_id.take().or(other.slurm_job_id);
    }

    pub fn is_complete(&self) -> bool {
        self.image.is_some() && self.slurm_job_id.is_some()
    }
}

/// Parses NUL-separated KEY=VALUE pairs. Apptainer's names win over the
/// older Singularity ones.
pub fn parse(environ: &[u8]) -> Metadata {
    let mut m = Metadata::default();
    let mut sing_image = None;
    let mut sing_name = None;
    for entry in environ.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        let slot = match key {
            b"APPTAINER_CONTAINER" => &mut m.image,
            b"APPTAINER_NAME" => &mut m.instance,
            b"SINGULARITY_CONTAINER" => &mut sing_image,
            b"SINGULARITY_NAME" => &mut sing_name,
            b"SLURM_JOB_ID" => &mut m.slurm_job_id,
            _ => continue,
        };
        let v = clean(value);
        if !v.is_empty() {
            *slot = Some(v);
        }
    }
    m.image = m.image.or(sing_image);
    m.instance = m.instance.or(sing_name);
    m
}

fn clean(value: &[u8]) -> String {
    let s = String::from_utf8_lossy(value);
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    if s.len() <= MAX_VALUE_LEN {
        return s;
    }
    let mut end = MAX_VALUE_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Reads and parses /proc/<pid>/environ, at most [`MAX_ENVIRON_BYTES`].
pub fn read(procfs: &Path, pid: u32) -> std::io::Result<Metadata> {
    let f = std::fs::File::open(procfs.join(pid.to_string()).join("environ"))?;
    let mut buf = Vec::new();
    f.take(MAX_ENVIRON_BYTES).read_to_end(&mut buf)?;
    Ok(parse(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apptainer_and_slurm() {
        let env = b"PATH=/bin\0APPTAINER_CONTAINER=/scratch/lolcow.sif\0APPTAINER_NAME=lolcow.sif\0SLURM_JOB_ID=4242\0";
        assert_eq!(
            parse(env),
            Metadata {
                image: Some("/scratch/lolcow.sif".into()),
                instance: Some("lolcow.sif".into()),
                slurm_job_id: Some("4242".into())
            }
        );
    }

    #[test]
    fn singularity_names_are_a_fallback() {
        let env = b"SINGULARITY_CONTAINER=/old.sif\0SINGULARITY_NAME=old\0APPTAINER_NAME=new\0";
        let m = parse(env);
        assert_eq!(m.image.as_deref(), Some("/old.sif"));
        assert_eq!(m.instance.as_deref(), Some("new"));
    }

    #[test]
    fn hostile_input() {
        assert_eq!(parse(b""), Metadata::default());
        assert_eq!(
            parse(b"\0\0=\0APPTAINER_CONTAINER\0SLURM_JOB_ID=\0"),
            Metadata::default()
        );
        let mut long = b"APPTAINER_CONTAINER=".to_vec();
        long.extend(std::iter::repeat_n("é".as_bytes(), 1000).flatten());
        long.extend(b"\n\x1b[31m");
        let m = parse(&long);
        let image = m.image.unwrap();
        assert!(
            image.len() <= MAX_VALUE_LEN && image.chars().all(|c| c == 'é'),
            "{image}"
        );
        let m = parse(b"SLURM_JOB_ID=\xff\xfe12\0");
        assert_eq!(m.slurm_job_id.as_deref(), Some("\u{fffd}\u{fffd}12"));
    }

    #[test]
    fn reads_own_environ_and_tolerates_missing_process() {
        assert!(read(Path::new("/proc"), std::process::id()).is_ok());
        assert!(read(Path::new("/proc"), u32::MAX).is_err());
    }

    #[test]
    fn merge_keeps_what_is_known() {
        let mut a = Metadata {
            image: Some("a".into()),
            ..Default::default()
        };
        a.merge(Metadata {
            image: Some("b".into()),
            slurm_job_id: Some("1".into()),
            instance: None,
        });
        assert_eq!(a.image.as_deref(), Some("a"));
        assert_eq!(a.slurm_job_id.as_deref(), Some("1"));
    }
}
