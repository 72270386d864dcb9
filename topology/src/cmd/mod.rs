//! One module per subcommand.

pub mod cluster;
pub mod edge;
pub mod get;
pub mod origin;
pub mod plugin;
pub mod push;
pub mod up;

/// The node config in the TOML file `path`, or the defaults without one. Errors name the
/// file (and toml's message names the line and field).
pub fn load_config<T: serde::de::DeserializeOwned + Default>(
    path: Option<&std::path::Path>,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let Some(p) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("config {}", p.display()))
}

static JSON_LINES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Under `--log-format json`, [`announce`] writes JSON too.
pub fn announce_as_json(on: bool) {
    JSON_LINES.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Writes a line scripts and tests wait for on stdout (where a node listens): as it is, or
/// under `--log-format json` as one JSON object with the line as `message` and its URL as
/// `url`, as the log lines are.
pub fn announce(line: &str) {
    if !JSON_LINES.load(std::sync::atomic::Ordering::Relaxed) {
        println!("{line}");
        return;
    }
    let url = line.split_whitespace().find(|w| w.contains("://"));
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let v = serde_json::json!({
        "timestamp": timestamp,
        "level": "INFO",
        "target": "tessera",
        "message": line,
        "url": url,
    });
    println!("{v}");
}

/// Takes the lock of a node's data folder (`tessera.lock`, created with the folder if
/// missing) for as long as the returned file is open: a second process given the same
/// folder is refused before it binds or reads anything, as two writers would corrupt the
/// cache or the store. `role` names the node in the message, `fix` says how to give it
/// another folder (`another --data`).
pub fn lock_data_folder(
    dir: &std::path::Path,
    role: &str,
    fix: &str,
) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    use std::io::{Read, Seek, Write};
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
    let path = dir.join("tessera.lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            let by = if holder.is_empty() {
                String::new()
            } else {
                format!(" (process {holder})")
            };
            anyhow::bail!(
                "the data folder {} is in use by another tessera node{by}: stop it, or give \
                 this {role} {fix}",
                dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    // The holder's process id, for the message above (the lock itself is what counts).
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

/// An error and its causes on one line, each cause said once: a cause whose text its
/// parent already includes is not repeated.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_its_parent_already_says_is_not_repeated() {
        let inner = anyhow::anyhow!("Database already open");
        let mid = inner.context("metadata database: Database already open");
        let top =
            mid.context("cannot open the store in /d: metadata database: Database already open");
        assert_eq!(
            super::one_line(&top),
            "cannot open the store in /d: metadata database: Database already open"
        );
        let e = anyhow::anyhow!("refused").context("cannot publish a.txt");
        assert_eq!(super::one_line(&e), "cannot publish a.txt: refused");
    }
}
