//! Offsets of the kernel struct fields the programs read, resolved from the
//! running kernel's BTF. Rust eBPF programs have no CO-RE relocations, so a
//! hard-coded offset would only be right for one kernel build.
use std::path::Path;

use apptheus_common::Offsets;
use btf_rs::{Btf, BtfType, Type};

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(
        "cannot read the kernel's BTF at {path} ({source}); apptheus needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (Linux 5.10 and later in most distributions), or run with --ebpf=false"
    )]
    Btf { path: String, source: btf_rs::Error },
    #[error(
        "the running kernel's BTF has no field {field} in struct {strukt}; this kernel is not supported \
         by the kernel programs (run with --ebpf=false to use the monitoring socket alone)"
    )]
    MissingField { strukt: String, field: String },
    #[error("the running kernel's BTF has no struct {0}; run with --ebpf=false")]
    MissingStruct(String),
    #[error("field {strukt}.{field} is a bitfield; cannot read it by offset")]
    Bitfield { strukt: String, field: String },
    #[error("reading BTF: {0}")]
    Parse(#[from] btf_rs::Error),
}

/// Loads BTF from a file such as /sys/kernel/btf/vmlinux.
pub fn load_btf(path: &Path) -> Result<Btf, OffsetError> {
    Btf::from_file(path).map_err(|source| OffsetError::Btf {
        path: path.display().to_string(),
        source,
    })
}

/// Resolves every offset the programs need.
pub fn resolve(btf: &Btf) -> Result<Offsets, OffsetError> {
    Ok(Offsets {
        task_pid: member_offset(btf, "task_struct", "pid")?,
        task_tgid: member_offset(btf, "task_struct", "tgid")?,
        binprm_file: member_offset(btf, "linux_binprm", "file")?,
        file_inode: member_offset(btf, "file", "f_inode")?,
        inode_ino: member_offset(btf, "inode", "i_ino")?,
        inode_sb: member_offset(btf, "inode", "i_sb")?,
        sb_dev: member_offset(btf, "super_block", "s_dev")?,
        _pad: 0,
    })
}

/// Byte offset of `field` in `struct strukt`, looking through anonymous
/// structs and unions.
pub fn member_offset(btf: &Btf, strukt: &str, field: &str) -> Result<u32, OffsetError> {
    let candidates = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| OffsetError::MissingStruct(strukt.to_string()))?;
    for ty in candidates {
        let Type::Struct(s) = ty else { continue };
        if let Some(bits) = find_member(btf, &s, field, strukt)? {
            return Ok(bits / 8);
        }
    }
    Err(OffsetError::MissingField {
        strukt: strukt.to_string(),
        field: field.to_string(),
    })
}

fn find_member(
    btf: &Btf,
    s: &btf_rs::Struct,
    field: &str,
    strukt: &str,
) -> Result<Option<u32>, OffsetError> {
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                return Err(OffsetError::Bitfield {
                    strukt: strukt.to_string(),
                    field: field.to_string(),
                });
            }
            return Ok(Some(m.bit_offset()));
        }
        if name.is_empty() {
            let Some(id) = m.get_type_id() else { continue };
            match btf.resolve_type_by_id(id)? {
                Type::Struct(inner) | Type::Union(inner) => {
                    if let Some(bits) = find_member(btf, &inner, field, strukt)? {
                        return Ok(Some(m.bit_offset() + bits));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    /// Needs the machine's BTF; CI runs where it exists (APPTHEUS_REQUIRE_PRIVILEGED=1
    /// turns its absence into a failure).
    #[test]
    fn resolves_on_the_running_kernel() {
        if !Path::new(VMLINUX).exists() {
            crate::testing::skip("no BTF at /sys/kernel/btf/vmlinux");
            return;
        }
        let btf = load_btf(Path::new(VMLINUX)).unwrap();
        let o = resolve(&btf).unwrap();
        // pid and tgid are adjacent pid_t fields in every kernel since 2.6.
        assert_eq!(o.task_tgid, o.task_pid + 4);
        assert!(o.task_pid > 0);
        // `file` is not the first member of linux_binprm, nor f_inode of file.
        assert!(o.binprm_file > 0 && o.file_inode > 0);
        let e = member_offset(&btf, "task_struct", "no_such_field").unwrap_err();
        assert!(e.to_string().contains("no_such_field"), "{e}");
        let e = member_offset(&btf, "no_such_struct_apptheus", "x").unwrap_err();
        assert!(e.to_string().contains("no_such_struct_apptheus"), "{e}");
    }

    #[test]
    fn missing_btf_file_names_the_fix() {
        let Err(e) = load_btf(Path::new("/nonexistent/vmlinux")) else {
            panic!("loading a missing file succeeded");
        };
        let e = e.to_string();
        assert!(e.contains("CONFIG_DEBUG_INFO_BTF"), "{e}");
    }
}
