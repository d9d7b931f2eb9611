//! SMTP: the sans-IO session (`session`), the listeners that drive it
//! (`server`), and the session's decisions answered by the router (`policy`).

mod policy;
pub mod server;
pub mod session;
