import { describe, expect, it } from 'vitest';
import { SERVICE_NODE_OPTIONS, serviceEnv } from './index.js';

describe('serviceEnv', () => {
  it('adds the service V8 options to NODE_OPTIONS, keeping what is there', () => {
    expect(serviceEnv({ A: '1' })).toEqual({ A: '1', NODE_OPTIONS: SERVICE_NODE_OPTIONS });
    expect(serviceEnv({ NODE_OPTIONS: '--enable-source-maps' }).NODE_OPTIONS).toBe(
      `--enable-source-maps ${SERVICE_NODE_OPTIONS}`,
    );
  });
  it("leaves an operator's own young-generation size alone", () => {
    const env = { NODE_OPTIONS: '--max-semi-space-size=64' };
    expect(serviceEnv(env)).toBe(env);
  });
  it('gives a child process a larger young generation than V8 allocates without it', async () => {
    const { execFileSync } = await import('node:child_process');
    // short-lived garbage until the young generation has grown as far as it may; its largest size
    const probe = `const v8 = require('v8'); let max = 0; let keep = [];
      for (let i = 0; i < 3e6; i++) { keep.push({ a: i, b: 'x' + i }); if (keep.length > 20000) keep = [];
        if (i % 10000 === 0) max = Math.max(max, v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size); }
      console.log(max);`;
    const young = (env: NodeJS.ProcessEnv) =>
      Number(execFileSync(process.execPath, ['-e', probe], { env }).toString().trim());
    const plain = young({ PATH: process.env.PATH });
    const ours = young(serviceEnv({ PATH: process.env.PATH }));
    expect(ours).toBeGreaterThan(plain);
  }, 30_000);
});
