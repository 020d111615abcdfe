// The shared configuration and dist-rebuilding global setup: ../../vitest.shared.ts.
import { packageTestConfig } from '../../vitest.shared.js';

export default packageTestConfig();
