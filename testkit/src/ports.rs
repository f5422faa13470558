//! Free loopback ports for test processes: single ports, consecutive blocks, and the fixed
//! client/HTTP port layout of a cluster started with [`ClusterOptions::base_port`].
//!
//! [`ClusterOptions::base_port`]: crate::ClusterOptions::base_port

use std::net::TcpListener;
use std::sync::atomic::Ordering;

/// A base port for a cluster started with `base_port`: replica N's client port is
/// base + N - 1 and its HTTP port base + 1000 + N - 1, and both blocks are free now.
pub fn free_base_port(replicas: u16) -> u16 {
    loop {
        let base = free_port_block(replicas);
        if (0..replicas).all(|i| {
            TcpListener::bind(("127.0.0.1", port_http(Some(base), u64::from(i) + 1))).is_ok()
        }) {
            return base;
        }
    }
}

/// A loopback port nobody listens on right now (see [`free_port_block`]).
pub fn free_port() -> u16 {
    free_port_block(1)
}

/// The first of `count` consecutive loopback ports that are free now. Ports come from below
/// the kernel's ephemeral range (32768+), so outgoing connections cannot grab them between
/// this check and the process that binds them, and from a per-process cursor, so tests running
/// in parallel threads never get the same port.
pub fn free_port_block(count: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = (std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0))
        % SPAN;
    let _ = NEXT.compare_exchange(0, seed + 1, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..2_000 {
        let offset = NEXT.fetch_add(count as u32, Ordering::SeqCst) % SPAN;
        let base = (LOW + offset) as u16;
        if u32::from(base) + u32::from(count) > LOW + SPAN {
            continue;
        }
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no block of {count} free loopback ports between 20000 and 32000");
}

/// Replica `id`'s HTTP port: with fixed ports (`base_port`) the client port + 1000, otherwise
/// any free one.
pub(crate) fn port_http(base_port: Option<u16>, id: u64) -> u16 {
    match base_port {
        Some(base) => base + 1000 + (id as u16 - 1),
        None => free_port(),
    }
}
