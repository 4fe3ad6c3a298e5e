//! The query-string and form-body parser (and everything `authenticate` does before the signature) on arbitrary
//! bytes: it must answer an error, never panic.
#![no_main]

use ddsvault_api::{authenticate, MemoryNonceStore, RawRequest, VerifyOptions};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::pieces(data, 3);
    let req = RawRequest {
        method: if p[2].len() % 2 == 0 { "GET" } else { "POST" }.to_owned(),
        raw_query: p[0].clone(),
        headers: vec![
            ("host".into(), "127.0.0.1:8080".into()),
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ],
        body: p[1].clone().into_bytes(),
        peer: common::peer(),
        secure: false,
    };
    let _ = authenticate(
        &req,
        &common::keys,
        &MemoryNonceStore::new(),
        &VerifyOptions::default(),
    );
});
