//! The wire format between client and server, all little-endian, all on the one TCP port.
//!
//! Every TCP connection starts with a hello: `PRFW`, version, kind. A *control* hello opens a
//! session (test and sizes) and the server answers with a [`Reply`] carrying a token; a *data*
//! hello (token) joins that session. The data connections then carry only payload. The client
//! ends a session with one [`STOP`] byte on the control connection and the server answers with
//! [`Results`] (its CPU time and what it counted). UDP tests put payload only in datagrams, to the
//! UDP port the reply names (normally the same number).

use std::io::{self, Read, Write};

use super::Test;

pub const MAGIC: [u8; 4] = *b"PRFW";
pub const VERSION: u8 = 1;
pub const KIND_CONTROL: u8 = 1;
pub const KIND_DATA: u8 = 2;
/// magic, version, kind: enough to tell a control hello from a data hello.
pub const PREFIX_LEN: usize = 6;
pub const CONTROL_HELLO_LEN: usize = PREFIX_LEN + 1 + 5 * 4;
pub const DATA_HELLO_LEN: usize = PREFIX_LEN + 8;
pub const STOP: u8 = b'S';

pub const STATUS_OK: u8 = 0;
pub const STATUS_BUSY: u8 = 1;
pub const STATUS_REFUSED: u8 = 2;
pub const STATUS_ERROR: u8 = 3;

/// What a control hello asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub test: Test,
    pub request: u32,
    pub response: u32,
    pub send_size: u32,
    pub burst: u32,
    pub duration_ms: u32,
}

impl Spec {
    pub fn encode(&self) -> [u8; CONTROL_HELLO_LEN] {
        let mut b = [0u8; CONTROL_HELLO_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = KIND_CONTROL;
        b[6] = self.test.code();
        let fields = [
            self.request,
            self.response,
            self.send_size,
            self.burst,
            self.duration_ms,
        ];
        for (i, f) in fields.iter().enumerate() {
            b[7 + 4 * i..11 + 4 * i].copy_from_slice(&f.to_le_bytes());
        }
        b
    }

    /// `rest` is what follows the prefix.
    pub fn decode(rest: &[u8; CONTROL_HELLO_LEN - PREFIX_LEN]) -> Result<Spec, String> {
        let test =
            Test::from_code(rest[0]).ok_or_else(|| format!("unknown test code {}", rest[0]))?;
        let f = |i: usize| u32::from_le_bytes(rest[1 + 4 * i..5 + 4 * i].try_into().unwrap());
        Ok(Spec {
            test,
            request: f(0),
            response: f(1),
            send_size: f(2),
            burst: f(3),
            duration_ms: f(4),
        })
    }
}

pub fn data_hello(token: u64) -> [u8; DATA_HELLO_LEN] {
    let mut b = [0u8; DATA_HELLO_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[5] = KIND_DATA;
    b[6..].copy_from_slice(&token.to_le_bytes());
    b
}

/// Checks a prefix; returns its kind.
pub fn check_prefix(p: &[u8]) -> Result<u8, String> {
    if p[..4] != MAGIC {
        return Err("not a profiler workload client".into());
    }
    if p[4] != VERSION {
        return Err(format!(
            "protocol version {} (this server speaks {VERSION})",
            p[4]
        ));
    }
    match p[5] {
        k @ (KIND_CONTROL | KIND_DATA) => Ok(k),
        k => Err(format!("unknown connection kind {k}")),
    }
}

/// The server's answer to a control hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u8,
    pub token: u64,
    pub udp_port: u16,
    pub message: String,
}

impl Reply {
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let mut b = Vec::with_capacity(13 + self.message.len());
        b.push(self.status);
        b.extend_from_slice(&self.token.to_le_bytes());
        b.extend_from_slice(&self.udp_port.to_le_bytes());
        put_message(&mut b, &self.message);
        w.write_all(&b)
    }

    pub fn read(r: &mut impl Read) -> io::Result<Reply> {
        let mut b = [0u8; 11];
        r.read_exact(&mut b)?;
        Ok(Reply {
            status: b[0],
            token: u64::from_le_bytes(b[1..9].try_into().unwrap()),
            udp_port: u16::from_le_bytes(b[9..11].try_into().unwrap()),
            message: get_message(r)?,
        })
    }
}

/// What the server measured, sent after the data phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Results {
    pub status: u8,
    pub cpu_ns: u64,
    pub bytes_rx: u64,
    pub msgs_rx: u64,
    pub bytes_tx: u64,
    pub msgs_tx: u64,
    pub message: String,
}

impl Results {
    pub fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let mut b = Vec::with_capacity(43 + self.message.len());
        b.push(self.status);
        for v in [
            self.cpu_ns,
            self.bytes_rx,
            self.msgs_rx,
            self.bytes_tx,
            self.msgs_tx,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        put_message(&mut b, &self.message);
        w.write_all(&b)
    }

    pub fn read(r: &mut impl Read) -> io::Result<Results> {
        let mut b = [0u8; 41];
        r.read_exact(&mut b)?;
        let f = |i: usize| u64::from_le_bytes(b[1 + 8 * i..9 + 8 * i].try_into().unwrap());
        Ok(Results {
            status: b[0],
            cpu_ns: f(0),
            bytes_rx: f(1),
            msgs_rx: f(2),
            bytes_tx: f(3),
            msgs_tx: f(4),
            message: get_message(r)?,
        })
    }
}

fn put_message(b: &mut Vec<u8>, m: &str) {
    let m = &m.as_bytes()[..m.len().min(u16::MAX as usize)];
    b.extend_from_slice(&(m.len() as u16).to_le_bytes());
    b.extend_from_slice(m);
}

fn get_message(r: &mut impl Read) -> io::Result<String> {
    let mut l = [0u8; 2];
    r.read_exact(&mut l)?;
    let mut m = vec![0u8; u16::from_le_bytes(l) as usize];
    r.read_exact(&mut m)?;
    Ok(String::from_utf8_lossy(&m).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = Spec {
            test: Test::UdpRr,
            request: 1,
            response: 70000,
            send_size: 3,
            burst: 4,
            duration_ms: 5,
        };
        let b = s.encode();
        assert_eq!(check_prefix(&b), Ok(KIND_CONTROL));
        assert_eq!(Spec::decode(b[PREFIX_LEN..].try_into().unwrap()), Ok(s));
        assert_eq!(check_prefix(&data_hello(7)), Ok(KIND_DATA));
        assert!(check_prefix(b"GET / ").is_err());

        let r = Reply {
            status: STATUS_BUSY,
            token: 9,
            udp_port: 12865,
            message: "busy".into(),
        };
        let mut v = Vec::new();
        r.write(&mut v).unwrap();
        assert_eq!(Reply::read(&mut v.as_slice()).unwrap(), r);
        let x = Results {
            status: STATUS_OK,
            cpu_ns: 1,
            bytes_rx: 2,
            msgs_rx: 3,
            bytes_tx: 4,
            msgs_tx: 5,
            message: String::new(),
        };
        let mut v = Vec::new();
        x.write(&mut v).unwrap();
        assert_eq!(Results::read(&mut v.as_slice()).unwrap(), x);
    }
}
