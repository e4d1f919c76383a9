//! `update` of the binary detectors (DDM, EDDM, HDDM_A, HDDM_W) never allocates.
//!
//! A counting global allocator wraps the system one; this file holds a single test so no
//! other test thread allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use visutility::policy::detect::ddm::{Ddm, DdmParams};
use visutility::policy::detect::eddm::{Eddm, EddmParams};
use visutility::policy::detect::hddm_a::{HddmA, HddmAParams};
use visutility::policy::detect::hddm_w::{HddmW, HddmWParams};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn update_is_allocation_free() {
    // A stream with bursts so every detector drifts and resets several times.
    let xs: Vec<f64> = (0..200_000u32)
        .map(|i| {
            let burst = (i / 5_000) % 4 == 3;
            let h = i.wrapping_mul(2_654_435_761) >> 24;
            if h % if burst { 2 } else { 10 } == 0 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let mut ddm = Ddm::new(DdmParams::default());
    let mut eddm = Eddm::new(EddmParams::default());
    let mut hddm_a = HddmA::new(HddmAParams {
        two_sided_test: true,
        ..HddmAParams::default()
    });
    let mut hddm_w = HddmW::new(HddmWParams {
        two_sided_test: true,
        ..HddmWParams::default()
    });
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut drifts = [0usize; 4];
    for &x in &xs {
        drifts[0] += usize::from(ddm.update(x) == visutility::policy::detect::Signal::Drift);
        drifts[1] += usize::from(eddm.update(x) == visutility::policy::detect::Signal::Drift);
        drifts[2] += usize::from(hddm_a.update(x) == visutility::policy::detect::Signal::Drift);
        drifts[3] += usize::from(hddm_w.update(x) == visutility::policy::detect::Signal::Drift);
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "update allocated");
    assert!(
        drifts.iter().all(|&d| d > 0),
        "every detector reset at least once: {drifts:?}"
    );
}
