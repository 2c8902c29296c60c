//! `flysrc::parse`: `instance=..;app=..;org=..;ts=..`, exactly these four keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxypilot::tokenizer::flysrc::parse;

/// Does `value` hold exactly the four keys, each once (whatever their values)?
fn exactly_four_keys(value: &str) -> bool {
    let mut keys: Vec<&str> = Vec::new();
    for part in value.split(';') {
        match part.split_once('=') {
            Some((k, _)) => keys.push(k),
            None => return false,
        }
    }
    keys.sort_unstable();
    keys == ["app", "instance", "org", "ts"]
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse(s) {
        Ok(src) => {
            assert!(exactly_four_keys(s), "accepted {s:?}");
            for v in [&src.instance, &src.app, &src.org] {
                assert!(!v.contains(';'), "{s:?}: value {v:?}");
            }
            // The canonical form parses back to the same statement.
            let canon = format!(
                "instance={};app={};org={};ts={}",
                src.instance, src.app, src.org, src.ts
            );
            assert_eq!(parse(&canon).as_ref(), Ok(&src), "{s:?} -> {canon:?}");
        }
        Err(e) => assert!(e.starts_with("malformed Fly-Src"), "{s:?}: {e}"),
    }
});
