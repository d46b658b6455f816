// Errors of the GraphQL API as the console shows them. The server gives every
// error a stable `extensions.code`; the text here says what the reader can do.

/**
 * The codes of the public API (README, "APIs"), plus the console's own:
 * NETWORK, SESSION_ENDED, and INVALID (what was typed, refused before it is
 * sent; the message says why, as a sentence).
 */
export type ErrorCode =
  | 'BAD_REQUEST'
  | 'UNAUTHENTICATED'
  | 'FORBIDDEN'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'LIMIT_EXCEEDED'
  | 'UNAVAILABLE'
  | 'INTERNAL'
  | 'NETWORK'
  | 'SESSION_ENDED'
  | 'INVALID';

/** One failed GraphQL operation. */
export class ApiError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly requestId?: string,
    /** For LIMIT_EXCEEDED: seconds until the server takes the next attempt. */
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

interface GraphQLErrorShape {
  message?: string;
  extensions?: { code?: string; requestId?: string; retryAfter?: unknown };
}

const KNOWN = new Set<string>([
  'BAD_REQUEST',
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'NOT_FOUND',
  'CONFLICT',
  'LIMIT_EXCEEDED',
  'UNAVAILABLE',
  'INTERNAL',
]);

/** The first error of a GraphQL response as an [`ApiError`]. */
export function fromGraphQL(errors: readonly GraphQLErrorShape[]): ApiError {
  const e = errors[0] ?? {};
  const raw = e.extensions?.code ?? 'INTERNAL';
  const code = (KNOWN.has(raw) ? raw : 'BAD_REQUEST') as ErrorCode;
  const retryAfter = e.extensions?.retryAfter;
  return new ApiError(
    code,
    e.message ?? 'unknown error',
    e.extensions?.requestId,
    typeof retryAfter === 'number' && Number.isFinite(retryAfter) ? retryAfter : undefined,
  );
}

function capitalised(s: string): string {
  return s.length ? s[0]!.toUpperCase() + s.slice(1) : s;
}

/**
 * The reason a FORBIDDEN gives, when the caller may know it (sign-up closed,
 * account disabled); a plain "not allowed" (a missing right) gives none.
 */
export function forbiddenReason(err: ApiError): string | undefined {
  return err.message && err.message !== 'not allowed' ? err.message : undefined;
}

/** A sentence for the reader: what went wrong and what to do. */
export function describe(err: unknown): string {
  if (!(err instanceof ApiError)) {
    return 'Something went wrong in the console. Reload the page and try again.';
  }
  switch (err.code) {
    case 'BAD_REQUEST':
      // A BigInt the engine cannot parse: its own text names Rust types.
      if (/BigInt must be a 64-bit integer/.test(err.message)) {
        return 'The server refused this: a number is too large (at most 9223372036854775807).';
      }
      return `The server refused this: ${err.message}.`;
    case 'UNAUTHENTICATED':
      return 'You are not signed in (or your session ended). Sign in again.';
    case 'SESSION_ENDED':
      return 'Your session ended. Sign in again.';
    case 'FORBIDDEN': {
      const reason = forbiddenReason(err);
      return reason ? `${capitalised(reason)}.` : 'Your account is not allowed to do this.';
    }
    case 'NOT_FOUND':
      return `${capitalised(err.message)}: it may have been deleted. Reload the list.`;
    case 'CONFLICT':
      return `Conflict: ${err.message}.`;
    case 'LIMIT_EXCEEDED':
      return `Limit reached: ${err.message}.`;
    case 'UNAVAILABLE':
      return `The service is unavailable right now (${err.message}). Try again in a moment.`;
    case 'INTERNAL':
      return err.requestId
        ? `The server failed (request id ${err.requestId}). Give this id to the operator.`
        : 'The server failed. Try again; if it persists, tell the operator.';
    case 'NETWORK':
      return 'The server cannot be reached. Check the connection and try again.';
    case 'INVALID':
      return `${capitalised(err.message)}.`;
  }
}
