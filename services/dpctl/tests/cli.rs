//! dpctl as an operator runs it: the real binary, real pipes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn dpctl(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dpctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dpctl starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("writes stdin");
    child.wait_with_output().expect("dpctl finishes")
}

const SPEC_PING_HEX: &str =
    "03 01 6a 00 00 0d 45 48 03 38 30 00 01 49 4a 4b 03 35 00 01 4c 03 45 6d 61 69 6c 00 01 01 01 01";

#[test]
fn wbxml_decode_then_encode_gives_the_same_bytes() {
    let decoded = dpctl(&["wbxml", "decode", "--hex"], SPEC_PING_HEX.as_bytes());
    assert!(decoded.status.success());
    let xml = String::from_utf8(decoded.stdout).expect("utf-8");
    assert!(
        xml.contains("<Ping xmlns=\"Ping:\">") && xml.contains("<Class>Email</Class>"),
        "{xml}"
    );
    let encoded = dpctl(&["wbxml", "encode", "--hex", "-"], xml.as_bytes());
    assert!(encoded.status.success());
    assert_eq!(
        String::from_utf8_lossy(&encoded.stdout).trim(),
        SPEC_PING_HEX
    );
}

#[test]
fn bad_input_is_a_clear_error_and_exit_1() {
    let out = dpctl(
        &["wbxml", "decode", "--hex"],
        b"03 01 6a 00 00 0d 45 48 03 38",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("at byte 10") && err.contains("ends too early"),
        "{err}"
    );
}

#[test]
fn eas_query_both_ways() {
    let out = dpctl(
        &[
            "eas-query",
            "encode",
            "--device-id",
            "v140Device",
            "--device-type",
            "SmartPhone",
        ],
        b"",
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "jRIJBAp2MTQwRGV2aWNlAApTbWFydFBob25l"
    );
    let out = dpctl(
        &[
            "eas-query",
            "decode",
            "jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l",
        ],
        b"",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Sync (code 0)") && text.contains("14.0"),
        "{text}"
    );
    let out = dpctl(&["eas-query", "decode", "jRIJBAB2"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("zero-length DeviceId"));
}
