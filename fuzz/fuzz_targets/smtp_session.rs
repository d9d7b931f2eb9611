//! The SMTP session state machine on arbitrary client bytes, split at an
//! arbitrary point: never a panic, never unbounded buffering, and the same
//! replies whether the input came in one piece or two.
#![no_main]
use caliopen_instance::smtp::session::{drive_for_fuzzing, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [Kind::Mx, Kind::Submission] {
        let whole = drive_for_fuzzing(kind, &[data]);
        if data.len() > 1 {
            let cut = data[0] as usize % data.len();
            let split = drive_for_fuzzing(kind, &[&data[..cut], &data[cut..]]);
            assert_eq!(whole, split);
        }
    }
});
