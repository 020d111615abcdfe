#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import type { MatchRule } from '@coproxy/core';
import { type RedirectorCliOptions, RuleFileError, addRedirectorOptions, addServiceOptions, exitWith, integerOption, loadRules, rulesInspector, runVendorCli } from '@coproxy/core/vendor';
import { Command, Option } from 'commander';
import pino from 'pino';
import { PolicyError } from './policy.js';
import { createTlsProxy } from './proxy.js';

/**
 * coproxy-tls: the TLS proxy as a service, on core's vendor kit (standard options, the
 * accepted/ready/shutting-down log lines, metrics endpoint, signals).
 *
 * Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 when the proxy fails (install
 * refused, CA unusable, listener lost), 2 for a usage error or an invalid policy or rule file.
 */
const program = addRedirectorOptions(
  new Command('coproxy-tls').description('A transparent inspecting TLS proxy (splice, block, bump) that cooperates with other coproxy vendors through redirect records'),
  // UDP/443: QUIC, read and relayed or blocked by the same policy. On WFP (no UDP) it is dropped unless given.
  { ports: '443', udpPorts: '443' },
)
  .option('--policy <file>', 'JSON policy file (see the README); default: splice everything')
  .option('--ca-dir <dir>', 'where the bump CA lives (ca.crt to trust, ca.key mode 0600); created on first use')
  .option('--rules <file>', "JSON rule file in coproxy-http's format (see the README), judged on every bumped request, HTTP/1.1 or each HTTP/2 stream")
  .option('--origin-ca <file>', 'PEM bundle to verify origins with in bump mode (default: the system store)')
  .addOption(
    new Option(
      '--unrecognised <action>',
      'first bytes that are neither TLS nor HTTP/1.x or the HTTP/2 preface (and silent clients), and UDP flows whose first datagrams are no readable QUIC Initial: block closes them (a UDP flow: ICMP port unreachable), relay passes them on uninspected',
    )
      .choices(['block', 'relay'])
      .default('block'),
  )
  .addOption(
    new Option('--unbumpable <action>', 'a bump the client makes impossible (it offers only ALPN protocols bump does not speak): block answers access_denied, splice relays it uninspected')
      .choices(['block', 'splice'])
      .default('block'),
  )
  .option('--idle-timeout <ms>', 'a bumped connection silent this long (in its handshake, between HTTP/1.1 requests, as an h2 session) is closed with its origin leg', integerOption(1, 3_600_000), 120_000)
  .option(
    '--early-onward',
    'dial the onward connection as soon as a connection is accepted, while its ClientHello is read (saves a round trip on spliced flows; nothing is sent before the decision). Trade-off: the origin (or the next vendor) is dialled, and sees an empty connection, even for a hello that is then refused',
  )
  .option('--drop-records', 'onward connections carry only this proxy\'s own redirect (to demonstrate the loop records prevent)')
  .configureOutput({ writeErr: (text) => process.stderr.write(text) });
addServiceOptions(program);

interface CliOptions extends RedirectorCliOptions {
  policy?: string;
  caDir?: string;
  rules?: string;
  originCa?: string;
  dropRecords?: boolean;
  earlyOnward?: boolean;
  unrecognised: 'block' | 'relay';
  unbumpable: 'block' | 'splice';
  idleTimeout: number;
}

/**
 * WFP redirects no UDP (it refuses `udpPorts`): there the `--udp-ports` default is dropped,
 * and only a `--udp-ports` the operator typed reaches the redirector (and is refused, exit 2).
 */
function matchFor(options: CliOptions, match: MatchRule): MatchRule {
  if (options.backend !== 'wfp' || program.getOptionValueSource('udpPorts') !== 'default') return match;
  return { ...(match.ports !== undefined && { ports: match.ports }) };
}

exitWith(
  'coproxy-tls',
  runVendorCli<CliOptions, pino.Logger>({
    name: 'coproxy-tls',
    program,
    logger: (options) => pino({ level: options.logLevel, base: { service: 'coproxy-tls', id: options.id } }),
    start: ({ options, settings, logger }) => {
      const proxy = createTlsProxy({
        ...settings.redirector,
        match: matchFor(options, settings.redirector.match),
        earlyOnward: options.earlyOnward === true,
        propagateRecords: options.dropRecords !== true,
        unrecognised: options.unrecognised,
        unbumpable: options.unbumpable,
        idleTimeoutMs: options.idleTimeout,
        ...(options.policy !== undefined && { policy: options.policy }),
        ...(options.caDir !== undefined && { ca: { dir: options.caDir } }),
        ...(options.originCa !== undefined && { originCa: readFileSync(options.originCa) }),
        // The kit's rule file, read as coproxy-http reads it: a rule written once works on both.
        ...(options.rules !== undefined && { inspectors: [rulesInspector(loadRules(options.rules))] }),
        logger,
      });
      return {
        events$: proxy.events$,
        registry: proxy.metrics.registry,
        listening: () => proxy.listening(),
        close: () => proxy.close(),
        failures$: proxy.handshakes$,
      };
    },
    // createTlsProxy throws TypeError for options that do not fit together (bump without a CA).
    isUsageError: (error) => error instanceof PolicyError || error instanceof RuleFileError || error instanceof TypeError,
  }),
);
