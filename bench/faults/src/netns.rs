//! Real network partitions between processes: Linux network namespaces joined by veth
//! pairs to a bridge, cut apart with blackhole routes (`tc netem` is not available on the
//! machines Tessera is tested on, `ip netns` is).

use std::process::Command;

/// A private network of namespaces (needs root and iproute2): a hub namespace with a
/// bridge, one namespace per node joined to the bridge by a veth pair, and a veth from the
/// caller's own namespace, so the caller reaches every node. Everything is removed on drop
/// (stop the processes inside first).
#[derive(Debug)]
pub struct Netns {
    tag: String,
    subnet: String,
    nodes: usize,
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

impl Netns {
    /// A network of `nodes` namespaces.
    pub fn new(nodes: usize) -> std::io::Result<Self> {
        let pid = std::process::id();
        let n = Netns {
            tag: format!("{}", pid % 100_000),
            subnet: format!("10.213.{}", pid % 250),
            nodes,
        };
        let hub = n.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let (ns, a, b) = (
                n.ns(i),
                format!("tn{}a{i}", n.tag),
                format!("tn{}b{i}", n.tag),
            );
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
            ip(&["link", "set", &a, "netns", &ns])?;
            ip(&["link", "set", &b, "netns", &hub])?;
            ip(&["-n", &hub, "link", "set", &b, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", n.ip(i)),
                "dev",
                &a,
            ])?;
            ip(&["-n", &ns, "link", "set", &a, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (c, h) = (n.client_link(), format!("tn{}h", n.tag));
        ip(&["link", "add", &c, "type", "veth", "peer", "name", &h])?;
        ip(&["link", "set", &h, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &h, "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}.254/24", n.subnet), "dev", &c])?;
        ip(&["link", "set", &c, "up"])?;
        Ok(n)
    }

    fn hub(&self) -> String {
        format!("tess{}hub", self.tag)
    }

    fn client_link(&self) -> String {
        format!("tn{}c", self.tag)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("tess{}n{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Cuts nodes `a` and `b` apart: each drops what it would send the other (a blackhole
    /// route, so connections time out as across a real partition). Clients still reach both.
    pub fn cut(&self, a: usize, b: usize) -> std::io::Result<()> {
        ip(&["-n", &self.ns(a), "route", "add", "blackhole", &self.ip(b)])?;
        ip(&["-n", &self.ns(b), "route", "add", "blackhole", &self.ip(a)])
    }

    /// Undoes [`Netns::cut`].
    pub fn heal(&self, a: usize, b: usize) -> std::io::Result<()> {
        ip(&["-n", &self.ns(a), "route", "del", "blackhole", &self.ip(b)])?;
        ip(&["-n", &self.ns(b), "route", "del", "blackhole", &self.ip(a)])
    }

    /// A command that runs `program` inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i), program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.client_link()])
            .output();
        for i in 0..self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub()])
            .output();
    }
}
