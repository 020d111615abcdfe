// The shared configuration and dist-rebuilding global setup: ../../vitest.shared.ts.
import { packageTestConfig } from '../../vitest.shared.js';

// The chain test starts three vendor processes one after another; on a loaded 2-core
// machine coproxy-tls alone took over 10 s to say ready. A hang guard, not a measure.
export default packageTestConfig({ test: { testTimeout: 120_000 } });
