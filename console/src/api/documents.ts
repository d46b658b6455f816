// Every GraphQL document the console sends, in one place, so the console's
// use of the API can be read (and compared with schema.graphql) at a glance.

const USER = 'id email role status createdAt';
const PLAN =
  'id name priceCents currency durationDays trafficLimitBytes deviceLimit resetPeriod archived createdAt';
const REGION = 'id code name poolMethod createdAt';
const SUBSCRIPTION =
  'id status startsAt expiresAt trafficLimitBytes trafficUsedBytes periodStart deviceLimit';
const DEVICE = 'id name platform status lastSeenAt createdAt revokedAt overLimit';
const OUTLINE_NODE =
  'id name host port method usesPoolKey status health capacity load bytesIn bytesOut lastHeartbeatAt enrollmentExpiresAt version createdAt region { id code name }';
const GATEWAY_NODE =
  'id name publicUrl status health openTunnels lastHeartbeatAt enrollmentExpiresAt version createdAt region { id code name }';
const SESSION = `id startedAt lastActivityAt endedAt endReason bytesUp bytesDown
  device { id name user { id email } } outlineNode { id name region { code } } gatewayNode { id name }`;
const CREDENTIALS = `device { ${DEVICE} } accessToken links { ssconf sip002 }`;
const PAGE = 'pageInfo { hasNextPage endCursor }';
const COUNTED = `totalCount ${PAGE}`;
const PLACEMENT = 'sessionId region regionName nodeId nodeName nodeHealth since';

// Accounts
export const USERS = `query Users($filter: UserFilterInput, $first: Int, $after: String) {
  users(filter: $filter, first: $first, after: $after) { ${COUNTED} nodes { ${USER} } } }`;
/** The account of this email, compared as sign-in compares it. */
export const USER_BY_EMAIL = `query UserByEmail($email: String!) {
  users(filter: { email: $email }, first: 1) { nodes { ${USER} } } }`;
export const USER_DETAIL = `query UserDetail($id: UUID!) { user(id: $id) { ${USER} } }`;
export const SET_USER_STATUS = `mutation SetUserStatus($id: UUID!, $status: UserStatus!) {
  setUserStatus(id: $id, status: $status) { ${USER} } }`;
export const CREATE_USER = `mutation CreateUser($email: String!, $password: String!, $role: Role) {
  createUser(email: $email, password: $password, role: $role) { ${USER} } }`;
export const SET_USER_PASSWORD = `mutation SetUserPassword($id: UUID!, $password: String!) {
  setUserPassword(id: $id, password: $password) { ${USER} } }`;
export const SET_USER_ROLE = `mutation SetUserRole($id: UUID!, $role: Role!) {
  setUserRole(id: $id, role: $role) { ${USER} } }`;

// Catalogue
export const PLANS = `query Plans($includeArchived: Boolean!, $first: Int, $after: String) {
  plans(includeArchived: $includeArchived, first: $first, after: $after) { ${PAGE} nodes { ${PLAN} } } }`;
export const CREATE_PLAN = `mutation CreatePlan($input: CreatePlanInput!) { createPlan(input: $input) { ${PLAN} } }`;
export const UPDATE_PLAN = `mutation UpdatePlan($id: UUID!, $input: UpdatePlanInput!) {
  updatePlan(id: $id, input: $input) { ${PLAN} } }`;
export const ARCHIVE_PLAN = `mutation ArchivePlan($id: UUID!) { archivePlan(id: $id) { ${PLAN} } }`;
export const REGIONS = `query Regions($first: Int, $after: String) {
  regions(first: $first, after: $after) { ${PAGE} nodes { ${REGION} } } }`;
export const CREATE_REGION = `mutation CreateRegion($code: String!, $name: String!, $poolMethod: String) {
  createRegion(code: $code, name: $name, poolMethod: $poolMethod) { ${REGION} } }`;
export const RENAME_REGION = `mutation RenameRegion($id: UUID!, $name: String!) { renameRegion(id: $id, name: $name) { ${REGION} } }`;
export const DELETE_REGION = `mutation DeleteRegion($id: UUID!) { deleteRegion(id: $id) }`;

// Subscriptions (the billing record)
export const SUBSCRIPTIONS = `query Subscriptions($filter: SubscriptionFilterInput, $first: Int, $after: String) {
  subscriptions(filter: $filter, first: $first, after: $after) {
    ${COUNTED} nodes { ${SUBSCRIPTION} user { id email } plan { id name deviceLimit resetPeriod } } } }`;
export const GRANT = `mutation Grant($userId: UUID!, $planId: UUID!) {
  grantSubscription(userId: $userId, planId: $planId) { ${SUBSCRIPTION} } }`;
export const EXTEND = `mutation Extend($id: UUID!, $days: Int!) {
  extendSubscription(id: $id, days: $days) { ${SUBSCRIPTION} } }`;
export const CANCEL = `mutation Cancel($id: UUID!) { cancelSubscription(id: $id) { ${SUBSCRIPTION} } }`;
export const SET_TRAFFIC_LIMIT = `mutation SetTrafficLimit($id: UUID!, $bytes: BigInt) {
  setSubscriptionTrafficLimit(id: $id, trafficLimitBytes: $bytes) { ${SUBSCRIPTION} } }`;
export const CHANGE_PLAN = `mutation ChangePlan($id: UUID!, $planId: UUID!) {
  changeSubscriptionPlan(id: $id, planId: $planId) { ${SUBSCRIPTION} } }`;
export const RESET_TRAFFIC = `mutation ResetTraffic($id: UUID!) { resetSubscriptionTraffic(id: $id) { ${SUBSCRIPTION} } }`;

// Devices
export const DEVICES = `query Devices($filter: DeviceFilterInput, $first: Int, $after: String) {
  devices(filter: $filter, first: $first, after: $after) { ${COUNTED} nodes { ${DEVICE} user { id email } } } }`;
// Own devices: the server restricts users to theirs; admins filter on themselves.
export const MY_DEVICES = `query MyDevices($userId: UUID!, $first: Int, $after: String) {
  devices(filter: { userId: $userId }, first: $first, after: $after) {
    ${COUNTED} nodes { ${DEVICE} placement { ${PLACEMENT} } } } }`;
export const REGISTER_DEVICE = `mutation RegisterDevice($name: String!, $platform: String!) {
  registerDevice(name: $name, platform: $platform) { ${CREDENTIALS} } }`;
export const CLOSE_SESSION = `mutation CloseSession($id: UUID!) { closeSession(id: $id) { ${SESSION} } }`;
export const RENAME_DEVICE = `mutation RenameDevice($id: UUID!, $name: String!) { renameDevice(id: $id, name: $name) { ${DEVICE} } }`;
export const REVOKE_DEVICE = `mutation RevokeDevice($id: UUID!) { revokeDevice(id: $id) { ${DEVICE} } }`;
export const ROTATE_DEVICE = `mutation RotateDevice($id: UUID!) { rotateDeviceToken(id: $id) { ${CREDENTIALS} } }`;

// Nodes
export const OUTLINE_NODES = `query OutlineNodes($region: String, $filter: NodeFilterInput, $first: Int, $after: String) {
  outlineNodes(region: $region, filter: $filter, first: $first, after: $after) { ${PAGE} nodes { ${OUTLINE_NODE} } } }`;
export const GATEWAY_NODES = `query GatewayNodes($region: String, $filter: NodeFilterInput, $first: Int, $after: String) {
  gatewayNodes(region: $region, filter: $filter, first: $first, after: $after) { ${PAGE} nodes { ${GATEWAY_NODE} } } }`;
export const REGISTER_OUTLINE_NODE = `mutation RegisterOutlineNode($input: RegisterOutlineNodeInput!) {
  registerOutlineNode(input: $input) { token enrollment node { ${OUTLINE_NODE} } } }`;
export const REGISTER_GATEWAY_NODE = `mutation RegisterGatewayNode($input: RegisterGatewayNodeInput!) {
  registerGatewayNode(input: $input) { token enrollment node { ${GATEWAY_NODE} } } }`;
export const UPDATE_OUTLINE_NODE = `mutation UpdateOutlineNode($id: UUID!, $input: UpdateOutlineNodeInput!) {
  updateOutlineNode(id: $id, input: $input) { ${OUTLINE_NODE} } }`;
export const UPDATE_GATEWAY_NODE = `mutation UpdateGatewayNode($id: UUID!, $input: UpdateGatewayNodeInput!) {
  updateGatewayNode(id: $id, input: $input) { ${GATEWAY_NODE} } }`;
export const SET_NODE_STATUS = `mutation SetNodeStatus($id: UUID!, $status: NodeStatus!) {
  setNodeStatus(id: $id, status: $status) { __typename ... on OutlineNode { id status } ... on GatewayNode { id status } } }`;
export const DELETE_NODE = `mutation DeleteNode($id: UUID!) { deleteNode(id: $id) }`;
export const ROTATE_NODE_ENROLLMENT = `mutation RotateNodeEnrollment($id: UUID!, $enrollmentTtlHours: Int) {
  rotateNodeEnrollment(id: $id, enrollmentTtlHours: $enrollmentTtlHours) { token enrollment } }`;

// Activity
export const SESSIONS = `query Sessions($filter: SessionFilterInput, $first: Int, $after: String, $order: ListOrder! = NEWEST_FIRST) {
  sessions(filter: $filter, first: $first, after: $after, order: $order) { ${COUNTED} nodes { ${SESSION} } } }`;
export const SESSION_COUNT = `query SessionCount($filter: SessionFilterInput) {
  sessions(filter: $filter, first: 1) { totalCount } }`;
export const USAGE = `query Usage($userId: UUID, $nodeId: UUID, $from: DateTime!, $to: DateTime!, $granularity: Granularity!) {
  usage(userId: $userId, nodeId: $nodeId, from: $from, to: $to, granularity: $granularity) { periodStart bytesUp bytesDown } }`;
export const AUDIT_LOG = `query AuditLog($filter: AuditFilterInput, $first: Int, $after: String, $order: ListOrder! = NEWEST_FIRST) {
  auditLog(filter: $filter, first: $first, after: $after, order: $order) {
    ${COUNTED} nodes { id actorUserId action targetType targetId details createdAt } } }`;

// A user's subscriptions (subscriber's own page, admin's user page): the one
// stored as active (at most one), found whatever the history's length, and a
// page of the whole history, oldest first.
const USER_SUBSCRIPTION = `${SUBSCRIPTION} plan { id name deviceLimit resetPeriod }`;
export const USER_SUBSCRIPTIONS = `query UserSubscriptions($userId: UUID!, $first: Int, $after: String) {
  current: subscriptions(filter: { userId: $userId, status: ACTIVE }, first: 1) { nodes { ${USER_SUBSCRIPTION} } }
  subscriptions(filter: { userId: $userId }, first: $first, after: $after) { ${COUNTED} nodes { ${USER_SUBSCRIPTION} } } }`;

// Live
export const NODE_EVENTS = `subscription NodeEvents($region: String) {
  nodeEvents(region: $region) { nodeId nodeKind region kind status health load capacity at } }`;

// Admin feed and owners' live view
export const SESSION_EVENTS = `subscription SessionEvents($region: String) {
  sessionEvents(region: $region) { kind sessionId deviceId userId userEmail region outlineNodeId gatewayNodeId endReason bytesUp bytesDown at } }`;
export const QUOTA_EVENTS = `subscription QuotaEvents {
  quotaEvents { kind subscriptionId userId userEmail trafficLimitBytes trafficUsedBytes at } }`;
export const MY_DEVICE_EVENTS = `subscription MyDeviceEvents {
  myDeviceEvents { kind deviceId at placement { ${PLACEMENT} } } }`;

// Settings
export const SETTINGS = 'query Settings { settings { signUpEnabled } }';
export const UPDATE_SETTINGS = `mutation UpdateSettings($input: UpdateSettingsInput!) {
  updateSettings(input: $input) { signUpEnabled } }`;
