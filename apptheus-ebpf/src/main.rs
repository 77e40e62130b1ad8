//! apptheus' kernel programs. Each hook lives in a module of its own; this
//! file only wires them together.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod cgroup;
mod exec;
mod exit;
mod fork;
mod kernel;
mod maps;
mod net;
mod oom;
mod switch;
mod sys_exit;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so
    // this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
