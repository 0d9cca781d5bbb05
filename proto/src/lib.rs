//! Everything directpush says or hears on the wire, with no I/O: the EAS WBXML codec and its code
//! pages ([`wbxml`]), the two request query forms ([`query`]), the Ping request and response model
//! ([`ping`]), what the proxy learns from FolderSync and Sync as they pass ([`sync`]) the events the cluster passes around over NATS ([`events`]) and the frames of the direct wake link ([`wake_link`]).
#![forbid(unsafe_code)]

pub mod events;
pub mod ids;
pub mod ping;
pub mod query;
pub mod sync;
pub mod wake_link;
pub mod wbxml;
