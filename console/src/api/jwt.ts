// Reads the expiry of an access JWT (to refresh it in time). The signature is
// the server's business; the console only looks at `exp`.

/** Expiry of a JWT in milliseconds since the epoch, or null if unreadable. */
export function expiresAt(jwt: string): number | null {
  const part = jwt.split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const claims = JSON.parse(atob(padded)) as { exp?: unknown };
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}
