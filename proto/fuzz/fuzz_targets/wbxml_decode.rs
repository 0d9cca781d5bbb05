//! Any bytes: the decoder returns a tree or an error inside the input, and a tree it returns
//! re-encodes to bytes that decode to the same tree.
#![no_main]

use dp_proto::wbxml::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(tree) => {
            let bytes = encode(&tree).expect("a decoded tree encodes");
            assert_eq!(decode(&bytes).expect("re-decodes"), tree);
        }
        Err(err) => assert!(err.offset <= data.len()),
    }
});
