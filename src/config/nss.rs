//! User and group names to ids, through the system's databases (NSS: files, LDAP, systemd's
//! dynamic users...), with the reentrant calls.

/// Calls a reentrant user or group database lookup (`getpwnam_r`, `getgrnam_r`,
/// `getpwuid_r`) with a buffer that grows while the call answers ERANGE. Returns the entry
/// and the buffer its strings point into, or `None` when there is no such entry.
pub(crate) fn nss_lookup<T>(
    mut call: impl FnMut(*mut T, &mut [libc::c_char], *mut *mut T) -> libc::c_int,
) -> Option<(T, Vec<libc::c_char>)> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: the entry types are plain C structs of integers and pointers, for which
        // all-zero is a valid value; the call fills it in.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(&mut entry, &mut buf, &mut result);
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            let grown = buf.len() * 2;
            buf.resize(grown, 0);
            continue;
        }
        // The buffer moves with its heap allocation, so the entry's strings stay valid.
        return (rc == 0 && !result.is_null()).then_some((entry, buf));
    }
}

/// The uid of the user called `name`, through the system's user database.
pub(super) fn user_uid(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    nss_lookup::<libc::passwd>(|pwd, buf, result| {
        // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's size.
        unsafe { libc::getpwnam_r(cname.as_ptr(), pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
    .map(|(pwd, _)| pwd.pw_uid)
}

/// The gid of the group called `name`, through the system's group database.
pub(super) fn group_gid(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    nss_lookup::<libc::group>(|grp, buf, result| {
        // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's size.
        unsafe { libc::getgrnam_r(cname.as_ptr(), grp, buf.as_mut_ptr(), buf.len(), result) }
    })
    .map(|(grp, _)| grp.gr_gid)
}
