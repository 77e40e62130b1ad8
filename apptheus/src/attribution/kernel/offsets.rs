//! Offsets of the kernel struct fields the programs read, resolved from the
//! running kernel's BTF. Rust eBPF programs have no CO-RE relocations, so a
//! hard-coded offset would only be right for one kernel build.
use std::path::Path;

use apptheus_common::Offsets;
use btf_rs::{Btf, BtfType, Type};

use crate::model::collectors::Collector;

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
    #[error("the running kernel's BTF has no tracepoint {0} (no typedef btf_trace_{0})")]
    MissingTracepoint(String),
    #[error("tracepoint {tracepoint} has an unexpected prototype: {what}")]
    Prototype {
        tracepoint: String,
        what: &'static str,
    },
    #[error("the {0} collector reads x86_64 registers; it is not available on this architecture")]
    Arch(Collector),
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
        task_real_parent: member_offset(btf, "task_struct", "real_parent")?,
        task_mm: member_offset(btf, "task_struct", "mm")?,
        mm_exe_file: member_offset(btf, "mm_struct", "exe_file")?,
        mm_arg_start: member_offset(btf, "mm_struct", "arg_start")?,
        task_runtime: optional(
            member_offset(btf, "task_struct", "se")
                .and_then(|se| Ok(se + member_offset(btf, "sched_entity", "sum_exec_runtime")?)),
        ),
        task_read_bytes: optional(ioac_offset(btf, "read_bytes")),
        task_write_bytes: optional(ioac_offset(btf, "write_bytes")),
        ..Offsets::default()
    })
}

/// task_struct.ioac.<field> (CONFIG_TASK_IO_ACCOUNTING).
fn ioac_offset(btf: &Btf, field: &str) -> Result<u32, OffsetError> {
    Ok(member_offset(btf, "task_struct", "ioac")?
        + member_offset(btf, "task_io_accounting", field)?)
}

/// An offset the programs can do without: 0 (none of these fields is at
/// offset 0) when this kernel lacks it, which the statistics that need it
/// then say by being left out.
fn optional(r: Result<u32, OffsetError>) -> u32 {
    match r {
        Ok(off) => off,
        Err(e) => {
            tracing::info!(error = %e, "exited tasks' CPU time or I/O cannot be counted on this kernel");
            0
        }
    }
}

/// What the programs of one collector need beyond the base offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectorNeeds {
    /// Offsets to merge into the base ones (only this collector's fields set).
    pub offsets: Offsets,
    /// `mark_victim`'s first argument is a pid, not a task (OOM collector).
    pub oom_arg_is_pid: bool,
}

/// Resolves what collector `c` needs on this kernel; an error means the
/// collector cannot run here.
pub fn resolve_collector(btf: &Btf, c: Collector) -> Result<CollectorNeeds, OffsetError> {
    let mut n = CollectorNeeds::default();
    match c {
        Collector::Oom => {
            n.oom_arg_is_pid = first_arg_is_integer(btf, "mark_victim")?;
            n.offsets.task_comm = member_offset(btf, "task_struct", "comm")?;
        }
        Collector::Fsio => {
            if !cfg!(target_arch = "x86_64") {
                return Err(OffsetError::Arch(c));
            }
            n.offsets.regs_orig_ax = member_offset(btf, "pt_regs", "orig_ax")?;
            n.offsets.regs_di = member_offset(btf, "pt_regs", "di")?;
            n.offsets.task_files = member_offset(btf, "task_struct", "files")?;
            n.offsets.files_fdt = member_offset(btf, "files_struct", "fdt")?;
            n.offsets.fdt_max_fds = member_offset(btf, "fdtable", "max_fds")?;
            n.offsets.fdt_fd = member_offset(btf, "fdtable", "fd")?;
            n.offsets.inode_mode = member_offset(btf, "inode", "i_mode")?;
        }
        Collector::Runqlat => {
            tracepoint_params(btf, "sched_switch")?;
            // CONFIG_SCHED_INFO (sched_info) and CONFIG_FAIR_GROUP_SCHED
            // (se.cfs_rq, cfs_rq.rq), both on in the common distributions'
            // kernels; without them this resolution fails and the collector
            // is left out with the missing field named.
            let sched_info = member_offset(btf, "task_struct", "sched_info")?;
            n.offsets.task_last_queued =
                sched_info + member_offset(btf, "sched_info", "last_queued")?;
            n.offsets.task_run_delay = sched_info + member_offset(btf, "sched_info", "run_delay")?;
            n.offsets.task_cfs_rq = member_offset(btf, "task_struct", "se")?
                + member_offset(btf, "sched_entity", "cfs_rq")?;
            n.offsets.cfs_rq_rq = member_offset(btf, "cfs_rq", "rq")?;
            n.offsets.rq_clock = member_offset(btf, "rq", "clock")?;
        }
        Collector::Network => {}
    }
    Ok(n)
}

/// Copies the non-zero fields of `from` into `into` (a zero offset, such as
/// inode.i_mode's, is zero in both).
pub fn merge(into: &mut Offsets, from: &Offsets) {
    let pick = |a: &mut u32, b: u32| {
        if b != 0 {
            *a = b;
        }
    };
    pick(&mut into.task_comm, from.task_comm);
    pick(&mut into.task_files, from.task_files);
    pick(&mut into.files_fdt, from.files_fdt);
    pick(&mut into.fdt_max_fds, from.fdt_max_fds);
    pick(&mut into.fdt_fd, from.fdt_fd);
    pick(&mut into.inode_mode, from.inode_mode);
    pick(&mut into.regs_orig_ax, from.regs_orig_ax);
    pick(&mut into.regs_di, from.regs_di);
    pick(&mut into.task_last_queued, from.task_last_queued);
    pick(&mut into.task_run_delay, from.task_run_delay);
    pick(&mut into.task_cfs_rq, from.task_cfs_rq);
    pick(&mut into.cfs_rq_rq, from.cfs_rq_rq);
    pick(&mut into.rq_clock, from.rq_clock);
}

/// The parameters of a tracepoint's prototype, after the leading `void *`
/// the kernel's `btf_trace_<name>` typedef carries.
fn tracepoint_params(btf: &Btf, tracepoint: &str) -> Result<Vec<Type>, OffsetError> {
    let name = format!("btf_trace_{tracepoint}");
    let proto_err = |what| OffsetError::Prototype {
        tracepoint: tracepoint.to_string(),
        what,
    };
    let typedef = btf
        .resolve_types_by_name(&name)
        .map_err(|_| OffsetError::MissingTracepoint(tracepoint.to_string()))?
        .into_iter()
        .find_map(|t| match t {
            Type::Typedef(t) => Some(t),
            _ => None,
        })
        .ok_or_else(|| OffsetError::MissingTracepoint(tracepoint.to_string()))?;
    let Type::Ptr(ptr) = btf.resolve_chained_type(&typedef)? else {
        return Err(proto_err("not a function pointer"));
    };
    let Type::FuncProto(proto) = btf.resolve_chained_type(&ptr)? else {
        return Err(proto_err("not a function pointer"));
    };
    proto
        .parameters
        .iter()
        .skip(1)
        .map(|p| strip_modifiers(btf, btf.resolve_chained_type(p)?))
        .collect()
}

/// Looks through typedefs, const and volatile.
fn strip_modifiers(btf: &Btf, mut t: Type) -> Result<Type, OffsetError> {
    for _ in 0..16 {
        t = match &t {
            Type::Typedef(x) => btf.resolve_chained_type(x)?,
            Type::Const(x) => btf.resolve_chained_type(x)?,
            Type::Volatile(x) => btf.resolve_chained_type(x)?,
            _ => return Ok(t),
        };
    }
    Ok(t)
}

/// True if the tracepoint's first argument is an integer (e.g. `int pid`),
/// false if it is a pointer (e.g. `struct task_struct *`).
fn first_arg_is_integer(btf: &Btf, tracepoint: &str) -> Result<bool, OffsetError> {
    match tracepoint_params(btf, tracepoint)?.into_iter().next() {
        Some(Type::Int(_)) => Ok(true),
        Some(Type::Ptr(_)) => Ok(false),
        _ => Err(OffsetError::Prototype {
            tracepoint: tracepoint.to_string(),
            what: "first argument neither an integer nor a pointer",
        }),
    }
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
            apptheus_testkit::skip("no BTF at /sys/kernel/btf/vmlinux");
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
    fn collectors_resolve_on_the_running_kernel() {
        if !Path::new(VMLINUX).exists() {
            apptheus_testkit::skip("no BTF at /sys/kernel/btf/vmlinux");
            return;
        }
        let btf = load_btf(Path::new(VMLINUX)).unwrap();
        for c in Collector::ALL {
            let n = resolve_collector(&btf, c).unwrap_or_else(|e| panic!("{c}: {e}"));
            if c == Collector::Fsio {
                // orig_ax follows the 15 general registers of x86_64's pt_regs.
                assert_eq!(n.offsets.regs_orig_ax, 15 * 8);
                // i_mode is the first member of struct inode.
                assert!(n.offsets.fdt_fd > 0 && n.offsets.task_files > 0);
            }
            if c == Collector::Oom {
                assert!(n.offsets.task_comm > 0);
            }
            if c == Collector::Runqlat {
                // last_queued lies inside task_struct's sched_info, and the
                // run queue's clock inside struct rq, past its lock.
                let sched_info = member_offset(&btf, "task_struct", "sched_info").unwrap();
                assert!(n.offsets.task_last_queued > sched_info);
                assert!(n.offsets.task_run_delay > sched_info);
                assert_ne!(n.offsets.task_run_delay, n.offsets.task_last_queued);
                assert!(n.offsets.task_cfs_rq > 0 && n.offsets.cfs_rq_rq > 0);
                assert!(n.offsets.rq_clock > 0);
            }
        }
        // sched_switch starts with `bool preempt`, then two tasks.
        let p = tracepoint_params(&btf, "sched_switch").unwrap();
        assert!(matches!(p[1], Type::Ptr(_)) && matches!(p[2], Type::Ptr(_)));
        let e = tracepoint_params(&btf, "no_such_tracepoint_apptheus").unwrap_err();
        assert!(e.to_string().contains("no_such_tracepoint_apptheus"), "{e}");
    }

    #[test]
    fn merge_takes_only_set_fields() {
        let mut base = Offsets {
            task_pid: 1,
            ..Offsets::default()
        };
        let extra = Offsets {
            task_comm: 7,
            regs_di: 9,
            ..Offsets::default()
        };
        merge(&mut base, &extra);
        assert_eq!((base.task_pid, base.task_comm, base.regs_di), (1, 7, 9));
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
