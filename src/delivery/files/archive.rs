//! The `zip` layout: one STORED archive of the vehicle's images, written as a stream.

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::Offset;

use super::outcome::Failure;
use super::pool::lock;

/// Output of the zip writer, taken after each step and sent on.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A STORED archive (the images are compressed already) written as a stream, entries in the
/// order given and dated with the event time. A stream cannot go back to fill in an entry's
/// CRC and size, so each entry ends with a data descriptor (APPNOTE 4.3.9), which readers
/// take from the central directory.
pub(super) struct ZipStream {
    zip: zip::ZipWriter<zip::write::StreamWriter<SharedBuf>>,
    out: SharedBuf,
    when: zip::DateTime,
    total: u64,
}

impl ZipStream {
    pub(super) fn new(time: Timestamp) -> Self {
        let t = Offset::UTC.to_datetime(time);
        let when = zip::DateTime::from_date_and_time(
            u16::try_from(t.year()).unwrap_or(1980),
            t.month().unsigned_abs(),
            t.day().unsigned_abs(),
            t.hour().unsigned_abs(),
            t.minute().unsigned_abs(),
            t.second().unsigned_abs(),
        )
        .unwrap_or_default();
        let out = SharedBuf::default();
        ZipStream {
            zip: zip::ZipWriter::new_stream(out.clone()),
            out,
            when,
            total: 0,
        }
    }

    fn take(&mut self) -> Vec<u8> {
        let out = std::mem::take(&mut *lock(&self.out.0));
        self.total += out.len() as u64;
        out
    }

    /// Starts the entry `name` of at most `limit` bytes; returns the bytes to send.
    pub(super) fn start(&mut self, name: &str, limit: u64) -> Result<Vec<u8>, Failure> {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(self.when)
            .unix_permissions(0o644)
            .large_file(limit >= u64::from(u32::MAX));
        self.zip.start_file(name, options).map_err(zip_failure)?;
        Ok(self.take())
    }

    pub(super) fn write(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Failure> {
        self.zip.write_all(chunk).map_err(zip_failure)?;
        Ok(self.take())
    }

    /// The central directory to send, and the archive's size.
    pub(super) fn finish(self) -> Result<(Vec<u8>, u64), Failure> {
        let ZipStream {
            zip, out, total, ..
        } = self;
        zip.finish().map_err(zip_failure)?;
        let tail = std::mem::take(&mut *lock(&out.0));
        let total = total + tail.len() as u64;
        Ok((tail, total))
    }
}

fn zip_failure(e: impl std::fmt::Display) -> Failure {
    Failure::permanent("ZipFailed", format!("building the archive: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_is_stored_in_order() {
        let mut z = ZipStream::new(Timestamp::UNIX_EPOCH);
        let mut data = z.start("b_01.jpg", 1000).unwrap();
        data.extend(z.write(&[1u8; 600]).unwrap());
        data.extend(z.write(&[1u8; 400]).unwrap());
        data.extend(z.start("a_02.jpg", 10).unwrap());
        data.extend(z.write(&[2u8; 10]).unwrap());
        let (tail, total) = z.finish().unwrap();
        data.extend(tail);
        assert_eq!(total, data.len() as u64);
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(data)).unwrap();
        assert_eq!(z.len(), 2);
        let first = z.by_index(0).unwrap();
        assert_eq!(first.name().unwrap(), "b_01.jpg");
        assert_eq!(first.compression(), zip::CompressionMethod::Stored);
        assert_eq!(first.size(), 1000);
    }
}
