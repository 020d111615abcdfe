import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';
import tseslint from 'typescript-eslint';
import { describe, expect, it } from 'vitest';

// The layer rule lives in the root eslint.config.js and runs with `pnpm lint` (in `pnpm
// test`). These cases lint a one-line module placed in each layer, with the repository's
// own configuration, and expect the rule to refuse every upward or sideways import.

const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));

const eslint = new ESLint({
  cwd: repoRoot,
  // Type information is irrelevant to an import's path; without it each case lints in ms.
  overrideConfig: tseslint.configs.disableTypeChecked,
  ruleFilter: ({ ruleId }) => ruleId === 'no-restricted-imports',
});

/** The layer rule's messages for `source` placed at `file` (relative to packages/core/src). */
async function layerErrors(file: string, source: string): Promise<string[]> {
  const [result] = await eslint.lintText(`${source}\nexport {};\n`, { filePath: path.join(repoRoot, 'packages/core/src', file) });
  return result!.messages.map((message) => `${message.ruleId ?? 'fatal'}: ${message.message}`);
}

const refused: ReadonlyArray<readonly [file: string, source: string]> = [
  ['model/probe.ts', "import { createRedirector } from '../redirector/redirector.js';"],
  ['model/probe.ts', "export { dial } from '../net/dial.js';"],
  ['model/probe.ts', "import type { Backend } from '../backends/backend.js';"],
  ['net/probe.ts', "import type { Backend } from '../backends/backend.js';"],
  ['net/probe.ts', "import { createRedirector } from '../redirector/redirector.js';"],
  ['backends/backend.ts', "import { connect } from './embedded/connect.js';"],
  ['backends/backend-registry.ts', "import { createRedirector } from '../redirector/redirector.js';"],
  ['backends/nftables/probe.ts', "import { connect } from '../embedded/connect.js';"],
  ['backends/wfp/probe.ts', "import { createRedirector } from '../../redirector/redirector.js';"],
  ['backends/embedded/probe.ts', "import { BACKEND_NAMES } from '../backend-registry.js';"],
  ['backends/embedded/probe.ts', "import { VendorError } from '../../vendor/vendor-error.js';"],
  ['redirector/probe.ts', "import { nftablesBackend } from '../backends/nftables/nftables-backend.js';"],
  ['redirector/probe.ts', "import { VendorError } from '../vendor/vendor-error.js';"],
  ['redirector/probe.ts', "import { socketPair } from '../testing/harness.js';"],
  ['vendor/probe.ts', "import { connect } from '../backends/embedded/connect.js';"],
  ['vendor/probe.ts', "import { hex32 } from '../cli/coproxy.js';"],
];

const allowed: ReadonlyArray<readonly [file: string, source: string]> = [
  ['model/probe.ts', "import { RedirectRecords } from './redirect-records.js';"],
  ['net/probe.ts', "import { ConnectTimeoutError } from '../model/errors.js';"],
  ['backends/backend-registry.ts', "import { nftables } from './nftables/nftables-backend.js';"],
  ['backends/nftables/probe.ts', "import { dial } from '../../net/dial.js'; import type { Backend } from '../backend.js';"],
  ['backends/wfp/probe.ts', "import { winsock } from './winsock.js'; import { InvalidOptionsError } from '../../model/errors.js';"],
  ['redirector/probe.ts', "import { backendDefinition } from '../backends/backend-registry.js'; import { relay } from '../net/relay.js';"],
  ['vendor/probe.ts', "import { createRedirector } from '../redirector/redirector.js';"],
  ['cli/probe.ts', "import { tableStatuses } from '../backends/nftables/installed-tables.js';"],
  // Tests wire layers together on purpose.
  ['model/probe.test.ts', "import { createRedirector } from '../redirector/redirector.js';"],
];

describe('the layer rule in eslint.config.js', () => {
  it.each(refused)('refuses, in %s: %s', async (file, source) => {
    const errors = await layerErrors(file, source);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/^no-restricted-imports: /);
  });

  it.each(allowed)('allows, in %s: %s', async (file, source) => {
    expect(await layerErrors(file, source)).toEqual([]);
  });
});
