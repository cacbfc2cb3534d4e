import { defineConfig } from 'vitest/config';

// DurableWriter's worker thread runs the compiled durable-worker.js (Node 20 cannot start a
// TypeScript file as a worker): build dist/ from this src/ first, so the tests drive this code.
export default defineConfig({
  test: {
    globalSetup: ['./vitest.build.ts'],
  },
});
