//! The private Dovecot that `scripts/peers.sh start` runs (Debian's 2.3, with
//! `contrib/dovecot/directpush.lua` as its push_notification script): users of a test's own,
//! delivery over LMTP and with `dovecot-lda`, and `doveadm`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// IMAP on loopback.
pub const IMAP: &str = "127.0.0.1:1143";
/// The master user, for `user*dpmaster` logins.
pub const MASTER: (&str, &str) = ("dpmaster", "masterpw");

pub fn peers_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.peers"))
}

fn config() -> PathBuf {
    peers_dir().join("dovecot/dovecot.conf")
}

/// Dovecot's own log (errors from the script land here).
pub fn log() -> String {
    std::fs::read_to_string(peers_dir().join("dovecot.log")).unwrap_or_default()
}

/// A mail user of one test: a fresh name, password `pw`, and userdb fields (plugin settings
/// such as `directpush_url`) that only this user's mail processes see.
pub struct MailUser {
    pub name: String,
}

impl MailUser {
    /// Adds the user and waits until Dovecot knows it: Dovecot re-reads its passwd-file at most
    /// once a second, so a user added just after a lookup is unknown for up to a second.
    pub async fn create(prefix: &str, fields: &[(&str, String)]) -> MailUser {
        let mut users = MailUser::create_many(prefix, 1, fields).await;
        users.remove(0)
    }

    /// `count` users at once (one write, one wait for Dovecot).
    pub async fn create_many(
        prefix: &str,
        count: usize,
        fields: &[(&str, String)],
    ) -> Vec<MailUser> {
        let extra: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("userdb_{k}={v}"))
            .collect();
        let users: Vec<MailUser> = (0..count)
            .map(|_| MailUser {
                name: format!("{prefix}{:08x}", rand::random::<u32>()),
            })
            .collect();
        let lines: String = users
            .iter()
            .map(|u| format!("{}:{{PLAIN}}pw::::::{}\n", u.name, extra.join(" ")))
            .collect();
        // One write in append mode: tests add users concurrently.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(peers_dir().join("dovecot/passwd"))
            .expect("Dovecot's passwd file: run scripts/peers.sh start");
        file.write_all(lines.as_bytes()).expect("users added");
        if let Some(last) = users.last() {
            crate::wait_for(
                &format!("Dovecot to know {}", last.name),
                Duration::from_secs(10),
                || async { doveadm(&["user", &last.name]).await.ok() },
            )
            .await;
        }
        users
    }

    /// The plugin settings that make Dovecot tell this watcher of the user's changes.
    pub fn directpush_fields(
        watcher: std::net::SocketAddr,
        token: &str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("directpush_url", format!("http://{watcher}")),
            ("directpush_token", token.to_owned()),
        ]
    }

    /// Delivers over LMTP (Dovecot's unix socket), as an MTA would.
    pub async fn deliver_lmtp(&self, message: &str) -> std::io::Result<()> {
        let socket = peers_dir().join("dovecot/run/lmtp");
        let mut lmtp = BufReader::new(UnixStream::connect(socket).await?);
        let expect = async |lmtp: &mut BufReader<UnixStream>, code: &str| loop {
            let mut line = String::new();
            if lmtp.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::other("LMTP closed"));
            }
            if !line.starts_with(code) {
                return Err(std::io::Error::other(format!("LMTP: {line}")));
            }
            if line.as_bytes().get(3) == Some(&b' ') {
                return Ok(());
            }
        };
        expect(&mut lmtp, "220").await?;
        for (command, code) in [
            ("LHLO test\r\n".to_owned(), "250"),
            ("MAIL FROM:<sender@example.com>\r\n".to_owned(), "250"),
            (format!("RCPT TO:<{}>\r\n", self.name), "250"),
            ("DATA\r\n".to_owned(), "354"),
        ] {
            lmtp.get_mut().write_all(command.as_bytes()).await?;
            expect(&mut lmtp, code).await?;
        }
        let body = message.replace("\r\n.", "\r\n..");
        lmtp.get_mut()
            .write_all(format!("{body}\r\n.\r\n").as_bytes())
            .await?;
        expect(&mut lmtp, "250").await?;
        lmtp.get_mut().write_all(b"QUIT\r\n").await?;
        Ok(())
    }

    /// Delivers with `dovecot-lda`, as a local MTA would; returns how long it took.
    pub async fn deliver_lda(&self, message: &str) -> std::io::Result<Duration> {
        let started = Instant::now();
        let mut lda = tokio::process::Command::new("/usr/lib/dovecot/dovecot-lda")
            .arg("-c")
            .arg(config())
            .args(["-d", &self.name, "-f", "sender@example.com"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = lda.stdin.take() {
            stdin.write_all(message.as_bytes()).await?;
        }
        let output = lda.wait_with_output().await?;
        if !output.status.success() {
            return Err(std::io::Error::other(format!(
                "dovecot-lda: {} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(started.elapsed())
    }

    /// Runs `doveadm <command> -u <user> <args>`.
    pub async fn doveadm(&self, command: &[&str], args: &[&str]) -> std::io::Result<String> {
        let mut all: Vec<&str> = command.to_vec();
        all.extend(["-u", &self.name]);
        all.extend(args);
        doveadm(&all).await
    }
}

/// Runs `doveadm` with the private Dovecot's configuration.
pub async fn doveadm(args: &[&str]) -> std::io::Result<String> {
    let output = tokio::process::Command::new("doveadm")
        .arg("-c")
        .arg(config())
        .args(args)
        .output()
        .await?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "doveadm {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A message to deliver, with a unique subject to look for.
pub fn message(to: &str) -> (String, String) {
    let subject = format!("directpush-{:08x}", rand::random::<u32>());
    let message = format!(
        "From: sender@example.com\r\nTo: {to}@example.com\r\nSubject: {subject}\r\n\
         Date: Wed, 2 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\nhello\r\n"
    );
    (subject, message)
}
