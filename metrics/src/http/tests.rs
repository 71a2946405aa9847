use super::*;
use crate::CONTENT_TYPE;

fn ok() -> Arc<Render> {
    Arc::new(|| Ok("# TYPE x gauge\nx 1\n".to_owned()))
}

fn respond_to(head: &str) -> Response {
    respond(head.as_bytes(), &*ok())
}

#[test]
fn what_is_answered() {
    let r = respond_to("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.body.as_str()), (200, "# TYPE x gauge\nx 1\n"));
    assert_eq!(r.content_type, CONTENT_TYPE);
    assert_eq!(respond_to("GET /metrics?name[]=x HTTP/1.0\n\n").status, 200);
    assert_eq!(respond_to("GET / HTTP/1.1\r\n\r\n").status, 404);
    assert_eq!(respond_to("GET /metricsx HTTP/1.1\r\n\r\n").status, 404);
    let r = respond_to("POST /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((r.status, r.allow), (405, true));
    assert_eq!(respond_to("HEAD /metrics HTTP/1.1\r\n\r\n").status, 405);
    assert_eq!(respond_to("GET /metrics HTTP/2.0\r\n\r\n").status, 505);
    for bad in [
        "GET /metrics\r\n\r\n",
        "GET  /metrics HTTP/1.1\r\n\r\n",
        "\r\n\r\n",
        "\u{ff}\n\n",
    ] {
        assert_eq!(respond_to(bad).status, 400, "{bad:?}");
    }
    let failing: Arc<Render> = Arc::new(|| Err("the event loop does not answer".to_owned()));
    let r = respond(b"GET /metrics HTTP/1.1\r\n\r\n", &*failing);
    assert_eq!(r.status, 503);
    assert!(r.body.contains("does not answer"), "{}", r.body);
}

#[test]
fn heads_end_at_the_blank_line() {
    assert_eq!(end_of_head(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
    assert_eq!(end_of_head(b"GET / HTTP/1.1\n\nbody"), Some(16));
    assert_eq!(end_of_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
}

/// Sends `request` to the server at `addr`, returns the whole answer.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn over_loopback_with_limits() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        connections: 2,
        head_max: 256,
        timeout: Duration::from_millis(500),
    };
    spawn_with(listener, ok(), limits).unwrap();
    let a = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
    assert!(
        a.contains("Content-Length: 19\r\n") && a.ends_with("\r\n\r\n# TYPE x gauge\nx 1\n"),
        "{a}"
    );
    let a = exchange(addr, b"GET /other HTTP/1.1\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 404 "), "{a}");
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1000));
    let a = exchange(addr, &big);
    assert!(a.starts_with("HTTP/1.1 431 "), "{a}");
    // Two silent clients hold both places: a third is turned away at once; once they
    // time out, a scrape is answered again.
    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let a = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 503 "), "{a}");
    let started = Instant::now();
    for mut s in silent {
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "a silent client gets no answer, only the close"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after the timeout"
    );
    std::thread::sleep(Duration::from_millis(50));
    let a = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 200 "), "{a}");
}
