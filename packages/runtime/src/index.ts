/**
 * @moat/runtime: how every Moat service's Node process is started, besides its command
 * (`node apps/<name>/dist/main.js`): the V8 options in NODE_OPTIONS. The Dockerfile sets the same
 * value (checked by packages/e2e/src/compose/compose.test.ts); the launcher and the test chain pass it
 * to their children with serviceEnv().
 *
 * --max-semi-space-size=32 (MB): a hop allocates a lot of short-lived objects per message (sockets,
 * parser state, promises); a young generation of 32 MB instead of V8's default 16 MB halves the
 * scavenges. Measured through the whole chain (1 KB, 10 sessions, one message per connection): 7%
 * more messages per second, filter 13% less CPU per message, for about 30 MB more memory per process.
 */
export const SERVICE_NODE_OPTIONS = '--max-semi-space-size=32';

/** `env` with SERVICE_NODE_OPTIONS added to NODE_OPTIONS (an operator's own semi-space size wins). */
export function serviceEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const own = env.NODE_OPTIONS?.trim() ?? '';
  if (own.includes('--max-semi-space-size')) return env;
  return { ...env, NODE_OPTIONS: own ? `${own} ${SERVICE_NODE_OPTIONS}` : SERVICE_NODE_OPTIONS };
}
