//! Mesh framing, sans-IO: a frame is a 4-byte big-endian length followed by
//! that many bytes of protobuf. The decoder takes bytes as they come and
//! tells "need more" (`Ok(None)`) apart from "invalid" (`Err`).

use prost::Message;
use thiserror::Error;

/// Default largest frame body accepted (bytes): a 25 MB message plus envelope.
pub const DEFAULT_MAX_FRAME: usize = 32 * 1024 * 1024;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not the expected protobuf message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Bytes after the single frame a stream may carry.
    #[error("{0} bytes after the frame")]
    Trailing(usize),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes announced (header included).
        want: usize,
    },
}

/// Encodes one message as a frame.
pub fn encode_frame<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    // Encoding into a Vec cannot run out of space.
    let _ = msg.encode(&mut out);
    out
}

/// Incremental frame decoder.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing bodies over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Feeds received bytes. Fails early when the length prefix announces
    /// an oversize frame, before its body is buffered.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 4 {
            let len = self.announced();
            if len > self.max {
                return Err(FrameError::TooLarge { len, max: self.max });
            }
        }
        Ok(())
    }

    fn announced(&self) -> usize {
        u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
    }

    /// The next complete frame body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = self.announced();
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Decodes the one frame a finished stream must carry: exactly one frame,
    /// nothing after it.
    pub fn finish<M: Message + Default>(mut self) -> Result<M, FrameError> {
        let want = if self.buf.len() >= 4 {
            4 + self.announced()
        } else {
            4
        };
        let body = self.next_frame()?.ok_or(FrameError::Truncated {
            have: self.buf.len(),
            want,
        })?;
        if !self.buf.is_empty() {
            return Err(FrameError::Trailing(self.buf.len()));
        }
        M::decode(body.as_slice()).map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

/// Decodes a whole stream's bytes as exactly one frame.
pub fn decode_single<M: Message + Default>(data: &[u8], max: usize) -> Result<M, FrameError> {
    let mut d = FrameDecoder::new(max);
    d.push(data)?;
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use caliopen_proto::pb::mesh::{request, Deliver, Hello, Request};

    fn sample() -> Request {
        Request {
            body: Some(request::Body::Deliver(Deliver {
                txn_id: vec![7; 32],
                mail_from: "alice@alpha.test".into(),
                rcpt_to: vec!["bob@beta.test".into()],
                message: b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
                accepted_at: 1_700_000_000,
            })),
        }
    }

    #[test]
    fn split_at_every_byte_decodes_the_same() {
        let a = encode_frame(&sample());
        let b = encode_frame(&Request {
            body: Some(request::Body::Hello(Hello {
                protocol_version: 1,
                software_version: "0.1.0".into(),
                ..Default::default()
            })),
        });
        let stream: Vec<u8> = [a.clone(), b.clone()].concat();
        for cut in 0..=stream.len() {
            let mut d = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.push(part).unwrap();
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, vec![a[4..].to_vec(), b[4..].to_vec()], "cut {cut}");
            assert_eq!(d.buffered(), 0);
        }
        // Byte by byte.
        let mut d = FrameDecoder::new(1024);
        let mut n = 0;
        for byte in &stream {
            d.push(std::slice::from_ref(byte)).unwrap();
            while d.next_frame().unwrap().is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn incomplete_is_not_invalid() {
        let a = encode_frame(&sample());
        for cut in 0..a.len() {
            let mut d = FrameDecoder::new(1024);
            d.push(&a[..cut]).unwrap();
            assert_eq!(d.next_frame().unwrap(), None, "cut {cut}");
            assert!(matches!(
                d.finish::<Request>(),
                Err(FrameError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut d = FrameDecoder::new(100);
        assert_eq!(
            d.push(&[0, 0, 0, 101]),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        );
        let mut d = FrameDecoder::new(100);
        assert!(d.push(&[0xff, 0xff]).is_ok());
        assert!(d.push(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        assert!(matches!(
            decode_single::<Request>(&[0, 0, 0, 3, 0xff, 0xff, 0xff], 100),
            Err(FrameError::Malformed(_))
        ));
        let mut two = encode_frame(&sample());
        two.push(0);
        assert_eq!(
            decode_single::<Request>(&two, 1024),
            Err(FrameError::Trailing(1))
        );
        assert_eq!(
            decode_single::<Request>(&encode_frame(&sample()), 1024).unwrap(),
            sample()
        );
    }
}
