//! PowerFs: a FUSE file system for power-loss tests, modelled on LazyFS.
//!
//! A real directory (the *backing*) holds the durable state; the mount shows that state plus
//! what was written since. [`PowerFs::cut`] simulates a power cut: what was not made durable is
//! dropped (or partly kept, per [`CutMode`]) and the mount then shows a state that a disk could
//! hold after the cut. The caller must have SIGKILLed (and reaped) every process writing to the
//! mount first: a cut races with nothing else, and killed processes cannot flush anything.
//!
//! What it models:
//! - File data: writes are held in memory as 4 KiB pages (plus a pending size, for writes past
//!   EOF, truncates and `fallocate` extensions) until `fsync`/`fdatasync` of that file, which
//!   writes them and the size to the backing. `close`, `flush`, time and `sync_file_range`
//!   (which never reaches FUSE) make nothing durable. Reads see backing + pending pages.
//! - Cuts: unsynced pages dropped ([`CutMode::DropUnsynced`]), an independent seeded subset kept
//!   ([`CutMode::KeepRandomSubset`]), or kept in the order they were last written up to a seeded
//!   point where one page is torn at a 512-byte boundary ([`CutMode::TornPrefix`]). A file's
//!   durable size grows only to cover kept pages; an unsynced shrinking truncate is one more
//!   event, kept or dropped like a page.
//! - Directory entries: creates, unlinks, renames, mkdirs and rmdirs are applied to the backing
//!   at once (as LazyFS does) and also logged per directory; an `fsync` of the directory makes its
//!   log durable. [`CutMode::LoseUnsyncedDirEntries`] undoes, newest first, every logged operation
//!   not yet durable (a rename across directories needs both synced) and drops unsynced data.
//!   The other modes keep every namespace operation. Unlinked or replaced files wait in a hidden
//!   `.powerfs-attic` directory of the backing until the cut decides their fate.
//! - Faults: the next `n` file fsyncs can fail with EIO ([`PowerFs::fail_next_fsyncs`]); as on
//!   Linux after a writeback error (PostgreSQL's "fsyncgate"), that file's dirty pages stay
//!   readable but are never written: a later fsync returns 0 without them, and the next cut
//!   drops them. Every fsync/fdatasync/fsyncdir can be delayed ([`PowerFs::set_fsync_delay`]); the
//!   file system serves one request at a time, so a slow fsync also stalls every other request,
//!   like a single-queue SD card.
//!
//! What it does not model:
//! - Timestamps, modes and owners come from the backing: unsynced writes do not touch mtime and
//!   `chmod`/`chown`/`utimens` are durable at once. Extended attributes, hard links, symlink
//!   creation, mknod, file locks beyond the kernel's local ones, and `mmap` of a file (direct I/O
//!   mounts refuse shared writable maps) are not supported.
//! - Only the latest content of a page is kept, so a cut never shows an older unsynced version
//!   of a page; there is no reordering of namespace operations, only undoing of a suffix per
//!   directory; a failing `fsync` of a directory cannot be injected.
//! - Durability of the backing itself: the power cut is simulated, so writes to the backing are
//!   not fsynced (that would only cost time).
//!
//! The kernel page cache is bypassed for file data (`FOPEN_DIRECT_IO`) and entry and attribute
//! TTLs are zero, so the state after a cut is what the next reader sees, through any descriptor.
//!
//! Mounting needs `/dev/fuse` and `fusermount3` (Debian: `fuse3`), which mounts with
//! `auto_unmount`: it stays behind and unmounts when this process ends, however it ends. Without
//! `fusermount3`, root mounts directly and a crashed test process leaves a stale mount. The
//! server runs in the test process: if that process is SIGKILLed while one of its own threads
//! waits on the mount, the kernel cannot finish it (its server is gone with it); free it with
//! `echo 1 > /sys/fs/fuse/connections/N/abort` (fusectl). A panic in a handler answers EIO.

#![allow(dead_code)]

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};

/// Granularity of unsynced data, as in the page cache.
const PAGE: u64 = 4096;
/// Granularity of a torn write (a disk sector).
const SECTOR: u64 = 512;
/// Zero TTLs: the kernel asks again every time, so a cut is seen at once.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;
/// Hidden directory of the backing root that holds unlinked and replaced inodes until a cut.
const ATTIC: &str = ".powerfs-attic";
const ATTIC_INO: u64 = u64::MAX;
/// How long `Drop` waits for the session thread after unmounting before leaving it behind.
const JOIN_WAIT: Duration = Duration::from_secs(2);

/// What a power cut does with state that was not made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Every unsynced page and truncate is lost; namespace operations are kept.
    DropUnsynced,
    /// Each unsynced page (and truncate) is kept or lost independently (seeded, p = 1/2).
    KeepRandomSubset,
    /// Unsynced pages and truncates, in the order they were last written, are kept up to a
    /// seeded point; the page at that point keeps only a prefix of 1 to 7 sectors.
    TornPrefix,
    /// Data as in `DropUnsynced`, and every namespace operation whose directory was not fsynced
    /// afterwards is undone.
    LoseUnsyncedDirEntries,
}

/// What a cut did. Pages count 4 KiB units; bytes count what lay within the file's size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced data (or a lost fsync).
    pub files: usize,
    pub pages_kept: usize,
    pub pages_dropped: usize,
    pub pages_torn: usize,
    /// Bytes written to the durable state by the cut (kept pages and torn prefixes).
    pub bytes_kept: u64,
    /// Bytes lost, including the lost part of a torn page.
    pub bytes_dropped: u64,
    pub truncates_kept: usize,
    pub truncates_dropped: usize,
    /// Namespace operations undone (only in `LoseUnsyncedDirEntries`).
    pub dir_ops_undone: usize,
    /// Namespace operations kept since the previous cut (made durable or kept by the mode).
    pub dir_ops_kept: usize,
}

/// Counters since the mount, plus the current unsynced state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `fsync` calls on files (failed ones included).
    pub fsyncs: u64,
    /// `fdatasync` calls on files (failed ones included).
    pub fdatasyncs: u64,
    /// `fsync` calls on directories.
    pub fsyncdirs: u64,
    /// Injected EIO failures.
    pub failed_fsyncs: u64,
    /// Bytes passed to `write`.
    pub bytes_written: u64,
    /// Bytes in dirty pages now (page granularity, within the file size).
    pub pending_bytes: u64,
    /// Bytes in pages whose fsync failed: readable, never to be durable.
    pub lost_bytes: u64,
    /// Namespace operations not yet durable.
    pub pending_dir_ops: u64,
    pub cuts: u64,
}

/// A mounted PowerFs. Dropping it cuts power with `DropUnsynced` (so the backing is left as a
/// durable state without the attic) and unmounts (lazily if the mount is still busy).
pub struct PowerFs {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    backing: PathBuf,
    session: Option<BackgroundSession>,
}

impl PowerFs {
    /// Mounts a new PowerFs at `mountpoint` (an existing directory) backed by `backing` (a real
    /// directory holding the durable state).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<PowerFs> {
        let backing = backing.canonicalize()?;
        if !backing.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("backing {} is not a directory", backing.display()),
            ));
        }
        let mountpoint = mountpoint.canonicalize()?;
        if mountpoint.starts_with(&backing) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the mountpoint must not be inside the backing directory",
            ));
        }
        // An attic left by a test process that died holds nothing anyone can still name.
        let attic = backing.join(ATTIC);
        match fs::remove_dir_all(&attic) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::create_dir(&attic)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(backing.clone())),
            fsync_delay_ns: AtomicU64::new(0),
            fail_fsyncs: AtomicU32::new(0),
        });
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("powerfs".into()),
            MountOption::Subtype("powerfs".into()),
            MountOption::DefaultPermissions,
            // fusermount3 stays behind and unmounts if this process dies without unmounting.
            MountOption::AutoUnmount,
        ];
        config.acl = SessionACL::RootAndOwner;
        let driver = Driver {
            shared: shared.clone(),
        };
        let session = match fuser::spawn_mount(driver, &mountpoint, &config) {
            Ok(session) => session,
            // Without fusermount3 there is no auto_unmount; root can still mount directly.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                config
                    .mount_options
                    .retain(|o| *o != MountOption::AutoUnmount);
                config.acl = SessionACL::Owner;
                let driver = Driver {
                    shared: shared.clone(),
                };
                fuser::spawn_mount(driver, &mountpoint, &config)?
            }
            Err(e) => return Err(e),
        };
        Ok(PowerFs {
            shared,
            mountpoint,
            backing,
            session: Some(session),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Power cut: everything not made durable is handled per `mode` (randomness from `seed`);
    /// afterwards the mount and the backing show only the durable state. Every process writing
    /// to the mount must already be dead.
    pub fn cut(&self, mode: CutMode, seed: u64) -> io::Result<CutReport> {
        self.shared.lock().cut(mode, seed)
    }

    /// Every later fsync, fdatasync and directory fsync sleeps `d` first.
    pub fn set_fsync_delay(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.shared.fsync_delay_ns.store(ns, Ordering::SeqCst);
    }

    /// The next `n` fsync/fdatasync calls on files fail with EIO, and the dirty pages of each
    /// such file are never written (see the module doc).
    pub fn fail_next_fsyncs(&self, n: u32) {
        self.shared.fail_fsyncs.store(n, Ordering::SeqCst);
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats()
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        // Leave the backing as a durable state a later mount can start from.
        if let Err(e) = self.cut(CutMode::DropUnsynced, 0) {
            eprintln!("powerfs: final cut failed: {e}");
        }
        let _ = fs::remove_dir(self.backing.join(ATTIC));
        unmount(&self.mountpoint);
        if let Some(session) = self.session.take() {
            // Dropping the rest of the session closes fuser's own unmount handle.
            let guard = {
                let session = session;
                session.guard
            };
            // After a lazy unmount the thread serves until the last user lets go: don't hang.
            let deadline = Instant::now() + JOIN_WAIT;
            while !guard.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if guard.is_finished() {
                match guard.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("powerfs: session ended with {e}"),
                    Err(_) => eprintln!("powerfs: session thread panicked"),
                }
            }
        }
    }
}

/// Unmounts `mountpoint`: normally if nothing uses it, else lazily.
fn unmount(mountpoint: &Path) {
    for args in [&["-u", "-q"][..], &["-u", "-q", "-z"][..]] {
        let done = Command::new("fusermount3")
            .args(args)
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if done {
            return;
        }
    }
    // No fusermount3 (a direct mount by root): umount2 itself, lazily.
    if let Ok(c) = CString::new(mountpoint.as_os_str().as_bytes()) {
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        unsafe {
            if libc::umount2(c.as_ptr(), 0) != 0 {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// State shared by the handle and the session thread.
struct Shared {
    state: Mutex<State>,
    fsync_delay_ns: AtomicU64,
    fail_fsyncs: AtomicU32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a handler must not wedge every later test assertion.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn delay(&self) {
        let ns = self.fsync_delay_ns.load(Ordering::SeqCst);
        if ns > 0 {
            // Sleep without the lock, so the test thread can still read stats.
            thread::sleep(Duration::from_nanos(ns));
        }
    }

    fn take_failure(&self) -> bool {
        self.fail_fsyncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Seeded PRNG (splitmix64): cuts are reproducible per seed. Tests may use it too.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for tests (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Page {
    buf: Box<[u8]>,
    /// Global write counter at the last write to this page: the order a cut replays.
    seq: u64,
    /// Its fsync failed: readable (as in the page cache) but never to be written.
    lost: bool,
}

/// Unsynced state of one regular file. Invariant: `floor <= durable_len <= backing length`.
struct Data {
    /// Size seen by readers.
    size: u64,
    /// Size of the backing file: the durable size.
    durable_len: u64,
    /// Backing bytes at or past `floor` were truncated away (unsynced) and read as zeros.
    floor: u64,
    /// Write counter of the truncate that set `floor`.
    trunc_seq: u64,
    pages: BTreeMap<u64, Page>,
}

impl Data {
    fn truncated(&self) -> bool {
        self.floor < self.durable_len
    }

    /// Length of page `idx` within the file size.
    fn page_len(&self, idx: u64) -> u64 {
        self.size.saturating_sub(idx * PAGE).min(PAGE)
    }
}

struct Inode {
    parent: u64,
    name: OsString,
    kind: FileType,
    /// Backing descriptor, opened on first data access; survives renames and the attic.
    file: Option<File>,
    data: Option<Data>,
}

enum NsOp {
    Create {
        ino: u64,
    },
    Mkdir {
        ino: u64,
    },
    /// Unlink or rmdir: the inode went to the attic.
    Remove {
        parent: u64,
        name: OsString,
        ino: u64,
    },
    Rename {
        ino: u64,
        from: (u64, OsString),
        to: (u64, OsString),
        /// The inode it replaced, now in the attic.
        replaced: Option<u64>,
    },
}

struct LogEntry {
    op: NsOp,
    /// Directories whose fsync this operation still waits for.
    waiting: Vec<u64>,
}

struct State {
    backing: PathBuf,
    inodes: HashMap<u64, Inode>,
    children: HashMap<u64, HashMap<OsString, u64>>,
    next_ino: u64,
    next_fh: u64,
    /// Global write counter.
    seq: u64,
    /// Namespace operations not yet durable, oldest first.
    log: Vec<LogEntry>,
    /// Namespace operations made durable since the last cut.
    durable_ops: usize,
    stats: Stats,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Reads at `off` until `buf` is full or EOF; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let secs = u64::try_from(secs).unwrap_or(0);
    let nsecs = u32::try_from(nsecs).unwrap_or(0).min(999_999_999);
    UNIX_EPOCH + Duration::new(secs, nsecs)
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    let (tv_sec, tv_nsec) = match t {
        None => (0, libc::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, libc::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            (
                libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                libc::c_long::from(d.subsec_nanos()),
            )
        }
    };
    libc::timespec { tv_sec, tv_nsec }
}

fn hidden(parent: u64, name: &OsStr) -> bool {
    parent == ROOT && name == ATTIC
}

impl State {
    fn new(backing: PathBuf) -> State {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode {
                parent: ROOT,
                name: OsString::new(),
                kind: FileType::Directory,
                file: None,
                data: None,
            },
        );
        inodes.insert(
            ATTIC_INO,
            Inode {
                parent: ROOT,
                name: ATTIC.into(),
                kind: FileType::Directory,
                file: None,
                data: None,
            },
        );
        State {
            backing,
            inodes,
            children: HashMap::new(),
            next_ino: ROOT + 1,
            next_fh: 1,
            seq: 0,
            log: Vec::new(),
            durable_ops: 0,
            stats: Stats::default(),
        }
    }

    fn inode(&self, ino: u64) -> io::Result<&Inode> {
        self.inodes.get(&ino).ok_or_else(|| errno(libc::ENOENT))
    }

    fn inode_mut(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(|| errno(libc::ENOENT))
    }

    fn path(&self, ino: u64) -> io::Result<PathBuf> {
        let mut names = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let inode = self.inode(cur)?;
            names.push(&inode.name);
            cur = inode.parent;
            if names.len() > 4096 {
                return Err(errno(libc::ELOOP));
            }
        }
        let mut path = self.backing.clone();
        path.extend(names.iter().rev());
        Ok(path)
    }

    fn alloc(&mut self, parent: u64, name: &OsStr, kind: FileType) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                parent,
                name: name.to_os_string(),
                kind,
                file: None,
                data: None,
            },
        );
        self.children
            .entry(parent)
            .or_default()
            .insert(name.to_os_string(), ino);
        ino
    }

    /// The inode named `name` in `parent`, per the backing (which always holds the namespace).
    fn child(&mut self, parent: u64, name: &OsStr) -> io::Result<Option<u64>> {
        if hidden(parent, name) || name == "." || name == ".." {
            return Ok(None);
        }
        let path = self.path(parent)?.join(name);
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(&ino) = self.children.get(&parent).and_then(|c| c.get(name)) {
            return Ok(Some(ino));
        }
        let kind = FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile);
        Ok(Some(self.alloc(parent, name, kind)))
    }

    fn existing_child(&mut self, parent: u64, name: &OsStr) -> io::Result<u64> {
        self.child(parent, name)?.ok_or_else(|| errno(libc::ENOENT))
    }

    fn attr(&self, ino: u64) -> io::Result<FileAttr> {
        let inode = self.inode(ino)?;
        let md = fs::symlink_metadata(self.path(ino)?)?;
        let size = inode.data.as_ref().map_or(md.len(), |d| d.size);
        let nlink = if inode.parent == ATTIC_INO {
            0
        } else {
            u32::try_from(md.nlink()).unwrap_or(u32::MAX)
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: system_time(md.atime(), md.atime_nsec()),
            mtime: system_time(md.mtime(), md.mtime_nsec()),
            ctime: system_time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::from_std(md.file_type()).unwrap_or(inode.kind),
            perm: u16::try_from(md.mode() & 0o7777).unwrap_or(0o600),
            nlink,
            uid: md.uid(),
            gid: md.gid(),
            rdev: u32::try_from(md.rdev()).unwrap_or(0),
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn ensure_file(&mut self, ino: u64) -> io::Result<()> {
        if self.inode(ino)?.file.is_some() {
            return Ok(());
        }
        let path = self.path(ino)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        self.inode_mut(ino)?.file = Some(file);
        Ok(())
    }

    fn ensure_data(&mut self, ino: u64) -> io::Result<()> {
        self.ensure_file(ino)?;
        let inode = self.inode_mut(ino)?;
        if inode.data.is_none() {
            let len = match &inode.file {
                Some(f) => f.metadata()?.len(),
                None => return Err(errno(libc::EIO)),
            };
            inode.data = Some(Data {
                size: len,
                durable_len: len,
                floor: len,
                trunc_seq: 0,
                pages: BTreeMap::new(),
            });
        }
        Ok(())
    }

    /// Split borrow of an inode's descriptor and unsynced data.
    fn file_data(&mut self, ino: u64) -> io::Result<(&File, &mut Data)> {
        let inode = self.inode_mut(ino)?;
        match (&inode.file, &mut inode.data) {
            (Some(f), Some(d)) => Ok((f, d)),
            _ => Err(errno(libc::EIO)),
        }
    }

    fn read(&mut self, ino: u64, off: u64, len: u32) -> io::Result<Vec<u8>> {
        self.ensure_file(ino)?;
        let inode = self.inode(ino)?;
        let file = inode.file.as_ref().ok_or_else(|| errno(libc::EIO))?;
        let Some(d) = &inode.data else {
            let mut buf = vec![0; len as usize];
            let n = read_full_at(file, &mut buf, off)?;
            buf.truncate(n);
            return Ok(buf);
        };
        if off >= d.size {
            return Ok(Vec::new());
        }
        let end = d.size.min(off.saturating_add(u64::from(len)));
        let mut out = vec![0; (end - off) as usize];
        let mut pos = off;
        while pos < end {
            let idx = pos / PAGE;
            let pstart = idx * PAGE;
            let pend = (pstart + PAGE).min(end);
            let dst = &mut out[(pos - off) as usize..(pend - off) as usize];
            if let Some(p) = d.pages.get(&idx) {
                dst.copy_from_slice(&p.buf[(pos - pstart) as usize..(pend - pstart) as usize]);
            } else if pos < d.floor {
                // Backing bytes up to the truncation floor; zeros past it (already in `out`).
                let n = (pend.min(d.floor) - pos) as usize;
                read_full_at(file, &mut dst[..n], pos)?;
            }
            pos = pend;
        }
        Ok(out)
    }

    fn write(&mut self, ino: u64, off: u64, buf: &[u8]) -> io::Result<()> {
        let end = off
            .checked_add(buf.len() as u64)
            .ok_or_else(|| errno(libc::EFBIG))?;
        self.ensure_data(ino)?;
        self.seq += 1;
        let seq = self.seq;
        let (file, d) = self.file_data(ino)?;
        let floor = d.floor;
        let mut pos = off;
        while pos < end {
            let idx = pos / PAGE;
            let pstart = idx * PAGE;
            let pend = (pstart + PAGE).min(end);
            let page = match d.pages.entry(idx) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => {
                    let mut fresh = vec![0; PAGE as usize].into_boxed_slice();
                    // A page only partly overwritten starts as what readers saw.
                    let whole = pos == pstart && pend == pstart + PAGE;
                    if !whole && pstart < floor {
                        let n = (floor - pstart).min(PAGE) as usize;
                        read_full_at(file, &mut fresh[..n], pstart)?;
                    }
                    v.insert(Page {
                        buf: fresh,
                        seq,
                        lost: false,
                    })
                }
            };
            page.buf[(pos - pstart) as usize..(pend - pstart) as usize]
                .copy_from_slice(&buf[(pos - off) as usize..(pend - off) as usize]);
            page.seq = seq;
            page.lost = false;
            pos = pend;
        }
        d.size = d.size.max(end);
        self.stats.bytes_written += buf.len() as u64;
        Ok(())
    }

    /// Unsynced truncate or extension.
    fn set_size(&mut self, ino: u64, size: u64) -> io::Result<()> {
        if self.inode(ino)?.kind == FileType::Directory {
            return Err(errno(libc::EISDIR));
        }
        self.ensure_data(ino)?;
        self.seq += 1;
        let seq = self.seq;
        let (_, d) = self.file_data(ino)?;
        if size < d.size {
            d.pages.split_off(&size.div_ceil(PAGE));
            if !size.is_multiple_of(PAGE)
                && let Some(p) = d.pages.get_mut(&(size / PAGE))
            {
                p.buf[(size % PAGE) as usize..].fill(0);
            }
            if size < d.floor {
                d.floor = size;
                d.trunc_seq = seq;
            }
        }
        d.size = size;
        Ok(())
    }

    fn fsync(&mut self, ino: u64) -> io::Result<()> {
        let inode = self.inode_mut(ino)?;
        let (Some(file), Some(d)) = (&inode.file, &mut inode.data) else {
            return Ok(());
        };
        if d.truncated() {
            file.set_len(d.floor)?;
        }
        for (&idx, p) in &d.pages {
            let n = d.page_len(idx) as usize;
            if !p.lost && n > 0 {
                file.write_all_at(&p.buf[..n], idx * PAGE)?;
            }
        }
        file.set_len(d.size)?;
        d.pages.retain(|_, p| p.lost);
        d.durable_len = d.size;
        d.floor = d.size;
        if d.pages.is_empty() {
            inode.data = None;
        }
        Ok(())
    }

    /// An injected writeback error: the dirty pages will never be written.
    fn fail_fsync(&mut self, ino: u64) -> io::Result<()> {
        if let Some(d) = &mut self.inode_mut(ino)?.data {
            d.pages.values_mut().for_each(|p| p.lost = true);
        }
        Ok(())
    }

    fn fsyncdir(&mut self, dir: u64) {
        for e in &mut self.log {
            e.waiting.retain(|&d| d != dir);
        }
        let before = self.log.len();
        self.log.retain(|e| !e.waiting.is_empty());
        self.durable_ops += before - self.log.len();
    }

    fn record(&mut self, op: NsOp, mut dirs: Vec<u64>) {
        dirs.dedup();
        self.log.push(LogEntry { op, waiting: dirs });
    }

    fn unlink_index(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get(&ino)
            && let Some(c) = self.children.get_mut(&inode.parent)
            && c.get(&inode.name) == Some(&ino)
        {
            c.remove(&inode.name);
        }
    }

    /// Moves `ino` to `parent/name` in the backing and the tables; with `renumber`, gives it a
    /// fresh inode number (a resurrected inode must not meet the kernel's unlinked one).
    fn move_inode(
        &mut self,
        ino: u64,
        parent: u64,
        name: &OsStr,
        renumber: bool,
    ) -> io::Result<u64> {
        let from = self.path(ino)?;
        let to = self.path(parent)?.join(name);
        fs::rename(&from, &to)?;
        self.unlink_index(ino);
        let mut new = ino;
        if renumber {
            new = self.next_ino;
            self.next_ino += 1;
            if let Some(inode) = self.inodes.remove(&ino) {
                self.inodes.insert(new, inode);
            }
            if let Some(c) = self.children.remove(&ino) {
                for &child in c.values() {
                    if let Some(i) = self.inodes.get_mut(&child) {
                        i.parent = new;
                    }
                }
                self.children.insert(new, c);
            }
        }
        let inode = self.inode_mut(new)?;
        inode.parent = parent;
        inode.name = name.to_os_string();
        self.children
            .entry(parent)
            .or_default()
            .insert(name.to_os_string(), new);
        Ok(new)
    }

    fn move_to_attic(&mut self, ino: u64) -> io::Result<()> {
        let name = OsString::from(ino.to_string());
        self.move_inode(ino, ATTIC_INO, &name, false).map(|_| ())
    }

    /// Forgets `ino` and everything below it.
    fn forget_tree(&mut self, ino: u64) {
        let mut doomed = vec![ino];
        let mut i = 0;
        while i < doomed.len() {
            if let Some(c) = self.children.remove(&doomed[i]) {
                doomed.extend(c.values());
            }
            i += 1;
        }
        for ino in doomed {
            self.unlink_index(ino);
            self.inodes.remove(&ino);
        }
    }

    fn remove_backing(&mut self, ino: u64) -> io::Result<()> {
        let path = self.path(ino)?;
        let res = if self.inode(ino)?.kind == FileType::Directory {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match res {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => {
                self.forget_tree(ino);
                Ok(())
            }
        }
    }

    fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> io::Result<(FileAttr, u64)> {
        if hidden(parent, name) {
            return Err(errno(libc::EPERM));
        }
        let path = self.path(parent)?.join(name);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&path);
        let ino = match opened {
            Ok(file) => {
                // The kernel already applied the umask; ours must not apply twice.
                file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
                let ino = self.alloc(parent, name, FileType::RegularFile);
                self.inode_mut(ino)?.file = Some(file);
                self.record(NsOp::Create { ino }, vec![parent]);
                ino
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & libc::O_EXCL == 0 => {
                let ino = self.existing_child(parent, name)?;
                if self.inode(ino)?.kind == FileType::Directory {
                    return Err(errno(libc::EISDIR));
                }
                if flags & libc::O_TRUNC != 0 {
                    self.set_size(ino, 0)?;
                }
                ino
            }
            Err(e) => return Err(e),
        };
        let fh = self.next_fh;
        self.next_fh += 1;
        Ok((self.attr(ino)?, fh))
    }

    fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> io::Result<FileAttr> {
        if hidden(parent, name) {
            return Err(errno(libc::EPERM));
        }
        let path = self.path(parent)?.join(name);
        fs::create_dir(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        let ino = self.alloc(parent, name, FileType::Directory);
        self.record(NsOp::Mkdir { ino }, vec![parent]);
        self.attr(ino)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> io::Result<()> {
        let ino = self.existing_child(parent, name)?;
        let is_dir = self.inode(ino)?.kind == FileType::Directory;
        if dir && !is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        if !dir && is_dir {
            return Err(errno(libc::EISDIR));
        }
        if dir && fs::read_dir(self.path(ino)?)?.next().is_some() {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.move_to_attic(ino)?;
        let name = name.to_os_string();
        self.record(NsOp::Remove { parent, name, ino }, vec![parent]);
        Ok(())
    }

    fn rename(
        &mut self,
        (p1, n1): (u64, &OsStr),
        (p2, n2): (u64, &OsStr),
        flags: RenameFlags,
    ) -> io::Result<()> {
        if hidden(p1, n1) || hidden(p2, n2) {
            return Err(errno(libc::EPERM));
        }
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(errno(libc::EINVAL));
        }
        let src = self.existing_child(p1, n1)?;
        let dst = self.child(p2, n2)?;
        if dst == Some(src) {
            return Ok(());
        }
        let src_dir = self.inode(src)?.kind == FileType::Directory;
        if let Some(dst) = dst {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(errno(libc::EEXIST));
            }
            let dst_dir = self.inode(dst)?.kind == FileType::Directory;
            if src_dir && !dst_dir {
                return Err(errno(libc::ENOTDIR));
            }
            if !src_dir && dst_dir {
                return Err(errno(libc::EISDIR));
            }
            if dst_dir && fs::read_dir(self.path(dst)?)?.next().is_some() {
                return Err(errno(libc::ENOTEMPTY));
            }
        }
        if src_dir {
            // A directory cannot move below itself.
            let mut cur = p2;
            loop {
                if cur == src {
                    return Err(errno(libc::EINVAL));
                }
                if cur == ROOT {
                    break;
                }
                cur = self.inode(cur)?.parent;
            }
        }
        // The replaced inode goes to the attic first, so a cut can bring it back.
        if let Some(dst) = dst {
            self.move_to_attic(dst)?;
        }
        if let Err(e) = self.move_inode(src, p2, n2, false) {
            if let Some(dst) = dst {
                // Best effort: put the target back where it was.
                let _ = self.move_inode(dst, p2, n2, false);
            }
            return Err(e);
        }
        let op = NsOp::Rename {
            ino: src,
            from: (p1, n1.to_os_string()),
            to: (p2, n2.to_os_string()),
            replaced: dst,
        };
        self.record(op, vec![p1, p2]);
        Ok(())
    }

    fn setattr(&mut self, ino: u64, a: SetAttr) -> io::Result<FileAttr> {
        let path = self.path(ino)?;
        if let Some(mode) = a.mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if a.uid.is_some() || a.gid.is_some() {
            std::os::unix::fs::lchown(&path, a.uid, a.gid)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| errno(libc::EINVAL))?;
            let times = [timespec(a.atime), timespec(a.mtime)];
            // SAFETY: `c` is a valid path and `times` two timespecs, both alive for the call.
            let rc = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(size) = a.size {
            self.set_size(ino, size)?;
        }
        self.attr(ino)
    }

    fn readdir(&mut self, ino: u64) -> io::Result<Vec<(u64, FileType, OsString)>> {
        let path = self.path(ino)?;
        let parent = self.inode(ino)?.parent;
        let mut names = Vec::new();
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name();
            if !hidden(ino, &name) {
                let kind = FileType::from_std(entry.file_type()?).unwrap_or(FileType::RegularFile);
                names.push((name, kind));
            }
        }
        // Sorted, so offsets stay stable between the calls of one listing.
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, kind) in names {
            let child = match self.children.get(&ino).and_then(|c| c.get(&name)) {
                Some(&c) => c,
                None => self.alloc(ino, &name, kind),
            };
            out.push((child, kind, name));
        }
        Ok(out)
    }

    fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        for inode in self.inodes.values() {
            if let Some(d) = &inode.data {
                for (&idx, p) in &d.pages {
                    let n = d.page_len(idx);
                    if p.lost {
                        s.lost_bytes += n;
                    } else {
                        s.pending_bytes += n;
                    }
                }
            }
        }
        s.pending_dir_ops = self.log.len() as u64;
        s
    }

    fn cut(&mut self, mode: CutMode, seed: u64) -> io::Result<CutReport> {
        let mut rng = SplitMix64(seed);
        let mut report = CutReport::default();

        // Every unsynced event, in the order it was last written. `None` is a truncate.
        let mut events: Vec<(u64, u64, Option<u64>)> = Vec::new();
        for (&ino, inode) in &self.inodes {
            if let Some(d) = &inode.data {
                report.files += 1;
                for (&idx, p) in &d.pages {
                    if !p.lost {
                        events.push((p.seq, ino, Some(idx)));
                    }
                }
                if d.truncated() {
                    events.push((d.trunc_seq, ino, None));
                }
            }
        }
        events.sort_unstable();
        // Bytes of each event that reach the disk: PAGE = all, 0 = none, else a torn prefix.
        let mut fate: HashMap<(u64, Option<u64>), u64> = HashMap::new();
        let torn_at = match mode {
            CutMode::TornPrefix if !events.is_empty() => rng.below(events.len() as u64) as usize,
            _ => usize::MAX,
        };
        for (i, &(_, ino, page)) in events.iter().enumerate() {
            let keep = match mode {
                CutMode::DropUnsynced | CutMode::LoseUnsyncedDirEntries => 0,
                CutMode::KeepRandomSubset => (rng.next() & 1) * PAGE,
                CutMode::TornPrefix if i < torn_at => PAGE,
                CutMode::TornPrefix if i == torn_at && page.is_some() => {
                    SECTOR * (1 + rng.below(PAGE / SECTOR - 1))
                }
                CutMode::TornPrefix => 0,
            };
            fate.insert((ino, page), keep);
        }

        let mut dirty: Vec<u64> = self
            .inodes
            .iter()
            .filter(|(_, i)| i.data.is_some())
            .map(|(&ino, _)| ino)
            .collect();
        dirty.sort_unstable();
        for ino in dirty {
            let inode = self.inode_mut(ino)?;
            let (Some(file), Some(d)) = (&inode.file, inode.data.take()) else {
                continue;
            };
            if d.truncated() {
                if fate.get(&(ino, None)).copied().unwrap_or(0) > 0 {
                    file.set_len(d.floor)?;
                    report.truncates_kept += 1;
                } else {
                    report.truncates_dropped += 1;
                }
            }
            for (&idx, p) in &d.pages {
                let len = d.page_len(idx);
                let keep = if p.lost {
                    0
                } else {
                    fate.get(&(ino, Some(idx))).copied().unwrap_or(0)
                };
                let n = keep.min(len);
                if n > 0 {
                    file.write_all_at(&p.buf[..n as usize], idx * PAGE)?;
                }
                report.bytes_kept += n;
                report.bytes_dropped += len - n;
                match keep {
                    0 => report.pages_dropped += 1,
                    PAGE => report.pages_kept += 1,
                    _ => report.pages_torn += 1,
                }
            }
        }

        report.dir_ops_kept = self.durable_ops;
        self.durable_ops = 0;
        let log = std::mem::take(&mut self.log);
        if mode == CutMode::LoseUnsyncedDirEntries {
            report.dir_ops_undone = log.len();
            self.undo(log)?;
        } else {
            report.dir_ops_kept += log.len();
        }

        // What is still in the attic was removed for good.
        let attic: Vec<u64> = self
            .children
            .get(&ATTIC_INO)
            .map(|c| c.values().copied().collect())
            .unwrap_or_default();
        for ino in attic {
            self.remove_backing(ino)?;
        }
        self.stats.cuts += 1;
        Ok(report)
    }

    /// Undoes namespace operations, newest first.
    fn undo(&mut self, log: Vec<LogEntry>) -> io::Result<()> {
        // Inodes brought back from the attic get new numbers; older entries name the old ones.
        let mut renumbered: HashMap<u64, u64> = HashMap::new();
        let r = |m: &HashMap<u64, u64>, ino: u64| m.get(&ino).copied().unwrap_or(ino);
        for entry in log.into_iter().rev() {
            match entry.op {
                NsOp::Create { ino } | NsOp::Mkdir { ino } => {
                    self.remove_backing(r(&renumbered, ino))?;
                }
                NsOp::Remove { parent, name, ino } => {
                    let parent = r(&renumbered, parent);
                    let new = self.move_inode(r(&renumbered, ino), parent, &name, true)?;
                    renumbered.insert(ino, new);
                }
                NsOp::Rename {
                    ino,
                    from,
                    to,
                    replaced,
                } => {
                    let (ino, p1, p2) = (
                        r(&renumbered, ino),
                        r(&renumbered, from.0),
                        r(&renumbered, to.0),
                    );
                    self.move_inode(ino, p1, &from.1, false)?;
                    if let Some(old) = replaced {
                        let new = self.move_inode(r(&renumbered, old), p2, &to.1, true)?;
                        renumbered.insert(old, new);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The attributes a `setattr` may change that PowerFs supports.
struct SetAttr {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

/// The fuser side: every handler locks the state, does its work and replies.
struct Driver {
    shared: Arc<Shared>,
}

impl Driver {
    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

fn entry(reply: ReplyEntry, res: io::Result<FileAttr>) {
    match res {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(Errno::from(e)),
    }
}

fn empty(reply: ReplyEmpty, res: io::Result<()>) {
    match res {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(Errno::from(e)),
    }
}

/// Runs a handler so that a bug in it answers EIO (the reply's drop does that) instead of
/// killing the session thread, which would hang every later request on the mount.
fn guarded(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        eprintln!("powerfs: a handler panicked; the request got EIO");
    }
}

impl Filesystem for Driver {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded(|| {
            let mut st = self.state();
            let res = st
                .existing_child(parent.0, name)
                .and_then(|ino| st.attr(ino));
            entry(reply, res);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded(|| match self.state().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(Errno::from(e)),
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded(|| {
            let a = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            };
            match self.state().setattr(ino.0, a) {
                Ok(attr) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(Errno::from(e)),
            }
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        guarded(|| {
            entry(reply, self.state().mkdir(parent.0, name, mode));
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(|| {
            empty(reply, self.state().remove(parent.0, name, false));
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(|| {
            empty(reply, self.state().remove(parent.0, name, true));
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        guarded(|| {
            let res = self
                .state()
                .rename((parent.0, name), (newparent.0, newname), flags);
            empty(reply, res);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded(|| {
            let mut st = self.state();
            let res = (|| {
                if st.inode(ino.0)?.kind == FileType::Directory {
                    return Err(errno(libc::EISDIR));
                }
                // Only with atomic_o_trunc would the kernel pass O_TRUNC; honour it all the same.
                if flags.0 & libc::O_TRUNC != 0 && flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
                    st.set_size(ino.0, 0)?;
                }
                let fh = st.next_fh;
                st.next_fh += 1;
                Ok(fh)
            })();
            match res {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
                Err(e) => reply.error(Errno::from(e)),
            }
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guarded(|| match self.state().create(parent.0, name, mode, flags) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(Errno::from(e)),
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guarded(|| match self.state().read(ino.0, offset, size) {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(Errno::from(e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded(|| {
            let mut st = self.state();
            let res = (|| {
                let mut offset = offset;
                if flags.0 & libc::O_APPEND != 0 {
                    // Our size is the truth; the kernel's may predate a cut.
                    st.ensure_data(ino.0)?;
                    offset = st.file_data(ino.0)?.1.size;
                }
                st.write(ino.0, offset, data)?;
                u32::try_from(data.len()).map_err(|_| errno(libc::EINVAL))
            })();
            match res {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(Errno::from(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded(|| {
            // close() promises nothing.
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded(|| {
            self.shared.delay();
            let fail = self.shared.take_failure();
            let mut st = self.state();
            if datasync {
                st.stats.fdatasyncs += 1;
            } else {
                st.stats.fsyncs += 1;
            }
            if fail {
                st.stats.failed_fsyncs += 1;
                let res = st.fail_fsync(ino.0).and(Err(errno(libc::EIO)));
                empty(reply, res);
            } else {
                empty(reply, st.fsync(ino.0));
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded(|| match self.state().inode(ino.0).map(|i| i.kind) {
            Ok(FileType::Directory) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(Errno::from(e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guarded(|| match self.state().readdir(ino.0) {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(Errno::from(e)),
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded(|| {
            self.shared.delay();
            let mut st = self.state();
            st.stats.fsyncdirs += 1;
            st.fsyncdir(ino.0);
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded(|| {
            let backing = self.state().backing.clone();
            let res = CString::new(backing.as_os_str().as_bytes())
                .map_err(|_| errno(libc::EINVAL))
                .and_then(|c| {
                    // SAFETY: statvfs is plain data; all-zero is a valid value to be overwritten.
                    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
                    // SAFETY: `c` is a valid path and `s` a valid out-pointer for the call.
                    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0 {
                        Ok(s)
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            match res {
                Ok(s) => reply.statfs(
                    s.f_blocks,
                    s.f_bfree,
                    s.f_bavail,
                    s.f_files,
                    s.f_ffree,
                    u32::try_from(s.f_bsize).unwrap_or(PAGE as u32),
                    u32::try_from(s.f_namemax).unwrap_or(255),
                    u32::try_from(s.f_frsize).unwrap_or(PAGE as u32),
                ),
                Err(e) => reply.error(Errno::from(e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded(|| {
            let mut st = self.state();
            let res = match mode {
                // Extends the size, unsynced like a truncate; the new range reads as zeros.
                0 => offset
                    .checked_add(length)
                    .ok_or_else(|| errno(libc::EFBIG))
                    .and_then(|end| {
                        st.ensure_data(ino.0)?;
                        let size = st.file_data(ino.0)?.1.size;
                        if end > size {
                            st.set_size(ino.0, end)
                        } else {
                            Ok(())
                        }
                    }),
                // Reserving space changes nothing a reader or a cut can see.
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                _ => Err(errno(libc::EOPNOTSUPP)),
            };
            empty(reply, res);
        });
    }
}
