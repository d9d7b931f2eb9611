//! The trust store takes only newer, validly signed CRLs and directories.

use caliopen_ca::{Authority, Settings};
use caliopen_federation::{TrustError, TrustStore};
use caliopen_proto::pb::directory::SignedDirectory;
use prost::Message;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn only_newer_and_signed_material_is_taken() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Authority::init(
        &tmp.path().join("a"),
        "Trust Test",
        3650,
        Settings::default(),
    )
    .expect("init");
    let trust = TrustStore::new(ca.root_pem(), vec!["1.0".into()]).expect("trust");
    let mut rx = trust.subscribe();

    let (_, crl1) = ca.issue_crl().expect("crl");
    let (_, crl2) = ca.issue_crl().expect("crl");
    assert!(trust.offer_crl(&crl2, None).expect("newer"));
    assert!(rx.has_changed().expect("open"));
    rx.mark_unchanged();
    assert!(
        !trust.offer_crl(&crl2, None).expect("same"),
        "same number is not a change"
    );
    assert!(matches!(
        trust.offer_crl(&crl1, None),
        Err(TrustError::NotNewer { .. })
    ));
    assert!(!rx.has_changed().expect("open"));

    // Forged: one flipped bit in the signed part.
    let (_, crl3) = ca.issue_crl().expect("crl");
    let mut forged = crl3.clone();
    let i = forged.len() / 3;
    forged[i] ^= 0x01;
    assert!(trust.offer_crl(&forged, None).is_err());
    assert!(trust.offer_crl(&[0x30, 0x03, 1, 2, 3], None).is_err());
    // Another association's CRL.
    let other =
        Authority::init(&tmp.path().join("o"), "Other", 3650, Settings::default()).expect("init");
    let (_, foreign) = other.issue_crl().expect("crl");
    assert!(matches!(
        trust.offer_crl(&foreign, None),
        Err(TrustError::BadSignature(_))
    ));

    let (_, d1) = ca.issue_directory().expect("dir");
    let (_, d2) = ca.issue_directory().expect("dir");
    let d1 = SignedDirectory::decode(d1.as_slice()).expect("decode");
    let d2 = SignedDirectory::decode(d2.as_slice()).expect("decode");
    assert!(trust
        .offer_directory(&d2, Some("peer"), now())
        .expect("newer"));
    assert!(matches!(
        trust.offer_directory(&d1, None, now()),
        Err(TrustError::NotNewer { .. })
    ));
    let mut forged = d2.clone();
    forged.directory[3] ^= 0x40;
    assert!(matches!(
        trust.offer_directory(&forged, None, now()),
        Err(TrustError::BadSignature(_))
    ));
    // Past valid_until: stale, refused.
    let (_, d3) = ca.issue_directory().expect("dir");
    let d3 = SignedDirectory::decode(d3.as_slice()).expect("decode");
    assert!(matches!(
        trust.offer_directory(&d3, None, now() + 30 * 86_400),
        Err(TrustError::Expired(_))
    ));
    assert!(!trust.directory_stale(now()));
    assert!(trust.directory_stale(now() + 30 * 86_400));
    assert_eq!(trust.current().directory_serial(), d2_serial(&d2));

    // Saved and loaded by a restarted member.
    let saved = tmp.path().join("trust");
    trust.save(&saved).expect("save");
    let again = TrustStore::new(ca.root_pem(), vec!["1.0".into()]).expect("trust");
    again.load(&saved, now()).expect("load");
    assert_eq!(again.current().crl_number(), trust.current().crl_number());
    assert_eq!(
        again.current().directory_serial(),
        trust.current().directory_serial()
    );

    assert!(TrustStore::new("not pem", vec![]).is_err());
}

fn d2_serial(d: &SignedDirectory) -> u64 {
    caliopen_proto::pb::directory::Directory::decode(d.directory.as_slice())
        .expect("dir")
        .serial
}
