//! Length-prefixed frames on a byte stream: a 4-byte big-endian length, then that many bytes.
//!
//! The length is checked against the caller's limit before a single payload byte is read or
//! any buffer is allocated, so a hostile peer cannot make us allocate more than the limit.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes in the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;

/// Why a frame could not be read or written. Reading never changes any state but the stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than the limit; nothing was read past the prefix.
    /// Hostile or buggy peer.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit in force.
        limit: usize,
    },
    /// The stream ended cleanly before a frame started.
    #[error("stream closed")]
    Closed,
    /// The stream failed or ended inside a frame.
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks an announced frame length against `limit`.
pub fn check_len(len: usize, limit: usize) -> Result<(), FrameError> {
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(())
}

/// Reads one frame of at most `limit` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    let mut got = 0;
    while got < LEN_PREFIX_BYTES {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Err(FrameError::Closed);
            }
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    check_len(len, limit)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame. Fails without writing if `bytes` exceeds `limit` (our own bug, not the
/// peer's, but the pair check keeps both sides honest).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    limit: usize,
) -> Result<(), FrameError> {
    check_len(bytes.len(), limit)?;
    let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge {
        len: bytes.len(),
        limit,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(bytes).await?;
    Ok(())
}

/// Encodes one frame into a buffer (for tests and batching).
pub fn encode_frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN_PREFIX_BYTES + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = Cursor::new(Vec::new());
            block_on(write_frame(&mut buf, &payload, 4096)).unwrap();
            let mut r = Cursor::new(buf.into_inner());
            let back = block_on(read_frame(&mut r, 4096)).unwrap();
            prop_assert_eq!(back, payload);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Cursor::new(bytes);
            let _ = block_on(read_frame(&mut r, 1024));
        }

        #[test]
        fn oversize_rejected_before_reading(len in 1025u32..u32::MAX) {
            // Only the prefix is present: a reader that tried to read the payload would see
            // EOF instead of TooLarge.
            let mut r = Cursor::new(len.to_be_bytes().to_vec());
            let err = block_on(read_frame(&mut r, 1024)).unwrap_err();
            let is_too_large = matches!(err, FrameError::TooLarge { .. });
            prop_assert!(is_too_large);
        }
    }

    #[test]
    fn clean_close_is_closed() {
        let mut r = Cursor::new(Vec::new());
        assert!(matches!(
            block_on(read_frame(&mut r, 10)),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn write_rejects_oversize() {
        let mut w = Cursor::new(Vec::new());
        assert!(block_on(write_frame(&mut w, &[0u8; 11], 10)).is_err());
        assert!(w.into_inner().is_empty());
    }
}
