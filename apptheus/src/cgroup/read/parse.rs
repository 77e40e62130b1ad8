//! Pure parsers for the cgroup interface files. Nothing here touches the
//! file system: every function takes the file's text, so each is tested on
//! literal strings. The formats are those of the kernel's
//! Documentation/admin-guide/cgroup-v2.rst ("Interface Files") and the v1
//! controller documents.
use std::{collections::BTreeMap, fmt};

/// How much of an offending line or value an error quotes: a garbage file
/// must not turn into a kilobyte-long log line.
const QUOTE_MAX: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("file is empty")]
    Empty,
    #[error("line {line}: {text:?} is not in the expected format")]
    BadLine { line: usize, text: String },
    #[error("{key}: {value:?} is not a number")]
    BadNumber { key: String, value: String },
    #[error("key {key:?} is missing")]
    MissingKey { key: String },
    #[error("line {line}: {text:?} is not a major:minor device")]
    BadDevice { line: usize, text: String },
}

fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn bad_line(index: usize, text: &str) -> ParseError {
    ParseError::BadLine {
        line: index + 1,
        text: quote(text),
    }
}

fn number(key: &str, value: &str) -> Result<u64, ParseError> {
    value.parse().map_err(|_| ParseError::BadNumber {
        key: quote(key),
        value: quote(value),
    })
}

/// A file holding one unsigned number (memory.current, cpuacct.usage, ...).
pub(crate) fn single_u64(text: &str) -> Result<u64, ParseError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ParseError::Empty);
    }
    number("value", t)
}

/// A v2-style limit (memory.max, pids.max): a number, or "max" for none.
pub(crate) fn limit(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim() {
        "max" => Ok(None),
        _ => single_u64(text).map(Some),
    }
}

/// Values at or above this are "no limit". cgroup v1 reports an unset
/// memory limit as the largest page-aligned counter (9223372036854771712
/// with 4 KiB pages, a little less with 64 KiB pages); no machine has
/// 4 EiB of memory, so anything this large cannot be a real limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// A v1 memory limit file (memory.limit_in_bytes): a number, the huge
/// "unset" value meaning no limit.
pub(crate) fn v1_limit(text: &str) -> Result<Option<u64>, ParseError> {
    single_u64(text).map(v1_limit_value)
}

/// A v1 memory limit as a number (memory.stat's
/// hierarchical_memory_limit): the huge "unset" value means no limit.
pub(crate) fn v1_limit_value(v: u64) -> Option<u64> {
    (v < V1_UNLIMITED).then_some(v)
}

/// A flat-keyed file: one `key value` pair per line (memory.stat, cpu.stat,
/// memory.events, cpuacct.stat, memory.oom_control), of which a handful
/// of keys are wanted. One pass over the text keeps the values of those
/// keys, as text, converted on lookup: only the keys we use must be
/// numbers, and nothing is allocated (memory.stat has some 70 lines, read
/// for every container at every sample).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlatKeyed<'a, 'k, const N: usize> {
    keys: [&'k str; N],
    values: [Option<&'a str>; N],
}

impl<const N: usize> FlatKeyed<'_, '_, N> {
    /// The value of `key` (one of the keys asked for) as a number; None
    /// when the kernel does not write that key (older kernels lack some).
    pub(crate) fn get(&self, key: &str) -> Result<Option<u64>, ParseError> {
        let at = self.keys.iter().position(|k| *k == key);
        debug_assert!(at.is_some(), "{key} was not asked for");
        at.and_then(|i| self.values[i])
            .map(|v| number(key, v))
            .transpose()
    }

    /// The value of `key`, which every kernel writes.
    pub(crate) fn require(&self, key: &str) -> Result<u64, ParseError> {
        self.get(key)?
            .ok_or_else(|| ParseError::MissingKey { key: quote(key) })
    }
}

/// Parses a flat-keyed file, keeping the values of `keys` (the first
/// line of each). Every line must be one key and one value.
pub(crate) fn flat_keyed<'a, 'k, const N: usize>(
    text: &'a str,
    keys: [&'k str; N],
) -> Result<FlatKeyed<'a, 'k, N>, ParseError> {
    let mut values: [Option<&'a str>; N] = [None; N];
    let mut pairs = 0usize;
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let Some(gap) = line.bytes().position(|b| b.is_ascii_whitespace()) else {
            return Err(bad_line(i, line));
        };
        let (key, value) = (&line[..gap], line[gap..].trim_ascii_start());
        if value.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(bad_line(i, line));
        }
        pairs += 1;
        if let Some(j) = keys.iter().position(|k| *k == key)
            && values[j].is_none()
        {
            values[j] = Some(value);
        }
    }
    if pairs == 0 {
        return Err(ParseError::Empty);
    }
    Ok(FlatKeyed { keys, values })
}

/// A block device, as cgroup files name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Device {
    pub major: u32,
    pub minor: u32,
}

impl Device {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (major, minor) = s.split_once(':')?;
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Block I/O counters of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IoCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

impl IoCounters {
    pub(crate) fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// v2 io.stat, a nested-keyed file:
/// `8:0 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0`.
/// A cgroup that has done no I/O has an empty io.stat: no devices, no error.
/// Other keys (io.latency's `depth=max`, io.cost's `cost.*`) are allowed
/// and ignored; the four counters must be there.
pub(crate) fn io_stat(text: &str) -> Result<BTreeMap<Device, IoCounters>, ParseError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_ascii_whitespace();
        let Some(dev) = words.next() else { continue };
        let device = Device::parse(dev).ok_or_else(|| ParseError::BadDevice {
            line: i + 1,
            text: quote(line),
        })?;
        let mut keys = BTreeMap::new();
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| bad_line(i, line))?;
            keys.insert(k, v);
        }
        let get = |key: &str| match keys.get(key) {
            Some(v) => number(key, v),
            None => Err(ParseError::MissingKey {
                key: key.to_string(),
            }),
        };
        let c = IoCounters {
            read_bytes: get("rbytes")?,
            write_bytes: get("wbytes")?,
            read_ops: get("rios")?,
            write_ops: get("wios")?,
        };
        // A device may appear once per line only, but be lenient and add.
        let e: &mut IoCounters = out.entry(device).or_default();
        add(e, &c);
    }
    Ok(out)
}

fn add(into: &mut IoCounters, c: &IoCounters) {
    into.read_bytes = into.read_bytes.saturating_add(c.read_bytes);
    into.write_bytes = into.write_bytes.saturating_add(c.write_bytes);
    into.read_ops = into.read_ops.saturating_add(c.read_ops);
    into.write_ops = into.write_ops.saturating_add(c.write_ops);
}

/// Read and write counts per device from a v1 blkio file (one of the
/// throttle.io_service_bytes / io_serviced family):
/// `8:0 Read 4096` ... `8:0 Total 8192`, and a last line `Total 8192`.
/// Returns (read, write) per device.
pub(crate) fn blkio_v1(text: &str) -> Result<BTreeMap<Device, (u64, u64)>, ParseError> {
    let mut out = BTreeMap::new();
    let mut any = false;
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.as_slice() {
            [] => continue,
            // The grand total over all devices: not per device.
            ["Total", v] => {
                number("Total", v)?;
            }
            [dev, op, v] => {
                let device = Device::parse(dev).ok_or_else(|| ParseError::BadDevice {
                    line: i + 1,
                    text: quote(line),
                })?;
                let v = number(op, v)?;
                let e: &mut (u64, u64) = out.entry(device).or_default();
                match *op {
                    "Read" => e.0 = e.0.saturating_add(v),
                    "Write" => e.1 = e.1.saturating_add(v),
                    // Sync, Async, Discard, Total: other views of the same I/O.
                    _ => {}
                }
            }
            _ => return Err(bad_line(i, line)),
        }
        any = true;
    }
    if !any {
        // The kernel always writes at least the "Total" line.
        return Err(ParseError::Empty);
    }
    Ok(out)
}

/// Totals of a PSI file (cpu.pressure, memory.pressure, io.pressure), in
/// microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Psi {
    pub some_us: u64,
    /// Absent on cpu.pressure before Linux 5.13.
    pub full_us: Option<u64>,
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=12345` and optionally the
/// same with `full`.
pub(crate) fn psi(text: &str) -> Result<Psi, ParseError> {
    let mut some = None;
    let mut full = None;
    for (i, line) in text.lines().enumerate() {
        let mut words = line.split_ascii_whitespace();
        let Some(kind) = words.next() else { continue };
        let mut total = None;
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| bad_line(i, line))?;
            if k == "total" {
                total = Some(number("total", v)?);
            }
        }
        let total = total.ok_or_else(|| ParseError::MissingKey {
            key: format!("{kind} total"),
        })?;
        match kind {
            "some" => some = Some(total),
            "full" => full = Some(total),
            _ => return Err(bad_line(i, line)),
        }
    }
    match some {
        Some(some_us) => Ok(Psi {
            some_us,
            full_us: full,
        }),
        None if text.trim().is_empty() => Err(ParseError::Empty),
        None => Err(ParseError::MissingKey {
            key: "some".to_string(),
        }),
    }
}

/// Entries of a one-per-line list (cgroup.threads, tasks, cgroup.procs);
/// an empty list is a cgroup without tasks, not an error.
pub(crate) fn count_lines(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim_ascii().is_empty()).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_values_and_limits() {
        assert_eq!(single_u64("4096\n"), Ok(4096));
        assert_eq!(single_u64(""), Err(ParseError::Empty));
        assert_eq!(single_u64("\n"), Err(ParseError::Empty));
        assert!(matches!(
            single_u64("12ab"),
            Err(ParseError::BadNumber { .. })
        ));
        assert!(matches!(
            single_u64("-1"),
            Err(ParseError::BadNumber { .. })
        ));
        // One past u64::MAX must be an error, not a wrap.
        assert!(single_u64("18446744073709551616").is_err());
        assert_eq!(limit("max\n"), Ok(None));
        assert_eq!(limit("536870912\n"), Ok(Some(536870912)));
        assert_eq!(limit("maximal"), single_u64("maximal").map(Some));
        assert_eq!(limit(""), Err(ParseError::Empty));
    }

    #[test]
    fn v1_limits() {
        assert_eq!(v1_limit("9223372036854771712\n"), Ok(None));
        // 64 KiB pages (ppc64le, some aarch64 kernels).
        assert_eq!(v1_limit("9223372036854710272\n"), Ok(None));
        assert_eq!(v1_limit("1073741824\n"), Ok(Some(1 << 30)));
        assert!(v1_limit("max").is_err());
    }

    #[test]
    fn flat_keyed_files() {
        let f = flat_keyed(
            "usage_usec 1000\nuser_usec 600\nsystem_usec 400\n",
            ["usage_usec", "throttled_usec"],
        )
        .unwrap();
        assert_eq!(f.require("usage_usec"), Ok(1000));
        assert_eq!(f.get("throttled_usec"), Ok(None));
        assert_eq!(
            f.require("throttled_usec"),
            Err(ParseError::MissingKey {
                key: "throttled_usec".into()
            })
        );
        assert_eq!(flat_keyed("", ["anon"]), Err(ParseError::Empty));
        assert_eq!(flat_keyed(" \n\n", ["anon"]), Err(ParseError::Empty));
        assert_eq!(
            flat_keyed("anon 1\nfile\n", ["anon"]),
            Err(ParseError::BadLine {
                line: 2,
                text: "file".into()
            })
        );
        assert!(flat_keyed("a 1 2\n", ["a"]).is_err());
        // Lines of any key are checked, whether wanted or not.
        assert!(flat_keyed("anon 1\nb 1 2\n", ["anon"]).is_err());
        // Spaces and tabs around and between the two words are fine; the
        // first line of a key counts.
        let f = flat_keyed("  anon \t 7 \nanon 8\n", ["anon"]).unwrap();
        assert_eq!(f.require("anon"), Ok(7));
        // A bad value only matters for a key that is used.
        let f = flat_keyed("anon 12\nweird x\n", ["anon", "weird"]).unwrap();
        assert_eq!(f.require("anon"), Ok(12));
        assert!(matches!(f.get("weird"), Err(ParseError::BadNumber { .. })));
    }

    #[test]
    fn long_garbage_is_quoted_short() {
        let junk = "x".repeat(10_000);
        let e = flat_keyed(&junk, ["x"]).unwrap_err().to_string();
        assert!(e.len() < 120, "{e}");
        // Multi-byte characters are cut at a character boundary.
        let e = single_u64(&"é".repeat(100)).unwrap_err().to_string();
        assert!(e.contains("..."), "{e}");
    }

    #[test]
    fn io_stat_v2() {
        let text = "8:0 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n\
                    259:0 rbytes=0 wbytes=0 rios=0 wios=0 dbytes=0 dios=0 depth=max avg_lat=0\n";
        let m = io_stat(text).unwrap();
        let d = Device { major: 8, minor: 0 };
        assert_eq!(
            m[&d],
            IoCounters {
                read_bytes: 1459200,
                write_bytes: 314773504,
                read_ops: 192,
                write_ops: 353
            }
        );
        assert!(
            m[&Device {
                major: 259,
                minor: 0
            }]
                .is_zero()
        );
        assert_eq!(io_stat(""), Ok(BTreeMap::new()));
        assert!(matches!(
            io_stat("sda rbytes=1 wbytes=2 rios=3 wios=4\n"),
            Err(ParseError::BadDevice { .. })
        ));
        // Truncated in the middle of a line.
        assert!(io_stat("8:0 rbytes=1 wbytes=2 ri").is_err());
        assert!(matches!(
            io_stat("8:0 rbytes=1 wbytes=2\n"),
            Err(ParseError::MissingKey { .. })
        ));
    }

    #[test]
    fn blkio_v1_files() {
        let text = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 8192\n8:0 Async 4096\n\
                    8:0 Discard 0\n8:0 Total 12288\n8:16 Read 1\n8:16 Write 2\nTotal 12291\n";
        let m = blkio_v1(text).unwrap();
        assert_eq!(m[&Device { major: 8, minor: 0 }], (4096, 8192));
        assert_eq!(
            m[&Device {
                major: 8,
                minor: 16
            }],
            (1, 2)
        );
        assert_eq!(blkio_v1("Total 0\n"), Ok(BTreeMap::new()));
        assert_eq!(blkio_v1(""), Err(ParseError::Empty));
        assert!(blkio_v1("8:0 Read\n").is_err());
        assert!(blkio_v1("8:0 Read lots\n").is_err());
        assert!(blkio_v1("x:y Read 1\n").is_err());
    }

    #[test]
    fn psi_files() {
        let text = "some avg10=0.09 avg60=1.37 avg300=1.98 total=22912321\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n";
        assert_eq!(
            psi(text),
            Ok(Psi {
                some_us: 22912321,
                full_us: Some(1000000)
            })
        );
        // cpu.pressure before 5.13: no full line.
        assert_eq!(
            psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=12345\n"),
            Ok(Psi {
                some_us: 12345,
                full_us: None
            })
        );
        assert_eq!(psi(""), Err(ParseError::Empty));
        assert!(psi("some avg10=0.00 avg60=0.00 avg300=0.00\n").is_err());
        assert!(psi("full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n").is_err());
        assert!(psi("some avg10=0.00 total=abc\n").is_err());
        assert!(psi("bogus total=1\n").is_err());
    }

    #[test]
    fn devices_and_lines() {
        assert_eq!(
            Device::parse("259:3").map(|d| d.to_string()),
            Some("259:3".into())
        );
        assert_eq!(Device::parse("8"), None);
        assert_eq!(Device::parse("8:-1"), None);
        assert_eq!(count_lines(""), 0);
        assert_eq!(count_lines("1\n2\n3\n"), 3);
        assert_eq!(count_lines("1\n\n2"), 2);
    }
}
