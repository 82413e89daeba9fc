//! Where the datasets fetched by `scripts/setup.sh` live.

use std::path::PathBuf;

/// The assets folder: `$DP_ASSETS` if set, else `assets/` at the workspace root.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("DP_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets"))
}
