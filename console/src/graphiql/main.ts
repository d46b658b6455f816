// GraphiQL for httvps, bundled from pinned npm packages and served by the
// control plane in debug mode and `up` (nothing from a CDN). Queries and
// mutations are POSTed to /graphql; subscriptions (the `Live` root) go over
// graphql-transport-ws at /graphql/ws, authenticated in `connection_init`
// with the headers of the Headers tab. Nothing typed here outlives the page:
// GraphiQL keeps its tabs, variables (a password, for `Login`) and history
// in memory, not in localStorage, and headers are not kept at all.

import { GraphiQL, type GraphiQLProps } from 'graphiql';
import 'graphiql/style.css';
import { createClient, type ExecutionResult } from 'graphql-ws';
import type { DocumentNode, OperationDefinitionNode } from 'graphql';
import { createElement } from 'react';
import { createRoot } from 'react-dom/client';

import './graphiql.css';

interface FetcherParams {
  query: string;
  operationName?: string | null;
  variables?: unknown;
}
interface FetcherOpts {
  headers?: Record<string, unknown>;
  documentAST?: DocumentNode;
}

const WS_URL = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/graphql/ws`;

function isSubscription(params: FetcherParams, doc?: DocumentNode): boolean {
  const ops = (doc?.definitions ?? []).filter(
    (d): d is OperationDefinitionNode => d.kind === 'OperationDefinition',
  );
  const op = params.operationName ? ops.find((o) => o.name?.value === params.operationName) : ops[0];
  return op?.operation === 'subscription';
}

/** One socket per live operation, closed when GraphiQL stops it. */
async function* live(params: FetcherParams, headers: Record<string, unknown>): AsyncGenerator<ExecutionResult> {
  const client = createClient({ url: WS_URL, connectionParams: headers, lazy: true, retryAttempts: 0 });
  try {
    // GraphiQL types results as ExecutionResult; on the wire they are the
    // formatted (JSON) form, which is what it renders.
    yield* client.iterate({
      query: params.query,
      operationName: params.operationName ?? undefined,
      variables: (params.variables ?? {}) as Record<string, unknown>,
    }) as AsyncIterable<ExecutionResult>;
  } finally {
    await client.dispose();
  }
}

async function http(params: FetcherParams, headers: Record<string, unknown>): Promise<ExecutionResult> {
  const res = await fetch('/graphql', {
    method: 'POST',
    credentials: 'omit',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...(headers as Record<string, string>) },
    body: JSON.stringify(params),
  });
  return (await res.json()) as ExecutionResult;
}

// GraphiQL's own introspection query nests `ofType` deeper than the
// server's depth limit (12) allows; types in this schema wrap at most three
// times (`[X!]!`), so four levels say everything.
const TYPE_REF = 'kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } }';
const INTROSPECTION = `query IntrospectionQuery {
  __schema {
    queryType { name } mutationType { name } subscriptionType { name }
    types { ...FullType }
    directives { name description locations args { ...InputValue } }
  }
}
fragment FullType on __Type {
  kind name description
  fields(includeDeprecated: true) {
    name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
  }
  inputFields { ...InputValue }
  interfaces { ...TypeRef }
  enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
  possibleTypes { ...TypeRef }
}
fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
fragment TypeRef on __Type { ${TYPE_REF} }`;

function fetcher(params: FetcherParams, opts?: FetcherOpts) {
  const headers = opts?.headers ?? {};
  if (params.operationName === 'IntrospectionQuery') {
    return http({ query: INTROSPECTION, operationName: 'IntrospectionQuery' }, headers);
  }
  return isSubscription(params, opts?.documentAST) ? live(params, headers) : http(params, headers);
}

const DEFAULT_QUERY = `# httvps GraphQL API. Sign in (Login, with the email and password in the
# Variables tab: { "email": "…", "password": "…" }), then put the access token
# in the Headers tab:
#   { "Authorization": "Bearer <accessToken>" }
# The same header authenticates subscriptions (nodeEvents) over the WebSocket.
# Nothing typed on this page is kept once it is closed or reloaded.

mutation Login($email: String!, $password: String!) {
  login(email: $email, password: $password) {
    accessToken
    refreshToken
    user { id email role }
  }
}

query Me {
  me { id email role status }
}

subscription NodeEvents {
  nodeEvents { nodeId nodeKind region kind status health load at }
}
`;

/** GraphiQL's storage, in memory: what it keeps goes with the page. */
function memoryStorage(): NonNullable<GraphiQLProps['storage']> {
  const items = new Map<string, string>();
  return {
    getItem: (key) => items.get(key) ?? null,
    setItem: (key, value) => void items.set(key, value),
    removeItem: (key) => void items.delete(key),
    clear: () => items.clear(),
    get length() {
      return items.size;
    },
  };
}

const root = document.getElementById('graphiql');
if (root) {
  root.textContent = '';
  createRoot(root).render(
    createElement(GraphiQL, {
      fetcher,
      defaultQuery: DEFAULT_QUERY,
      // No Authorization to start with: an empty bearer would make Login fail.
      defaultHeaders: '{}',
      shouldPersistHeaders: false,
      storage: memoryStorage(),
      defaultEditorToolsVisibility: 'headers',
    }),
  );
}
