//! The clients curl cannot replace. Each returns `Ok(true)` when every check
//! passed, `Ok(false)` when the exchange completed but a check failed, and
//! `Err` on I/O or protocol errors; `main` adds the overall timeout.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::grpc::{encode_message, take_message};
use crate::util::{self, ChannelBody, PatternBody, Stage};

async fn connect(addr: &str, stage: &Stage) -> Result<TcpStream> {
    stage.set(format!("connecting to {addr}"));
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn headers_json(map: &HeaderMap) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn grpc_payload(i: u64) -> Vec<u8> {
    format!("ward-grpc-message-{i}").into_bytes()
}

/// `grpc-client`: strict ping-pong bidi streaming; message i+1 is only sent
/// once the echo of message i came back.
pub async fn grpc(
    addr: &str,
    authority: Option<&str>,
    method: &str,
    messages: u64,
    stage: &Stage,
) -> Result<bool> {
    let stream = connect(addr, stage).await?;
    stage.set("HTTP/2 handshake");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("ward-testapp grpc-client: connection: {e}");
        }
    });

    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(4);
    let mut tx = Some(tx);
    if messages == 0 {
        tx = None;
    } else if let Some(tx) = &tx {
        tx.send(Frame::data(encode_message(&grpc_payload(0))))
            .await
            .map_err(|_| anyhow!("request body closed"))?;
    }
    let authority = authority.unwrap_or(addr);
    let req = Request::post(format!("http://{authority}{method}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(ChannelBody(rx))?;
    stage.set("response headers");
    let res = sender.send_request(req).await.context("sending request")?;
    let (parts, mut body) = res.into_parts();

    let mut buf = BytesMut::new();
    let mut received = 0u64;
    let mut mismatches = 0u64;
    let mut trailers: Option<HeaderMap> = None;
    loop {
        stage.set(format!("echo {received} of {messages} (or trailers)"));
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.context("reading response")?;
        let frame = match frame.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                while let Some(msg) = take_message(&mut buf).map_err(|e| anyhow!(e))? {
                    if msg[5..] != grpc_payload(received)[..] {
                        mismatches += 1;
                        eprintln!(
                            "ward-testapp grpc-client: echo {received} differs: {:?}",
                            String::from_utf8_lossy(&msg[5..])
                        );
                    }
                    received += 1;
                    if received < messages {
                        if let Some(tx) = &tx {
                            tx.send(Frame::data(encode_message(&grpc_payload(received))))
                                .await
                                .map_err(|_| anyhow!("request body closed"))?;
                        }
                    } else {
                        // All sent and echoed: end the request stream.
                        tx = None;
                    }
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    drop(tx);

    let trailers_only = trailers.is_none() && parts.headers.contains_key("grpc-status");
    let status_source = if trailers_only {
        &parts.headers
    } else {
        trailers.as_ref().unwrap_or(&parts.headers)
    };
    let grpc_status = status_source
        .get("grpc-status")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let grpc_message = status_source
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let trailer_map = match &trailers {
        Some(t) => headers_json(t),
        None if trailers_only => headers_json(&parts.headers)
            .into_iter()
            .filter(|(k, _)| k.starts_with("grpc-"))
            .collect(),
        None => BTreeMap::new(),
    };
    println!(
        "{}",
        json!({
            "http_status": parts.status.as_u16(),
            "received": received,
            "mismatched": mismatches,
            "grpc_status": grpc_status,
            "grpc_message": grpc_message,
            "trailers_only": trailers_only,
            "trailers": trailer_map,
        })
    );
    Ok(parts.status.is_success()
        && grpc_status.as_deref() == Some("0")
        && received == messages
        && mismatches == 0)
}

/// Sends an HTTP/1.1 request head on a fresh connection and reads the
/// response head. Returns the status, the headers (lower-cased names) and
/// the bytes that arrived after the head.
async fn raw_handshake(
    stream: &mut TcpStream,
    request: &str,
    stage: &Stage,
) -> Result<(u16, BTreeMap<String, String>, Vec<u8>)> {
    stage.set("writing request head");
    stream.write_all(request.as_bytes()).await?;
    stage.set("response head");
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 16 * 1024 {
            bail!("response head longer than 16 KiB");
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!(
                "connection closed before the response head ended (got {:?})",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, rest))
}

/// Writes `message`, reads exactly as many bytes back (starting with
/// `already`), and says whether they are equal.
async fn echo_check<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    message: &str,
    mut already: Vec<u8>,
    stage: &Stage,
) -> Result<bool> {
    stage.set("writing message");
    stream.write_all(message.as_bytes()).await?;
    stage.set("reading echo");
    while already.len() < message.len() {
        let mut chunk = vec![0u8; message.len() - already.len()];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!(
                "connection closed after {} of {} echoed bytes",
                already.len(),
                message.len()
            );
        }
        already.extend_from_slice(&chunk[..n]);
    }
    let echoed = String::from_utf8_lossy(&already);
    println!("echo: {echoed}");
    let _ = stream.shutdown().await;
    Ok(already == message.as_bytes())
}

fn websocket_key() -> String {
    use base64::Engine as _;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = nanos ^ (u128::from(std::process::id()) << 64);
    base64::engine::general_purpose::STANDARD.encode(seed.to_le_bytes())
}

/// `ws-client`: WebSocket upgrade handshake, then a raw byte echo.
pub async fn websocket(
    addr: &str,
    authority: Option<&str>,
    path: &str,
    message: &str,
    stage: &Stage,
) -> Result<bool> {
    let mut stream = connect(addr, stage).await?;
    let key = websocket_key();
    let host = authority.unwrap_or(addr);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (status, headers, rest) = raw_handshake(&mut stream, &request, stage).await?;
    if status != 101 {
        bail!("expected 101 Switching Protocols, got {status}");
    }
    let expected = util::websocket_accept(&key);
    match headers.get("sec-websocket-accept") {
        Some(accept) if *accept == expected => {}
        other => bail!("Sec-WebSocket-Accept is {other:?}, expected {expected:?}"),
    }
    echo_check(&mut stream, message, rest, stage).await
}

/// `connect-client`: HTTP/1.1 CONNECT, expects 2xx, then a raw byte echo.
pub async fn tunnel(
    addr: &str,
    target: &str,
    message: &str,
    http2: bool,
    stage: &Stage,
) -> Result<bool> {
    let mut stream = connect(addr, stage).await?;
    if http2 {
        // RFC 9113 section 8.5: :method CONNECT + :authority, no :path.
        stage.set("HTTP/2 handshake");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .context("HTTP/2 handshake")?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(http::Method::CONNECT)
            .uri(target)
            .body(http_body_util::Empty::<Bytes>::new())?;
        stage.set("CONNECT response");
        let res = sender.send_request(req).await.context("sending CONNECT")?;
        if !res.status().is_success() {
            bail!("CONNECT answered {}", res.status());
        }
        let upgraded = hyper::upgrade::on(res).await.context("CONNECT stream")?;
        return echo_check(&mut TokioIo::new(upgraded), message, Vec::new(), stage).await;
    }
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let (status, _headers, rest) = raw_handshake(&mut stream, &request, stage).await?;
    if !(200..300).contains(&status) {
        bail!("CONNECT answered {status}");
    }
    echo_check(&mut stream, message, rest, stage).await
}

/// `tcp-client`: write everything, half-close, read to EOF; expects the echo
/// followed by `bye <n>\n`.
pub async fn tcp(
    addr: &str,
    send: Option<&str>,
    bytes: Option<u64>,
    stage: &Stage,
) -> Result<bool> {
    let stream = connect(addr, stage).await?;
    let (mut reader, mut writer) = stream.into_split();
    let text = send.unwrap_or_default().as_bytes().to_vec();
    let total = bytes.unwrap_or(text.len() as u64);
    let pattern = bytes.is_some();

    // Write on its own task: the echo comes back while we are still sending.
    let write_stage = stage.clone();
    let write_task = tokio::spawn(async move {
        if pattern {
            let mut left = total;
            while left > 0 {
                let n = left.min(util::CHUNK_LEN as u64) as usize;
                writer.write_all(&util::CHUNK[..n]).await?;
                left -= n as u64;
            }
        } else {
            writer.write_all(&text).await?;
        }
        write_stage.set("reading echo after half-close");
        writer.shutdown().await?;
        // Keep the (half-closed) write half alive until the reader is done.
        Ok::<_, std::io::Error>(writer)
    });

    stage.set("reading echo while writing");
    let mut received = 0u64;
    let mut echo_ok = true;
    let mut text_echo = Vec::new();
    let mut tail = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        let mut data = &chunk[..n];
        if received < total {
            let k = data.len().min((total - received) as usize);
            if pattern {
                echo_ok &= util::pattern_matches(received, &data[..k]);
            } else {
                text_echo.extend_from_slice(&data[..k]);
            }
            received += k as u64;
            data = &data[k..];
        }
        if tail.len() + data.len() > 4096 {
            bail!("more than 4 KiB after the {total} echoed bytes");
        }
        tail.extend_from_slice(data);
    }
    let _writer = write_task.await??;
    let expected_bye = format!("bye {total}\n");
    let tail = String::from_utf8_lossy(&tail);
    if pattern {
        println!(
            "echoed {received} of {total} bytes, pattern {}",
            if echo_ok { "ok" } else { "MISMATCH" }
        );
        print!("{tail}");
    } else {
        print!("{}{tail}", String::from_utf8_lossy(&text_echo));
        echo_ok = text_echo == send.unwrap_or_default().as_bytes();
    }
    if !tail.ends_with('\n') {
        println!();
    }
    Ok(echo_ok && received == total && tail == expected_bye)
}

/// `banner-client`: reads the banner before saying anything, then
/// `HELO x` / `QUIT`. Prints the transcript (`S: ` / `C: ` lines).
pub async fn banner(addr: &str, expect_banner: Option<&str>, stage: &Stage) -> Result<bool> {
    let started = std::time::Instant::now();
    let stream = connect(addr, stage).await?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut ok = true;

    async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Result<String> {
        let mut line = String::new();
        let n = reader.take(8192).read_line(&mut line).await?;
        if n == 0 {
            bail!("connection closed");
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        println!("S: {line}");
        Ok(line)
    }

    stage.set("banner (server speaks first)");
    let banner = read_reply(&mut reader).await?;
    // From connect() to the banner: what a server-first protocol waits.
    println!("T: banner after {} ms", started.elapsed().as_millis());
    if let Some(expected) = expect_banner {
        ok &= banner == expected;
    }
    for (command, expected) in [("HELO x", "250 HELO x"), ("QUIT", "221 bye")] {
        println!("C: {command}");
        writer
            .write_all(format!("{command}\r\n").as_bytes())
            .await?;
        stage.set(format!("reply to {command}"));
        let reply = read_reply(&mut reader).await?;
        ok &= reply == expected;
    }
    stage.set("close after QUIT");
    let mut rest = Vec::new();
    (&mut reader).take(4096).read_to_end(&mut rest).await?;
    if !rest.is_empty() {
        println!(
            "S: (unexpected after QUIT) {}",
            String::from_utf8_lossy(&rest)
        );
        ok = false;
    }
    Ok(ok)
}

/// `upload`: POSTs `bytes` pattern bytes generated on the fly; prints the
/// server's answer. `?verify=pattern` is added so `/sink` checks the bytes.
pub async fn upload(
    addr: &str,
    authority: Option<&str>,
    path: &str,
    bytes: u64,
    http2: bool,
    stage: &Stage,
) -> Result<bool> {
    let stream = connect(addr, stage).await?;
    let authority = authority.unwrap_or(addr);
    let sep = if path.contains('?') { '&' } else { '?' };
    let path = format!("{path}{sep}verify=pattern");
    let started = Instant::now();
    stage.set(format!("uploading {bytes} bytes"));
    let res = if http2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .context("HTTP/2 handshake")?;
        tokio::spawn(conn);
        let req = Request::post(format!("http://{authority}{path}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(PatternBody::new(bytes))?;
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        let req = Request::post(path.as_str())
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(PatternBody::new(bytes))?;
        sender.send_request(req).await?
    };
    let status = res.status();
    stage.set("server's answer");
    let body = res.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    println!("{}", text.trim_end());
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "ward-testapp upload: {bytes} bytes in {secs:.2} s ({:.1} MiB/s), HTTP {status}",
        bytes as f64 / 1_048_576.0 / secs.max(1e-9)
    );
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(status.is_success()
        && answer["bytes"].as_u64() == Some(bytes)
        && answer.get("pattern_ok").and_then(Value::as_bool) != Some(false))
}
