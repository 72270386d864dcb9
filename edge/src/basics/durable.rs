//! Small state files written so that a change acknowledged survives `kill -9` and power
//! loss: the whole file goes to a temporary one beside it, is synced, renamed over the old
//! one, and the folder is synced.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `file` with `bytes` atomically and durably; `private` makes it readable by its
/// owner only (it holds secrets). Blocking.
pub fn write_atomic(file: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = file.with_file_name(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
