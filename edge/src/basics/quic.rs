//! QUIC transport settings (the HTTP/3 listener's and the client's) and the quinn endpoint
//! they make.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// QUIC transport settings of the HTTP/3 listener (`[quic]` in the edge's TOML).
///
/// The defaults were chosen by measurement on loopback (`bench/HISTORY.md`, "HTTP/3"):
/// flow-control windows large enough that a single 100 MiB download is limited by CPU, not
/// by credit; MTU discovery up to 1452 bytes as on real networks; GSO on (quinn's default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicSettings {
    /// Bytes a client may send on one request stream before the edge reads them (uploads).
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub stream_window_bytes: u32,
    /// Bytes a client may send on all streams of a connection before the edge reads them.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub connection_window_bytes: u32,
    /// Bytes of response data queued per connection ahead of the client's acknowledgements.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub send_window_bytes: u64,
    /// Requests a client may have open at once on one connection.
    pub max_streams: u32,
    /// A connection with no traffic for this long is closed, seconds.
    pub idle_timeout_secs: u64,
    /// Largest UDP payload probed by path MTU discovery, bytes (1200 to 65527).
    pub max_mtu: u16,
    /// Hand the kernel batches of packets in one system call (UDP GSO) where it supports it.
    pub segmentation_offload: bool,
    /// UDP socket send and receive buffers, bytes (the kernel caps them at
    /// `net.core.wmem_max` / `rmem_max`): a burst larger than the receive buffer is lost.
    #[serde(deserialize_with = "tessera_origin_proto::size::bytes")]
    pub socket_buffer_bytes: usize,
    /// Handshakes in progress past which a new client must first prove its address with a
    /// stateless Retry (RFC 9000 §8.1): a flood of spoofed Initial packets then costs the
    /// edge a packet each and no state.
    pub retry_after_handshakes: usize,
    /// Handshakes in progress past which new clients are refused until some finish.
    pub max_handshakes: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            stream_window_bytes: 4 << 20,
            connection_window_bytes: 16 << 20,
            send_window_bytes: 16 << 20,
            max_streams: 256,
            idle_timeout_secs: 30,
            max_mtu: 1452,
            segmentation_offload: true,
            socket_buffer_bytes: 4 << 20,
            retry_after_handshakes: 64,
            max_handshakes: 4096,
        }
    }
}

impl QuicSettings {
    /// quinn's transport configuration for these settings.
    pub fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(self.stream_window_bytes.into())
            .receive_window(self.connection_window_bytes.into())
            .send_window(self.send_window_bytes)
            .max_concurrent_bidi_streams(self.max_streams.into())
            // HTTP/3 needs three unidirectional streams each way (control, QPACK encoder
            // and decoder); a few more for extensions that may be unknown to us.
            .max_concurrent_uni_streams(8u32.into())
            .max_idle_timeout(
                quinn::IdleTimeout::try_from(Duration::from_secs(self.idle_timeout_secs.max(1)))
                    .ok(),
            )
            .enable_segmentation_offload(self.segmentation_offload);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_mtu.clamp(1200, 65527));
        t.mtu_discovery_config(Some(mtu));
        t
    }
}

/// A quinn endpoint on `socket` with these settings: its largest datagram (`max_mtu`) and
/// socket buffers. `server` makes it accept connections.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    settings: &QuicSettings,
) -> std::io::Result<quinn::Endpoint> {
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: the kernel may cap these; quinn works with whatever it gets.
    let _ = state.set_recv_buffer_size((&socket).into(), settings.socket_buffer_bytes);
    let _ = state.set_send_buffer_size((&socket).into(), settings.socket_buffer_bytes);
    let mut cfg = quinn::EndpointConfig::default();
    cfg.max_udp_payload_size(settings.max_mtu.clamp(1200, 65527))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    quinn::Endpoint::new(cfg, server, socket, Arc::new(quinn::TokioRuntime))
}
