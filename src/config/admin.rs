//! `[admin]`: the admin listener.

use std::net::SocketAddr;

use super::file;
use super::validate::parse_addr;
use super::Errors;

/// Default admin listener: loopback only, the admin API is not for the internet.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// The admin listener's address; `None` (with an error recorded) when it
/// does not parse.
pub(super) fn build_admin(a: file::Admin, errs: &mut Errors) -> Option<SocketAddr> {
    parse_addr(
        a.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
        "admin.listen",
        errs,
    )
}
