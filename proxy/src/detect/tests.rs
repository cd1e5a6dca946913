use super::*;

#[test]
fn classifies_complete_prefixes() {
    assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Protocol::Tls));
    assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
    assert_eq!(
        classify(b"CONNECT host:443 HTTP/1.1"),
        Some(Protocol::Http1)
    );
    assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Protocol::Opaque));
    assert_eq!(classify(b"\x16\x01"), Some(Protocol::Opaque));
    assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Opaque));
}

#[test]
fn waits_for_more_bytes_when_undecided() {
    for partial in [
        &b""[..],
        b"\x16",
        b"G",
        b"GE",
        b"PO",
        b"PRI * HTTP/2",
        b"CONNEC",
    ] {
        assert_eq!(
            classify(partial),
            None,
            "{:?}",
            String::from_utf8_lossy(partial)
        );
    }
    // "P" could be POST, PUT, PATCH or the h2 preface.
    assert_eq!(classify(b"P"), None);
    assert_eq!(classify(b"PRX"), Some(Protocol::Opaque));
}

#[tokio::test]
async fn peek_does_not_consume_and_times_out_on_silence() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();

    assert_eq!(
        peek(&server, Duration::from_millis(50)).await.unwrap(),
        Peeked::Silent
    );

    client.write_all(b"GE").await.unwrap();
    let pending = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"T /x HTTP/1.1\r\n").await.unwrap();
        client
    });
    assert_eq!(
        peek(&server, Duration::from_secs(2)).await.unwrap(),
        Peeked::Protocol(Protocol::Http1)
    );
    let _client = pending.await.unwrap();
    let mut first = [0u8; 6];
    server.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"GET /x");
}
