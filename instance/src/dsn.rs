//! Delivery status notifications (RFC 3464) for mail that cannot be delivered.
//!
//! The report is a `multipart/report` (RFC 6522) whose
//! `message/delivery-status` part carries the per-message fields
//! `Reporting-MTA` and `Arrival-Date` (RFC 3464 §2.2.2, §2.2.5) and, per
//! recipient, `Final-Recipient`, `Action`, `Status` and `Diagnostic-Code`
//! (§2.3.2–§2.3.4, §2.3.6), the status an enhanced code (RFC 3463). The
//! SMTP server does not offer the DSN extension (RFC 3461: NOTIFY, RET,
//! ENVID), so failures are always reported, with the original headers only,
//! and no `Original-Envelope-Id` or `Original-Recipient` is written.

/// Why a message bounces.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The recipient that failed.
    pub recipient: String,
    /// Enhanced status code (`5.0.0`, `4.4.7` for expiry…).
    pub status: String,
    /// Human-readable reason.
    pub diagnostic: String,
}

/// Builds a `multipart/report; report-type=delivery-status` message from
/// `MAILER-DAEMON@reporting_domain` to `sender`, quoting the original headers.
pub(crate) fn build(
    reporting_domain: &str,
    sender: &str,
    original: &[u8],
    failures: &[Failure],
    now: i64,
) -> Vec<u8> {
    let boundary = format!("caliopen-dsn-{now:x}");
    let headers_end = original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(original.len(), |p| p + 2);
    let headers = String::from_utf8_lossy(&original[..headers_end]);
    let date = time::OffsetDateTime::from_unix_timestamp(now)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_default();
    let mut text = String::new();
    text.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_domain}>\r\n"
    ));
    text.push_str(&format!("To: <{sender}>\r\n"));
    text.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    text.push_str(&format!("Date: {date}\r\n"));
    // RFC 3834 §5: an automatic response, which must not be answered automatically.
    text.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    text.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n"
    ));
    text.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    text.push_str("Your message could not be delivered to:\r\n\r\n");
    for f in failures {
        text.push_str(&format!("  <{}>: {}\r\n", f.recipient, f.diagnostic));
    }
    text.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    text.push_str(&format!(
        "Reporting-MTA: dns; {reporting_domain}\r\nArrival-Date: {date}\r\n"
    ));
    for f in failures {
        // RFC 3464 §2.3.3: "failed" for a permanent failure and for the
        // end of the queue lifetime (4.4.7), "delayed" otherwise.
        let action = if f.status.starts_with('5') || f.status == "4.4.7" {
            "failed"
        } else {
            "delayed"
        };
        text.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\n",
            f.recipient,
            f.status,
            f.diagnostic.replace(['\r', '\n'], " ")
        ));
    }
    text.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    text.push_str(&headers);
    text.push_str(&format!("\r\n--{boundary}--\r\n"));
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_dsn_parses_as_a_delivery_report() {
        let dsn = super::build(
            "alpha.test",
            "alice@alpha.test",
            b"Subject: hello\r\nFrom: alice@alpha.test\r\n\r\nbody\r\n",
            &[super::Failure {
                recipient: "bob@beta.test".into(),
                status: "4.4.7".into(),
                diagnostic: "expired in the mesh outbox".into(),
            }],
            1_700_000_000,
        );
        let m = mail_parser::MessageParser::default()
            .parse(&dsn)
            .expect("parses");
        assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
        let text = String::from_utf8_lossy(&dsn);
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; bob@beta.test"));
        assert!(text.contains("Status: 4.4.7"));
        assert!(text.contains("Subject: hello"));
    }
}
