//! Property tests of the parsers that face untrusted input: device
//! credentials, JWTs, destinations and gateway URLs. Whatever the input,
//! they answer (never panic), and what they accept is what was meant.

use httvps_control::auth::jwt::{Audience, JwtKeys};
use httvps_control::config::SecretKey;
use httvps_dataplane::client::{parse_destination, split_url};
use proptest::prelude::*;
use shadowsocks_service::shadowsocks::relay::Address;

fn keys() -> JwtKeys {
    JwtKeys::new(
        &SecretKey::new("property-secret-0123456789-abcdefghijklmnop".into()),
        jsonwebtoken::Algorithm::HS256,
        60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn destinations_never_panic(s in "\\PC{0,300}") {
        let _ = parse_destination(&s);
    }

    #[test]
    fn host_and_port_destinations_parse_back(
        host in "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z]{2,10}){0,3}",
        port in any::<u16>(),
    ) {
        match parse_destination(&format!("{host}:{port}")) {
            Ok(Address::DomainNameAddress(h, p)) => prop_assert_eq!((h, p), (host, port)),
            Ok(Address::SocketAddress(a)) => prop_assert!(false, "{host}:{port} read as the address {a}"),
            Err(e) => prop_assert!(false, "{host}:{port} refused: {e}"),
        }
    }

    #[test]
    fn gateway_urls_never_panic(s in "\\PC{0,200}") {
        let _ = split_url(&s);
        let _ = split_url(&format!("https://{s}"));
    }

    #[test]
    fn gateway_urls_split_back(
        host in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z]{2,8}){1,3}",
        port in 1u16..,
        path in "(/[a-z0-9]{0,8}){0,3}",
    ) {
        let (h, p) = split_url(&format!("https://{host}:{port}{path}")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!((h, p), (host.clone(), port));
        let (h, p) = split_url(&format!("https://{host}{path}")).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!((h, p), (host, 443));
    }

    #[test]
    fn device_credentials_never_panic(s in "\\PC{0,200}") {
        let _ = httvps_control::auth::looks_like_token(&s);
        let _ = httvps_control::auth::hash_token(&s);
    }

    #[test]
    fn random_strings_are_never_valid_jwts(s in "\\PC{0,400}", parts in proptest::collection::vec("[A-Za-z0-9_-]{0,80}", 3)) {
        let k = keys();
        prop_assert!(k.verify(Audience::Access, &s).is_err());
        prop_assert!(k.verify(Audience::Device, &parts.join(".")).is_err());
    }

    #[test]
    fn any_change_to_a_jwt_is_refused(at in any::<proptest::sample::Index>(), c in "[A-Za-z0-9_.-]") {
        let k = keys();
        let token = k.issue(Audience::Device, "3f1c2b6e-0000-4000-8000-000000000001", 0, None, 60)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(k.verify(Audience::Device, &token).is_ok());
        // Any position but the last: its low bits are padding in base64.
        let i = at.index(token.len() - 1);
        let mut bytes = token.clone().into_bytes();
        let replacement = c.as_bytes()[0];
        prop_assume!(bytes[i] != replacement);
        bytes[i] = replacement;
        let tampered = String::from_utf8(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(k.verify(Audience::Device, &tampered).is_err(), "{tampered} accepted");
        prop_assert!(k.verify(Audience::Access, &token).is_err(), "wrong audience accepted");
    }

    #[test]
    fn issued_device_tokens_look_like_tokens_and_hash_apart(_n in 0u8..8) {
        let (a, b) = (httvps_control::auth::new_token(), httvps_control::auth::new_token());
        prop_assert!(httvps_control::auth::looks_like_token(&a));
        prop_assert_ne!(&a, &b, "two issued tokens are equal");
        let (ha, hb) = (httvps_control::auth::hash_token(&a), httvps_control::auth::hash_token(&b));
        prop_assert_ne!(&ha, &hb, "two tokens share a hash");
        prop_assert!(!ha.contains(a.as_str()), "the hash carries the token");
    }

    #[test]
    fn tokens_that_differ_in_one_character_hash_apart(at in any::<proptest::sample::Index>(), c in "[A-Za-z0-9_-]") {
        let t = httvps_control::auth::new_token();
        let i = at.index(t.len());
        let mut bytes = t.clone().into_bytes();
        prop_assume!(bytes[i] != c.as_bytes()[0]);
        bytes[i] = c.as_bytes()[0];
        let other = String::from_utf8(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_ne!(httvps_control::auth::hash_token(&t), httvps_control::auth::hash_token(&other));
    }
}
