//! Decoding a well-formed line and framing a stream never touch the heap.
//!
//! A counting global allocator wraps the system one; this file holds a single test so no other
//! test thread allocates while it counts.
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use visutility::protocol::{Frame, Line, LineReader, decode_line};

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

const LINES: &[&str] = &[
    r#"{"model_id": "fraud-v3", "ts": 1764172800.25, "drift_score": 0.12, "accuracy": 0.93, "error": 0, "value": 4.2, "metrics": {"latency_ms": 12.5}, "meta": {"any": "json"}}"#,
    r#"{"model_id":"a/b:c","value":0.30000000000000004,"metrics":{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8}}"#,
    r#"{"model_id":"m","error":true,"meta":"text","ts":1e300}"#,
    r#"{"op":"flush"}"#,
    "   ",
];

#[test]
fn decode_and_framing_do_not_allocate() {
    let mut stream = Vec::new();
    for i in 0..20_000 {
        stream.extend_from_slice(LINES[i % LINES.len()].as_bytes());
        stream.extend_from_slice(if i % 2 == 0 { b"\n" } else { b"\r\n" });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut reader = LineReader::new(&stream[..], 1024);

    let start = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        for l in LINES {
            assert!(decode_line(black_box(l.as_bytes())).is_ok());
        }
    }
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed) - start,
        0,
        "decode_line allocated"
    );
    // The read buffer is sized once per connection (it may grow once to its bound), and the
    // runtime sets itself up: warm up on the first batches, then count the steady state.
    let (mut events, mut frames) = (0, 0);
    let mut before = 0;
    rt.block_on(async {
        while reader.fill().await.unwrap() {
            if frames > 0 && before == 0 {
                before = ALLOCS.load(Ordering::Relaxed);
            }
            for f in reader.batch() {
                frames += 1;
                if let Frame::Line(l) = f {
                    if let Ok(Line::Event(e)) = decode_line(l) {
                        black_box(&e);
                        events += 1;
                    }
                }
            }
        }
    });
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!((frames, events), (20_000, 12_000));
    assert_eq!(after - before, 0, "framing allocated in the steady state");
}
