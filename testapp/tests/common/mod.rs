//! Runs the real `ward-testapp` binary: servers are killed on drop, their
//! address comes from the `listening on <addr>` line (port 0, no races).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ward-testapp");

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `ward-testapp <args> --listen 127.0.0.1:0` and waits for its
    /// `listening on` line.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ward-testapp");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the server never sees a closed stdout.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let server = |child| Server {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                drop(server(child));
                panic!("ward-testapp {args:?} did not print `listening on` in 30 s");
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }

    /// Peak resident set (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM line")
    }

    /// Sends SIGTERM and waits (at most `limit`) for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal_term();
        self.wait_exit(limit)
    }

    /// Sends SIGTERM, and returns.
    pub fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (at most `limit`) for the exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a `ward-testapp` client subcommand to completion (clients bound
/// themselves with `--timeout-ms`).
pub fn client(args: &[&str]) -> Output {
    let output = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ward-testapp client");
    eprintln!(
        "ward-testapp {args:?} -> {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `ward-testapp SUBCOMMAND --connect <server> ARGS`: a client of `server`.
pub fn client_of(server: &Server, subcommand: &str, args: &[&str]) -> Output {
    let addr = server.addr_str();
    client(&[&[subcommand, "--connect", &addr], args].concat())
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn curl(args: &[&str]) -> Output {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A plain HTTP/1.1 request with `Connection: close`; returns the raw
/// response (head and body).
pub fn http1(addr: SocketAddr, request_head: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request_head.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    response
}

/// Splits a raw HTTP/1.1 response into status code, head and body.
pub fn split_response(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head, raw[end + 4..].to_vec())
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    split_response(&http1(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    ))
}

/// Writes `data`, half-closes, reads to EOF.
pub fn half_close_exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut received = Vec::new();
    stream.read_to_end(&mut received).expect("read to EOF");
    received
}

/// Byte `i` of every generated stream.
pub fn pattern_byte(i: usize) -> u8 {
    const PATTERN: &[u8; 64] = b"ward-testapp-pattern:0123456789abcdefghijklmnopqrstuvwxyzABCDEF\n";
    PATTERN[i % 64]
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}
