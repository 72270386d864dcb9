//! Builds the guest plugins (`plugins/guests/`, a workspace of its own) for
//! `wasm32-wasip2`, so `cargo build` and `cargo test` of Tessera build them too.
//!
//! The components land in `target/plugins/wasm32-wasip2/release/` (next to the host's own
//! build folders, shared by debug and release builds of the host) and their paths are
//! handed to the crate as `TESSERA_PLUGIN_*` variables, which [`crate::shipped`] embeds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest crates and the names the host embeds them under.
const GUESTS: &[(&str, &str)] = &[
    ("signed-url", "tessera_plugin_signed_url"),
    ("router", "tessera_plugin_router"),
    ("size-eviction", "tessera_plugin_size_eviction"),
    ("hostile", "tessera_plugin_hostile"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let guests = manifest_dir.join("../guests");
    let wit = manifest_dir.join("../../wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.lock").display()
    );
    for (dir, _) in GUESTS {
        println!("cargo:rerun-if-changed={}", guests.join(dir).display());
    }
    let target_dir = guest_target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are for the host: the guests get their own.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_INCREMENTAL",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run cargo to build the plugins in {}: {e}",
            guests.display()
        )
    });
    if !status.success() {
        panic!(
            "building the plugins in {} for wasm32-wasip2 failed (is the target installed? \
             rust-toolchain.toml names it; `rustup target add wasm32-wasip2`)",
            guests.display()
        );
    }
    let out = target_dir.join("wasm32-wasip2/release");
    for (dir, file) in GUESTS {
        let path = out.join(format!("{file}.wasm"));
        assert!(
            path.exists(),
            "the build did not produce {}",
            path.display()
        );
        let var = format!(
            "TESSERA_PLUGIN_{}",
            dir.to_ascii_uppercase().replace('-', "_")
        );
        println!("cargo:rustc-env={var}={}", path.display());
    }
}

/// `target/plugins`: beside the host's `debug`/`release` folders, found from `OUT_DIR`
/// (`target/[triple/]profile/build/pkg-hash/out`).
fn guest_target_dir() -> PathBuf {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let profile_dir: &Path = out.ancestors().nth(3).expect("OUT_DIR is deep enough");
    let mut target = profile_dir.parent().expect("a target folder").to_path_buf();
    // With --target, profiles sit one level deeper (target/<triple>/<profile>).
    if std::env::var("TARGET").ok() != std::env::var("HOST").ok() {
        target = target.parent().expect("a target folder").to_path_buf();
    }
    target.join("plugins")
}
