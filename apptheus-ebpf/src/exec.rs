//! sched_process_exec: recognise a trusted starter by the identity of the
//! executed file, and start a container for it; report the exec of a
//! trusted launcher (Apptainer's command-line tool).
use apptheus_common::{
    ContainerState, Event, EventKind, FileId, RUN_DELAY_UNKNOWN, RUNQ_SLOT_UNRESOLVED,
    START_PARENT_LAUNCHER, Stat, TRUST_LAUNCHER,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_probe_read_user_str_bytes,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    kernel::{
        atomic_add, attribute, boot_ns, bump, config, container_of, emit, read_at, runq_slot_of,
        task_use, unattribute,
    },
    maps::{CONTAINERS, NEW_STATE, TRUSTED},
};

/// TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
#[btf_tracepoint(function = "sched_process_exec")]
pub fn apptheus_exec(ctx: BtfTracePointContext) -> i32 {
    if try_exec(&ctx).is_err() {
        bump(Stat::ExecErrors);
    }
    0
}

fn try_exec(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let old_pid: i32 = ctx.arg(1);
    let old_pid = old_pid as u32;

    // A non-leader thread that execs takes over the leader's pid; its entry
    // moves with it (the old leader's exit has already been seen).
    if old_pid != tid
        && let Some(cid) = container_of(old_pid)
    {
        let slot = runq_slot_of(old_pid);
        unattribute(old_pid);
        if attribute(tid, cid, RUN_DELAY_UNKNOWN, slot).is_err() {
            bump(Stat::TasksMapFull);
        }
    }

    // Already in a container: a nested starter stays part of the outer one.
    // A task whose container user space has let go (a helper run, a run
    // refused, one ended while this task lived on) is in none: its entry
    // goes, and a starter it runs is a container of its own.
    if let Some(cid) = container_of(tid) {
        match CONTAINERS.get_ptr_mut(&cid) {
            Some(st) => {
                // SAFETY: st points into a live map value.
                atomic_add(unsafe { &raw mut (*st).execs }, 1);
                return Ok(());
            }
            None => unattribute(tid),
        }
    }

    let file = executed_file(ctx)?;
    // SAFETY: a u8 value, copied out immediately.
    let Some(role) = (unsafe { TRUSTED.get(&file) }).copied() else {
        return Ok(());
    };

    let now = boot_ns();
    let uid_gid = bpf_get_current_uid_gid();
    if role == TRUST_LAUNCHER {
        emit(&Event {
            kind: EventKind::LauncherExec as u32,
            tgid,
            boot_ns: now,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            file,
            ..Event::default()
        });
        return Ok(());
    }
    // What the task used before it became the starter (a batch script
    // that `exec`s Apptainer) is not the container's.
    let (runtime, read, write) = task_use(Stat::ExecErrors);
    // Built in a map's per-CPU slot, not on the stack (see NEW_STATE).
    let state: *mut ContainerState = NEW_STATE.get_ptr_mut(0).ok_or(-1i64)?;
    // SAFETY: state points to this CPU's slot of a live map value, which
    // nothing else uses while this program runs on this CPU; it is filled
    // field by field so that no copy of the struct lands on the stack.
    unsafe {
        core::ptr::write_bytes(state, 0, 1);
        (*state).live_tasks = 1;
        (*state).execs = 1;
        (*state).start_boot_ns = now;
        (*state).starter_tgid = tgid;
        (*state).uid = uid_gid as u32;
        (*state).gid = (uid_gid >> 32) as u32;
        (*state).starter = file;
        (*state).start_runtime_ns = runtime;
        (*state).start_read_bytes = read;
        (*state).start_write_bytes = write;
    }
    // The start time is the container id; two starts in the same nanosecond
    // on two CPUs take the next free ids.
    let mut cid = now;
    let mut inserted = false;
    for _ in 0..4 {
        // SAFETY: as above; the map copies the value.
        if CONTAINERS
            .insert(&cid, unsafe { &*state }, BPF_NOEXIST as u64)
            .is_ok()
        {
            inserted = true;
            break;
        }
        cid += 1;
    }
    if !inserted {
        bump(Stat::ContainersMapFull);
        return Ok(());
    }
    if attribute(tid, cid, RUN_DELAY_UNKNOWN, RUNQ_SLOT_UNRESOLVED).is_err() {
        bump(Stat::TasksMapFull);
        // SAFETY: as above.
        unsafe {
            (*state).live_tasks = 0;
            (*state).exited = 1;
            let _ = CONTAINERS.insert(&cid, &*state, 0);
        }
    }
    let mut ev = Event {
        kind: EventKind::ContainerStarted as u32,
        tgid,
        container: cid,
        boot_ns: now,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        file,
        ..Event::default()
    };
    // What user space needs to tell a run from an instance or a helper run,
    // read here because a helper run may be over before user space looks.
    if parent_is_launcher() {
        ev.flags |= START_PARENT_LAUNCHER;
    }
    first_arg(&mut ev.args);
    emit(&ev);
    Ok(())
}

/// Whether the current task's parent runs a trusted launcher
/// (real_parent->mm->exe_file, by identity).
fn parent_is_launcher() -> bool {
    let off = config().offsets;
    // SAFETY: a helper without arguments; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let file = (|| -> Result<FileId, i64> {
        let parent: *const u8 = read_at(task, off.task_real_parent)?;
        let mm: *const u8 = read_at(parent, off.task_mm)?;
        let exe: *const u8 = read_at(mm, off.mm_exe_file)?;
        file_identity(exe)
    })();
    // SAFETY: a u8 value, copied out immediately.
    file.is_ok_and(|f| unsafe { TRUSTED.get(&f) }.copied() == Some(TRUST_LAUNCHER))
}

/// The current task's first argument (the new program's argv[0]),
/// NUL-padded; left zero if it cannot be read.
fn first_arg(out: &mut [u8; apptheus_common::START_ARGS_LEN]) {
    let off = config().offsets;
    // SAFETY: as above.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(mm) = read_at::<*const u8>(task, off.task_mm) else {
        return;
    };
    let Ok(start) = read_at::<u64>(mm, off.mm_arg_start) else {
        return;
    };
    // SAFETY: a fault-safe copy from the task's own (just set up) stack;
    // a bad address yields an error.
    let _ = unsafe { bpf_probe_read_user_str_bytes(start as *const u8, out) };
}

/// bprm->file->f_inode->{i_sb->s_dev, i_ino}
fn executed_file(ctx: &BtfTracePointContext) -> Result<FileId, i64> {
    let off = config().offsets;
    let bprm: *const u8 = ctx.arg(2);
    let file: *const u8 = read_at(bprm, off.binprm_file)?;
    file_identity(file)
}

/// file->f_inode->{i_sb->s_dev, i_ino}
fn file_identity(file: *const u8) -> Result<FileId, i64> {
    let off = config().offsets;
    let inode: *const u8 = read_at(file, off.file_inode)?;
    let ino: u64 = read_at(inode, off.inode_ino)?;
    let sb: *const u8 = read_at(inode, off.inode_sb)?;
    let dev: u32 = read_at(sb, off.sb_dev)?;
    Ok(FileId {
        dev: dev as u64,
        ino,
    })
}
