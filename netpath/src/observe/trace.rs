//! `netpath trace`: the frames the fast path redirected (which tcpdump on a
//! host veth never sees) and those a network policy denied, as
//! tcpdump-like lines or a pcap file.

use std::{
    fs::File,
    io::{BufWriter, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use netpath_common::{Counter, TRACE_DENIED, TRACE_SNAPLEN, TraceEvent};
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

use crate::{
    datapath::{self, counters, fdb::monotonic_ns, maps::Maps},
    host::interrupt::Interrupt,
    model::Mac,
    store::lock::{Lock, Purpose},
};

const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Which frames to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Frames from or to this MAC.
    Mac(Mac),
    /// IPv4/IPv6 packets from or to this address.
    Ip(IpAddr),
}

impl FromStr for Filter {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().split_once(char::is_whitespace) {
            Some(("mac", mac)) => Ok(Filter::Mac(mac.trim().parse()?)),
            Some(("ip", ip)) => Ok(Filter::Ip(
                ip.trim()
                    .parse()
                    .with_context(|| format!("{ip:?} is not an IP address"))?,
            )),
            _ => bail!("filter {s:?}: use 'mac XX:XX:XX:XX:XX:XX' or 'ip ADDRESS'"),
        }
    }
}

pub struct Options {
    /// Only frames that entered through this port (ifindex).
    pub port: Option<u32>,
    pub count: Option<usize>,
    pub write: Option<PathBuf>,
    pub filter: Option<Filter>,
    /// Only frames a network policy denied.
    pub denied_only: bool,
}

/// A decoded view of a captured frame.
struct Frame<'a> {
    dst: Mac,
    src: Mac,
    ethertype: u16,
    payload: &'a [u8],
}

impl<'a> Frame<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        if data.len() < 14 {
            return None;
        }
        let mut ethertype = u16::from_be_bytes([data[12], data[13]]);
        let mut payload = &data[14..];
        if ethertype == 0x8100 && payload.len() >= 4 {
            ethertype = u16::from_be_bytes([payload[2], payload[3]]);
            payload = &payload[4..];
        }
        Some(Frame {
            dst: Mac(data[0..6].try_into().ok()?),
            src: Mac(data[6..12].try_into().ok()?),
            ethertype,
            payload,
        })
    }

    /// (source, destination, protocol) of an IPv4/IPv6 payload.
    fn ip(&self) -> Option<(IpAddr, IpAddr, u8)> {
        let p = self.payload;
        match self.ethertype {
            0x0800 if p.len() >= 20 => Some((
                IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
                IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
                p[9],
            )),
            0x86dd if p.len() >= 40 => Some((
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?)),
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?)),
                p[6],
            )),
            _ => None,
        }
    }

    fn matches(&self, filter: &Filter) -> bool {
        match filter {
            Filter::Mac(mac) => self.src == *mac || self.dst == *mac,
            Filter::Ip(ip) => self.ip().is_some_and(|(s, d, _)| s == *ip || d == *ip),
        }
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMP6".into(),
        other => format!("proto {other}"),
    }
}

/// A redirected frame taken off the ring: owned, so the ring slot is given
/// back at once.
struct Captured {
    /// bpf_ktime_get_ns() when the frame was redirected.
    timestamp_ns: u64,
    ingress: u32,
    egress: u32,
    /// Length of the whole frame.
    len: u32,
    /// Its first bytes, at most TRACE_SNAPLEN.
    data: Bytes,
}

impl Captured {
    /// Copies a ring item's frame into `buffer` and splits it off, so the
    /// frames of a drain share `buffer`'s allocation instead of one each.
    fn take(item: &[u8], buffer: &mut BytesMut) -> Option<Self> {
        if item.len() < size_of::<TraceEvent>() {
            return None;
        }
        // SAFETY: the programs write whole TraceEvents; read unaligned.
        let event: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let captured = (event.captured as usize).min(TRACE_SNAPLEN);
        buffer.extend_from_slice(&event.data[..captured]);
        Some(Captured {
            timestamp_ns: event.timestamp_ns,
            ingress: event.ingress,
            egress: event.egress,
            len: event.len,
            data: buffer.split().freeze(),
        })
    }
}

/// One line per frame, in the manner of `tcpdump -e -n`.
fn describe(
    event: &Captured,
    frame: &Frame<'_>,
    name_of: &dyn Fn(u32) -> String,
    wall_ns: u64,
) -> String {
    let secs = wall_ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let micros = (wall_ns / 1000) % 1_000_000;
    let mut line = format!(
        "{h:02}:{m:02}:{s:02}.{micros:06} {} > {} {} > {}, ethertype 0x{:04x}, length {}",
        name_of(event.ingress),
        match event.egress {
            TRACE_DENIED => "denied".to_owned(),
            egress => name_of(egress),
        },
        frame.src,
        frame.dst,
        frame.ethertype,
        event.len
    );
    if let Some((src, dst, proto)) = frame.ip() {
        line.push_str(&format!(": {src} > {dst} {}", protocol_name(proto)));
    }
    line
}

/// The classic pcap format (microseconds, Ethernet link type).
fn create_pcap(path: &Path) -> Result<PcapWriter<BufWriter<File>>> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        snaplen: TRACE_SNAPLEN as u32,
        ..Default::default()
    };
    PcapWriter::with_header(BufWriter::new(file), header)
        .with_context(|| format!("writing the pcap header to {}", path.display()))
}

/// How long the programs go on copying frames without hearing from the
/// tracer: a killed tracer stops tracing within this time.
pub const LEASE: Duration = Duration::from_secs(1);

/// Tells the programs to copy frames until `until_ns` (0: stop now).
fn trace_until(maps: &Maps, until_ns: u64) -> Result<()> {
    let mut config = maps.config()?;
    let mut value = config.get(&0, 0).context("reading map CONFIG")?;
    value.trace_until_ns = until_ns;
    config.set(0, value, 0).context("writing map CONFIG")
}

/// Turns tracing off again however `run` ends (a SIGKILL lets the lease
/// run out instead).
struct TracingOn<'a>(&'a Maps);

impl Drop for TracingOn<'_> {
    fn drop(&mut self) {
        if let Err(e) = trace_until(self.0, 0) {
            log::warn!("turning tracing off: {e:#}");
        }
    }
}

/// What a trace saw.
pub struct Summary {
    /// Frames shown or written.
    pub shown: usize,
    /// Redirected frames the programs could not hand over (ring full).
    pub lost: u64,
}

fn frames_lost(maps: &Maps) -> Result<u64> {
    Ok(counters::read(maps, |i| i.to_string())?
        .iter()
        .map(|p| p.get(Counter::TraceLost))
        .sum())
}

/// Hands redirected (and denied) frames to `show` (as tcpdump-like lines), or writes them
/// to the pcap file of `options.write`, until `count` are done or Ctrl-C.
/// One tracer per datapath: a second is refused.
pub async fn run(
    topology: &str,
    options: Options,
    name_of: &dyn Fn(u32) -> String,
    mut show: impl FnMut(String),
) -> Result<Summary> {
    let _one_tracer = Lock::acquire(topology, Purpose::Trace)?;
    let maps = datapath::maps(topology)?;
    let mut ring = maps.trace()?;
    let mut pcap = options.write.as_deref().map(create_pcap).transpose()?;
    // Room for a drain's frames; reused once they are written or shown.
    let mut buffer = BytesMut::with_capacity(64 * TRACE_SNAPLEN);
    let lost_before = frames_lost(&maps)?;
    let _off = TracingOn(&maps);
    let wall_offset = wall_clock_ns().saturating_sub(monotonic_ns());
    let mut shown = 0;
    let mut interrupt = Interrupt::listen()?;
    loop {
        if options.count.is_some_and(|c| shown >= c) {
            break;
        }
        trace_until(&maps, monotonic_ns() + LEASE.as_nanos() as u64)?;
        // The programs submit without waking us (cheaper for the datapath):
        // drain the ring every DRAIN_EVERY.
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_EVERY) => {}
            _ = interrupt.received() => break,
        }
        while let Some(item) = ring.next() {
            let captured = Captured::take(&item, &mut buffer);
            drop(item);
            let Some(event) = captured else { continue };
            let Some(frame) = Frame::parse(&event.data) else {
                continue;
            };
            if options.port.is_some_and(|p| p != event.ingress)
                || options.filter.as_ref().is_some_and(|f| !frame.matches(f))
                || (options.denied_only && event.egress != TRACE_DENIED)
            {
                continue;
            }
            let wall_ns = event.timestamp_ns + wall_offset;
            match pcap.as_mut() {
                Some(writer) => {
                    let packet =
                        PcapPacket::new(Duration::from_nanos(wall_ns), event.len, &event.data);
                    writer
                        .write_packet(&packet)
                        .context("writing a frame to the pcap file")?;
                }
                None => show(describe(&event, &frame, name_of, wall_ns)),
            }
            shown += 1;
            if options.count.is_some_and(|c| shown >= c) {
                break;
            }
        }
    }
    if let Some(writer) = pcap {
        writer
            .into_writer()
            .flush()
            .context("writing the pcap file")?;
    }
    Ok(Summary {
        shown,
        lost: frames_lost(&maps)?.saturating_sub(lost_before),
    })
}

fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let mut data = vec![0u8; 34];
        data[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        data[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        data[12..14].copy_from_slice(&[0x08, 0x00]);
        data[14 + 9] = 1;
        data[14 + 12..14 + 16].copy_from_slice(&[10, 0, 0, 1]);
        data[14 + 16..14 + 20].copy_from_slice(&[10, 0, 0, 2]);
        let frame = Frame::parse(&data).unwrap();
        assert!(frame.matches(&"mac 02:00:00:00:00:01".parse().unwrap()));
        assert!(frame.matches(&"ip 10.0.0.2".parse().unwrap()));
        assert!(!frame.matches(&"ip 10.0.0.3".parse().unwrap()));
        assert!("host 10.0.0.1".parse::<Filter>().is_err());
        assert_eq!(frame.ip().unwrap().2, 1);
    }
}
