//! nginx (Debian's 1.22) with the tool's own configuration: everything it writes (pid file,
//! error log, temp paths) and serves (one file of `--size` bytes) lives in its work directory.
//! Access logging is off: one write per request would be the disk's cost, not the network's.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{Place, Server, Workdir};

pub const BINARY: &str = "/usr/sbin/nginx";
/// The served file's path.
pub const PATH: &str = "/index.html";

/// nginx's configuration for `listen`, with its files under `dir` (the directory as the server
/// sees it: a Docker image has its own). `connections`: the most a run opens at once.
pub fn config(dir: &str, listen: SocketAddr, workers: usize, connections: usize) -> String {
    let per_worker = connections + 64;
    format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes {workers};\n\
         worker_rlimit_nofile {nofile};\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{ worker_connections {per_worker}; multi_accept on; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 keepalive_requests 1000000;\n\
         \x20 keepalive_timeout 65s;\n\
         \x20 sendfile on;\n\
         \x20 tcp_nodelay on;\n\
         \x20 client_body_temp_path {dir}/tmp/body;\n\
         \x20 proxy_temp_path {dir}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {dir}/tmp/fastcgi;\n\
         \x20 uwsgi_temp_path {dir}/tmp/uwsgi;\n\
         \x20 scgi_temp_path {dir}/tmp/scgi;\n\
         \x20 server {{\n\
         \x20   listen {listen} reuseport backlog=4096;\n\
         \x20   root {dir}/html;\n\
         \x20   location / {{ }}\n\
         \x20 }}\n\
         }}\n",
        nofile = per_worker * 2 + 64,
    )
}

/// Writes the configuration, the document root and the temp paths into `dir` (as the server
/// will see it at `seen_as`).
pub fn prepare(
    dir: &Workdir,
    seen_as: &str,
    listen: SocketAddr,
    workers: usize,
    connections: usize,
    size: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir.join("html"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    // Printable, so a look at it by hand shows what was served.
    let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(dir.join("html/index.html"), body)?;
    std::fs::write(
        dir.join("nginx.conf"),
        config(seen_as, listen, workers, connections),
    )
    .context("writing nginx.conf")
}

/// The installed nginx's version line (`nginx/1.22.1`), or what to install.
pub fn version() -> Result<String> {
    let out = Command::new(BINARY).arg("-v").output();
    match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stderr)
            .trim()
            .trim_start_matches("nginx version: ")
            .to_string()),
        _ => bail!(
            "{BINARY} is missing: install nginx (`apt-get install nginx`, or `cargo xtask setup`)"
        ),
    }
}

/// A running nginx and its files.
pub struct Nginx {
    pub server: Server,
    pub listen: SocketAddr,
    /// Dropped after the server (fields drop in order).
    pub dir: Workdir,
}

/// Starts nginx in `place` listening on `listen`, serving one file of `size` bytes, and waits
/// for its first answer.
pub fn start(
    place: &Place,
    listen: SocketAddr,
    workers: usize,
    connections: usize,
    size: usize,
) -> Result<Nginx> {
    let dir = Workdir::new("nginx")?;
    let seen = dir.path.to_string_lossy().into_owned();
    prepare(&dir, &seen, listen, workers, connections, size)?;
    let mut cmd = Command::new(BINARY);
    cmd.arg("-p")
        .arg(&dir.path)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = Server::spawn("nginx", cmd, place)?;
    super::wait_ready(
        &mut server,
        place,
        Duration::from_secs(10),
        move || http_ok(listen),
        &dir.join("error.log"),
    )?;
    Ok(Nginx {
        server,
        listen,
        dir,
    })
}

/// Where the configuration and files live inside a Docker image.
pub const IMAGE_DIR: &str = "/srv/nginx";

/// A root filesystem for a Docker image: the installed nginx and the libraries it links, the
/// users its workers switch to, and `dir`'s configuration and document root (prepared with
/// [`IMAGE_DIR`] as the path the server sees) under [`IMAGE_DIR`].
pub fn rootfs(dir: &Workdir) -> Result<Vec<u8>> {
    use crate::docker::image::{Tar, add_path};
    let mut t = Tar::new();
    let mut dirs = vec![];
    add_path(&mut t, &mut dirs, BINARY, 0o755)?;
    let elf = std::fs::read(BINARY).with_context(|| format!("reading {BINARY}"))?;
    for lib in crate::exe::libraries(std::path::Path::new(BINARY), &elf)? {
        add_path(&mut t, &mut dirs, &lib.to_string_lossy(), 0o755)?;
    }
    t.dir("etc")?;
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    t.file(
        "etc/group",
        0o644,
        b"root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n",
    )?;
    // nginx opens its compiled-in error log before it reads the configuration.
    for d in [
        "var",
        "var/log",
        "var/log/nginx",
        "var/lib",
        "var/lib/nginx",
        "tmp",
    ] {
        t.dir(d)?;
    }
    let base = IMAGE_DIR.trim_start_matches('/');
    t.dir("srv")?;
    t.dir(base)?;
    t.dir(&format!("{base}/tmp"))?;
    t.dir(&format!("{base}/html"))?;
    t.file(
        &format!("{base}/nginx.conf"),
        0o644,
        &std::fs::read(dir.join("nginx.conf"))?,
    )?;
    t.file(
        &format!("{base}/html/index.html"),
        0o644,
        &std::fs::read(dir.join("html/index.html"))?,
    )?;
    Ok(t.finish())
}

/// nginx's command line in an image built by [`rootfs`].
pub fn image_command() -> Vec<String> {
    [
        BINARY,
        "-p",
        IMAGE_DIR,
        "-c",
        &format!("{IMAGE_DIR}/nginx.conf"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One HTTP/1.0 GET of the served file answered with 200.
pub fn http_ok(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("GET {PATH} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1.1 200"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_every_file_in_its_directory() {
        let c = config("/tmp/d", "127.0.0.1:8080".parse().unwrap(), 2, 256);
        assert!(c.contains("listen 127.0.0.1:8080 "));
        assert!(c.contains("worker_connections 320;"));
        assert!(c.contains("pid /tmp/d/nginx.pid;"));
        for l in c
            .lines()
            .filter(|l| l.contains("path") || l.contains("log "))
        {
            assert!(
                l.contains("/tmp/d/") || l.contains(" off;"),
                "a file outside the work directory: {l}"
            );
        }
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }
}
