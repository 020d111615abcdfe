#!/usr/bin/env node
import { type RedirectorCliOptions, addRedirectorOptions, addServiceOptions, exitWith, runVendorCli } from '@coproxy/core/vendor';
import { Command } from 'commander';
import pino from 'pino';
import { WordFilterError, createWordFilter } from './word-filter.js';

// The kit's standard options (--id --priority --ports --backend --fail-mode --mark-mask
// --metrics --log-level), then ours.
const program = addRedirectorOptions(new Command('word-filter').description('Closes TCP flows whose first bytes contain a word'), { ports: '80', markMask: true })
  .requiredOption('--word <word>', 'close flows whose first bytes contain it');
addServiceOptions(program);

interface CliOptions extends RedirectorCliOptions {
  readonly word: string;
}

// The kit's main loop: 'accepted', 'ready' and 'shutting down' log lines, --metrics,
// SIGINT/SIGTERM, exit codes 0 (clean stop), 1 (failure), 2 (usage).
exitWith(
  'word-filter',
  runVendorCli<CliOptions, pino.Logger>({
    name: 'word-filter',
    program,
    logger: (options) => pino({ level: options.logLevel, base: { service: 'word-filter', id: options.id } }),
    start: ({ options, settings, logger }) => {
      const filter = createWordFilter({ ...settings.redirector, word: options.word, logger });
      return { events$: filter.events$, registry: filter.metrics.registry, listening: filter.listening, close: filter.close };
    },
    isUsageError: (error) => error instanceof WordFilterError,
  }),
);
