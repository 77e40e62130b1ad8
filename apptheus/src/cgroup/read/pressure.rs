//! The `pressure` source: PSI "some" and "full" totals from cgroup2's
//! cpu.pressure, memory.pressure and io.pressure, present in every cgroup2
//! directory when the kernel has PSI enabled (hybrid hosts too). None when
//! none of them is.
use super::{
    Dirs, Family, Shared,
    files::{Ctx, File, Hier},
    parse,
};
use crate::model::stats::{CgroupStats, Pressure as Psi};

pub(super) struct Pressure;

pub(super) struct Files {
    cpu: Option<File>,
    memory: Option<File>,
    io: Option<File>,
}

fn usec(v: u64) -> f64 {
    v as f64 / 1e6
}

impl Family for Pressure {
    const NAME: &'static str = "pressure";
    type Files = Files;

    fn plan(dirs: &Dirs<'_>) -> Option<Files> {
        let d = dirs.v2?;
        let file = |name: &'static str| d.join(name).exists().then(|| File::new(Hier::V2, name));
        let f = Files {
            cpu: file("cpu.pressure"),
            memory: file("memory.pressure"),
            io: file("io.pressure"),
        };
        (f.cpu.is_some() || f.memory.is_some() || f.io.is_some()).then_some(f)
    }

    fn read(f: &mut Files, ctx: &mut Ctx<'_>, _: &mut Shared, out: &mut CgroupStats) {
        let mut read = |f: &mut Option<File>| f.as_mut().and_then(|f| f.optional(ctx, parse::psi));
        let cpu = read(&mut f.cpu);
        let memory = read(&mut f.memory);
        let io = read(&mut f.io);
        if cpu.is_none() && memory.is_none() && io.is_none() {
            return;
        }
        out.pressure = Some(Psi {
            cpu_some: cpu.map(|p| usec(p.some_us)),
            memory_some: memory.map(|p| usec(p.some_us)),
            memory_full: memory.and_then(|p| p.full_us).map(usec),
            io_some: io.map(|p| usec(p.some_us)),
            io_full: io.and_then(|p| p.full_us).map(usec),
        });
    }
}
