//! The mesh frame decoder: a request frame split anywhere decodes the same
//! as in one piece; malformed, truncated or oversize input is an error,
//! never a panic.
#![no_main]
use caliopen_federation::wire::{decode_single, FrameDecoder};
use caliopen_proto::pb::mesh::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = decode_single::<Request>(data, 1 << 20);
    let _ = decode_single::<Response>(data, 1 << 20);
    if data.len() > 1 {
        let cut = data[0] as usize % data.len();
        let mut d = FrameDecoder::new(1 << 20);
        let split = d
            .push(&data[..cut])
            .and_then(|_| d.push(&data[cut..]))
            .and_then(|_| d.finish::<Request>());
        assert_eq!(whole.is_ok(), split.is_ok());
    }
});
