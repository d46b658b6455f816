// Operations of the signed-in user: the access token is attached, and one
// UNAUTHENTICATED answer triggers one refresh and one retry.

import { ApiError } from './errors';
import { accessToken, refresh, session } from './session';
import { post } from './transport';

export async function gql<T>(
  query: string,
  variables?: Record<string, unknown>,
  signal?: AbortSignal,
): Promise<T> {
  const token = await accessToken();
  try {
    return await post<T>(query, variables, token, signal);
  } catch (e) {
    if (!(e instanceof ApiError) || e.code !== 'UNAUTHENTICATED' || !token) throw e;
    if (!(await refresh())) throw new ApiError('SESSION_ENDED', 'session ended');
    return post<T>(query, variables, await accessToken(), signal);
  }
}

/** The signed-in user's role, for code outside components. */
export function isAdmin(): boolean {
  const s = session.get();
  return s.status === 'signed-in' && s.user.role === 'ADMIN';
}
