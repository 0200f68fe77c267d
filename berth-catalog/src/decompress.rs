//! The three layer encodings, told apart by their first bytes rather than the media type
//! (registries and tools mislabel them; the bytes do not lie).

use std::io::{self, BufRead, BufReader, Read};

/// Largest zstd window accepted, as a power of two (64 MiB): the decoder allocates the
/// window, so a frame cannot ask for more memory than this. `zstd -19` uses 8 MiB; only
/// `--long` or `--ultra` go further.
pub const MAX_ZSTD_WINDOW_LOG: u32 = 26;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Decompressed bytes are handed out in chunks of this size: the tar reader asks for
/// 512-byte headers and skips file data in small steps, and each call into a decoder has
/// a cost of its own (libzstd copies out of its window per call).
const DECODED_CHUNK: usize = 128 << 10;

/// Wraps `r` in the decoder its first bytes call for.
pub fn open<'a, R: Read + 'a>(r: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut r = BufReader::with_capacity(64 << 10, r);
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok((
            Compression::Gzip,
            Box::new(BufReader::with_capacity(
                DECODED_CHUNK,
                flate2::bufread::MultiGzDecoder::new(r),
            )),
        ))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        // libzstd reads every frame in turn and skips skippable ones (zstd:chunked
        // layers hold several frames and skippable metadata frames).
        let mut d = zstd::stream::read::Decoder::with_buffer(r)?;
        d.window_log_max(MAX_ZSTD_WINDOW_LOG)?;
        Ok((
            Compression::Zstd,
            Box::new(BufReader::with_capacity(DECODED_CHUNK, Zstd(d))),
        ))
    } else {
        Ok((Compression::None, Box::new(r)))
    }
}

/// libzstd's errors as invalid data, named: a corrupt layer is the layer's fault.
struct Zstd<R: BufRead>(zstd::stream::read::Decoder<'static, R>);

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))
    }
}
