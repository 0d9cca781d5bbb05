//! Response bytes. Every response says Content-Length; errors that leave the connection in an
//! unknown state also say `Connection: close`.

use dp_proto::query::ProtocolVersion;

/// The version this tier reports in `MS-Server-ActiveSync`.
const SERVER_VERSION: &str = "15.1";

/// The commands EAS defines; OPTIONS lists them all because the load balancer routes every
/// command but Ping to the mailbox server behind it.
const COMMANDS: &str = "Sync,SendMail,SmartForward,SmartReply,GetAttachment,GetHierarchy,\
CreateCollection,DeleteCollection,MoveCollection,FolderSync,FolderCreate,FolderDelete,\
FolderUpdate,MoveItems,GetItemEstimate,MeetingResponse,Search,Settings,Ping,ItemOperations,\
Provision,ResolveRecipients,ValidateCert,Find";

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        449 => "Retry After Sending Provision",
        451 => "Redirect",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A Ping response carrying a WBXML body.
pub fn wbxml(body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.ms-sync.wbxml\r\n\
             Content-Length: {}\r\nMS-Server-ActiveSync: {SERVER_VERSION}\r\n\
             Cache-Control: private\r\n{}\r\n",
            body.len(),
            if keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            }
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

pub fn options() -> Vec<u8> {
    let versions: Vec<&str> = ProtocolVersion::ALL.iter().map(|v| v.as_str()).collect();
    format!(
        "HTTP/1.1 200 OK\r\nAllow: OPTIONS,POST\r\nMS-Server-ActiveSync: {SERVER_VERSION}\r\n\
         MS-ASProtocolVersions: {}\r\nMS-ASProtocolCommands: {COMMANDS}\r\n\
         Public: OPTIONS,POST\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n",
        versions.join(",")
    )
    .into_bytes()
}

/// An error answer with a one-line plain-text reason and any extra headers.
pub fn error(code: u16, message: &str, headers: &[(&str, String)], close: bool) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {code} {}\r\n", reason(code));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = format!("{message}\n");
    head.push_str(&format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    ));
    head.push_str(&body);
    head.into_bytes()
}

/// 503 with Retry-After: the overload answer. Never Ping Status 111 (Android re-pings at once).
pub fn unavailable(retry_after_secs: u32, message: &str) -> Vec<u8> {
    error(
        503,
        message,
        &[("Retry-After", retry_after_secs.to_string())],
        true,
    )
}
