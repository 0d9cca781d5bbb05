//! Reading the length-prefixed frames of the direct wake link ([`dp_proto::wake_link`]), the
//! one reader both ends share.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one frame's body, of at most `max` bytes (a bound below
/// [`dp_proto::wake_link::MAX_FRAME`] where less is expected, such as before a peer is known).
pub async fn read_frame<R: AsyncRead + Unpin>(
    read: &mut R,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    read.read_exact(&mut header).await?;
    let invalid = |reason: String| std::io::Error::new(std::io::ErrorKind::InvalidData, reason);
    let len = dp_proto::wake_link::frame_len(header).map_err(|err| invalid(err.to_string()))?;
    if len > max {
        return Err(invalid(format!(
            "a frame of {len} bytes where {max} at most fit"
        )));
    }
    let mut body = vec![0u8; len];
    read.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_read_whole_and_oversized_ones_refused() {
        let mut bytes = Vec::new();
        dp_proto::wake_link::put_frame(&mut bytes, b"one").expect("as expected");
        dp_proto::wake_link::put_frame(&mut bytes, b"").expect("as expected");
        dp_proto::wake_link::put_frame(&mut bytes, b"too long").expect("as expected");
        let mut read = &bytes[..];
        assert_eq!(read_frame(&mut read, 4).await.expect("as expected"), b"one");
        assert_eq!(read_frame(&mut read, 4).await.expect("as expected"), b"");
        let err = read_frame(&mut read, 4).await.expect_err("an error");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let mut cut = &bytes[..5];
        let err = read_frame(&mut cut, 4).await.expect_err("an error");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
