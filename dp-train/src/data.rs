//! Where the datasets fetched by `scripts/setup.sh` live.

use std::path::{Path, PathBuf};

/// The assets folder: `$DP_ASSETS` if set, else `assets/` at the workspace root.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("DP_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("assets")
        })
}
