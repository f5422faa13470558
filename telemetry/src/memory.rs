//! The heap of a long-running Ballast process: glibc's allocator kept to a few arenas, freed
//! memory handed back to the operating system, and the live heap reported as metrics.
//!
//! glibc keeps memory freed inside its arenas (after a large batch is applied, a snapshot
//! built or installed, a burst of calls answered) and RSS stays at the high-water mark;
//! measured on a replica holding a 100M-machine fleet's state, trimming took a restarted
//! replica from 81 to 53 MiB. Other allocators (mimalloc, jemalloc) were measured and held
//! more, not less.

use std::future::Future;
use std::time::Duration;

/// How often freed memory is returned and the heap gauges refreshed.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Blocks this large or larger get pages of their own, returned whole when freed.
///
/// glibc starts at this threshold but raises it to the size of each mapped block that is
/// freed (up to 32 MiB), after which large short-lived buffers (a 10,000-domain request, its
/// Raft entry, a snapshot's encoding) are carved from the arenas. Freed, they leave holes
/// that the long-lived allocations made in between keep resident. Setting it fixes it: on
/// three replicas loaded with the 100M-machine fleet's state, private memory fell from 40.4 to
/// 35.6 MB for the same live heap (ADR 0017).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Keeps glibc from giving each thread that allocates its own arena (up to 8 per core), each
/// holding its own freed memory: a Ballast process's heap is long-lived tables plus bursts of
/// short-lived buffers, and with the default arena count those bursts stay resident per
/// thread. Also fixes the threshold above which a block is mapped on its own
/// (128 KiB). Call before the async runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns freed heap pages to the OS now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds as free; it has no
    // preconditions and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Unmaps the pages of this process's program file and of the shared libraries it loaded
/// (libc, libm, the dynamic loader) that it maps read-only and never wrote (code, read-only
/// data): the kernel maps them back from the page cache, where they stay, on the next use.
/// Returns the resident bytes unmapped.
///
/// Why: a process's resident code is more than the code it runs. Start-up code (flags, config,
/// TLS and storage set-up) stays mapped after it ran, and a page fault on code maps the whole
/// page-cache folio around the page, used or not (112 KB per fault measured on Linux 6.18). On
/// an idle `ballast-coord` (release build) 11.4 MB of its 19.6 MB of code was resident; with
/// this every 5 s, three idle replicas held 45.6 MB together instead of 63.7 (ADR 0017). The
/// shared libraries held another ~2.2 MB a replica (libc 1.4 MB of it); released too, about
/// 0.9 MB of them comes back between two releases.
///
/// Only mappings that are not writable and hold no private copy (`Anonymous: 0` in
/// `/proc/self/smaps`) are unmapped: their pages are the file's page-cache pages, so mapping
/// them again gives the same contents. Relocated data (RELRO) is a private copy and is never
/// touched. Other files mapped read-only (locale data, a dependency's data files) are left
/// alone: code is what a process re-reads at a small, steady rate; their use is unknown.
pub fn release_code() -> std::io::Result<u64> {
    #[cfg(target_os = "linux")]
    {
        let exe = std::fs::read_link("/proc/self/exe")?;
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut released = 0;
        for mapping in clean_code_mappings(&smaps, &exe.to_string_lossy()) {
            // SAFETY: the range is a whole mapping of this process's program file or of a
            // shared library that is
            // read-only and holds no private copy of any page (checked just above from smaps;
            // a read-only mapping cannot gain one). MADV_DONTNEED on such a private file
            // mapping only drops page-table entries: the next access faults the same file
            // bytes back in, including for the code running this call. MADV_RANDOM only
            // turns readahead off for the mapping: a page faulted back is read alone, not
            // with the window around it (see `evict_program_pages`).
            let outcome = unsafe {
                libc::madvise(
                    mapping.start as *mut libc::c_void,
                    mapping.len,
                    libc::MADV_RANDOM,
                );
                libc::madvise(
                    mapping.start as *mut libc::c_void,
                    mapping.len,
                    libc::MADV_DONTNEED,
                )
            };
            if outcome == 0 {
                released += mapping.resident;
            }
        }
        static EVICTED: std::sync::Once = std::sync::Once::new();
        EVICTED.call_once(|| {
            if let Err(e) = evict_program_pages(&exe) {
                tracing::debug!(error = %e, "could not evict the program's pages");
            }
        });
        Ok(released)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Ok(0)
    }
}

/// Drops the pages of the program file that no process maps from the page cache; done once,
/// by the first [`release_code`].
///
/// Why: the kernel maps a whole page-cache folio on a fault, and the program's folios were
/// read with readahead at start (64–256 KB each), so a replica that runs one function of a
/// folio had all of it resident. Read again one page at a time (the code mappings are
/// `MADV_RANDOM` by then), the code a replica keeps running comes back in pages of 4 KB and
/// the 64 KB fault-around maps only neighbours that were themselves run: on one idle replica
/// with its own copy of the program, 5.2 / 4.8 → 3.8 / 3.9 MB of resident program (ADR 0017
/// decision 14). Done once because a dropped page is read from disk again: later releases
/// find the program's pages in the page cache.
#[cfg(target_os = "linux")]
fn evict_program_pages(exe: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(exe)?;
    // SAFETY: advice on a file descriptor this function owns; no memory is touched.
    let outcome = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if outcome == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(outcome))
    }
}

/// A mapping of the program file or a shared library that can be dropped and faulted back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    len: usize,
    /// Resident bytes (`Rss`).
    resident: u64,
}

/// Whether `path` is a shared library (`libc.so.6`, `ld-linux-x86-64.so.2`, `libfoo.so`).
fn is_shared_library(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.ends_with(".so") || file.contains(".so.")
}

/// The mappings of `program` and of shared libraries in `smaps` (the format of
/// `/proc/PID/smaps`) that are private, not writable, and hold no anonymous (copied-on-write)
/// page.
fn clean_code_mappings(smaps: &str, program: &str) -> Vec<CleanMapping> {
    let mut found = Vec::new();
    // The mapping being read, and whether it still qualifies.
    let mut current: Option<(CleanMapping, bool)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((from, to)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(from, 16),
                usize::from_str_radix(to, 16),
            )
        {
            found.extend(current.take().filter(|(_, keep)| *keep).map(|(m, _)| m));
            let perms = fields.next().unwrap_or("");
            // The path is the rest of the line from its first '/': it may hold spaces.
            let path = line.find('/').map(|at| &line[at..]).unwrap_or("");
            let keep = (path == program || is_shared_library(path))
                && perms.len() == 4
                && perms.starts_with('r')
                && !perms.contains('w')
                && perms.ends_with('p');
            let mapping = CleanMapping {
                start,
                len: end.saturating_sub(start),
                resident: 0,
            };
            current = Some((mapping, keep));
            continue;
        }
        let Some((mapping, keep)) = current.as_mut() else {
            continue;
        };
        let kb = fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match first {
            "Rss:" => mapping.resident = kb * 1024,
            // A page copied on write (relocated at load) is anonymous. A dirty page of the
            // file itself (a program written moments ago, not yet on disk) is not: it stays
            // in the page cache and maps back as it is.
            "Anonymous:" if kb > 0 => *keep = false,
            _ => {}
        }
    }
    found.extend(current.filter(|(_, keep)| *keep).map(|(m, _)| m));
    found
}

/// What the allocator holds, by its own count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes handed out and not yet freed (small blocks in the arenas plus large blocks
    /// mapped on their own).
    pub live_bytes: u64,
    /// Bytes freed into the arenas and not yet returned to the OS.
    pub free_bytes: u64,
}

/// The allocator's statistics, where the platform's allocator reports them (glibc).
pub fn heap() -> Option<HeapStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 reads the arenas' counters under their locks and returns a plain
        // struct; it has no preconditions.
        let info = unsafe { libc::mallinfo2() };
        Some(HeapStats {
            live_bytes: (info.uordblks + info.hblkhd) as u64,
            free_bytes: info.fordblks as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Every [`TRIM_INTERVAL`] until `stop` completes: returns freed heap to the OS, unmaps the
/// program's clean pages ([`release_code`]), then sets the gauges `ballast_heap_live_bytes`
/// and `ballast_heap_free_bytes`.
pub async fn trim_loop(stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TRIM_INTERVAL) => {}
            _ = &mut stop => return,
        }
        // Both walk the arenas under their locks: blocking calls, off the runtime.
        if let Ok(Some(stats)) = tokio::task::spawn_blocking(|| {
            trim();
            if let Err(e) = release_code() {
                tracing::debug!(error = %e, "could not read this process's mappings");
            }
            heap()
        })
        .await
        {
            metrics::gauge!("ballast_heap_live_bytes").set(stats.live_bytes as f64);
            metrics::gauge!("ballast_heap_free_bytes").set(stats.free_bytes as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests that allocate or measure the process's heap: `cargo test` runs a
    /// binary's tests as threads of one process, and the heap test counts every thread's
    /// allocations.
    static HEAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

    const SMAPS: &str = "\
55d0a0000000-55d0a0700000 r--p 00000000 fe:00 42                         /opt/ballast/bin/ballast coord
Size:               7168 kB
Rss:                1800 kB
Private_Dirty:      1800 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
55d0a0700000-55d0a1b00000 r-xp 00700000 fe:00 42                         /opt/ballast/bin/ballast coord
Size:              20480 kB
Rss:               11412 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
55d0a1b00000-55d0a1ba5000 r--p 01b00000 fe:00 42                         /opt/ballast/bin/ballast coord
Size:                660 kB
Rss:                 660 kB
Private_Dirty:       660 kB
Anonymous:           660 kB
VmFlags: rd mr mw me ac sd
55d0a1ba5000-55d0a1bad000 rw-p 01ba5000 fe:00 42                         /opt/ballast/bin/ballast coord
Size:                 32 kB
Rss:                  32 kB
Private_Dirty:        32 kB
Anonymous:            32 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000200000 r-xp 00000000 fe:00 77                         /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               2048 kB
Rss:                1024 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7f0000200000-7f0000204000 r--p 00200000 fe:00 77                         /usr/lib/x86_64-linux-gnu/libc.so.6
Size:                 16 kB
Rss:                  16 kB
Private_Dirty:        16 kB
Anonymous:            16 kB
VmFlags: rd mr mw me ac sd
7f0000300000-7f0000400000 r--p 00000000 fe:00 91                         /usr/lib/locale/locale-archive
Size:               1024 kB
Rss:                 400 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7f0000500000-7f0000528000 r--p 00001000 fe:00 93                         /usr/lib64/ld-linux-x86-64.so.2
Size:                160 kB
Rss:                 160 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
";

    #[test]
    fn only_clean_read_only_code_mappings_are_released() {
        let _heap = HEAP.lock().unwrap_or_else(|e| e.into_inner());
        let found = clean_code_mappings(SMAPS, "/opt/ballast/bin/ballast coord");
        let libraries = [
            CleanMapping {
                start: 0x7f0000000000,
                len: 0x200000,
                resident: 1024 * 1024,
            },
            CleanMapping {
                start: 0x7f0000500000,
                len: 0x28000,
                resident: 160 * 1024,
            },
        ];
        assert_eq!(
            found,
            vec![
                CleanMapping {
                    start: 0x55d0a0000000,
                    len: 0x700000,
                    resident: 1800 * 1024
                },
                CleanMapping {
                    start: 0x55d0a0700000,
                    len: 0x1400000,
                    resident: 11412 * 1024
                },
                libraries[0].clone(),
                libraries[1].clone(),
            ],
            "relocated read-only data (a private copy), writable data and data files stay; \
             dirty page-cache pages of the file itself and clean library code go"
        );
        assert_eq!(
            clean_code_mappings(SMAPS, "/opt/ballast/bin/other"),
            libraries,
            "another program's mappings stay, the libraries' still go"
        );
    }

    /// This process's program path and its `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn own_smaps() -> (String, String) {
        let exe = std::fs::read_link("/proc/self/exe").expect("own program");
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("own smaps");
        (exe.to_string_lossy().into_owned(), smaps)
    }

    /// Resident bytes of this program's and its libraries' clean read-only mappings.
    #[cfg(target_os = "linux")]
    fn resident_code() -> u64 {
        let (exe, smaps) = own_smaps();
        clean_code_mappings(&smaps, &exe)
            .iter()
            .map(|m| m.resident)
            .sum()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_code_unmaps_it_and_the_process_runs_on() {
        let _heap = HEAP.lock().unwrap_or_else(|e| e.into_inner());
        let before = resident_code();
        assert!(before > 0, "this test's own code is resident");
        let released = release_code().expect("own mappings readable");
        let after = resident_code();
        assert!(
            released >= before,
            "released {released} bytes of {before} resident code"
        );
        // What runs from here on (this test, the allocator, smaps reading) comes back.
        assert!(
            after < before,
            "resident code went from {before} to {after} bytes"
        );
        let sum: u64 = (0..1000u64).map(|n| n * n).sum();
        assert_eq!(sum, 332_833_500);
        let (exe, smaps) = own_smaps();
        let mut in_code = false;
        let mut flags = None;
        for line in smaps.lines() {
            if line.contains(" r-xp ") {
                in_code = line.ends_with(&exe);
            } else if in_code && line.starts_with("VmFlags:") {
                flags = Some(line.to_string());
            }
        }
        let flags = flags.expect("the program's code mapping is listed");
        assert!(
            flags.split_whitespace().any(|flag| flag == "rr"),
            "the code mapping reads no ahead once released: {flags}"
        );
    }

    /// Whether the file page at `offset` is in the page cache.
    #[cfg(target_os = "linux")]
    fn cached(file: &std::fs::File, offset: u64) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only shared mapping of one page of an open file, unmapped
        // below; mincore writes one byte into `state`. Mapping faults nothing in.
        unsafe {
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            );
            assert_ne!(page, libc::MAP_FAILED, "one page of the program mapped");
            let mut state = 0u8;
            assert_eq!(libc::mincore(page, 4096, &mut state), 0, "mincore");
            libc::munmap(page, 4096);
            state & 1 == 1
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_program_pages_no_process_maps_leave_the_page_cache() {
        use std::os::unix::fs::FileExt;
        let _heap = HEAP.lock().unwrap_or_else(|e| e.into_inner());
        let exe = std::fs::read_link("/proc/self/exe").expect("own program");
        let file = std::fs::File::open(&exe).expect("own program");
        // A page still being written back cannot be dropped (a test binary just linked).
        file.sync_all().expect("program on disk");
        // The last page holds section headers, which no process maps.
        let last = (file.metadata().expect("size").len() - 1) & !4095;
        file.read_exact_at(&mut [0u8; 1], last).expect("read");
        assert!(cached(&file, last), "a page just read is cached");
        evict_program_pages(&exe).expect("advice taken");
        assert!(
            !cached(&file, last),
            "the unmapped page left the page cache"
        );
    }

    /// Bytes in blocks glibc mapped on their own.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn mapped_block_bytes() -> usize {
        // SAFETY: as in `heap`.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_large_block_is_mapped_on_its_own_after_a_larger_one_was_freed() {
        let _heap = HEAP.lock().unwrap_or_else(|e| e.into_inner());
        limit_arenas();
        // Left to itself, glibc would now raise its threshold to 4 MiB.
        drop(std::hint::black_box(vec![1u8; 4 << 20]));
        let before = mapped_block_bytes();
        let block = std::hint::black_box(vec![2u8; 256 << 10]);
        let during = mapped_block_bytes();
        assert!(
            during >= before + (256 << 10),
            "a 256 KiB block is mapped on its own: mapped blocks went from {before} to {during} \
             bytes"
        );
        drop(block);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_live_heap_counts_an_allocation_until_it_is_freed() {
        let _heap = HEAP.lock().unwrap_or_else(|e| e.into_inner());
        let before = heap().expect("glibc reports its heap").live_bytes;
        let block = vec![7u8; 8 << 20];
        let during = heap().expect("glibc reports its heap").live_bytes;
        assert!(
            during >= before + (8 << 20),
            "an 8 MiB block held: live heap went from {before} to {during}"
        );
        drop(std::hint::black_box(block));
        let after = heap().expect("glibc reports its heap").live_bytes;
        assert!(
            after + (8 << 20) <= during,
            "the block freed: live heap went from {during} to {after}"
        );
    }
}
