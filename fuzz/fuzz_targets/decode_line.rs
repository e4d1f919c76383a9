//! Coverage-guided fuzzing of the ingest line decoder: any bytes a client sends decode to an
//! event, an op, an empty line or one error, never a panic; and the error's reply is one line
//! of valid JSON with a bounded detail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use visutility::protocol::{self, DETAIL_MAX, Line};

fuzz_target!(|data: &[u8]| {
    match protocol::decode_line(data) {
        Ok(Line::Event(ev)) => {
            // An accepted event's id obeys the id rules.
            assert!(protocol::validate_model_id(ev.model_id).is_ok());
        }
        Ok(_) => {}
        Err(e) => {
            let reply = protocol::error_reply(e.code, u64::MAX, &e.detail);
            assert_eq!(reply.last(), Some(&b'\n'));
            assert_eq!(reply.iter().filter(|&&b| b == b'\n').count(), 1);
            let v: serde_json::Value = serde_json::from_slice(&reply).expect("reply is JSON");
            assert_eq!(v["error"], e.code.as_str());
            assert!(v["detail"].as_str().is_some_and(|d| d.len() <= DETAIL_MAX));
        }
    }
});
