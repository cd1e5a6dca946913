//! Raw TCP servers: `tcp-echo` (half-close aware) and `banner`
//! (server speaks first, SMTP-like).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::util::{self, IDLE_TIMEOUT};

/// Longest command line `banner` accepts.
const MAX_LINE: u64 = 8 * 1024;
/// Most commands `banner` answers on one connection.
const MAX_COMMANDS: usize = 10_000;

pub async fn run_echo(listen: &str, drain: Duration) -> Result<()> {
    let listener = util::bind(listen).await?;
    util::serve(listener, drain, |stream, peer, _shutdown| async move {
        if let Err(e) = echo(stream).await {
            eprintln!("ward-testapp tcp-echo: {peer}: {e}");
        }
    })
    .await
}

/// Echoes until the client half-closes, then writes `bye <total>\n` and
/// half-closes too.
async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let (mut reader, mut writer) = stream.split();
    let total = util::echo_until_eof(&mut reader, &mut writer).await?;
    writer
        .write_all(format!("bye {total}\n").as_bytes())
        .await?;
    writer.shutdown().await?;
    Ok(())
}

pub async fn run_banner(listen: &str, banner: String, drain: Duration) -> Result<()> {
    let listener = util::bind(listen).await?;
    util::serve(
        listener,
        drain,
        move |stream, peer: SocketAddr, _shutdown: watch::Receiver<bool>| {
            let banner = banner.clone();
            async move {
                if let Err(e) = banner_session(stream, &banner).await {
                    eprintln!("ward-testapp banner: {peer}: {e}");
                }
            }
        },
    )
    .await
}

async fn banner_session(mut stream: TcpStream, banner: &str) -> std::io::Result<()> {
    let (reader, mut writer) = stream.split();
    writer.write_all(format!("{banner}\r\n").as_bytes()).await?;
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    for _ in 0..MAX_COMMANDS {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE);
        let read = limited.read_line(&mut line);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(n) => n?,
            Err(_) => {
                writer.write_all(b"421 idle timeout\r\n").await?;
                break;
            }
        };
        if n == 0 {
            // Client closed without QUIT.
            return Ok(());
        }
        let command = line.trim_end_matches(['\r', '\n']);
        if command.eq_ignore_ascii_case("QUIT") {
            writer.write_all(b"221 bye\r\n").await?;
            break;
        }
        writer
            .write_all(format!("250 {command}\r\n").as_bytes())
            .await?;
    }
    writer.shutdown().await
}
