//! The README's main command: `caliopen demo` runs the whole federation and
//! checks each of its claims; a failed check is a non-zero exit.

#[test]
fn the_demo_passes_every_check() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_caliopen"))
        .arg("demo")
        .output()
        .expect("run demo");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "demo failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for claim in [
        "via smtp",
        "arrived in bob's mailbox via mesh",
        "with STARTTLS (TLS 1.3)",
        "alpha dropped gamma from its mesh",
        "arrived in carol's mailbox via smtp, no longer via mesh",
        "privacy index: mesh",
        "with a lower privacy index",
        "All checks passed",
    ] {
        assert!(out.contains(claim), "missing {claim:?} in:\n{out}");
    }
    assert!(!out.contains("check failed"));
}
