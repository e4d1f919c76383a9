//! Tests of PowerFs itself: each asserts an outcome that breaks if its semantics do.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::powerfs::{CutMode, PowerFs, SplitMix64};

const PAGE: usize = 4096;

/// A mounted PowerFs over a fresh backing; the file system is dropped (unmounted) before the
/// temporary directory that holds it.
struct Fixture {
    fs: PowerFs,
    _dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&backing).expect("mkdir backing");
        fs::create_dir(&mnt).expect("mkdir mnt");
        let fs = PowerFs::mount(&backing, &mnt).expect("mount powerfs");
        Fixture { fs, _dir: dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.fs.mountpoint().join(rel)
    }

    fn backing(&self, rel: &str) -> PathBuf {
        self.fs.backing().join(rel)
    }

    fn cut(&self, mode: CutMode, seed: u64) -> crate::powerfs::CutReport {
        self.fs.cut(mode, seed).expect("cut")
    }
}

fn rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open read-write")
}

fn sync_dir(path: &Path) {
    File::open(path)
        .and_then(|d| d.sync_all())
        .expect("fsync directory");
}

/// A file with durable content and a durable directory entry.
fn durable_file(fx: &Fixture, rel: &str, content: &[u8]) {
    let f = rw(&fx.path(rel));
    f.write_all_at(content, 0).expect("write");
    f.sync_all().expect("fsync");
    let parent = fx.path(rel).parent().map(Path::to_path_buf);
    sync_dir(&parent.expect("parent"));
}

#[test]
fn unsynced_writes_are_dropped_and_synced_writes_survive_a_cut() {
    let fx = Fixture::new();
    let a = fx.path("a");
    let mut f = rw(&a);
    f.write_all(b"durable").expect("write");
    f.sync_all().expect("fsync");
    f.write_all(b" volatile").expect("write");
    fs::write(fx.path("b"), b"never synced").expect("write b");

    // Read-your-writes before the cut, through another descriptor too.
    assert_eq!(fs::read(&a).expect("read a"), b"durable volatile");
    assert_eq!(fs::read(fx.path("b")).expect("read b"), b"never synced");
    assert!(fx.fs.stats().pending_bytes > 0);

    let report = fx.cut(CutMode::DropUnsynced, 1);
    assert_eq!(fs::read(&a).expect("read a"), b"durable");
    // The entry of `b` stays in this mode; its data was never durable.
    assert_eq!(fs::read(fx.path("b")).expect("read b"), b"");
    // The descriptor opened before the cut sees the cut at once (no page cache).
    let mut buf = [0u8; 64];
    let n = f.read_at(&mut buf, 0).expect("read_at");
    assert_eq!(&buf[..n], b"durable");
    assert_eq!(fs::metadata(&a).expect("stat").len(), 7);
    // Page granularity: the dirty page of `a` holds all of its 16 bytes, `b` its 12.
    assert_eq!(report.bytes_dropped, 16 + 12);
    assert_eq!((report.files, report.pages_dropped), (2, 2));
    assert_eq!(report.bytes_kept, 0);
    assert_eq!(fx.fs.stats().pending_bytes, 0);
    assert_eq!(fs::read(fx.backing("a")).expect("backing"), b"durable");
}

/// Random pwrites, truncates and syncs checked against a model: readers always see the latest
/// writes, and after a cut exactly what the last fsync saw.
#[test]
fn reads_follow_a_model_of_writes_truncates_and_syncs() {
    let fx = Fixture::new();
    for seed in 0..3u64 {
        let path = fx.path(&format!("model{seed}"));
        let f = rw(&path);
        let mut rng = SplitMix64(seed);
        let (mut visible, mut durable) = (Vec::<u8>::new(), Vec::<u8>::new());
        for step in 0..300 {
            match rng.below(20) {
                0..=10 => {
                    let off = rng.below(visible.len() as u64 + 3 * PAGE as u64) as usize;
                    let len = 1 + rng.below(3 * PAGE as u64) as usize;
                    let byte = (rng.next() % 251) as u8 + 1;
                    let data = vec![byte; len];
                    f.write_all_at(&data, off as u64).expect("pwrite");
                    if visible.len() < off + len {
                        visible.resize(off + len, 0);
                    }
                    visible[off..off + len].copy_from_slice(&data);
                }
                11..=15 => {
                    let len = rng.below(visible.len() as u64 + 2 * PAGE as u64) as usize;
                    f.set_len(len as u64).expect("ftruncate");
                    visible.resize(len, 0);
                }
                16 => {
                    f.sync_data().expect("fdatasync");
                    durable = visible.clone();
                }
                17 => {
                    f.sync_all().expect("fsync");
                    durable = visible.clone();
                }
                _ => {
                    let off = rng.below(visible.len() as u64 + 1);
                    let mut buf = vec![0u8; 2 * PAGE];
                    let n = f.read_at(&mut buf, off).expect("pread");
                    let end = visible.len().min(off as usize + buf.len());
                    assert_eq!(
                        &buf[..n],
                        &visible[off as usize..end],
                        "seed {seed} step {step}"
                    );
                }
            }
            assert_eq!(
                fs::read(&path).expect("read"),
                visible,
                "seed {seed} step {step}"
            );
            assert_eq!(
                fs::metadata(&path).expect("stat").len(),
                visible.len() as u64
            );
        }
        fx.cut(CutMode::DropUnsynced, seed);
        assert_eq!(
            fs::read(&path).expect("read"),
            durable,
            "seed {seed} after cut"
        );
        assert_eq!(
            fs::read(fx.backing(&format!("model{seed}"))).expect("read"),
            durable
        );
    }
}

#[test]
fn a_synced_new_file_loses_its_entry_when_its_directory_was_not_fsynced() {
    let fx = Fixture::new();
    fs::create_dir(fx.path("d")).expect("mkdir");
    sync_dir(fx.fs.mountpoint());
    durable_file(&fx, "d/kept", b"old");

    let f = rw(&fx.path("d/new"));
    f.write_all_at(b"fsynced data", 0).expect("write");
    f.sync_all().expect("fsync file, not its directory");
    fs::create_dir(fx.path("e")).expect("mkdir without a root fsync");
    drop(f);

    let report = fx.cut(CutMode::LoseUnsyncedDirEntries, 0);
    assert!(
        !fx.path("d/new").exists(),
        "entry of an unsynced directory survived"
    );
    assert!(!fx.backing("d/new").exists());
    assert!(!fx.path("e").exists(), "unsynced mkdir survived");
    assert_eq!(fs::read(fx.path("d/kept")).expect("read"), b"old");
    assert_eq!(report.dir_ops_undone, 2);

    // The same history under a mode that keeps namespace operations keeps the file.
    let f = rw(&fx.path("d/new"));
    f.write_all_at(b"fsynced data", 0).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    fx.cut(CutMode::DropUnsynced, 0);
    assert_eq!(fs::read(fx.path("d/new")).expect("read"), b"fsynced data");
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone_at_a_cut() {
    let fx = Fixture::new();
    durable_file(&fx, "target", b"old");
    durable_file(&fx, "tmp", b"new");

    fs::rename(fx.path("tmp"), fx.path("target")).expect("rename");
    assert_eq!(fs::read(fx.path("target")).expect("read"), b"new");
    assert!(!fx.path("tmp").exists());
    fx.cut(CutMode::LoseUnsyncedDirEntries, 0);
    assert_eq!(fs::read(fx.path("target")).expect("read"), b"old");
    assert_eq!(fs::read(fx.path("tmp")).expect("read"), b"new");

    // With the directory fsynced the replacement is durable.
    fs::rename(fx.path("tmp"), fx.path("target")).expect("rename");
    sync_dir(fx.fs.mountpoint());
    fx.cut(CutMode::LoseUnsyncedDirEntries, 0);
    assert_eq!(fs::read(fx.path("target")).expect("read"), b"new");
    assert!(!fx.path("tmp").exists());

    // An unsynced unlink comes back too.
    fs::remove_file(fx.path("target")).expect("unlink");
    fx.cut(CutMode::LoseUnsyncedDirEntries, 0);
    assert_eq!(fs::read(fx.path("target")).expect("read"), b"new");

    // Across directories, both must be fsynced.
    for d in ["d1", "d2"] {
        fs::create_dir(fx.path(d)).expect("mkdir");
    }
    sync_dir(fx.fs.mountpoint());
    durable_file(&fx, "d1/x", b"x");
    fs::rename(fx.path("d1/x"), fx.path("d2/x")).expect("rename");
    sync_dir(&fx.path("d2"));
    fx.cut(CutMode::LoseUnsyncedDirEntries, 0);
    assert!(fx.path("d1/x").exists() && !fx.path("d2/x").exists());
    fs::rename(fx.path("d1/x"), fx.path("d2/x")).expect("rename");
    sync_dir(&fx.path("d2"));
    sync_dir(&fx.path("d1"));
    fx.cut(CutMode::LoseUnsyncedDirEntries, 0);
    assert!(!fx.path("d1/x").exists() && fx.path("d2/x").exists());
}

/// Which of 64 overwritten pages a `KeepRandomSubset` cut with `seed` keeps.
fn random_subset(seed: u64) -> Vec<bool> {
    const PAGES: usize = 64;
    let fx = Fixture::new();
    durable_file(&fx, "f", &vec![0xAA; PAGES * PAGE]);
    let f = rw(&fx.path("f"));
    for i in 0..PAGES {
        f.write_all_at(&[i as u8 + 1; PAGE], (i * PAGE) as u64)
            .expect("pwrite");
    }
    let report = fx.cut(CutMode::KeepRandomSubset, seed);
    let content = fs::read(fx.path("f")).expect("read");
    assert_eq!(content.len(), PAGES * PAGE);
    let kept: Vec<bool> = content
        .chunks(PAGE)
        .enumerate()
        .map(|(i, page)| {
            if page.iter().all(|&b| b == i as u8 + 1) {
                true
            } else if page.iter().all(|&b| b == 0xAA) {
                false
            } else {
                panic!("page {i} is neither old nor new")
            }
        })
        .collect();
    assert_eq!(kept.iter().filter(|&&k| k).count(), report.pages_kept);
    assert_eq!(report.pages_kept + report.pages_dropped, PAGES);
    kept
}

#[test]
fn random_subset_keeps_some_but_not_all_pages_deterministically_per_seed() {
    let first = random_subset(7);
    let kept = first.iter().filter(|&&k| k).count();
    assert!(
        kept > 0 && kept < first.len(),
        "kept {kept} of {}",
        first.len()
    );
    assert_eq!(random_subset(7), first, "same seed, different crash state");
    assert_ne!(random_subset(8), first, "different seeds, same crash state");
}

#[test]
fn torn_prefix_keeps_an_append_log_up_to_one_torn_page() {
    const PAGES: usize = 16;
    for seed in 0..6 {
        let fx = Fixture::new();
        durable_file(&fx, "log", b"");
        let f = OpenOptions::new()
            .append(true)
            .open(fx.path("log"))
            .expect("open append");
        let written: Vec<u8> = (0..PAGES * PAGE).map(|i| (i % 251) as u8).collect();
        for page in written.chunks(PAGE) {
            (&f).write_all(page).expect("append");
        }
        let report = fx.cut(CutMode::TornPrefix, seed);
        let content = fs::read(fx.path("log")).expect("read");
        let (whole, torn) = (content.len() / PAGE, content.len() % PAGE);
        assert_eq!(report.pages_torn, 1, "seed {seed}");
        assert_eq!(report.pages_kept, whole, "seed {seed}");
        assert!(torn > 0 && torn % 512 == 0, "seed {seed}: torn part {torn}");
        assert_eq!(
            content,
            written[..content.len()],
            "seed {seed}: not a prefix"
        );
    }
}

#[test]
fn torn_prefix_follows_write_order_not_file_order() {
    const PAGES: usize = 12;
    for seed in 0..6 {
        let fx = Fixture::new();
        durable_file(&fx, "f", &vec![0xAA; PAGES * PAGE]);
        let f = rw(&fx.path("f"));
        let mut order: Vec<usize> = (0..PAGES).collect();
        let mut rng = SplitMix64(seed + 100);
        for i in (1..PAGES).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &p in &order {
            f.write_all_at(&[p as u8 + 1; PAGE], (p * PAGE) as u64)
                .expect("pwrite");
        }
        let report = fx.cut(CutMode::TornPrefix, seed);
        let content = fs::read(fx.path("f")).expect("read");
        // In write order: new pages, then one page with a new prefix, then old pages.
        let mut phase = 0;
        for &p in &order {
            let page = &content[p * PAGE..(p + 1) * PAGE];
            let new = page.iter().take_while(|&&b| b == p as u8 + 1).count();
            assert!(
                page[new..].iter().all(|&b| b == 0xAA),
                "seed {seed} page {p}"
            );
            phase = match (phase, new) {
                (0, PAGE) => 0,
                (0, n) if n > 0 && n % 512 == 0 => 1,
                (1, 0) | (2, 0) => 2,
                _ => panic!("seed {seed}: page {p} keeps {new} bytes in phase {phase}"),
            };
        }
        assert_eq!(phase > 0, report.pages_torn == 1, "seed {seed}");
    }
}

#[test]
fn an_injected_fsync_eio_loses_the_dirty_pages_for_good() {
    let fx = Fixture::new();
    durable_file(&fx, "f", b"v1");
    let f = rw(&fx.path("f"));
    f.write_all_at(b"v2", 0).expect("write");
    fx.fs.fail_next_fsyncs(1);
    let err = f.sync_all().expect_err("injected fsync failure");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // fsyncgate: the retry succeeds, the data is still readable, and yet it is not durable.
    f.sync_all().expect("second fsync");
    assert_eq!(fs::read(fx.path("f")).expect("read"), b"v2");
    let stats = fx.fs.stats();
    assert_eq!(stats.failed_fsyncs, 1);
    assert_eq!(stats.fsyncs, 3, "{stats:?}");
    assert!(stats.lost_bytes > 0);
    fx.cut(CutMode::KeepRandomSubset, 3);
    assert_eq!(fs::read(fx.path("f")).expect("read"), b"v1");

    // Later writes are durable again; an fdatasync failure counts too.
    f.write_all_at(b"v3", 0).expect("write");
    fx.fs.fail_next_fsyncs(1);
    assert_eq!(
        f.sync_data().map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO))
    );
    f.write_all_at(b"v4", 0).expect("write");
    f.sync_data().expect("fdatasync");
    fx.cut(CutMode::DropUnsynced, 0);
    assert_eq!(fs::read(fx.path("f")).expect("read"), b"v4");
    assert_eq!(fx.fs.stats().failed_fsyncs, 2);
}

#[test]
fn fsync_delay_slows_every_kind_of_fsync() {
    let fx = Fixture::new();
    let f = rw(&fx.path("f"));
    f.write_all_at(b"x", 0).expect("write");
    let delay = Duration::from_millis(300);
    fx.fs.set_fsync_delay(delay);
    let start = Instant::now();
    f.sync_all().expect("fsync");
    f.sync_data().expect("fdatasync");
    sync_dir(fx.fs.mountpoint());
    assert!(start.elapsed() >= delay * 3, "took {:?}", start.elapsed());
    fx.fs.set_fsync_delay(Duration::ZERO);
    let start = Instant::now();
    f.sync_all().expect("fsync");
    assert!(start.elapsed() < delay, "took {:?}", start.elapsed());
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes()).expect("path");
    let to = CString::new(to.as_os_str().as_bytes()).expect("path");
    // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn posix_operations_a_database_needs_behave() {
    let fx = Fixture::new();
    durable_file(&fx, "a", b"aaaa");
    durable_file(&fx, "b", b"bb");

    let excl = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(fx.path("a"));
    assert_eq!(
        excl.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::AlreadyExists)
    );

    // O_TRUNC is an unsynced truncate.
    File::create(fx.path("a")).expect("open O_TRUNC");
    assert_eq!(fs::metadata(fx.path("a")).expect("stat").len(), 0);

    let err = renameat2(&fx.path("b"), &fx.path("a"), libc::RENAME_NOREPLACE);
    assert_eq!(err.map_err(|e| e.raw_os_error()), Err(Some(libc::EEXIST)));

    // O_APPEND appends at the size PowerFs knows.
    let mut app = OpenOptions::new()
        .append(true)
        .open(fx.path("b"))
        .expect("open append");
    app.write_all(b"cc").expect("append");
    assert_eq!(fs::read(fx.path("b")).expect("read"), b"bbcc");

    fs::create_dir(fx.path("d")).expect("mkdir");
    fs::write(fx.path("d/x"), b"x").expect("write");
    let err = fs::remove_dir(fx.path("d")).expect_err("rmdir of a non-empty directory");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    fs::remove_file(fx.path("d/x")).expect("unlink");
    fs::remove_dir(fx.path("d")).expect("rmdir");

    let mut names: Vec<String> = fs::read_dir(fx.fs.mountpoint())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"], "the attic must stay hidden");
    assert!(fs::create_dir(fx.path(".powerfs-attic")).is_err());

    // fallocate: mode 0 extends (unsynced), KEEP_SIZE is accepted, hole punching is not.
    let f = rw(&fx.path("b"));
    // SAFETY: plain syscalls on a descriptor that lives for the whole block.
    let (grow, keep, punch) = unsafe {
        (
            libc::fallocate(f.as_raw_fd(), 0, 0, 10_000),
            libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 20_000),
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                10,
            ),
        )
    };
    assert_eq!((grow, keep, punch), (0, 0, -1));
    let content = fs::read(fx.path("b")).expect("read");
    assert_eq!(content.len(), 10_000);
    assert_eq!(&content[..4], b"bbcc");
    assert!(content[4..].iter().all(|&b| b == 0));

    // statfs answers from the backing.
    let mnt = CString::new(fx.fs.mountpoint().as_os_str().as_bytes()).expect("path");
    // SAFETY: statvfs is plain data; the call fills it from a valid path.
    let rc = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        libc::statvfs(mnt.as_ptr(), &mut s)
    };
    assert_eq!(rc, 0);

    // A chmod goes through; the cut restores the unsynced truncate of `a`.
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    };
    fs::set_permissions(
        fx.path("a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .expect("chmod");
    assert_eq!(mode(&fx.path("a")), 0o640);
    drop((f, app));
    fx.cut(CutMode::DropUnsynced, 0);
    assert_eq!(fs::read(fx.path("a")).expect("read"), b"aaaa");
    assert_eq!(fs::read(fx.path("b")).expect("read"), b"bb");

    // Exclusive create through the mount works as on any file system.
    let new = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(fx.path("c"));
    assert!(new.is_ok());
}
