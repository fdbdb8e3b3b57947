//! Connection probes for policy tests, with no tool beyond the test
//! binary itself (the kernel matrix's guests have none): servers and
//! clients on threads that entered a container's network namespace. Every
//! wait has a deadline, so a denied flow is a `false`, never a hang.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use super::patience;

/// How long a probe waits for an answer before it calls the flow denied:
/// 1 s, and 3 s in slow guests, not the usual tenfold. An answer that
/// comes at all comes in milliseconds even under TCG, and every case with a
/// denied probe costs this whole wait.
pub fn probe_wait() -> Duration {
    patience(Duration::from_secs(1)).min(Duration::from_secs(3))
}

/// Runs `work` on a thread of its own inside container namespace `ns`
/// (under /run/netns): sockets it makes live there.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        work()
    })
}

/// TCP ports that accept and say "ok", UDP ports that echo, inside one
/// container, until dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(ns: &str, tcp: &[u16], udp: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for &port in tcp {
            let (stop, ready) = (stop.clone(), ready_tx.clone());
            threads.push(in_netns(ns, move || {
                let listener = TcpListener::bind(("::", port)).expect("binding a TCP server");
                listener.set_nonblocking(true).unwrap();
                ready.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.write_all(b"ok");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        for &port in udp {
            let (stop, ready) = (stop.clone(), ready_tx.clone());
            threads.push(in_netns(ns, move || {
                let socket = UdpSocket::bind(("::", port)).expect("binding a UDP server");
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                ready.send(()).unwrap();
                let mut buffer = [0; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                        let _ = socket.send_to(&buffer[..n], from);
                    }
                }
            }));
        }
        for _ in 0..tcp.len() + udp.len() {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a probe server did not start");
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What a probe tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Tcp(u16),
    Udp(u16),
    /// One echo request (the `ping` binary).
    Icmp,
}

/// Whether a flow of `probe` from container `ns` to `to` gets its answer
/// within [`probe_wait`]: a TCP connection and its "ok", a UDP echo, a
/// ping reply.
pub fn answered(ns: &str, to: IpAddr, probe: Probe) -> bool {
    let wait = probe_wait();
    match probe {
        Probe::Tcp(port) => in_netns(ns, move || {
            let Ok(mut stream) = TcpStream::connect_timeout(&SocketAddr::new(to, port), wait)
            else {
                return false;
            };
            stream.set_read_timeout(Some(wait)).unwrap();
            let mut answer = [0; 2];
            stream.read_exact(&mut answer).is_ok() && &answer == b"ok"
        })
        .join()
        .unwrap(),
        Probe::Udp(port) => in_netns(ns, move || {
            let socket =
                UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
            socket.set_read_timeout(Some(wait)).unwrap();
            socket.send_to(b"probe", (to, port)).unwrap();
            let mut answer = [0; 16];
            matches!(socket.recv_from(&mut answer), Ok((5, _)))
        })
        .join()
        .unwrap(),
        Probe::Icmp => {
            let secs = wait.as_secs().max(1).to_string();
            super::in_ns(ns, &["ping", "-c", "1", "-W", &secs, "-q", &to.to_string()])
                .status
                .success()
        }
    }
}

/// Runs every probe at once (a denied one costs its whole wait) and
/// returns which were answered, in order.
pub fn answered_all(probes: &[(String, IpAddr, Probe)]) -> Vec<bool> {
    let threads: Vec<_> = probes
        .iter()
        .cloned()
        .map(|(ns, to, probe)| std::thread::spawn(move || answered(&ns, to, probe)))
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}
