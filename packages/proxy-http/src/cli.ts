#!/usr/bin/env node
import { type RedirectorCliOptions, addRedirectorOptions, addServiceOptions, exitWith, integerOption, runVendorCli } from '@coproxy/core/vendor';
import { Command, Option } from 'commander';
import pino from 'pino';
import { RulesError } from './errors.js';
import { createHttpProxy } from './proxy.js';

/**
 * coproxy-http: the proxy as a service, on core's vendor kit (standard options, the
 * accepted/ready/shutting-down log lines, metrics endpoint, signals).
 *
 * Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 when the proxy fails (install
 * refused, listener lost), 2 for a usage error or an invalid rule file.
 */
const program = addRedirectorOptions(
  new Command('coproxy-http').description('A transparent inspecting HTTP/1.1 proxy that cooperates with other coproxy vendors through redirect records'),
  // --udp-ports: none by default; a UDP flow on a named port follows --unrecognised (no datagram protocol is inspected).
  { ports: '80,8080', udpPorts: '' },
)
  .option('--rules <file>', 'JSON rule file (see the README)')
  .option('--origin-timeout <ms>', 'no response from the origin within this long: 504', integerOption(1, 3_600_000), 30_000)
  .option('--connect-timeout <ms>', 'no connection to the origin within this long: 504', integerOption(1, 3_600_000), 10_000)
  .addOption(
    new Option('--unrecognised <policy>', 'connections neither HTTP nor TLS, silent for the sniff timeout, and every UDP flow (--udp-ports): block closes (UDP: rejects) them, relay passes them through (logged and counted either way)')
      .choices(['block', 'relay'])
      .default('block'),
  )
  .option('--max-body-size <bytes>', 'largest request body: a larger Content-Length or chunk sizes get 413', integerOption(1, Number.MAX_SAFE_INTEGER), 2 ** 40)
  .option('--drop-records', 'onward connections carry only this proxy\'s own redirect (to demonstrate the loop records prevent)')
  .configureOutput({ writeErr: (text) => process.stderr.write(text) });
addServiceOptions(program);

interface CliOptions extends RedirectorCliOptions {
  rules?: string;
  originTimeout: number;
  connectTimeout: number;
  unrecognised: 'block' | 'relay';
  maxBodySize: number;
  dropRecords?: boolean;
}

exitWith(
  'coproxy-http',
  runVendorCli<CliOptions, pino.Logger>({
    name: 'coproxy-http',
    program,
    logger: (options) => pino({ level: options.logLevel, base: { service: 'coproxy-http', id: options.id } }),
    start: ({ options, settings, logger }) => {
      const proxy = createHttpProxy({
        ...settings.redirector,
        ...(options.rules !== undefined && { rules: options.rules }),
        originTimeoutMs: options.originTimeout,
        propagateRecords: options.dropRecords !== true,
        connectTimeoutMs: options.connectTimeout,
        unrecognised: options.unrecognised,
        maxBodySize: options.maxBodySize,
        logger,
      });
      return {
        events$: proxy.events$,
        registry: proxy.metrics.registry,
        listening: () => proxy.listening(),
        close: () => proxy.close(),
        failures$: proxy.exchanges$,
      };
    },
    isUsageError: (error) => error instanceof RulesError,
    readyFields: ({ options, settings }) => ({ ports: settings.ports, udpPorts: settings.udpPorts ?? [], unrecognised: options.unrecognised }),
  }),
);
