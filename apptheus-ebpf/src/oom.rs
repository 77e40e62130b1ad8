//! mark_victim: the OOM killer chose a task; if it belongs to a container,
//! count it there (the count survives the container's cgroup) and tell user
//! space who it was.
use apptheus_common::{Event, EventKind, Stat, TASK_COMM_LEN};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    kernel::{atomic_add, boot_ns, bump, config, container_of, emit, read_at},
    maps::CONTAINERS,
};

/// TP_PROTO(struct task_struct *task, uid_t uid) since Linux 6.8;
/// TP_PROTO(int pid) before. User space tells which (`oom_arg_is_pid`).
#[btf_tracepoint(function = "mark_victim")]
pub fn apptheus_oom(ctx: BtfTracePointContext) -> i32 {
    if try_oom(&ctx).is_err() {
        bump(Stat::OomErrors);
    }
    0
}

fn try_oom(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let cfg = config();
    let mut comm = [0u8; TASK_COMM_LEN];
    let tid = if cfg.oom_arg_is_pid != 0 {
        let pid: i32 = ctx.arg(0);
        pid as u32
    } else {
        let task: *const u8 = ctx.arg(0);
        comm = read_at(task, cfg.offsets.task_comm)?;
        let pid: i32 = read_at(task, cfg.offsets.task_pid)?;
        pid as u32
    };
    let Some(cid) = container_of(tid) else {
        return Ok(());
    };
    let Some(st) = CONTAINERS.get_ptr_mut(&cid) else {
        return Ok(());
    };
    // SAFETY: st points into a live map value.
    let (uid, gid) = unsafe {
        atomic_add(&raw mut (*st).oom_kills, 1);
        ((*st).uid, (*st).gid)
    };
    emit(&Event {
        kind: EventKind::OomKill as u32,
        tgid: tid,
        container: cid,
        boot_ns: boot_ns(),
        uid,
        gid,
        comm,
        ..Event::default()
    });
    Ok(())
}
