// One flat config for every package: typescript-eslint's type-aware rules catch
// floating promises and unsafe `any` flows, which matter in socket code.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

// core's layers point one way: model ← net ← backends ← redirector ← vendor ← cli, examples,
// testing (packages/core/README.md, "Layers"). Each block lists what a layer may not import.
// ESLint's own no-restricted-imports on the specifier text, not a plugin: core's imports are
// all relative, so the text says the layer; a resolver-based rule (import-x
// no-restricted-paths, boundaries) would need a second dependency to map NodeNext's '.js'
// specifiers to '.ts' files, and skips what it cannot resolve, which would let the rule pass
// silently if that mapping broke. Tests are exempt: they wire layers together on purpose.
// packages/core/src/layers.test.ts proves each block fails on an upward import.
const CORE_TESTS = ['packages/core/src/**/*.test.ts', 'packages/core/src/**/*.wine-test.ts'];
const upward = (message, ...regexes) => ({
  'no-restricted-imports': ['error', { patterns: regexes.map((regex) => ({ regex, message })) }],
});
const coreLayers = [
  {
    files: ['packages/core/src/model/**/*.ts'],
    rules: upward('model/ is the lowest layer: pure vocabulary, it imports nothing outside model/.', '^\\.\\./'),
  },
  {
    files: ['packages/core/src/net/**/*.ts'],
    rules: upward('net/ may import model/ only.', '^\\.\\./(?!model/)'),
  },
  {
    files: ['packages/core/src/backends/*.ts'],
    ignores: ['packages/core/src/backends/backend-registry.ts'],
    rules: upward(
      'backends/ may import model/ and net/; only backend-registry.ts names the backend folders.',
      '^\\.\\./(?!model/|net/)',
      '^\\./[^/]+/',
    ),
  },
  {
    files: ['packages/core/src/backends/backend-registry.ts'],
    rules: upward('backends/ may import model/ and net/.', '^\\.\\./(?!model/|net/)'),
  },
  {
    files: ['packages/core/src/backends/*/**/*.ts'],
    rules: upward(
      'a backend folder may import its own files, the backend contract (../backend.js …), model/ and net/: never another backend or a layer above.',
      '^\\.\\./[^./][^/]*/',
      '^\\.\\./backend-registry\\.js$',
      '^\\.\\./\\.\\./(?!model/|net/)',
    ),
  },
  {
    files: ['packages/core/src/redirector/**/*.ts'],
    rules: upward(
      'redirector/ knows no backend by name: it may import model/, net/ and backends/*.ts (the contract and the registry), never a backend folder.',
      '^\\.\\./(?!model/|net/|backends/)',
      '^\\.\\./backends/[^/]+/',
    ),
  },
  {
    files: ['packages/core/src/vendor/**/*.ts'],
    rules: upward(
      'vendor/ may import redirector/ and the layers below it (backends/ through the contract and the registry only).',
      '^\\.\\./(?!model/|net/|backends/|redirector/)',
      '^\\.\\./backends/[^/]+/',
    ),
  },
].map((block) => ({ ...block, ignores: [...(block.ignores ?? []), ...CORE_TESTS] }));

export default tseslint.config(
  { ignores: ['**/dist/**', '**/node_modules/**', '**/.turbo/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: globals.node,
      parserOptions: {
        projectService: true,
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      'no-empty': ['error', { allowEmptyCatch: false }],
      // `await using _server = …` keeps a resource alive for a scope without naming a use.
      '@typescript-eslint/no-unused-vars': ['error', { varsIgnorePattern: '^_', argsIgnorePattern: '^_' }],
    },
  },
  {
    // The Wine lane's tests use node:test, whose describe/it return promises the runner awaits.
    files: ['**/*.wine-test.ts'],
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['describe', 'it', 'before', 'after', 'beforeEach', 'afterEach'] }] },
      ],
    },
  },
  ...coreLayers,
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
  },
);
