//! `Debug` for the rows that hold a secret (node and pool keys) or a hash
//! of one (passwords, device, machine and refresh tokens): those fields
//! print as `[redacted]`, so a row in a log line or a panic message leaks
//! nothing.

use std::fmt;

use httvps_wire::secret::REDACTED;

use super::models::{Device, GatewayNode, OutlineNode, RefreshToken, Region, User};

/// Implements `Debug` for a row: `shown` fields as they are, `hidden`
/// ones as `[redacted]`.
macro_rules! redacted_debug {
    ($ty:ident { $($shown:ident),* $(,)? } hiding { $($hidden:ident),* $(,)? }) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($shown), &self.$shown))*
                    $(.field(stringify!($hidden), &format_args!("{REDACTED}")))*
                    .finish()
            }
        }
    };
}

redacted_debug!(User {
    id, email, role, status, token_version, created_at, updated_at
} hiding { password_hash });

redacted_debug!(Region { id, code, name, pool_method, created_at } hiding { pool_secret });

redacted_debug!(Device {
    id, user_id, name, platform, status, last_seen_at, created_at, revoked_at
} hiding { token_hash });

redacted_debug!(OutlineNode {
    id, region_id, name, host, port, method, uses_pool_key, status, health, capacity,
    last_heartbeat_at, load, bytes_in, bytes_out, version, created_at, updated_at
} hiding { secret, token_hash });

redacted_debug!(GatewayNode {
    id, region_id, name, public_url, status, health, last_heartbeat_at, open_tunnels,
    version, created_at, updated_at
} hiding { token_hash });

redacted_debug!(RefreshToken {
    id, user_id, family_id, expires_at, used_at, revoked_at, created_at
} hiding { token_hash });
