//! A minimal HTTP/1.0-style responder for scrapes: one request per connection, GET only.
//! Prometheus needs no more, and a scrape never waits on a client that misbehaves: each
//! connection has short timeouts and is answered on its own thread.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Duration,
};

use super::metrics::Format;

/// What the tracer loop is asked for.
pub enum Ask {
    Metrics(Format),
    Report,
}

/// A request, with where to send the body (content type, body).
pub type Request = (Ask, mpsc::Sender<(String, String)>);

pub fn serve(listener: TcpListener, to_tracer: mpsc::Sender<Request>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let tx = to_tracer.clone();
        let _ = std::thread::Builder::new()
            .name("agent-http".into())
            .spawn(move || {
                let _ = answer(conn, &tx);
            });
    }
}

fn answer(mut conn: TcpStream, tx: &mpsc::Sender<Request>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut accept = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("accept")
        {
            accept = v.trim().to_string();
        }
    }
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let ask = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => Some(Ask::Metrics(
            if accept.contains("application/openmetrics-text") {
                Format::OpenMetrics
            } else {
                Format::Prometheus
            },
        )),
        ("GET", "/report.json") => Some(Ask::Report),
        _ => None,
    };
    let (status, ctype, body) = match ask {
        None => (
            "404 Not Found",
            "text/plain".to_string(),
            "profiler agent: GET /metrics or /report.json\n".to_string(),
        ),
        Some(ask) => {
            let (reply, rx) = mpsc::channel();
            match tx
                .send((ask, reply))
                .ok()
                .and_then(|()| rx.recv_timeout(Duration::from_secs(10)).ok())
            {
                Some((ctype, body)) => ("200 OK", ctype, body),
                None => (
                    "503 Service Unavailable",
                    "text/plain".to_string(),
                    "profiler agent: the tracer is stopping\n".to_string(),
                ),
            }
        }
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}
