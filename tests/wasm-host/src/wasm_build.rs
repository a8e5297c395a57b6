//! Building `.wasm` filters from tests: `cargo build --release --target wasm32-wasip1`, once
//! per package and process even when tests run concurrently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::HostError;

/// The wasm target Meltemi filters are built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// Builds `package` of the Meltemi workspace as a release `wasm32-wasip1` cdylib and returns the
/// path of `<target>/wasm32-wasip1/release/<package_with_underscores>.wasm`.
///
/// `manifest_dir` is the calling crate's `CARGO_MANIFEST_DIR` (a crate two levels below the
/// workspace root, e.g. `tests/e2e`); the target directory is `$CARGO_TARGET_DIR` or
/// `<root>/target`. Concurrent callers build each package once per process.
///
/// # Panics
/// If the build fails (the message carries cargo's output): meant for tests, where that is the
/// right outcome. Use [`try_build_wasm_in`] to handle the error.
pub fn build_wasm(manifest_dir: &Path, package: &str) -> PathBuf {
    let root = manifest_dir.join("..").join("..");
    let root = root.canonicalize().unwrap_or(root);
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    match try_build_wasm_in(&root, package, &target_dir) {
        Ok(path) => path,
        Err(err) => panic!("building {package} for {WASM_TARGET} failed: {err}"),
    }
}

/// Runs `cargo build --release --target wasm32-wasip1 -p <package> --target-dir <target_dir>`
/// in `workspace` (a directory with a `Cargo.toml`) and returns the built `.wasm` path.
/// Builds are serialised process-wide, and a package already built by this process is not
/// rebuilt.
pub fn try_build_wasm_in(
    workspace: &Path,
    package: &str,
    target_dir: &Path,
) -> Result<PathBuf, HostError> {
    static BUILT: Mutex<Option<HashMap<(PathBuf, String), PathBuf>>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = (target_dir.to_path_buf(), package.to_owned());
    if let Some(path) = built.get_or_insert_with(HashMap::new).get(&key) {
        return Ok(path.clone());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "-p",
            package,
            "--target-dir",
        ])
        .arg(target_dir)
        .output()
        .map_err(|e| HostError::Load(format!("running cargo in {}: {e}", workspace.display())))?;
    if !output.status.success() {
        return Err(HostError::Load(format!(
            "cargo build -p {package} in {} exited with {}:\n{}",
            workspace.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let file = format!("{}.wasm", package.replace('-', "_"));
    let path = target_dir.join(WASM_TARGET).join("release").join(file);
    if !path.is_file() {
        return Err(HostError::Load(format!(
            "cargo succeeded but {} is missing",
            path.display()
        )));
    }
    built
        .get_or_insert_with(HashMap::new)
        .insert(key, path.clone());
    Ok(path)
}
