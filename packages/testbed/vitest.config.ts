// The shared configuration and dist-rebuilding global setup: ../../vitest.shared.ts.
import { packageTestConfig } from '../../vitest.shared.js';

// A testbed test starts an origin, a client and two to four vendor processes and runs
// whole scenarios: on a loaded 2-core machine one took 30 s (a usage error alone 8 s), so
// the hang guard is wider here. It bounds a stuck run; it measures nothing.
// Files one after another: each checks that its runs leave no process, temp dir or
// namespace behind, which another file's run in flight would look like.
export default packageTestConfig({ test: { testTimeout: 120_000, hookTimeout: 60_000, fileParallelism: false } });
