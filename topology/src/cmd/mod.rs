//! One module per subcommand.

pub mod edge;
pub mod origin;
pub mod push;
