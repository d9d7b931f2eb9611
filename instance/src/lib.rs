//! The Caliopen instance daemon (DESIGN.md §2, §5).
//!
//! Not built yet: this crate is the place the instance issue (#4) fills. It
//! holds no code so that nothing here pretends to work.
#![forbid(unsafe_code)]
