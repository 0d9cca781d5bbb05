//! Everything directpush says or hears on the wire, with no I/O: the EAS WBXML codec and its code
//! pages ([`wbxml`]), the two request query forms ([`query`]), the Ping request and response model
//! ([`ping`]) and the events the cluster passes around over NATS ([`events`]).
#![forbid(unsafe_code)]

pub mod events;
pub mod ids;
pub mod ping;
pub mod query;
pub mod wbxml;
