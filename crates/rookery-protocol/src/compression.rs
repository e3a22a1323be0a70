//! Compressed payloads (message flag 0x10): zlib, as pitaya writes them (gzip is read too).
//! Inflating is bounded: a payload that inflates beyond the limit is refused before more than
//! the limit is held in memory (a zip bomb costs the limit, not its inflated size).

use std::io::Read;

use bytes::Bytes;

use crate::ProtocolError;

/// Compresses a payload (zlib, default level).
pub fn deflate(data: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 16),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// Inflates a zlib (or gzip) payload of at most `limit` bytes once inflated.
pub fn inflate(data: &[u8], limit: usize) -> Result<Bytes, ProtocolError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let cap = limit as u64 + 1;
    let read = if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(data)
            .take(cap)
            .read_to_end(&mut out)
    } else {
        flate2::read::ZlibDecoder::new(data)
            .take(cap)
            .read_to_end(&mut out)
    };
    read.map_err(|e| ProtocolError::BadCompression(e.to_string()))?;
    if out.len() > limit {
        return Err(ProtocolError::BodyTooLarge {
            len: out.len(),
            max: limit,
        });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn inflate_undoes_deflate(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            prop_assert_eq!(&inflate(&deflate(&data), data.len()).unwrap()[..], &data[..]);
        }
    }

    #[test]
    fn a_zip_bomb_is_refused_within_the_limit() {
        // 64 MiB of zeros compress to about 64 KiB.
        let bomb = deflate(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10);
        let e = inflate(&bomb, 1 << 16).unwrap_err();
        assert!(
            matches!(e, ProtocolError::BodyTooLarge { max: 65536, .. }),
            "{e}"
        );
        let e = inflate(b"not compressed at all", 1024).unwrap_err();
        assert!(matches!(e, ProtocolError::BadCompression(_)), "{e}");
    }

    #[test]
    fn gzip_is_read_too() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"a\":1}").unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(&inflate(&gz, 100).unwrap()[..], b"{\"a\":1}");
    }
}
