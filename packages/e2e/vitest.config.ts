import { defineConfig } from 'vitest/config';

// End-to-end tests start real processes: give hooks the time a graceful stop may take, and run
// files one after another so timing-sensitive tests do not share the two cores with each other.
export default defineConfig({
  test: {
    hookTimeout: 60_000,
    testTimeout: 30_000,
    fileParallelism: false,
  },
});
