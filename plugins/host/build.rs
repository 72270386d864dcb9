//! Builds the guest plugins (`plugins/guests/`, a workspace of its own) for
//! `wasm32-wasip2`, so `cargo build` and `cargo test` of Tessera build them too.
//!
//! The guests need the `wasm32-wasip2` standard library. `rust-toolchain.toml` lists it, but
//! rustup installs a toolchain file's targets only when it installs the toolchain itself: a
//! machine that already had the toolchain lacks the target. So the build looks for the
//! target in the sysroot of the very `rustc` the guests will be built with, and when it is
//! missing asks rustup to add it to that toolchain (saying so in the build output), before
//! building. Without rustup it stops with what to install. The guests are always built from
//! the source in the tree: no prebuilt `.wasm` is ever embedded. `TESSERA_NO_GUESTS=1` skips
//! them (the fuzz targets): empty files stand in, which no shipped plugin loads from.
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
    println!("cargo:rerun-if-env-changed=TESSERA_NO_GUESTS");
    if std::env::var_os("TESSERA_NO_GUESTS").is_some() {
        // Builds that never load a shipped plugin (the fuzz targets, on a nightly toolchain
        // that may lack the wasm target): empty files stand in, and loading one fails.
        let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
        for (dir, file) in GUESTS {
            let path = out.join(format!("{file}.wasm"));
            std::fs::write(&path, b"").unwrap();
            println!("cargo:rustc-env={}={}", plugin_var(dir), path.display());
        }
        return;
    }
    ensure_target(&guests);
    let target_dir = guest_target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args(["build", "--release", "--locked", "--target", TARGET])
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
            "building the plugins in {} for {TARGET} failed (the compiler's errors are above)",
            guests.display()
        );
    }
    let out = target_dir.join(TARGET).join("release");
    for (dir, file) in GUESTS {
        let path = out.join(format!("{file}.wasm"));
        assert!(
            path.exists(),
            "the build did not produce {}",
            path.display()
        );
        println!("cargo:rustc-env={}={}", plugin_var(dir), path.display());
    }
}

/// The variable that hands guest `dir`'s component to the crate.
fn plugin_var(dir: &str) -> String {
    format!(
        "TESSERA_PLUGIN_{}",
        dir.to_ascii_uppercase().replace('-', "_")
    )
}

/// The target the guests are built for.
const TARGET: &str = "wasm32-wasip2";

/// Makes sure the `rustc` that builds the guests has [`TARGET`]'s standard library, adding it
/// with rustup when it is missing. Panics (failing the build) with what to do otherwise.
fn ensure_target(guests: &Path) {
    // The inner cargo inherits `RUSTC` (set by the outer cargo for build scripts), so this is
    // the compiler that builds the guests.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = target_libdir(&rustc, guests);
    if has_std(&libdir) {
        return;
    }
    // rustup's proxies set RUSTUP_TOOLCHAIN for what they run: add the target to the very
    // toolchain this build uses, not to the default one.
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let which = toolchain.as_deref().unwrap_or("the active toolchain");
    println!(
        "cargo:warning=the {TARGET} target (needed to build the plugins in plugins/guests) \
         is missing from {which}; installing it with `rustup target add {TARGET}` (once)"
    );
    let mut cmd = Command::new("rustup");
    cmd.current_dir(guests).args(["target", "add", TARGET]);
    if let Some(t) = &toolchain {
        cmd.args(["--toolchain", t]);
    }
    let outcome = cmd.status();
    // Checked again whatever rustup said: another build may have added it meanwhile.
    if has_std(&libdir) {
        return;
    }
    let why = match outcome {
        Ok(status) => format!("`rustup target add {TARGET}` failed ({status})"),
        Err(e) => format!("rustup is not available ({e})"),
    };
    panic!(
        "the plugins in {} are built for {TARGET}, whose standard library is not in {} and \
         could not be installed: {why}. With rustup: `rustup target add {TARGET}`; with \
         another Rust distribution, install its {TARGET} standard library.",
        guests.display(),
        libdir.display()
    );
}

/// Where `rustc` keeps [`TARGET`]'s libraries (it prints the path whether or not it exists).
fn target_libdir(rustc: &str, dir: &Path) -> PathBuf {
    let out = Command::new(rustc)
        .current_dir(dir)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {rustc}: {e}"));
    assert!(
        out.status.success(),
        "`{rustc} --print target-libdir --target {TARGET}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Whether `libdir` holds a `core` library (the target's standard library is installed).
fn has_std(libdir: &Path) -> bool {
    std::fs::read_dir(libdir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libcore-") && name.ends_with(".rlib")
        })
    })
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
