//! Who is on the other end of a Unix socket, and whether they may use it.
//!
//! The kernel vouches for the peer's uid and gids (SO_PEERCRED, SO_PEERGROUPS), as they were
//! when it connected, so the check cannot be forged by the client. Both sockets use the same
//! rule: root and the daemon's own uid always pass; otherwise the peer's uid must be one of the
//! listed uids, or its primary gid or one of its supplementary gids one of the listed gids.
//! uids and gids are separate namespaces and are never compared with each other.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use crate::config::PeerAllow;

/// The peer's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; empty where the kernel cannot tell (before Linux 4.13).
    pub groups: Vec<u32>,
}

impl Peer {
    pub fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            groups: peer_groups(stream).unwrap_or_default(),
        })
    }

    /// Root, our own uid, a uid in `allow.uids`, or a peer in one of `allow.gids`.
    pub fn allowed(&self, allow: &PeerAllow) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        self.allowed_for(allow, me)
    }

    fn allowed_for(&self, allow: &PeerAllow, me: u32) -> bool {
        self.uid == 0
            || self.uid == me
            || allow.uids.contains(&self.uid)
            || allow.gids.contains(&self.gid)
            || self.groups.iter().any(|g| allow.gids.contains(g))
    }
}

/// How long the refusals of one uid are summed up in one log line.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Most uids followed at once; refusals of more are summed up together.
const REFUSAL_LOG_UIDS: usize = 4096;

/// Refused connections, logged per uid and interval rather than one line each: a peer that
/// connects in a loop must not fill the journal. The first refusal of a uid is logged at once
/// (by the caller, with its details, when [`RefusalLog::first`] says so); the rest within
/// [`REFUSAL_LOG_INTERVAL`] are counted and logged as one line when the interval has passed
/// ([`RefusalLog::sweep`], driven by [`RefusalLog::sweep_until`]) or at shutdown.
pub struct RefusalLog {
    /// `control` or `ingest`, for the summary lines.
    socket: &'static str,
    interval: Duration,
    state: Mutex<RefusalState>,
    /// Wakes the sweeper when a uid's interval starts; without refusals it sleeps for good
    /// (an idle daemon does not wake for nothing).
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct RefusalState {
    /// Per uid: when its interval started, and refusals since its first.
    uids: HashMap<u32, (Instant, u64)>,
    /// Refusals of uids not followed because `uids` was full.
    others: u64,
}

impl RefusalLog {
    pub fn new(socket: &'static str) -> RefusalLog {
        RefusalLog {
            socket,
            interval: REFUSAL_LOG_INTERVAL,
            state: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Sweeps whenever an interval ends, until `shutdown`; then logs every count left.
    pub async fn sweep_until(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let due = self
                .lock()
                .uids
                .values()
                .map(|&(started, _)| started + self.interval)
                .min();
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = self.wake.notified(), if due.is_none() => {}
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {}
            }
            self.sweep(Instant::now(), false);
        }
        self.sweep(Instant::now(), true);
    }

    /// Counts a refusal of `uid`; true when it is the first in its interval, to be logged now.
    pub fn first(&self, uid: u32, now: Instant) -> bool {
        let mut st = self.lock();
        let interval = self.interval;
        let full = st.uids.len() >= REFUSAL_LOG_UIDS;
        match st.uids.get_mut(&uid) {
            Some((started, n)) if now.duration_since(*started) < interval => {
                *n += 1;
                false
            }
            Some(window) => {
                let (_, n) = std::mem::replace(window, (now, 0));
                self.summary(uid, n);
                true
            }
            None if full => {
                st.others += 1;
                false
            }
            None => {
                st.uids.insert(uid, (now, 0));
                self.wake.notify_one();
                true
            }
        }
    }

    /// Logs the counts of intervals that have passed (all of them when `all`, at shutdown)
    /// and forgets those uids.
    pub fn sweep(&self, now: Instant, all: bool) {
        let mut st = self.lock();
        let interval = self.interval;
        let mut ended = Vec::new();
        st.uids.retain(|&uid, &mut (started, n)| {
            let over = all || now.duration_since(started) >= interval;
            if over {
                ended.push((uid, n));
            }
            !over
        });
        let others = std::mem::take(&mut st.others);
        drop(st);
        for (uid, n) in ended {
            self.summary(uid, n);
        }
        if others > 0 {
            tracing::warn!(
                socket = self.socket,
                refused = others,
                "connections refused from more uids than are followed one by one"
            );
        }
    }

    fn summary(&self, uid: u32, n: u64) {
        if n > 0 {
            tracing::warn!(
                socket = self.socket,
                uid,
                refused = n,
                interval_s = self.interval.as_secs(),
                "more connections refused from this uid since its first refusal was logged"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RefusalState> {
        // Counters only: a panic elsewhere cannot leave them inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// SO_PEERGROUPS: the peer's supplementary groups at connect time.
fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    let fd = stream.as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for `len` bytes and outlives the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        // ERANGE: the kernel wrote the size it needs into `len`.
        if err.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65_536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 1 of the security review: a uid entry matches only uids, a gid entry only gids.
    #[test]
    fn finding_1_uids_and_gids_never_match_each_other() {
        let me = 999;
        let peer = |uid, gid, groups: &[u32]| Peer {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        let groups_only = PeerAllow {
            uids: vec![],
            gids: vec![4141],
        };
        assert!(!peer(4141, 7, &[8]).allowed_for(&groups_only, me));
        assert!(peer(7, 4141, &[]).allowed_for(&groups_only, me));
        assert!(peer(7, 7, &[8, 4141]).allowed_for(&groups_only, me));
        let users_only = PeerAllow {
            uids: vec![4242],
            gids: vec![],
        };
        assert!(peer(4242, 7, &[]).allowed_for(&users_only, me));
        assert!(!peer(7, 4242, &[]).allowed_for(&users_only, me));
        assert!(!peer(7, 7, &[4242]).allowed_for(&users_only, me));
        let none = PeerAllow::default();
        assert!(peer(0, 7, &[]).allowed_for(&none, me));
        assert!(peer(me, 7, &[]).allowed_for(&none, me));
        assert!(
            !peer(7, 0, &[0]).allowed_for(&none, me),
            "gid 0 is not root"
        );
    }

    /// Finding 11 of the security review: one line per uid and interval, not one per refusal.
    #[test]
    fn finding_11_refusals_are_logged_once_per_uid_and_interval() {
        let log = RefusalLog::new("control");
        let t0 = Instant::now();
        assert!(log.first(7, t0));
        assert!((0..1999).all(|_| !log.first(7, t0)));
        assert!(log.first(8, t0), "another uid is logged on its own");
        log.sweep(t0 + Duration::from_secs(1), false);
        assert_eq!(
            log.lock().uids[&7],
            (t0, 1999),
            "swept before its interval ended"
        );
        let later = t0 + REFUSAL_LOG_INTERVAL;
        assert!(log.first(7, later), "a new interval logs again");
        assert_eq!(log.lock().uids[&7], (later, 0));
        log.sweep(later, true);
        assert!(log.lock().uids.is_empty());
        for uid in 0..REFUSAL_LOG_UIDS as u32 {
            log.first(uid, later);
        }
        assert!(
            !log.first(u32::MAX, later),
            "past the cap, refusals are only counted"
        );
        assert_eq!(log.lock().others, 1);
    }
}
