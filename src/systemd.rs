//! Temporary stand-in for the systemd module.
#[derive(Debug, thiserror::Error)]
#[error("systemd")]
pub struct SystemdError;
pub fn notify_ready() {}
pub fn notify_reloading() {}
pub fn notify_stopping() {}
pub fn notify_status(_msg: &str) {}
pub fn notify_watchdog() {}
pub fn watchdog_interval() -> Option<std::time::Duration> {
    None
}
pub fn take_listener(
    _name: &str,
) -> Result<Option<std::os::unix::net::UnixListener>, SystemdError> {
    Ok(None)
}
