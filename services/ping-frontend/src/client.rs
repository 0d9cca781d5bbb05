//! Who the client is behind a load balancer, so that per-source limits see devices rather than
//! the balancer: the PROXY protocol (v1 text or v2 binary, as HAProxy, AWS NLB and most L4
//! balancers send it) at the start of a device connection, or `X-Forwarded-For` from peers
//! listed in `TRUSTED_PROXIES`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The PROXY protocol v2 signature.
const V2: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header (the specification's bound).
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header (PROXY_PROTOCOL is on: the balancer must send one)")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("PROXY protocol header not received in time")]
    Timeout,
    #[error("connection closed during the PROXY protocol header")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `stream`, and no byte past it: the client's address,
/// or `None` for a balancer's own connection (v2 LOCAL, v1 UNKNOWN), which keeps the peer's.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout)?
}

async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // Both versions' headers are at least 12 bytes long ("PROXY UNKNOWN\r\n" is 15).
    let mut start = [0u8; 12];
    stream.read_exact(&mut start).await?;
    if start == V2 {
        return read_v2(stream).await;
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Missing);
    }
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed(
                "v1 header longer than 107 bytes",
            ));
        }
        line.push(stream.read_u8().await?);
    }
    parse_v1(&line[..line.len() - 2])
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let text = std::str::from_utf8(line).map_err(|_| bad("v1 header is not ASCII"))?;
    let mut parts = text.split(' ');
    let (_proxy, family) = (parts.next(), parts.next());
    match family {
        Some("UNKNOWN") => Ok(None),
        Some("TCP4") | Some("TCP6") => {
            let source: IpAddr = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(bad("v1 source address"))?;
            let _destination = parts.next().ok_or(bad("v1 destination address"))?;
            let port: u16 = parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or(bad("v1 source port"))?;
            Ok(Some(SocketAddr::new(source, port)))
        }
        _ => Err(bad("v1 family is not TCP4, TCP6 or UNKNOWN")),
    }
}

async fn read_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let mut fixed = [0u8; 4];
    stream.read_exact(&mut fixed).await?;
    let (version_command, family) = (fixed[0], fixed[1]);
    let length = u16::from_be_bytes([fixed[2], fixed[3]]) as usize;
    if version_command >> 4 != 2 {
        return Err(bad("v2 version is not 2"));
    }
    let mut rest = vec![0u8; length];
    stream.read_exact(&mut rest).await?;
    if version_command & 0x0F == 0 {
        return Ok(None); // LOCAL: the balancer's own connection (a health check)
    }
    match family >> 4 {
        1 if rest.len() >= 12 => {
            let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            let port = u16::from_be_bytes([rest[8], rest[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        2 if rest.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&rest[..16]);
            let port = u16::from_be_bytes([rest[32], rest[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        0 => Ok(None), // UNSPEC
        _ => Err(bad("v2 address family or length")),
    }
}

/// `TRUSTED_PROXIES`: addresses and networks (`10.0.0.0/8`, `::1`) whose `X-Forwarded-For` is
/// believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(value: &str) -> Result<TrustedProxies, String> {
        let mut networks = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (address, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            let ip: IpAddr = address
                .parse()
                .map_err(|_| format!("{item:?} is not an address or network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{item:?} has a bad prefix length"))?,
                None => max,
            };
            networks.push((ip, bits));
        }
        Ok(TrustedProxies(networks))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0
            .iter()
            .any(|(network, bits)| within(ip, *network, *bits))
    }

    /// The client of a request that came from `peer`: when `peer` is trusted, the rightmost
    /// `X-Forwarded-For` address that is not (what a trusted chain of proxies vouches for);
    /// otherwise `peer` itself, whatever the header says.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let Some(header) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in header.rsplit(',').map(str::trim) {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

fn within(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => prefix(&ip.octets(), &net.octets(), bits),
        (IpAddr::V6(ip), IpAddr::V6(net)) => prefix(&ip.octets(), &net.octets(), bits),
        (IpAddr::V6(ip), IpAddr::V4(_)) => ip
            .to_ipv4_mapped()
            .is_some_and(|v4| within(IpAddr::V4(v4), network, bits)),
        _ => false,
    }
}

fn prefix(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn header(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        let mut input = bytes;
        read_proxy_header(&mut input, Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn v1_and_v2_headers_name_the_client_and_nothing_past_them_is_read() {
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\nPOST /";
        let client = read_proxy_header(&mut input, Duration::from_secs(1))
            .await
            .expect("v1");
        assert_eq!(client, Some("203.0.113.7:51000".parse().expect("addr")));
        assert_eq!(input, b"POST /", "the request is left for the HTTP reader");
        assert_eq!(
            header(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n")
                .await
                .expect("v1 v6"),
            Some("[2001:db8::1]:4000".parse().expect("addr"))
        );
        assert_eq!(header(b"PROXY UNKNOWN\r\n").await.expect("unknown"), None);

        let mut v2 = V2.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0xC3, 0x50, 0x1F, 0x90,
        ]);
        v2.extend(b"GET");
        let mut input = v2.as_slice();
        let client = read_proxy_header(&mut input, Duration::from_secs(1))
            .await
            .expect("v2");
        assert_eq!(client, Some("198.51.100.9:50000".parse().expect("addr")));
        assert_eq!(input, b"GET");
        let mut local = V2.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(header(&local).await.expect("local"), None);

        assert!(matches!(
            header(b"POST / HTTP/1.1\r\n\r\n").await,
            Err(ProxyHeaderError::Missing)
        ));
        assert!(matches!(
            header(b"PROXY TCP4 x y 1 2\r\n").await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(
            header(long.as_bytes()).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        assert!(matches!(
            header(b"PROXY TCP4").await,
            Err(ProxyHeaderError::Io(_))
        ));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1, ::1").expect("parses");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            trusted.client(ip("10.1.2.3"), Some("203.0.113.7")),
            ip("203.0.113.7")
        );
        assert_eq!(
            trusted.client(ip("10.1.2.3"), Some("6.6.6.6, 203.0.113.7, 10.9.9.9")),
            ip("203.0.113.7"),
            "the rightmost untrusted hop; what the client wrote itself is not believed"
        );
        assert_eq!(
            trusted.client(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
        assert_eq!(trusted.client(ip("10.1.2.3"), None), ip("10.1.2.3"));
        assert_eq!(trusted.client(ip("::1"), Some("garbage")), ip("::1"));
        assert!(trusted.contains(ip("::ffff:10.0.0.5")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nonsense").is_err());
    }
}
