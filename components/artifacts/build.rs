//! Builds every component crate for `wasm32-wasip2` with the `component`
//! profile, so a plain `cargo build` or `cargo test` has them, and embeds
//! the results.
//!
//! The nested cargo uses its own target directory (`target/wasm`): sharing
//! the outer one would wait forever on the lock the outer build holds.

use std::path::PathBuf;
use std::process::Command;
use std::{env, fs};

/// (constant name, package, wasm file stem)
const COMPONENTS: &[(&str, &str, &str)] = &[
    ("AGGREGATE", "sluice-aggregate", "sluice_aggregate"),
    ("AUDIT", "sluice-audit", "sluice_audit"),
    ("EVENTS", "sluice-events", "sluice_events"),
    ("MISBEHAVE", "sluice-misbehave", "sluice_misbehave"),
    ("STANDARD", "sluice-standard", "sluice_standard"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().parent().unwrap().to_path_buf();
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_relative() { workspace.join(d) } else { d })
        .unwrap_or_else(|| workspace.join("target"))
        .join("wasm");

    println!("cargo:rerun-if-changed={}", workspace.join("wit").display());
    println!("cargo:rerun-if-changed={}", workspace.join("components").display());
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());

    // One cargo run per component: built together, cargo would unify the
    // features of a normalizer that another component embeds as a library.
    // Each result is copied out at once, as the next run may relink it.
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mut code = String::new();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (name, package, stem) in COMPONENTS {
        let mut command = Command::new(&cargo);
        command
            .current_dir(&workspace)
            .args(["build", "--locked", "--profile", "component", "--target", "wasm32-wasip2"])
            .args(["--package", package])
            .arg("--target-dir")
            .arg(&target_dir);
        // The outer build's flags are for the host, not for wasm.
        for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC_WORKSPACE_WRAPPER", "CARGO_BUILD_TARGET"] {
            command.env_remove(var);
        }
        let status = command.status().expect("run cargo to build the components");
        assert!(status.success(), "building {package} for wasm32-wasip2 failed");
        let built = target_dir.join("wasm32-wasip2/component").join(format!("{stem}.wasm"));
        let path = out.join(format!("{stem}.wasm"));
        fs::copy(&built, &path).unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
        code.push_str(&format!(
            "/// The `{package}` component.\npub const {name}: &[u8] = include_bytes!({:?});\n",
            path.display().to_string()
        ));
    }
    fs::write(out.join("components.rs"), code).unwrap();
}
