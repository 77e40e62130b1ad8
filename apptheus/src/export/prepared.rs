//! The latest snapshot, and the containers' part of its exposition encoded
//! once per encoding and kept until the next snapshot: a scrape encodes
//! the agent's own metrics (a few dozen series) and copies the rest.
//! After a sample taken for scrapers with a schedule, their encodings are
//! prepared at once, so that their scrapes only copy bytes; any other is
//! encoded by the first read that asks for it.
//!
//! Compressed parts are always kept (a tenth of the text or less); plain
//! ones only when small ([`MAX_PLAIN`]): the text of 10,000 containers is
//! about 27 MB, and is written again at each read that asks for it.
//!
//! A gzip answer is one gzip member: the agent's part deflated and
//! flushed to a byte boundary (not final), the containers' part as it was
//! deflated on its own (its last block final), and the CRC and length of
//! both together (a CRC combines without the data).
use std::{
    io::Write as _,
    sync::{Arc, OnceLock},
};

use flate2::{Compression, write::DeflateEncoder};

use crate::export::{
    exposition::{EncodeError, Encoding, write_containers},
    snapshot::Snapshot,
};

/// Plain parts bigger than this are not kept (estimated from the number
/// of containers before encoding: about 3 KB each).
pub const MAX_PLAIN: usize = 4 << 20;
const BYTES_PER_ROW: usize = 3200;

/// The fixed header of a gzip member: deflate, no name, no time, unknown
/// system.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// A snapshot and its encoded parts.
pub struct Prepared {
    pub snapshot: Arc<Snapshot>,
    /// By [`Encoding::index`]: None when not to be kept.
    parts: [OnceLock<Option<Arc<Part>>>; 4],
}

/// The containers' part of an exposition.
struct Part {
    /// The text, or raw deflate when `deflated`.
    bytes: Vec<u8>,
    deflated: bool,
    /// The CRC-32 and length of the text.
    crc: flate2::Crc,
}

impl Prepared {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Prepared {
            snapshot,
            parts: Default::default(),
        }
    }

    /// The part for `e`: encoded now unless it was (or is not to be kept).
    fn part(&self, e: Encoding) -> Option<Arc<Part>> {
        self.parts[usize::from(e.index())]
            .get_or_init(|| match Part::encode(&self.snapshot, e) {
                Ok(p) => p.map(Arc::new),
                Err(err) => {
                    tracing::error!(error = %err, "encoding the containers' metrics failed");
                    None
                }
            })
            .clone()
    }

    /// Encodes now the parts of the encodings in `set` (bits, by
    /// [`Encoding::index`]).
    pub fn prepare(&self, set: u8) {
        for i in 0..4u8 {
            if set & (1 << i) != 0 {
                self.part(Encoding::from_index(i));
            }
        }
    }

    /// The exposition in `e`: `own` (the agent's metrics, encoded in the
    /// same format), then the containers'.
    pub fn body(&self, own: Vec<u8>, e: Encoding) -> Result<Vec<u8>, EncodeError> {
        match self.part(e) {
            Some(p) if p.deflated => gzip_joined(&own, &p),
            Some(p) => {
                let mut out = own;
                out.extend_from_slice(&p.bytes);
                Ok(out)
            }
            None => {
                let mut out = own;
                out.reserve(self.snapshot.rows.len() * BYTES_PER_ROW);
                write_containers(&self.snapshot, e.format, &mut out)?;
                if e.gzip {
                    let mut z = flate2::write::GzEncoder::new(
                        Vec::with_capacity(out.len() / 8),
                        Compression::fast(),
                    );
                    z.write_all(&out)?;
                    out = z.finish()?;
                }
                Ok(out)
            }
        }
    }
}

impl Part {
    /// The containers' part of `snap` in `e`; None for a plain one too big
    /// to keep.
    fn encode(snap: &Snapshot, e: Encoding) -> Result<Option<Part>, EncodeError> {
        let estimate = snap.rows.len() * BYTES_PER_ROW;
        if !e.gzip {
            if estimate > MAX_PLAIN {
                return Ok(None);
            }
            let mut bytes = Vec::with_capacity(estimate + 4096);
            write_containers(snap, e.format, &mut bytes)?;
            let mut crc = flate2::Crc::new();
            crc.update(&bytes);
            bytes.shrink_to_fit();
            return Ok(Some(Part {
                bytes,
                deflated: false,
                crc,
            }));
        }
        let mut w = Checked {
            inner: DeflateEncoder::new(Vec::with_capacity(estimate / 10), Compression::fast()),
            crc: flate2::Crc::new(),
        };
        write_containers(snap, e.format, &mut w)?;
        let crc = w.crc;
        let mut bytes = w.inner.finish()?;
        bytes.shrink_to_fit();
        Ok(Some(Part {
            bytes,
            deflated: true,
            crc,
        }))
    }
}

/// A writer that keeps the CRC-32 and length of what goes through it.
struct Checked<W> {
    inner: W,
    crc: flate2::Crc,
}

impl<W: std::io::Write> std::io::Write for Checked<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One gzip member of `own` followed by the deflated `part`.
fn gzip_joined(own: &[u8], part: &Part) -> Result<Vec<u8>, EncodeError> {
    let mut z = DeflateEncoder::new(
        Vec::with_capacity(GZIP_HEADER.len() + own.len() / 2 + part.bytes.len() + 8),
        Compression::fast(),
    );
    z.get_mut().extend_from_slice(&GZIP_HEADER);
    z.write_all(own)?;
    // A sync flush: what was written so far ends on a byte boundary, in a
    // block that is not the last.
    z.flush()?;
    let mut out = std::mem::take(z.get_mut());
    drop(z);
    out.extend_from_slice(&part.bytes);
    let mut crc = flate2::Crc::new();
    crc.update(own);
    crc.combine(&part.crc);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::{
        export::{
            exposition::{Format, encode_with},
            snapshot::Row,
        },
        model::{
            container::Sample,
            stats::{CgroupStats, PidsStats},
        },
    };

    fn snapshot(n: usize) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            rows: (0..n)
                .map(|i| Row {
                    id: format!("{i}-1").into(),
                    sample: Some(Arc::new(Sample {
                        cgroup: CgroupStats {
                            pids: Some(PidsStats {
                                current: i as u64,
                                limit: None,
                            }),
                            ..CgroupStats::default()
                        },
                        ..Sample::default()
                    })),
                    ..Row::default()
                })
                .collect(),
            programs: Vec::new(),
        })
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Every encoding gives what encoding it whole gives; gzip answers are
    /// one valid gzip member (CRC and length checked by the decoder).
    #[test]
    fn every_encoding_is_the_whole_exposition() {
        let own = prometheus::Registry::new();
        let g = prometheus::IntGauge::new("apptheus_x", "x").unwrap();
        g.set(7);
        own.register(Box::new(g)).unwrap();
        let own = own.gather();
        for n in [0, 3, 2000] {
            let p = Prepared::new(snapshot(n));
            for e in (0..4).map(Encoding::from_index) {
                let whole = encode_with(&own, &p.snapshot, e.format).unwrap();
                let own_part = crate::export::exposition::encode_own(&own, e.format).unwrap();
                // Twice: encoded, then from what was kept.
                for _ in 0..2 {
                    let body = p.body(own_part.clone(), e).unwrap();
                    let text = if e.gzip { gunzip(&body) } else { body };
                    assert_eq!(
                        String::from_utf8(text).unwrap(),
                        String::from_utf8(whole.clone()).unwrap(),
                        "{n} containers, {e:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn big_plain_parts_are_not_kept_compressed_ones_are() {
        let n = MAX_PLAIN / BYTES_PER_ROW + 1;
        let p = Prepared::new(snapshot(n));
        let plain = Encoding {
            format: Format::Text,
            gzip: false,
        };
        let gzip = Encoding {
            format: Format::OpenMetrics,
            gzip: true,
        };
        p.prepare((1 << plain.index()) | (1 << gzip.index()));
        assert!(p.part(plain).is_none());
        let z = p.part(gzip).unwrap();
        assert!(z.deflated && z.bytes.len() < 200_000, "{}", z.bytes.len());
        assert!(
            p.part(Encoding {
                format: Format::Text,
                gzip: false
            })
            .is_none()
        );
        let small = Prepared::new(snapshot(3));
        assert!(small.part(plain).is_some());
    }
}
