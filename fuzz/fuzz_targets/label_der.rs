//! The label extension's DER decoder: never panics, and whatever it accepts
//! re-encodes to the very same bytes (DER is canonical).
#![no_main]
use caliopen_proto::Label;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(label) = Label::from_der(data) {
        let again = label.to_der().expect("an accepted label re-encodes");
        assert_eq!(again, data, "accepted input is not canonical DER");
    }
});
