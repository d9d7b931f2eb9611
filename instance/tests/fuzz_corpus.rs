//! Replays the committed SMTP fuzz corpus (`fuzz/corpus/smtp_session`) on
//! stable: every input split at every point gives the same replies.

use caliopen_instance::smtp::session::{drive_for_fuzzing, Kind};

#[test]
fn smtp_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/smtp_session");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("corpus") {
        let data = std::fs::read(e.expect("entry").path()).expect("read");
        for kind in [Kind::Mx, Kind::Submission] {
            let whole = drive_for_fuzzing(kind, &[&data]);
            assert!(whole.starts_with(b"220 "));
            for cut in 0..=data.len() {
                assert_eq!(
                    drive_for_fuzzing(kind, &[&data[..cut], &data[cut..]]),
                    whole,
                    "cut {cut}"
                );
            }
        }
        n += 1;
    }
    assert!(n >= 3, "corpus too small");
}
