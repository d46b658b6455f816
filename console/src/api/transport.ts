// One GraphQL operation over HTTP: `POST /graphql` with a JSON body, the
// access token (when there is one) in `Authorization`, never in the URL.

import { ApiError, fromGraphQL } from './errors';

/** Where the API lives: the origin that served the console. */
export const GRAPHQL_URL = '/graphql';

/** Sends one operation and returns its `data`, or throws an [`ApiError`]. */
export async function post<T>(
  query: string,
  variables: Record<string, unknown> | undefined,
  accessToken: string | null,
  signal?: AbortSignal,
): Promise<T> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (accessToken) headers.authorization = `Bearer ${accessToken}`;
  let res: Response;
  try {
    res = await fetch(GRAPHQL_URL, {
      method: 'POST',
      headers,
      body: JSON.stringify({ query, variables: variables ?? {} }),
      credentials: 'omit',
      cache: 'no-store',
      signal,
    });
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new ApiError('NETWORK', 'the server cannot be reached');
  }
  let body: { data?: T | null; errors?: { message?: string; extensions?: { code?: string } }[] };
  try {
    body = await res.json();
  } catch {
    throw new ApiError(
      res.status >= 500 ? 'UNAVAILABLE' : 'NETWORK',
      `unexpected answer (HTTP ${res.status})`,
    );
  }
  if (body.errors?.length) throw fromGraphQL(body.errors);
  if (body.data == null) throw new ApiError('INTERNAL', 'empty answer');
  return body.data;
}
