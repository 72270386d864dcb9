//! One module per subcommand.

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
