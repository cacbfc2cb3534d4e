import { describe, expect, it } from 'vitest';
import { SCREEN_NODE_OPTIONS, SERVICE_NODE_OPTIONS, serviceEnv } from './index.js';

describe('serviceEnv', () => {
  it('adds the service V8 options to NODE_OPTIONS, keeping what is there', () => {
    expect(serviceEnv({ A: '1' }, 'filter')).toEqual({ A: '1', NODE_OPTIONS: SERVICE_NODE_OPTIONS });
    expect(serviceEnv({ A: '1' }, 'screen')).toEqual({ A: '1', NODE_OPTIONS: SCREEN_NODE_OPTIONS });
    expect(serviceEnv({ NODE_OPTIONS: '--enable-source-maps' }, 'greylist').NODE_OPTIONS).toBe(
      `--enable-source-maps ${SERVICE_NODE_OPTIONS}`,
    );
  });
  it("leaves an operator's own young-generation size alone", () => {
    const env = { NODE_OPTIONS: '--max-semi-space-size=64' };
    expect(serviceEnv(env, 'filter')).toBe(env);
    expect(serviceEnv(env, 'screen')).toBe(env);
  });
  it("gives a hop a larger young generation than V8 allocates without it, and screen V8's own", async () => {
    const { execFileSync } = await import('node:child_process');
    // short-lived garbage until the young generation has grown as far as it may; its largest size
    const probe = `const v8 = require('v8'); let max = 0; let keep = [];
      for (let i = 0; i < 3e6; i++) { keep.push({ a: i, b: 'x' + i }); if (keep.length > 20000) keep = [];
        if (i % 10000 === 0) max = Math.max(max, v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size); }
      console.log(max);`;
    const young = (env: NodeJS.ProcessEnv) =>
      Number(execFileSync(process.execPath, ['-e', probe], { env }).toString().trim());
    const plain = young({ PATH: process.env.PATH });
    const ours = young(serviceEnv({ PATH: process.env.PATH }, 'delivery'));
    const screen = young(serviceEnv({ PATH: process.env.PATH }, 'screen'));
    expect(ours).toBeGreaterThan(plain);
    expect(screen).toBe(plain); // V8's default, said explicitly
  }, 30_000);
});
