//! Properties of the usage scan: over any stream of events, cut into frames anywhere (every
//! byte boundary included), it reads the usage the worker last reported, and no input panics
//! it.

use proptest::prelude::*;
use serde_json::json;

use super::*;

const CASES: u32 = 10_000;

/// The text of one streamed event: a delta whose content may mention the usage fields (in a
/// JSON string their quotes are escaped), or a usage report.
fn event() -> impl Strategy<Value = (String, Option<Usage>)> {
    let noise = prop_oneof![
        ".{0,24}",
        Just(r#""usage": {"prompt_tokens": 7}"#.to_owned()),
        Just("cached_tokens\":99".to_owned()),
    ];
    let delta = noise.prop_map(|text| {
        let event = json!({"choices": [{"index": 0, "delta": {"content": text}}]});
        (format!("data: {event}\n\n"), None)
    });
    let usage = (
        0u64..1 << 40,
        0u64..1 << 20,
        prop::option::of(0u64..1 << 40),
    )
        .prop_map(|(prompt, completion, cached)| {
            let mut usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion});
            if let Some(cached) = cached {
                usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
            }
            let event = json!({"choices": [], "usage": usage});
            let seen = Usage {
                prompt: Some(prompt),
                completion: Some(completion),
                cached,
            };
            (format!("data: {event}\n\n"), Some(seen))
        });
    prop_oneof![3 => delta, 1 => usage]
}

/// What a scan of the whole stream must report: the last usage object, whole.
fn expected(events: &[(String, Option<Usage>)]) -> Usage {
    events
        .iter()
        .filter_map(|(_, u)| *u)
        .next_back()
        .unwrap_or_default()
}

fn scan<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Usage {
    let mut scan = UsageScan::default();
    for frame in frames {
        scan.observe(frame);
    }
    scan.usage()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn the_usage_is_read_however_the_stream_is_cut(
        events in prop::collection::vec(event(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut body: String = events.iter().map(|(text, _)| text.as_str()).collect();
        body.push_str("data: [DONE]\n\n");
        let body = body.as_bytes();
        let want = expected(&events);
        prop_assert_eq!(scan([body]), want, "whole");
        // Cut at random places.
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        at.extend([0, body.len()]);
        at.sort_unstable();
        at.dedup();
        let frames = at.windows(2).map(|w| &body[w[0]..w[1]]);
        prop_assert_eq!(scan(frames), want, "cut at {:?}", at);
        // Cut at every byte boundary.
        prop_assert_eq!(scan(body.chunks(1)), want, "byte by byte");
    }

    #[test]
    fn no_frames_panic_the_scan(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let _ = scan(frames.iter().map(Vec::as_slice));
    }
}
