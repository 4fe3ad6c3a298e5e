//! Signature V3 verification: a correctly signed request built from the input, then corrupted by the input, so
//! that runs get past the cheap checks into canonicalisation and HMAC comparison. Must never panic.
#![no_main]

use ddsvault_api::{
    authenticate, sign_v3, MemoryNonceStore, Secret, SignRequest, VerifyOptions, DDS_API_VERSION,
};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let p = common::pieces(data, 5);
    let mut sr = SignRequest::new(
        "POST",
        "127.0.0.1:8080",
        "DescribeBackups",
        DDS_API_VERSION,
        common::KEY_ID,
        Secret::new(common::SECRET),
    )
    .with_query(&p[0], &p[1]);
    if p[4].len() % 2 == 1 {
        sr = sr.with_query("DBInstanceId", &p[4]);
    }
    let mut req = sign_v3(&sr).into_raw_request(common::peer(), false);
    // Corrupt one part of the signed request with the third piece.
    match p[3].len() % 4 {
        0 => req.raw_query.push_str(&p[2]),
        1 => req.body.extend_from_slice(p[2].as_bytes()),
        2 => {
            if let Some(h) = req.headers.first_mut() {
                h.1.push_str(&p[2]);
            }
        }
        _ => req.headers.push(("authorization".into(), p[2].clone())),
    }
    let nonces = MemoryNonceStore::new();
    let _ = authenticate(&req, &common::keys, &nonces, &VerifyOptions::default());
});
