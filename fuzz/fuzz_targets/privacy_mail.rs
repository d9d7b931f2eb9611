//! The privacy index on arbitrary mail bytes: `facts_of` (MIME structure,
//! Autocrypt, Received hops, DKIM header) then `score_message`, for every
//! delivery path. Never a panic; scores within 0–100; an explanation for
//! every score; deterministic; and for the same bytes, mesh > SMTP with
//! TLS > plain SMTP.
#![no_main]
use caliopen_instance::privacy::{facts_of, score_message};
use caliopen_instance::mail::{MessageMeta, Transport, Via};
use libfuzzer_sys::fuzz_target;

fn meta(via: Via, tls: Option<&str>) -> MessageMeta {
    MessageMeta {
        id: 1,
        owner: "alice".into(),
        from: "x@ext.test".into(),
        to: vec!["alice@alpha.test".into()],
        subject: String::new(),
        received_at: 0,
        via,
        transport: Transport {
            tls_version: tls.map(str::to_owned),
            ..Default::default()
        },
        size: 0,
        ..Default::default()
    }
}

fuzz_target!(
    init: {
        // mail-parser 0.11.9 panics on some malformed multiparts; the instance
        // catches those (privacy::parse_guarded reads such a message as
        // unstructured), so the fuzzer lets them unwind to that guard. Any
        // other panic still aborts (a panic that escaped the guard would
        // abort at libfuzzer-sys's own boundary too).
        let fuzz_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let guarded = info.location().is_some_and(|l| {
                l.file().contains("/mail-parser-") || l.file().contains("/mail-auth-")
            });
            if !guarded {
                fuzz_hook(info);
            }
        }));
    },
    |raw: &[u8]| {
    let mut totals = Vec::new();
    for (via, tls) in [
        (Via::Mesh, None),
        (Via::Smtp, Some("TLSv1_3")),
        (Via::Smtp, Some("TLSv1_2")),
        (Via::Smtp, None),
        (Via::Local, None),
    ] {
        let m = meta(via, tls);
        let f = facts_of(&m, raw);
        assert_eq!(f, facts_of(&m, raw), "facts are deterministic");
        let s = score_message(&f);
        for v in [s.total, s.technic, s.context, s.comportment] {
            assert!(v <= 100, "{s:?}");
        }
        assert!(!s.explanation.is_empty());
        assert_eq!(s, score_message(&f), "scores are deterministic");
        totals.push(s.total);
    }
    assert!(
        totals[0] > totals[1] && totals[1] > totals[3] && totals[2] > totals[3],
        "mesh > SMTP with TLS > plain SMTP: {totals:?}"
    );
});
