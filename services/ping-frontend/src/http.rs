//! A lean HTTP/1.1 layer for the Ping listener: heads parsed with `httparse`, bodies by
//! Content-Length, responses written as plain bytes. hyper keeps two 8 KiB buffers per
//! connection; a parked Ping here keeps none (ARCHITECTURE.md section 5).

pub mod request;
pub mod response;
