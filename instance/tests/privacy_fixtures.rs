//! Table-driven checks of the privacy index over committed fixtures
//! (`tests/privacy/*.eml`): encrypted, signed, Autocrypt, DKIM-signed (23, 24:
//! signed with the committed Ed25519 test key and verified against its
//! pinned record; 25: the same, altered; 26: a key no longer published;
//! 15, 16, 18: hand-written signatures that do not match their bodies),
//! plain, many hops. Each row names the delivery path and the expected
//! scores; the expectations were written from the rules of engine v1
//! (DESIGN.md §6) and are locked here so that a rule change shows up as a
//! reviewed diff of this table.

use caliopen_instance::mail::{MessageMeta, Transport, Via};
use caliopen_instance::privacy::{facts_of, score_message, PrivacyIndex, ENGINE_VERSION};
use caliopen_instance::sender_auth::SenderAuth;

struct Row {
    file: &'static str,
    via: Via,
    tls: Option<&'static str>,
    /// total, technic, context, comportment
    expect: (u8, u8, u8, u8),
    /// Features that must explain the score.
    features: &'static [&'static str],
}

const ROWS: &[Row] = &[
    Row {
        file: "01-plain.eml",
        via: Via::Smtp,
        tls: None,
        expect: (6, 0, 25, 0),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "01-plain.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (21, 30, 25, 0),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "01-plain.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (43, 50, 65, 10),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "02-direct.eml",
        via: Via::Smtp,
        tls: None,
        expect: (7, 0, 30, 0),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.direct",
            "contact.unknown",
        ],
    },
    Row {
        file: "02-direct.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (22, 30, 30, 0),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.direct",
            "contact.unknown",
        ],
    },
    Row {
        file: "02-direct.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (45, 50, 70, 10),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.direct",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "03-three-hops.eml",
        via: Via::Smtp,
        tls: None,
        expect: (3, 0, 15, 0),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "03-three-hops.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (18, 30, 15, 0),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "03-three-hops.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (41, 50, 55, 10),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "04-many-hops.eml",
        via: Via::Smtp,
        tls: None,
        expect: (0, 0, 0, 0),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "04-many-hops.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (15, 30, 0, 0),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "04-many-hops.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (37, 50, 40, 10),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "05-pgp-encrypted.eml",
        via: Via::Smtp,
        tls: None,
        expect: (23, 35, 25, 0),
        features: &[
            "path.smtp_plain",
            "crypto.encrypted_pgp",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "05-pgp-encrypted.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (38, 65, 25, 0),
        features: &[
            "path.smtp_tls13",
            "crypto.encrypted_pgp",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "05-pgp-encrypted.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (61, 85, 65, 10),
        features: &[
            "path.mesh",
            "crypto.encrypted_pgp",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "06-pgp-signed.eml",
        via: Via::Smtp,
        tls: None,
        expect: (11, 10, 25, 0),
        features: &[
            "path.smtp_plain",
            "crypto.signed",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "06-pgp-signed.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (26, 40, 25, 0),
        features: &[
            "path.smtp_tls13",
            "crypto.signed",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "06-pgp-signed.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (48, 60, 65, 10),
        features: &[
            "path.mesh",
            "crypto.signed",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "07-smime-encrypted.eml",
        via: Via::Smtp,
        tls: None,
        expect: (23, 35, 25, 0),
        features: &[
            "path.smtp_plain",
            "crypto.encrypted_smime",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "07-smime-encrypted.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (38, 65, 25, 0),
        features: &[
            "path.smtp_tls13",
            "crypto.encrypted_smime",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "07-smime-encrypted.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (61, 85, 65, 10),
        features: &[
            "path.mesh",
            "crypto.encrypted_smime",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "08-smime-signed-opaque.eml",
        via: Via::Smtp,
        tls: None,
        expect: (11, 10, 25, 0),
        features: &[
            "path.smtp_plain",
            "crypto.signed",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "08-smime-signed-opaque.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (26, 40, 25, 0),
        features: &[
            "path.smtp_tls13",
            "crypto.signed",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "08-smime-signed-opaque.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (48, 60, 65, 10),
        features: &[
            "path.mesh",
            "crypto.signed",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "09-smime-signed-detached.eml",
        via: Via::Smtp,
        tls: None,
        expect: (11, 10, 25, 0),
        features: &[
            "path.smtp_plain",
            "crypto.signed",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "09-smime-signed-detached.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (26, 40, 25, 0),
        features: &[
            "path.smtp_tls13",
            "crypto.signed",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "09-smime-signed-detached.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (48, 60, 65, 10),
        features: &[
            "path.mesh",
            "crypto.signed",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "10-autocrypt.eml",
        via: Via::Smtp,
        tls: None,
        expect: (10, 0, 25, 15),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
            "contact.autocrypt",
        ],
    },
    Row {
        file: "10-autocrypt.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (25, 30, 25, 15),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
            "contact.autocrypt",
        ],
    },
    Row {
        file: "10-autocrypt.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (47, 50, 65, 25),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.autocrypt",
            "contact.labelled",
        ],
    },
    Row {
        file: "11-autocrypt-mutual.eml",
        via: Via::Smtp,
        tls: None,
        expect: (11, 0, 25, 20),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
            "contact.autocrypt",
            "contact.autocrypt_mutual",
        ],
    },
    Row {
        file: "11-autocrypt-mutual.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (26, 30, 25, 20),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
            "contact.autocrypt",
            "contact.autocrypt_mutual",
        ],
    },
    Row {
        file: "11-autocrypt-mutual.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (48, 50, 65, 30),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.autocrypt",
            "contact.autocrypt_mutual",
            "contact.labelled",
        ],
    },
    Row {
        file: "12-autocrypt-mutual-encrypted.eml",
        via: Via::Smtp,
        tls: None,
        expect: (28, 35, 25, 20),
        features: &[
            "path.smtp_plain",
            "crypto.encrypted_pgp",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
            "contact.autocrypt",
            "contact.autocrypt_mutual",
        ],
    },
    Row {
        file: "12-autocrypt-mutual-encrypted.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (43, 65, 25, 20),
        features: &[
            "path.smtp_tls13",
            "crypto.encrypted_pgp",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
            "contact.autocrypt",
            "contact.autocrypt_mutual",
        ],
    },
    Row {
        file: "12-autocrypt-mutual-encrypted.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (66, 85, 65, 30),
        features: &[
            "path.mesh",
            "crypto.encrypted_pgp",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.autocrypt",
            "contact.autocrypt_mutual",
            "contact.labelled",
        ],
    },
    Row {
        file: "13-autocrypt-other-address.eml",
        via: Via::Smtp,
        tls: None,
        expect: (6, 0, 25, 0),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "13-autocrypt-other-address.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (21, 30, 25, 0),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "13-autocrypt-other-address.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (43, 50, 65, 10),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "14-autocrypt-unknown-critical.eml",
        via: Via::Smtp,
        tls: None,
        expect: (6, 0, 25, 0),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "14-autocrypt-unknown-critical.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (21, 30, 25, 0),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "14-autocrypt-unknown-critical.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (43, 50, 65, 10),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "15-dkim-signed.eml",
        via: Via::Smtp,
        tls: None,
        expect: (6, 0, 25, 0),
        features: &[
            "path.smtp_plain",
            "auth.dkim_fail",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "15-dkim-signed.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (16, 20, 25, 0),
        features: &[
            "path.smtp_tls13",
            "auth.dkim_fail",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "15-dkim-signed.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (38, 40, 65, 10),
        features: &[
            "path.mesh",
            "auth.dkim_fail",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "16-dkim-and-pgp-signed.eml",
        via: Via::Smtp,
        tls: None,
        expect: (6, 0, 25, 0),
        features: &[
            "path.smtp_plain",
            "crypto.signed",
            "auth.dkim_fail",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "16-dkim-and-pgp-signed.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (21, 30, 25, 0),
        features: &[
            "path.smtp_tls13",
            "crypto.signed",
            "auth.dkim_fail",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "16-dkim-and-pgp-signed.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (43, 50, 65, 10),
        features: &[
            "path.mesh",
            "crypto.signed",
            "auth.dkim_fail",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "17-mailing-list.eml",
        via: Via::Smtp,
        tls: None,
        expect: (1, 0, 5, 0),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "17-mailing-list.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (16, 30, 5, 0),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "17-mailing-list.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (38, 50, 45, 10),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "18-newsletter-html.eml",
        via: Via::Smtp,
        tls: None,
        expect: (5, 0, 20, 0),
        features: &[
            "path.smtp_plain",
            "auth.dkim_fail",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "18-newsletter-html.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (15, 20, 20, 0),
        features: &[
            "path.smtp_tls13",
            "auth.dkim_fail",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "18-newsletter-html.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (37, 40, 60, 10),
        features: &[
            "path.mesh",
            "auth.dkim_fail",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "19-inline-pgp.eml",
        via: Via::Smtp,
        tls: None,
        expect: (21, 30, 25, 0),
        features: &[
            "path.smtp_plain",
            "crypto.encrypted_pgp_inline",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "19-inline-pgp.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (36, 60, 25, 0),
        features: &[
            "path.smtp_tls13",
            "crypto.encrypted_pgp_inline",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "19-inline-pgp.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (58, 80, 65, 10),
        features: &[
            "path.mesh",
            "crypto.encrypted_pgp_inline",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "20-encrypted-many-hops.eml",
        via: Via::Smtp,
        tls: None,
        expect: (17, 35, 0, 0),
        features: &[
            "path.smtp_plain",
            "crypto.encrypted_pgp",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "20-encrypted-many-hops.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (32, 65, 0, 0),
        features: &[
            "path.smtp_tls13",
            "crypto.encrypted_pgp",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "20-encrypted-many-hops.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (55, 85, 40, 10),
        features: &[
            "path.mesh",
            "crypto.encrypted_pgp",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "21-bounce.eml",
        via: Via::Smtp,
        tls: None,
        expect: (6, 0, 25, 0),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "21-bounce.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (21, 30, 25, 0),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "21-bounce.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (43, 50, 65, 10),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "22-utf8-headers.eml",
        via: Via::Smtp,
        tls: None,
        expect: (6, 0, 25, 0),
        features: &[
            "path.smtp_plain",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "22-utf8-headers.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (21, 30, 25, 0),
        features: &[
            "path.smtp_tls13",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "22-utf8-headers.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (43, 50, 65, 10),
        features: &[
            "path.mesh",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "23-everything.eml",
        via: Via::Smtp,
        tls: None,
        expect: (32, 40, 30, 20),
        features: &[
            "path.smtp_plain",
            "crypto.encrypted_pgp",
            "auth.dkim_pass",
            "origin.internet",
            "origin.direct",
            "contact.unknown",
            "contact.autocrypt",
            "contact.autocrypt_mutual",
        ],
    },
    Row {
        file: "23-everything.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (47, 70, 30, 20),
        features: &[
            "path.smtp_tls13",
            "crypto.encrypted_pgp",
            "auth.dkim_pass",
            "origin.internet",
            "origin.direct",
            "contact.unknown",
            "contact.autocrypt",
            "contact.autocrypt_mutual",
        ],
    },
    Row {
        file: "23-everything.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (70, 90, 70, 30),
        features: &[
            "path.mesh",
            "crypto.encrypted_pgp",
            "auth.dkim_pass",
            "origin.labelled",
            "origin.direct",
            "contact.unknown",
            "contact.autocrypt",
            "contact.autocrypt_mutual",
            "contact.labelled",
        ],
    },
    Row {
        file: "24-dkim-valid.eml",
        via: Via::Smtp,
        tls: None,
        expect: (8, 5, 25, 0),
        features: &[
            "path.smtp_plain",
            "auth.dkim_pass",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "24-dkim-valid.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (23, 35, 25, 0),
        features: &[
            "path.smtp_tls13",
            "auth.dkim_pass",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "24-dkim-valid.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (46, 55, 65, 10),
        features: &[
            "path.mesh",
            "auth.dkim_pass",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "25-dkim-tampered.eml",
        via: Via::Smtp,
        tls: None,
        expect: (6, 0, 25, 0),
        features: &[
            "path.smtp_plain",
            "auth.dkim_fail",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "25-dkim-tampered.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (16, 20, 25, 0),
        features: &[
            "path.smtp_tls13",
            "auth.dkim_fail",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "25-dkim-tampered.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (38, 40, 65, 10),
        features: &[
            "path.mesh",
            "auth.dkim_fail",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
    Row {
        file: "26-dkim-unknown-key.eml",
        via: Via::Smtp,
        tls: None,
        expect: (6, 0, 25, 0),
        features: &[
            "path.smtp_plain",
            "auth.dkim_unchecked",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "26-dkim-unknown-key.eml",
        via: Via::Smtp,
        tls: Some("TLSv1_3"),
        expect: (21, 30, 25, 0),
        features: &[
            "path.smtp_tls13",
            "auth.dkim_unchecked",
            "origin.internet",
            "origin.hops",
            "contact.unknown",
        ],
    },
    Row {
        file: "26-dkim-unknown-key.eml",
        via: Via::Mesh,
        tls: Some("TLSv1_3"),
        expect: (43, 50, 65, 10),
        features: &[
            "path.mesh",
            "auth.dkim_unchecked",
            "origin.labelled",
            "origin.hops",
            "contact.unknown",
            "contact.labelled",
        ],
    },
];

/// The DKIM test key of `24-dkim-valid.eml` (see `examples/dkim_sign_fixture.rs`),
/// as its DNS record would publish it. No DNS query is made: the record is pinned.
const TEST_KEY: (&str, &str) = (
    "caliopen-test._domainkey.example.test",
    "v=DKIM1; k=ed25519; p=KljoPXc81OxIhm7hSM7y/UtEmzOssBhnsmKoeA8Kptc=",
);

async fn score(file: &str, via: Via, tls: Option<&str>) -> PrivacyIndex {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/privacy")
        .join(file);
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let auth = SenderAuth::offline().expect("resolver");
    auth.txt_cache()
        .add_dkim_key(TEST_KEY.0, TEST_KEY.1)
        .expect("key record");
    let verdicts = auth
        .check(
            &raw,
            std::net::IpAddr::from([192, 0, 2, 1]),
            "relay0.example.test",
            "bob@example.test",
            "alpha.test",
        )
        .await;
    let meta = MessageMeta {
        id: 1,
        owner: "alice".into(),
        from: "bob@example.test".into(),
        to: vec!["alice@alpha.test".into()],
        subject: String::new(),
        received_at: 0,
        via,
        transport: Transport {
            tls_version: tls.map(str::to_owned),
            dkim: verdicts.dkim,
            spf: verdicts.spf,
            dmarc: verdicts.dmarc,
            ..Default::default()
        },
        size: raw.len(),
        ..Default::default()
    };
    score_message(&facts_of(&meta, &raw))
}

#[tokio::test]
async fn every_fixture_scores_as_written() {
    let mut files = std::collections::BTreeSet::new();
    for r in ROWS {
        let i = score(r.file, r.via, r.tls).await;
        assert_eq!(i.version, ENGINE_VERSION);
        assert_eq!(
            (i.total, i.technic, i.context, i.comportment),
            r.expect,
            "{} via {:?} tls {:?}: {:#?}",
            r.file,
            r.via,
            r.tls,
            i.explanation
        );
        let got: Vec<&str> = i.explanation.iter().map(|e| e.feature).collect();
        assert_eq!(got, r.features, "{} via {:?}", r.file, r.via);
        assert!(i.explanation.iter().all(|e| e.text.len() > 10));
        files.insert(r.file);
    }
    assert!(files.len() >= 20, "{} fixtures", files.len());
    // Every committed fixture has rows.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/privacy");
    for e in std::fs::read_dir(dir).expect("dir") {
        let name = e.expect("entry").file_name().into_string().expect("utf-8");
        if !name.ends_with(".eml") {
            continue;
        }
        assert!(
            files.contains(name.as_str()),
            "{name} has no expected scores"
        );
    }
}

#[tokio::test]
async fn mesh_beats_starttls_beats_plain_on_every_fixture() {
    for r in ROWS
        .iter()
        .filter(|r| r.via == Via::Smtp && r.tls.is_none())
    {
        let plain = score(r.file, Via::Smtp, None).await;
        let tls = score(r.file, Via::Smtp, Some("TLSv1_3")).await;
        let mesh = score(r.file, Via::Mesh, Some("TLSv1_3")).await;
        assert!(
            mesh.technic > tls.technic && tls.technic > plain.technic,
            "{}: technic {} {} {}",
            r.file,
            mesh.technic,
            tls.technic,
            plain.technic
        );
        assert!(
            mesh.total > tls.total && tls.total > plain.total,
            "{}: total {} {} {}",
            r.file,
            mesh.total,
            tls.total,
            plain.total
        );
    }
}

#[tokio::test]
async fn protection_ranks_above_its_absence() {
    let mut totals = std::collections::HashMap::new();
    for r in ROWS {
        totals.insert(
            r.file,
            score(r.file, Via::Smtp, Some("TLSv1_3")).await.total,
        );
    }
    let t = |f: &str| totals[f];
    assert!(t("05-pgp-encrypted.eml") > t("06-pgp-signed.eml"));
    assert!(t("06-pgp-signed.eml") > t("01-plain.eml"));
    assert!(t("07-smime-encrypted.eml") > t("08-smime-signed-opaque.eml"));
    assert!(t("11-autocrypt-mutual.eml") > t("10-autocrypt.eml"));
    assert!(t("10-autocrypt.eml") > t("01-plain.eml"));
    // A key for somebody else, or an Autocrypt header with an unknown
    // critical attribute, counts for nothing.
    assert_eq!(t("13-autocrypt-other-address.eml"), t("01-plain.eml"));
    assert_eq!(t("14-autocrypt-unknown-critical.eml"), t("01-plain.eml"));
    assert!(t("02-direct.eml") > t("03-three-hops.eml"));
    assert!(t("03-three-hops.eml") > t("04-many-hops.eml"));
    assert!(t("23-everything.eml") > t("12-autocrypt-mutual-encrypted.eml"));
    // A verified DKIM signature raises the index; an altered message lowers
    // it; a signature whose key cannot be fetched changes nothing.
    assert!(t("24-dkim-valid.eml") > t("01-plain.eml"));
    assert!(t("01-plain.eml") > t("25-dkim-tampered.eml"));
    assert_eq!(t("26-dkim-unknown-key.eml"), t("01-plain.eml"));
    // The hand-written signatures of these fixtures do not match their bodies.
    assert_eq!(t("15-dkim-signed.eml"), t("25-dkim-tampered.eml"));
}

#[tokio::test]
async fn dkim_is_verified_with_the_test_key() {
    let auth = SenderAuth::offline().expect("resolver");
    auth.txt_cache()
        .add_dkim_key(TEST_KEY.0, TEST_KEY.1)
        .expect("key record");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/privacy");
    let read = |f: &str| std::fs::read(dir.join(f)).expect("fixture");
    assert_eq!(
        auth.dkim(&read("24-dkim-valid.eml"))
            .await
            .map(|v| v.as_str()),
        Some("pass")
    );
    assert_eq!(
        auth.dkim(&read("25-dkim-tampered.eml"))
            .await
            .map(|v| v.as_str()),
        Some("fail")
    );
    assert_eq!(
        auth.dkim(&read("01-plain.eml")).await.map(|v| v.as_str()),
        Some("none")
    );
    // No key for this selector, and no DNS: not an error, just not checked.
    assert_eq!(
        auth.dkim(&read("26-dkim-unknown-key.eml"))
            .await
            .map(|v| v.as_str()),
        Some("temperror")
    );
    assert_eq!(
        auth.dkim(&read("15-dkim-signed.eml"))
            .await
            .map(|v| v.as_str()),
        Some("fail")
    );
}
