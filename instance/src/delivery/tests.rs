//! The router over the real store: aliases, plus-addressing, catch-all,
//! quotas and sent copies.
