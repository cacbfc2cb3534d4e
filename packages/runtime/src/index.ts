/**
 * @moat/runtime: how every Moat service's Node process is started, besides its command
 * (`node apps/<name>/dist/main.js`): the V8 options in NODE_OPTIONS, and the message a service sends
 * the launcher once it listens (READY_MESSAGE). The Dockerfile sets the hops'
 * value and compose gives screen its own (both checked by packages/e2e/src/compose/compose.test.ts);
 * the launcher and the test chain pass them to their children with serviceEnv().
 *
 * --max-semi-space-size=32 (MB) for the SMTP hops: a hop allocates a lot of short-lived objects per
 * message (sockets, parser state, promises); a young generation of 32 MB instead of V8's default 16 MB
 * halves the scavenges. Measured through the whole chain (1 KB, 10 sessions, one message per
 * connection): 7% more messages per second, filter 13% less CPU per message, for about 30 MB more
 * memory per process.
 *
 * screen keeps V8's 16 MB, said explicitly: it is the service that holds thousands of idle
 * connections, and the larger young generation, filled while they were accepted, counted against
 * each of them: 11.3 KB per idle connection instead of 8.7 (10,000 open, `npm run bench -- --only
 * screen`, goal under 10 KB), for no throughput a splice could measure.
 */
export const SERVICE_NODE_OPTIONS = '--max-semi-space-size=32';
export const SCREEN_NODE_OPTIONS = '--max-semi-space-size=16';

/**
 * What a service started by the launcher sends it over their IPC channel once it has started (its
 * listeners bound): the launcher starts the next service of the chain only then, so no client finds
 * its next hop not yet listening.
 */
export const READY_MESSAGE = 'moat:ready';

/** The V8 options of one service's process. */
export function serviceNodeOptions(service: string): string {
  return service === 'screen' ? SCREEN_NODE_OPTIONS : SERVICE_NODE_OPTIONS;
}

/**
 * `env` with the service's V8 options added to NODE_OPTIONS (an operator's own semi-space size wins).
 */
export function serviceEnv(env: NodeJS.ProcessEnv, service: string): NodeJS.ProcessEnv {
  const own = env.NODE_OPTIONS?.trim() ?? '';
  if (own.includes('--max-semi-space-size')) return env;
  const ours = serviceNodeOptions(service);
  return { ...env, NODE_OPTIONS: own ? `${own} ${ours}` : ours };
}
