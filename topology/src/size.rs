//! Sizes with human units: [`tessera_origin_proto::size`], shared with the node configs.

pub use tessera_origin_proto::size::parse_size;
