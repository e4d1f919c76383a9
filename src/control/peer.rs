//! Who is on the other end of a Unix socket, and whether they may use it.
//!
//! The kernel vouches for the peer's uid and gids (SO_PEERCRED, SO_PEERGROUPS), as they were
//! when it connected, so the check cannot be forged by the client. Both sockets use the same
//! rule: root and the daemon's own uid always pass; otherwise the peer's uid must be one of the
//! listed uids, or its primary gid or one of its supplementary gids one of the listed gids.
//! uids and gids are separate namespaces and are never compared with each other.

use std::os::fd::AsRawFd;

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
}
