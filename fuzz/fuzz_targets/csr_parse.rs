//! The CSR input path of `caliopen-ca sign` (PEM or DER, signature check,
//! policy): errors only, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = caliopen_ca::parse_csr(data);
});
