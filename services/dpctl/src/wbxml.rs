//! `dpctl wbxml decode|encode`: between EAS WBXML and the XML libwbxml prints.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use dp_proto::wbxml::{self, xml};

#[derive(Subcommand)]
pub enum WbxmlCommand {
    /// Print a WBXML body as XML with code page names.
    Decode {
        /// The body; `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// The input is hex, as pasted from a capture (spaces, `0x` and commas are ignored).
        #[arg(long)]
        hex: bool,
    },
    /// Turn XML (libwbxml's `xmlns="Page:"` or MS-ASCMD's prefixes) into a WBXML body.
    Encode {
        /// The XML; `-` or nothing reads standard input.
        file: Option<PathBuf>,
        /// Print hex instead of writing raw bytes.
        #[arg(long)]
        hex: bool,
    },
}

impl WbxmlCommand {
    pub fn run(self) -> Result<()> {
        match self {
            WbxmlCommand::Decode { file, hex } => {
                let input = read_input(file.as_ref())?;
                let bytes = if hex { parse_hex(&input)? } else { input };
                let tree = wbxml::decode(&bytes)?;
                print!("{}", xml::to_xml(&tree));
                Ok(())
            }
            WbxmlCommand::Encode { file, hex } => {
                let input = read_input(file.as_ref())?;
                let text = String::from_utf8(input).context("the XML is not UTF-8")?;
                let bytes = wbxml::encode(&xml::from_xml(&text)?)?;
                let mut stdout = std::io::stdout().lock();
                if hex {
                    writeln!(stdout, "{}", spaced_hex(&bytes))?;
                } else {
                    stdout.write_all(&bytes)?;
                }
                Ok(())
            }
        }
    }
}

pub fn read_input(file: Option<&PathBuf>) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match file {
        Some(path) if path.as_os_str() != "-" => {
            bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading standard input")?;
        }
    }
    Ok(bytes)
}

fn parse_hex(input: &[u8]) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(input).context("hex input is not text")?;
    let digits: String = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|word| word.trim_start_matches("0x").trim_start_matches("0X"))
        .collect();
    hex::decode(&digits)
        .context("hex input has a character that is not a hex digit, or an odd count")
}

fn spaced_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_as_people_paste_it() {
        assert_eq!(parse_hex(b"03 01 6a 00").expect("spaced"), [3, 1, 0x6a, 0]);
        assert_eq!(
            parse_hex(b"0x03,0x01\n0x6A00").expect("mixed"),
            [3, 1, 0x6a, 0]
        );
        assert!(parse_hex(b"03 0").is_err());
        assert_eq!(spaced_hex(&[3, 1, 0x6a]), "03 01 6a");
    }
}
