//! End-to-end tests of a Caliopen federation on loopback (association and
//! several instances). The association's own end-to-end tests, which need only
//! `caliopen-ca` and openssl, live in `ca-tools/tests/`; federation-wide
//! scenarios come here with the mesh and instance issues.
#![forbid(unsafe_code)]
