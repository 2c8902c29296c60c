//! `sealing::TokenizerHeader::parse`: `<sealed>[; {"param":"value"}]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxypilot::sealing::TokenizerHeader;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match TokenizerHeader::parse(s) {
        Ok(h) => {
            assert!(!h.sealed.is_empty() && !h.sealed.contains(';'), "{s:?}");
            assert_eq!(h.sealed, h.sealed.trim(), "{s:?}");
            let text = h.format();
            let again = TokenizerHeader::parse(&text)
                .unwrap_or_else(|e| panic!("{s:?} -> {text:?} does not parse again: {e}"));
            assert_eq!(again.sealed, h.sealed, "{s:?} -> {text:?}");
            assert_eq!(again.params, h.params, "{s:?} -> {text:?}");
            assert_eq!(again.format(), text);
        }
        Err(e) => {
            // Fixed text plus a JSON position: never a piece of the header (a sealed secret).
            assert!(
                e == "bad tokenizer header: no sealed secret"
                    || e.starts_with("bad tokenizer header params: "),
                "{s:?}: {e}"
            );
            let (_, detail) = e.split_once(": ").unwrap();
            assert!(
                !detail.contains('"') && !detail.contains('`'),
                "{s:?}: error quotes input: {e}"
            );
        }
    }
});
