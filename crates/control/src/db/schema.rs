//! Diesel table definitions, kept by hand so that one set of portable column
//! types serves both PostgreSQL and SQLite (see `migrations/`).

diesel::table! {
    /// Accounts: admins and end users.
    users (id) {
        id -> Text,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        status -> Text,
        token_version -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// The catalogue of plans a subscription is granted from.
    plans (id) {
        id -> Text,
        name -> Text,
        price_cents -> BigInt,
        currency -> Text,
        duration_days -> Integer,
        traffic_limit_bytes -> Nullable<BigInt>,
        device_limit -> Integer,
        reset_period -> Text,
        archived -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// Regions group nodes; each has the pool key its nodes share.
    regions (id) {
        id -> Text,
        code -> Text,
        name -> Text,
        pool_method -> Text,
        pool_secret -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// The billing record: a user's right to use the service.
    subscriptions (id) {
        id -> Text,
        user_id -> Text,
        plan_id -> Text,
        status -> Text,
        starts_at -> Timestamp,
        expires_at -> Timestamp,
        traffic_limit_bytes -> Nullable<BigInt>,
        traffic_used_bytes -> BigInt,
        period_start -> Timestamp,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        device_limit -> Integer,
    }
}

diesel::table! {
    /// A user's device and the hash of its access token.
    devices (id) {
        id -> Text,
        user_id -> Text,
        name -> Text,
        platform -> Text,
        status -> Text,
        token_hash -> Text,
        last_seen_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        revoked_at -> Nullable<Timestamp>,
        over_limit -> Bool,
    }
}

diesel::table! {
    /// Shadowsocks (Outline) nodes of the pool.
    outline_nodes (id) {
        id -> Text,
        region_id -> Text,
        name -> Text,
        host -> Text,
        port -> Integer,
        method -> Text,
        secret -> Text,
        uses_pool_key -> Bool,
        status -> Text,
        health -> Text,
        capacity -> Integer,
        token_hash -> Text,
        last_heartbeat_at -> Nullable<Timestamp>,
        load -> Integer,
        bytes_in -> BigInt,
        bytes_out -> BigInt,
        version -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        enroll_expires_at -> Nullable<Timestamp>,
        unreachable_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// TLS/WebSocket gateways in front of the pool.
    gateway_nodes (id) {
        id -> Text,
        region_id -> Text,
        name -> Text,
        public_url -> Text,
        token_hash -> Text,
        status -> Text,
        health -> Text,
        last_heartbeat_at -> Nullable<Timestamp>,
        open_tunnels -> Integer,
        version -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        enroll_expires_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// A device's stay on one node through one gateway.
    sessions (id) {
        id -> Text,
        device_id -> Text,
        outline_node_id -> Nullable<Text>,
        gateway_node_id -> Nullable<Text>,
        started_at -> Timestamp,
        last_activity_at -> Timestamp,
        ended_at -> Nullable<Timestamp>,
        bytes_up -> BigInt,
        bytes_down -> BigInt,
        last_seq -> BigInt,
        end_reason -> Nullable<Text>,
        hour_start -> Nullable<Timestamp>,
        hour_up -> BigInt,
        hour_down -> BigInt,
        witness_epoch -> BigInt,
        witness_base_up -> BigInt,
        witness_base_down -> BigInt,
        witness_up -> BigInt,
        witness_down -> BigInt,
        token_generation -> BigInt,
        gateway_epoch -> BigInt,
        gateway_base_up -> BigInt,
        gateway_base_down -> BigInt,
        supersedes -> Nullable<Text>,
    }
}

diesel::table! {
    /// Usage per session and hour: the bytes gained in the hour (`recorded_at`,
    /// the hour's start) and the latest cumulative totals.
    usage_ledger (id) {
        id -> Text,
        session_id -> Text,
        seq -> BigInt,
        total_up -> BigInt,
        total_down -> BigInt,
        delta_up -> BigInt,
        delta_down -> BigInt,
        recorded_at -> Timestamp,
    }
}

diesel::table! {
    /// Accepted usage reports waiting to be applied (one row per report).
    usage_inbox (id) {
        id -> BigInt,
        gateway_node_id -> Text,
        totals -> Text,
        received_at -> Timestamp,
    }
}

diesel::table! {
    /// Which node connection (the gateway's local address, the node's
    /// peer) carries which session: the key of the node's witness.
    witness_links (outline_node_id, peer) {
        outline_node_id -> Text,
        peer -> Text,
        session_id -> Text,
        linked_at -> Timestamp,
    }
}

diesel::table! {
    /// Rotating refresh tokens, grouped in families for reuse detection.
    refresh_tokens (id) {
        id -> Text,
        user_id -> Text,
        family_id -> Text,
        token_hash -> Text,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// Refresh-token families (one per log-in); access tokens name theirs.
    token_families (id) {
        id -> Text,
        user_id -> Text,
        revoked_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// Admin actions, written in the same transaction as the change.
    audit_log (id) {
        id -> Text,
        actor_user_id -> Nullable<Text>,
        action -> Text,
        target_type -> Text,
        target_id -> Nullable<Text>,
        details -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// Quota grants: the cumulative bytes a gateway may let a session move.
    quota_grants (session_id) {
        session_id -> Text,
        subscription_id -> Text,
        granted -> BigInt,
        valid_until -> Timestamp,
        gateway_used -> BigInt,
        ledger_offset -> BigInt,
        doubt_until -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// Settings an admin changes at run time; one row, id 1.
    site_settings (id) {
        id -> Integer,
        sign_up_enabled -> Bool,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(subscriptions -> users (user_id));
diesel::joinable!(subscriptions -> plans (plan_id));
diesel::joinable!(devices -> users (user_id));
diesel::joinable!(outline_nodes -> regions (region_id));
diesel::joinable!(gateway_nodes -> regions (region_id));
diesel::joinable!(sessions -> devices (device_id));
diesel::joinable!(usage_ledger -> sessions (session_id));
diesel::joinable!(refresh_tokens -> users (user_id));
diesel::joinable!(token_families -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    plans,
    regions,
    subscriptions,
    devices,
    outline_nodes,
    gateway_nodes,
    sessions,
    usage_ledger,
    usage_inbox,
    witness_links,
    refresh_tokens,
    token_families,
    audit_log,
    site_settings,
    quota_grants
);
