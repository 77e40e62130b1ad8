//! cgroup_attach_task: a container's task moved into another cgroup by
//! someone other than apptheus, typically a runtime putting the container
//! into a cgroup of its own (Apptainer's `--memory` or an instance, runc,
//! crun). User space then reads statistics from there too.
use apptheus_common::{Event, EventKind, Stat};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::kernel::{boot_ns, bump, config, container_of, emit, read_at};

/// TP_PROTO(struct cgroup *dst_cgrp, const char *path, struct task_struct
/// *task, bool threadgroup)
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn apptheus_cgroup_attach(ctx: BtfTracePointContext) -> i32 {
    if try_attach(&ctx).is_err() {
        bump(Stat::AttachErrors);
    }
    0
}

fn try_attach(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let off = config().offsets;
    let task: *const u8 = ctx.arg(2);
    let tid: i32 = read_at(task, off.task_pid)?;
    let Some(cid) = container_of(tid as u32) else {
        return Ok(());
    };
    let writer = (bpf_get_current_pid_tgid() >> 32) as u32;
    if writer == config().agent_tgid {
        return Ok(());
    }
    let tgid: i32 = read_at(task, off.task_tgid)?;
    emit(&Event {
        kind: EventKind::TaskMoved as u32,
        tgid: tgid as u32,
        tid: tid as u32,
        container: cid,
        boot_ns: boot_ns(),
        ..Event::default()
    });
    Ok(())
}
