//! A writer for the cpio "newc" format, the one the kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//! Entries made by [`Writer::dir`], [`Writer::file`] and friends are
//! root's; [`Writer::with_owner`] keeps another owner (a packed root's
//! files: munge's key, a user's home). Names are relative (no leading '/').
use std::io::{self, Write};

pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, (major, minor), &[])
    }

    /// An entry of any type (`mode` holds the type bits, as `st_mode`)
    /// owned by `uid`:`gid`; `data` is a file's bytes or a symlink's
    /// target.
    pub fn with_owner(
        &mut self,
        name: &str,
        mode: u32,
        owner: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        self.raw(name, mode, owner, (0, 0), data)
    }

    /// Writes the trailer and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        self.raw(name, mode, (0, 0), rdev, data)
    }

    fn raw(
        &mut self,
        name: &str,
        mode: u32,
        (uid, gid): (u32, u32),
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name}: too large for cpio")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & 0o170000 == S_IFDIR { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            uid,
            gid,
            nlink,
            0, // mtime
            size,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut w = Writer::new(Vec::new());
        w.dir("/etc", 0o755).unwrap();
        w.file("etc/hostname", 0o644, b"vm\n").unwrap();
        w.symlink("bin", "usr/bin").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        // Mode of the directory, then its name without the leading '/'.
        assert!(text.contains(&format!("{:08x}", 0o040755)));
        assert!(text.contains("etc\0"));
        assert!(text.contains("etc/hostname\0"));
        assert!(text.contains("vm\n"));
        assert!(text.contains("bin\0"));
        assert!(text.contains("usr/bin"));
        assert!(text.contains("TRAILER!!!\0"));
        // Header (110 bytes) + "etc\0" padded to 116.
        assert_eq!(&out[116..122], b"070701");
    }
}
