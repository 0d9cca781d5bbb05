//! A few IMAP commands over a real connection, for tests that put mail into a real store.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Imap {
    stream: BufReader<TcpStream>,
    tag: u32,
}

impl Imap {
    pub async fn login(addr: &str, user: &str, password: &str) -> std::io::Result<Imap> {
        let mut imap = Imap {
            stream: BufReader::new(TcpStream::connect(addr).await?),
            tag: 0,
        };
        imap.line().await?;
        imap.command(&format!("LOGIN {user} {password}")).await?;
        Ok(imap)
    }

    async fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line)
    }

    /// Sends a command and reads to its tagged answer, which must be OK.
    pub async fn command(&mut self, command: &str) -> std::io::Result<Vec<String>> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.stream
            .get_mut()
            .write_all(format!("{tag} {command}\r\n").as_bytes())
            .await?;
        self.finish(&tag).await
    }

    async fn finish(&mut self, tag: &str) -> std::io::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                if rest.starts_with("OK") {
                    return Ok(lines);
                }
                return Err(std::io::Error::other(format!("IMAP: {line}")));
            }
            lines.push(line);
        }
    }

    /// APPENDs a message to `mailbox`.
    pub async fn append(&mut self, mailbox: &str, message: &str) -> std::io::Result<()> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        let stream = self.stream.get_mut();
        stream
            .write_all(format!("{tag} APPEND {mailbox} {{{}}}\r\n", message.len()).as_bytes())
            .await?;
        let go = self.line().await?;
        if !go.starts_with('+') {
            return Err(std::io::Error::other(format!("IMAP APPEND refused: {go}")));
        }
        let stream = self.stream.get_mut();
        stream.write_all(message.as_bytes()).await?;
        stream.write_all(b"\r\n").await?;
        self.finish(&tag).await.map(|_| ())
    }
}
