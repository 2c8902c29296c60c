//! `secret::FmtDst::apply_fmt` and `choose_dst`: the fmt/dst rules with arbitrary secrets and
//! request params.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proxypilot::sealing::Params;
use proxypilot::secret::{FmtArg, FmtDst};

#[derive(Arbitrary, Debug)]
enum Arg {
    Str(String),
    Bin(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    fmt: String,
    allowed_fmt: Option<Vec<String>>,
    dst: String,
    allowed_dst: Option<Vec<String>>,
    param_fmt: Option<String>,
    param_dst: Option<String>,
    other_params: Vec<(String, String)>,
    arg: Arg,
}

/// Headers a secret may never write (secret.rs keeps its own list private).
fn forbidden(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l.starts_with("proxy-")
        || [
            "host",
            "content-length",
            "transfer-encoding",
            "expect",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
        ]
        .contains(&l.as_str())
}

fuzz_target!(|input: Input| {
    let fd = FmtDst {
        fmt: input.fmt,
        allowed_fmt: input.allowed_fmt,
        dst: input.dst,
        allowed_dst: input.allowed_dst,
    };
    let mut params: Params = input.other_params.into_iter().collect();
    if let Some(f) = input.param_fmt {
        params.insert("fmt".into(), f);
    }
    if let Some(d) = input.param_dst {
        params.insert("dst".into(), d);
    }

    if let Ok(name) = fd.choose_dst(&params) {
        assert!(
            http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
            "{fd:?} {params:?}: {name:?} is not a header name"
        );
        assert!(!forbidden(&name), "{fd:?} {params:?}: chose {name:?}");
        if !fd.dst.is_empty() {
            assert!(name.eq_ignore_ascii_case(&fd.dst), "{fd:?} {params:?}");
        }
        if let Some(allowed) = &fd.allowed_dst {
            assert!(
                allowed.iter().any(|a| a.eq_ignore_ascii_case(&name)),
                "{fd:?} {params:?}: {name:?} not in the allowed list"
            );
        }
    }

    let (result, binary) = match &input.arg {
        Arg::Str(t) => (fd.apply_fmt(&params, FmtArg::Str(t)), false),
        Arg::Bin(b) => (fd.apply_fmt(&params, FmtArg::Bin(b)), true),
    };
    if let Ok(v) = result {
        if let Arg::Str(t) = &input.arg {
            assert!(
                v.contains(t.as_str()),
                "{fd:?} {params:?}: {v:?} lacks the token"
            );
        }
        // The format used: the param, else the fixed one, else the first allowed, else the
        // default. It must be the fixed one and in the allowed list when those are set.
        let format: &str = match params.get("fmt") {
            Some(f) => f,
            None if !fd.fmt.is_empty() => &fd.fmt,
            None => match fd.allowed_fmt.as_deref() {
                Some([first, ..]) => first,
                _ if binary => "Bearer %x",
                _ => "Bearer %s",
            },
        };
        if !fd.fmt.is_empty() {
            assert_eq!(format, fd.fmt, "{fd:?} {params:?}");
        }
        if let Some(allowed) = &fd.allowed_fmt {
            assert!(allowed.iter().any(|a| a == format), "{fd:?} {params:?}");
        }
        // Exactly one directive, and v is the format with it replaced by the value.
        assert_eq!(
            format.matches('%').count(),
            1,
            "{fd:?} {params:?}: {format:?}"
        );
        let i = format.find('%').unwrap();
        let value = match (&input.arg, format.as_bytes().get(i + 1)) {
            (Arg::Str(t), Some(b's')) => t.clone(),
            (Arg::Bin(b), Some(b'x')) => b.iter().map(|x| format!("{x:02x}")).collect(),
            (Arg::Bin(b), Some(b'X')) => b.iter().map(|x| format!("{x:02X}")).collect(),
            (_, d) => panic!(
                "{fd:?} {params:?}: directive {d:?} accepted for {:?}",
                input.arg
            ),
        };
        assert_eq!(v, format!("{}{}{}", &format[..i], value, &format[i + 2..]));
    }
});
