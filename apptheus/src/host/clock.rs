//! CLOCK_BOOTTIME, the clock of the kernel programs' timestamps.
use std::time::{Duration, SystemTime};

/// Wall-clock time of a CLOCK_BOOTTIME instant.
pub(crate) fn boot_ns_to_system_time(boot_ns: u64) -> SystemTime {
    let now_wall = SystemTime::now();
    let now_boot = boot_time_now();
    let ago = now_boot.saturating_sub(Duration::from_nanos(boot_ns));
    now_wall.checked_sub(ago).unwrap_or(now_wall)
}

/// CLOCK_BOOTTIME now.
pub(crate) fn boot_time_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}
