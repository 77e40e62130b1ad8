//! The `blkio` source: bytes and operations per block device, from
//! cgroup2's io.stat when the io controller is enabled there, else from
//! the v1 blkio controller's throttle files, which the block layer fills
//! whatever the I/O scheduler (blkio.io_service_bytes, which the original
//! Go apptheus read, is only filled by CFQ/BFQ and reads 0 on modern
//! kernels). The _recursive files include the cgroups below; older kernels
//! only have the plain ones. Devices that did no I/O are left out.
use std::{collections::BTreeMap, path::PathBuf};

use super::{
    Dirs, Family, MAX_DEVICES, Problem, Shared,
    files::{Ctx, File, Hier},
    parse::{self, Device, IoCounters},
};
use crate::model::stats::{BlkioDevice, CgroupStats};

pub(super) struct Blkio;

pub(super) enum Files {
    V2(File),
    V1 { bytes: File, ops: File },
}

impl Family for Blkio {
    const NAME: &'static str = "blkio";
    type Files = Files;

    fn plan(dirs: &Dirs<'_>) -> Option<Files> {
        if dirs.v2_with("io.stat").is_some() {
            return Some(Files::V2(File::new(Hier::V2, "io.stat")));
        }
        let d = dirs.v1("blkio")?;
        // The first that exists; the first named (and missing: a warning)
        // when neither does.
        let pick = |names: [&'static str; 2]| {
            let name = names
                .into_iter()
                .find(|n| d.join(n).exists())
                .unwrap_or(names[0]);
            File::new(Hier::V1("blkio"), name)
        };
        Some(Files::V1 {
            bytes: pick([
                "blkio.throttle.io_service_bytes_recursive",
                "blkio.throttle.io_service_bytes",
            ]),
            ops: pick([
                "blkio.throttle.io_serviced_recursive",
                "blkio.throttle.io_serviced",
            ]),
        })
    }

    fn read(f: &mut Files, ctx: &mut Ctx<'_>, _: &mut Shared, out: &mut CgroupStats) {
        let (counters, where_) = match f {
            Files::V2(io) => (io.required(ctx, parse::io_stat), io.path(ctx.cg)),
            Files::V1 { bytes, ops } => {
                let dir = Hier::V1("blkio")
                    .dir(ctx.cg)
                    .map(PathBuf::from)
                    .unwrap_or_default();
                (v1(bytes, ops, ctx), dir)
            }
        };
        out.blkio = counters.map(|c| devices(c, where_, ctx));
    }
}

fn v1(bytes: &mut File, ops: &mut File, ctx: &mut Ctx<'_>) -> Option<BTreeMap<Device, IoCounters>> {
    let bytes = bytes.required(ctx, parse::blkio_v1)?;
    let ops = ops.required(ctx, parse::blkio_v1)?;
    let mut out: BTreeMap<Device, IoCounters> = BTreeMap::new();
    for (dev, (r, w)) in bytes {
        let e = out.entry(dev).or_default();
        e.read_bytes = r;
        e.write_bytes = w;
    }
    for (dev, (r, w)) in ops {
        let e = out.entry(dev).or_default();
        e.read_ops = r;
        e.write_ops = w;
    }
    Some(out)
}

/// Devices with any I/O, at most [`MAX_DEVICES`] of them.
fn devices(m: BTreeMap<Device, IoCounters>, path: PathBuf, ctx: &mut Ctx<'_>) -> Vec<BlkioDevice> {
    let mut busy = m.into_iter().filter(|(_, c)| !c.is_zero()).peekable();
    let out: Vec<BlkioDevice> = busy
        .by_ref()
        .take(MAX_DEVICES)
        .map(|(d, c)| BlkioDevice {
            device: d.to_string(),
            read_bytes: c.read_bytes,
            write_bytes: c.write_bytes,
            read_ops: c.read_ops,
            write_ops: c.write_ops,
        })
        .collect();
    if busy.peek().is_some() {
        ctx.warn(path, Problem::TooManyDevices(MAX_DEVICES));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::{cgroup::read::read_with, model::cgroups::ContainerCgroups};

    #[test]
    fn falls_back_to_the_plain_throttle_files_and_warns_without_any() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(
            d.join("blkio.throttle.io_service_bytes"),
            "8:0 Read 10\n8:0 Write 20\nTotal 30\n",
        )
        .unwrap();
        fs::write(
            d.join("blkio.throttle.io_serviced"),
            "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
        )
        .unwrap();
        fs::write(d.join("tasks"), "1\n").unwrap();
        let cg = ContainerCgroups {
            v2: None,
            v1: [("blkio", d.to_path_buf())].into(),
        };
        let (s, w) = read_with(&cg, 100);
        assert!(w.is_empty(), "{w:?}");
        let dev = &s.blkio.unwrap()[0];
        assert_eq!(
            (dev.read_bytes, dev.write_bytes, dev.read_ops, dev.write_ops),
            (10, 20, 1, 2)
        );
        fs::remove_file(d.join("blkio.throttle.io_serviced")).unwrap();
        let (s, w) = read_with(&cg, 100);
        assert_eq!(s.blkio, None);
        assert!(
            w.iter()
                .any(|w| w.to_string().ends_with("io_serviced_recursive: missing")),
            "{w:?}"
        );
    }
}
