//! A flushed log memtable leaves the heap, not only the storage engine's count of memtable
//! bytes (issue #24). In its own test binary: it reads the process's live heap, which other
//! tests running beside it would move.

use std::time::{Duration, Instant};

use ballast_coordinator::log::raft::data_dir::DataDir;

fn live_heap() -> i64 {
    ballast_telemetry::memory::heap()
        .expect("glibc reports its heap")
        .live_bytes as i64
}

#[test]
#[cfg_attr(
    not(all(target_os = "linux", target_env = "gnu")),
    ignore = "reads glibc's heap statistics"
)]
fn the_logs_memtable_leaves_the_heap_once_flushed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = DataDir::open(dir.path()).expect("opens");
    let before = live_heap();
    // About 1.5 MB of entries: under the log memtable's 2 MiB limit, so fjall would keep them
    // in memory on its own.
    for index in 0..1_500u64 {
        store
            .log
            .insert(index.to_be_bytes(), vec![7u8; 1_000])
            .expect("appends");
    }
    let written = live_heap() - before;
    assert!(
        written > 1_000_000,
        "the entries took only {written} bytes of heap"
    );

    store
        .release_log_memory()
        .expect("hands the memtable to the flush worker");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let flushed = store.write_buffer_bytes() < 64 * 1024;
        let held = live_heap() - before;
        if flushed && held < written / 4 {
            eprintln!("heap held after the flush: {held} of {written} bytes");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after the flush was asked for, the heap still holds {held} of the {written} \
             bytes the entries took (memtables count {} bytes)",
            store.write_buffer_bytes()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
