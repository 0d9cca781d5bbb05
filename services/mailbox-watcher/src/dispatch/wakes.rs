//! Wake messages: one per pod holding Pings of the mailbox, split so that none passes the
//! NATS server's `max_payload` (a mailbox with a thousand devices on one pod must not make its
//! wake unpublishable).

use dp_proto::events::{WakeEvent, WakeTarget};

/// The payloads that wake `targets`: `template` (its targets ignored) with the targets spread
/// over as few messages as fit in `limit` bytes each (always at least one target a message).
pub fn payloads(
    template: &WakeEvent,
    targets: Vec<WakeTarget>,
    limit: usize,
) -> serde_json::Result<Vec<Vec<u8>>> {
    let empty = WakeEvent {
        targets: Vec::new(),
        ..template.clone()
    };
    let base = serde_json::to_vec(&empty)?.len();
    let mut out = Vec::new();
    let mut chunk: Vec<WakeTarget> = Vec::new();
    let mut size = base;
    for target in targets {
        // The target's JSON and a separating comma.
        let cost = serde_json::to_vec(&target)?.len() + 1;
        if !chunk.is_empty() && size + cost > limit {
            out.push(encode(&empty, std::mem::take(&mut chunk))?);
            size = base;
        }
        size += cost;
        chunk.push(target);
    }
    if !chunk.is_empty() {
        out.push(encode(&empty, chunk)?);
    }
    Ok(out)
}

fn encode(empty: &WakeEvent, targets: Vec<WakeTarget>) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&WakeEvent {
        targets,
        ..empty.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_split_under_the_limit_and_none_is_lost() {
        let template = WakeEvent {
            mailbox: "m".into(),
            folders: Vec::new(),
            targets: Vec::new(),
            accepted_at_us: 1,
            hierarchy: false,
            recheck: false,
            stages: None,
        };
        let targets: Vec<WakeTarget> = (0..1300)
            .map(|i| WakeTarget {
                device: format!("m:{}{i}", "d".repeat(250)),
                request: i,
            })
            .collect();
        let limit = 64 * 1024;
        let parts = payloads(&template, targets, limit).expect("encodes");
        assert!(parts.len() > 1);
        let mut seen = Vec::new();
        for part in &parts {
            assert!(part.len() <= limit, "{} bytes", part.len());
            let wake: WakeEvent = serde_json::from_slice(part).expect("a wake");
            seen.extend(wake.targets.into_iter().map(|t| t.request));
        }
        assert_eq!(seen, (0..1300).collect::<Vec<u64>>());
        let one = payloads(
            &template,
            vec![WakeTarget {
                device: "x".repeat(100),
                request: 1,
            }],
            10,
        )
        .expect("encodes");
        assert_eq!(
            one.len(),
            1,
            "a target larger than the limit still goes, alone"
        );
    }
}
