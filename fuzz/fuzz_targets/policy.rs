//! The RAM policy parser and evaluator (conditions included) on arbitrary text: parse errors are fine, panics and
//! hangs are not.
#![no_main]

use ddsvault_ram::{evaluate, Context, Policy, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(policy) = Policy::parse(&text) {
        let mut ctx = Context::new();
        ctx.source_ip(std::net::IpAddr::from([10, 1, 2, 3]))
            .current_time(chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default())
            .secure_transport(true)
            .mfa_present(false)
            .user_agent("fuzz");
        for (action, resource) in [
            ("dds:CreateBackup", "*"),
            (
                "dds:DescribeBackups",
                "acs:dds:cn-hangzhou:1:dbinstance/dds-a",
            ),
        ] {
            let _ = evaluate(
                &[&policy],
                &Request::new(action, resource).with_context(&ctx),
            );
        }
    }
});
