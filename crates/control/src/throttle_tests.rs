//! Unit tests of the throttles, on a fake clock.

use super::*;
use governor::clock::FakeRelativeClock;

const S: Duration = Duration::from_secs(1);

fn at(ip: &str) -> ClientAddr {
    ClientAddr(Some(ip.parse().expect("address")))
}

fn throttles(
    f: impl FnOnce(&mut ThrottleSettings),
) -> (Throttles<FakeRelativeClock>, FakeRelativeClock) {
    let mut s = ThrottleSettings::default();
    f(&mut s);
    let clock = FakeRelativeClock::default();
    (Throttles::with_clock(s, clock.clone()), clock)
}

fn code(r: AppResult<()>) -> Option<(&'static str, u64)> {
    match r {
        Ok(()) => None,
        Err(e @ AppError::Throttled { retry_after_secs }) => Some((e.code(), retry_after_secs)),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_account_refuses_past_its_burst_and_refills_within_the_window() {
    let (t, clock) = throttles(|s| {
        s.login_per_account = 5;
        s.window = 60 * S;
    });
    // Guesses from many sources all count against the account.
    for i in 0..5 {
        assert_eq!(
            code(t.login(at(&format!("203.0.113.{i}")), "Victim@Example.com")),
            None
        );
    }
    assert_eq!(
        code(t.login(at("198.51.100.9"), "victim@example.com")),
        Some(("LIMIT_EXCEEDED", 12)),
        "one back every window / burst"
    );
    assert_eq!(
        code(t.login(at("203.0.113.1"), "other@example.com")),
        None,
        "other accounts are not affected"
    );
    // A flood that keeps going never pushes the refill further out.
    for _ in 0..200 {
        assert!(code(t.login(at("203.0.113.1"), "victim@example.com")).is_some());
    }
    clock.advance(60 * S);
    for _ in 0..5 {
        assert_eq!(
            code(t.login(at("192.0.2.1"), "victim@example.com")),
            None,
            "whole again after the window"
        );
    }
}

#[test]
fn every_spelling_of_one_account_counts_against_one_allowance() {
    let (t, _) = throttles(|s| {
        s.login_per_account = 4;
        s.login_per_source = 100;
    });
    // Full-width letters, upper case, a punycode domain: each reaches
    // the account "admin@bücher.de" at log-in.
    for spelling in [
        "admin@bücher.de",
        "\u{ff41}dmin@b\u{fc}cher.de",
        "ADMIN@B\u{dc}CHER.DE",
        "admin@xn--bcher-kva.de",
    ] {
        assert_eq!(code(t.login(at("203.0.113.1"), spelling)), None);
    }
    assert!(
        code(t.login(at("203.0.113.1"), "ａｄｍｉｎ@bücher.de")).is_some(),
        "a fifth spelling is the fifth attempt"
    );
    assert_eq!(
        code(t.login(at("203.0.113.1"), "not an address")),
        None,
        "what the form refuses counts on its own"
    );
}

#[test]
fn a_source_is_limited_across_accounts_and_ipv6_counts_per_64() {
    let (t, _) = throttles(|s| {
        s.login_per_source = 3;
        s.login_per_account = 100;
    });
    for i in 0..3 {
        assert_eq!(
            code(t.login(at(&format!("2001:db8::{i}")), &format!("u{i}@example.com"))),
            None
        );
    }
    assert!(
        code(t.login(at("2001:db8::ffff"), "u9@example.com")).is_some(),
        "same /64"
    );
    assert_eq!(
        code(t.login(at("2001:db8:0:1::1"), "u9@example.com")),
        None,
        "another /64"
    );
    assert_eq!(
        code(t.login(ClientAddr(None), "u9@example.com")),
        None,
        "unknown source: account only"
    );
}

#[test]
fn unknown_credentials_shut_a_source_out_until_one_is_back() {
    let (t, clock) = throttles(|s| {
        s.unknown_tokens_per_source = 2;
        s.window = 10 * S;
    });
    let guesser = at("198.51.100.7");
    for _ in 0..2 {
        assert_eq!(code(t.guesser(guesser)), None);
        t.unknown_credential(guesser);
    }
    assert_eq!(
        code(t.guesser(guesser)),
        None,
        "the last guess is not over yet"
    );
    t.unknown_credential(guesser);
    assert_eq!(code(t.guesser(guesser)), Some(("LIMIT_EXCEEDED", 5)));
    assert_eq!(
        code(t.guesser(at("198.51.100.8"))),
        None,
        "others are served"
    );
    clock.advance(5 * S);
    assert_eq!(code(t.guesser(guesser)), None);
}

#[test]
fn tables_are_bounded() {
    let (t, clock) = throttles(|s| {
        s.max_keys = 3;
        s.signup_per_source = 1;
    });
    for i in 0..3 {
        assert_eq!(code(t.sign_up(at(&format!("192.0.2.{i}")))), None);
    }
    assert!(
        code(t.sign_up(at("192.0.2.200"))).is_some(),
        "full of fresh keys"
    );
    clock.advance(120 * S);
    assert_eq!(
        code(t.sign_up(at("192.0.2.200"))),
        None,
        "refilled keys are dropped"
    );
}

#[test]
fn the_proxy_header_counts_only_when_configured() {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        "10.0.0.1, 203.0.113.5".parse().expect("value"),
    );
    let socket = Some("127.0.0.1".parse().expect("ip"));
    let plain = ThrottleSettings::default();
    assert_eq!(ClientAddr::of(&plain, &headers, socket), ClientAddr(socket));
    let proxied = ThrottleSettings {
        client_ip_header: Some(axum::http::HeaderName::from_static("x-forwarded-for")),
        ..ThrottleSettings::default()
    };
    assert_eq!(
        ClientAddr::of(&proxied, &headers, socket),
        ClientAddr(Some("203.0.113.5".parse().expect("ip")))
    );
    assert_eq!(
        ClientAddr::of(&proxied, &axum::http::HeaderMap::new(), socket),
        ClientAddr(socket)
    );
}
