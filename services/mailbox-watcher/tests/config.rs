//! Bad configuration exits 64 before any port is bound, naming the setting.

use std::process::Command;

#[test]
fn bad_settings_exit_64_and_name_the_setting() {
    let cases: [(&[&str], &str); 7] = [
        (&["--roles", "ingest"], "INGEST_TOKEN"),
        (&["--ingest-token", "short"], "INGEST_TOKEN"),
        (
            &[
                "--ingest-token",
                "long-enough-token-123",
                "--roles",
                "shovel",
            ],
            "WATCHER_ROLES",
        ),
        (
            &[
                "--ingest-token",
                "long-enough-token-123",
                "--wake-on",
                "exploded",
            ],
            "WAKE_ON",
        ),
        (
            &[
                "--ingest-token",
                "long-enough-token-123",
                "--store-folder-separator",
                "::",
            ],
            "STORE_FOLDER_SEPARATOR",
        ),
        (&["--roles", "imap"], "IMAP_URL"),
        (
            &[
                "--roles",
                "imap",
                "--imap-url",
                "pop3://mail",
                "--imap-master-user",
                "m",
                "--imap-master-password",
                "p",
            ],
            "IMAP_URL",
        ),
    ];
    for (args, named) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_mailbox-watcher"))
            .args(args)
            .env_remove("INGEST_TOKEN")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{args:?} should name {named}: {stderr}"
        );
    }
}
