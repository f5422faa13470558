//! Links `ballast-coord`'s code in the order of `symbol-order.txt`: the functions a replica
//! runs while idle and under load first, side by side, so the pages of code it keeps
//! resident are few (issue #24, ADR 0017 decision 20). The file lists symbol names of the
//! `dist` build and is written by `deploy/symbol-order`; names that do not match the build
//! being linked (another profile, a changed dependency) are skipped by the linker, so a
//! stale file costs memory, never correctness. `BALLAST_SYMBOL_ORDER` names another file, or
//! `none` for no order: the generator profiles such layouts (ADR 0017 decision 21).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=BALLAST_SYMBOL_ORDER");
    let order = match std::env::var("BALLAST_SYMBOL_ORDER") {
        Ok(value) if value == "none" => None,
        Ok(path) => Some(PathBuf::from(path)),
        Err(_) => Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt")),
    };
    let Some(order) = order else { return };
    println!("cargo:rerun-if-changed={}", order.display());
    // The option is LLD's (and gold's); Rust links x86_64 Linux programs with its own LLD. Other
    // targets keep their default linker, which may not know it.
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-linux-gnu" && order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=ballast-coord=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=ballast-coord=-Wl,--no-warn-symbol-ordering");
    }
}
