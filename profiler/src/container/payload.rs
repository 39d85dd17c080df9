//! The payload: this binary re-executed inside the container (`__container-payload`).
//! It reads CLOCK_MONOTONIC first thing and sends it to the parent, which ends the `exec`
//! phase on the payload's own clock.

use std::{
    io::Write as _,
    net::{Ipv4Addr, TcpListener},
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

/// Entry point for `profiler __container-payload --fd N [--port P]` (main.rs calls it first).
/// With `--port` it listens on P and answers each connection with one byte; without, it
/// writes one byte to fd N when ready. Either way it first writes its entry time to fd N.
/// Accepts the arguments with or without the program name and subcommand in front.
pub fn payload_main(args: &[String]) -> ! {
    let entered = super::mono_ns();
    let code = match payload(entered, args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("profiler payload: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

#[derive(Debug, Default, PartialEq, Eq)]
struct PayloadArgs {
    fd: Option<i32>,
    port: Option<u16>,
}

fn parse(args: &[String]) -> Result<PayloadArgs> {
    let mut out = PayloadArgs::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fd" => {
                let v = it.next().context("--fd needs a file descriptor number")?;
                out.fd = Some(v.parse().with_context(|| format!("bad --fd {v:?}"))?);
            }
            "--port" => {
                let v = it.next().context("--port needs a port")?;
                out.port = Some(v.parse().with_context(|| format!("bad --port {v:?}"))?);
            }
            // The program name and the subcommand, if the caller passed them.
            _ => {}
        }
    }
    Ok(out)
}

fn payload(entered: u64, args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let mut status = match args.fd {
        Some(fd) if fd > 2 => {
            // SAFETY: the runtime hands this descriptor to the payload and nothing else uses it.
            Some(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        Some(fd) => bail!("--fd {fd}: expected the status pipe (3 or above)"),
        None => None,
    };
    if let Some(f) = &mut status {
        f.write_all(format!("{entered}\n").as_bytes())
            .context("writing the entry time")?;
    }
    match args.port {
        Some(port) => {
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| format!("listening on port {port}"))?;
            drop(status);
            // A failed accept (a client gone already) is the client's problem, not ours.
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(b"x");
            }
            Ok(())
        }
        None => {
            let Some(f) = &mut status else {
                bail!("give --fd (no network) or --port");
            };
            f.write_all(b"r").context("writing the ready byte")?;
            // A container's init lives until it is killed.
            loop {
                nix::unistd::pause();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_with_or_without_the_subcommand() {
        let want = PayloadArgs {
            fd: Some(3),
            port: Some(8080),
        };
        assert_eq!(parse(&s(&["--fd", "3", "--port", "8080"])).unwrap(), want);
        assert_eq!(
            parse(&s(&[
                "profiler",
                "__container-payload",
                "--fd",
                "3",
                "--port",
                "8080"
            ]))
            .unwrap(),
            want
        );
        assert!(parse(&s(&["--fd"])).is_err());
        assert!(parse(&s(&["--port", "x"])).is_err());
    }
}
