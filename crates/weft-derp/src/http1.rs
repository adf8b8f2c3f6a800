//! Just enough HTTP/1.1 head parsing for the DERP upgrade (both directions).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request/response head we read before giving up.
pub(crate) const MAX_HEAD: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before the HTTP head ended")]
    Eof,
    #[error("HTTP head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("timed out reading the HTTP head")]
    Timeout,
    #[error("malformed HTTP head")]
    Malformed,
}

/// A parsed head: first line split on spaces, headers, and any bytes after it.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) first: Vec<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) rest: Bytes,
    pub(crate) raw: Bytes,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads until `\r\n\r\n`; `rest` holds whatever followed in the same reads.
pub(crate) async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Result<Head, HeadError> {
    tokio::time::timeout(timeout, read_head_inner(r))
        .await
        .map_err(|_| HeadError::Timeout)?
}

async fn read_head_inner<R: AsyncRead + Unpin>(r: &mut R) -> Result<Head, HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(end) = find_end(&buf) {
            let mut all = buf.freeze();
            let raw = all.clone();
            let head = all.split_to(end);
            let mut h = parse(&head)?;
            h.rest = all;
            h.raw = raw;
            return Ok(h);
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        if r.read_buf(&mut buf).await? == 0 {
            return Err(HeadError::Eof);
        }
    }
}

fn find_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse(head: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.split("\r\n");
    let first: Vec<String> = lines
        .next()
        .ok_or(HeadError::Malformed)?
        .splitn(3, ' ')
        .map(str::to_owned)
        .collect();
    if first.len() < 2 {
        return Err(HeadError::Malformed);
    }
    let mut headers = Vec::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (k, v) = l.split_once(':').ok_or(HeadError::Malformed)?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Head {
        first,
        headers,
        rest: Bytes::new(),
        raw: Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn head_and_pipelined_bytes_are_split() {
        let data: &[u8] =
            b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nDerp-Fast-Start: 1\r\n\r\n\x02abc";
        let mut r = data;
        let h = read_head(&mut r, Duration::from_secs(1)).await.unwrap();
        assert_eq!(h.first, vec!["GET", "/derp", "HTTP/1.1"]);
        assert_eq!(h.header("upgrade"), Some("DERP"));
        assert_eq!(h.header("derp-fast-start"), Some("1"));
        assert_eq!(&h.rest[..], b"\x02abc");
        assert_eq!(h.raw.len(), data.len());
    }

    #[tokio::test]
    async fn eof_before_head_end_is_an_error() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            read_head(&mut r, Duration::from_secs(1)).await,
            Err(HeadError::Eof)
        ));
    }
}
