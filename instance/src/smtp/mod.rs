//! SMTP: the sans-IO session (`session`) and the listeners that drive it (`server`).

pub mod server;
pub mod session;
