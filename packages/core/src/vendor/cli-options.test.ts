import { Command } from 'commander';
import { BACKEND_NAMES } from '../backends/backend-registry.js';
import { describe, expect, it } from 'vitest';
import {
  CliUsageError,
  addRedirectorOptions,
  addServiceOptions,
  parseEndpoint,
  parsePorts,
  parseUdpPorts,
  redirectorOptionsFromCli,
  type RedirectorCliOptions,
} from './cli-options.js';

/** A vendor's command as the kit builds it, parsed from `args` without exiting the test. */
function parse(args: string[], defaults: Parameters<typeof addRedirectorOptions>[1] = { ports: '80,8080' }): { options: RedirectorCliOptions; errors: string } {
  let errors = '';
  const program = addServiceOptions(addRedirectorOptions(new Command('acme'), defaults))
    .exitOverride()
    .configureOutput({ writeErr: (text) => (errors += text), writeOut: () => undefined });
  program.parse(args, { from: 'user' });
  return { options: program.opts<RedirectorCliOptions>(), errors };
}

describe('standard redirector CLI options', () => {
  it('gives the defaults a vendor chose, and the kit’s own', () => {
    const { options } = parse(['--id', 'acme', '--priority', '-5']);

    expect(options).toEqual({ id: 'acme', priority: -5, ports: '80,8080', backend: 'embedded', failMode: 'open', logLevel: 'info' });
  });

  it('turns the parsed options into redirector options, ports and metrics endpoint parsed', () => {
    const { options } = parse(['--id', 'acme', '--priority', '7', '--ports', '443, 8000-8099', '--backend', 'nftables', '--fail-mode', 'closed', '--metrics', '[::1]:9464']);

    expect(redirectorOptionsFromCli(options)).toEqual({
      redirector: { id: 'acme', priority: 7, match: { ports: [443, [8000, 8099]] }, backend: 'nftables', failMode: 'closed' },
      ports: [443, [8000, 8099]],
      metrics: { host: '::1', port: 9464 },
    });
  });

  it('refuses a priority that is not a 32-bit integer, naming the option', () => {
    expect(() => parse(['--id', 'acme', '--priority', 'high'])).toThrow(expect.objectContaining({ code: 'commander.invalidArgument' }));
    expect(() => parse(['--id', 'acme', '--priority', String(2 ** 31)])).toThrow(/--priority/);
  });

  it('offers the backends of core\'s registry, or the subset a vendor names', () => {
    for (const name of BACKEND_NAMES) expect(parse(['--id', 'acme', '--priority', '1', '--backend', name]).options.backend).toBe(name);
    expect(() => parse(['--id', 'acme', '--priority', '1', '--backend', 'ebpf'])).toThrow(/--backend/);
    expect(() => parse(['--id', 'acme', '--priority', '1', '--backend', 'nftables'], { ports: '80', backends: ['embedded'] })).toThrow(/--backend/);
    expect(parse(['--id', 'acme', '--priority', '1'], { ports: '80', backends: ['embedded'] }).options.backend).toBe('embedded');
  });

  it('adds --mark-mask only when the vendor asks for it, and parses hex or decimal', () => {
    expect(() => parse(['--id', 'acme', '--priority', '1', '--mark-mask', '0xff000000'])).toThrow(/unknown option/);
    const { options } = parse(['--id', 'acme', '--priority', '1', '--mark-mask', '0xff000000'], { ports: '80', markMask: true });
    expect(redirectorOptionsFromCli(options).redirector.markMask).toBe(0xff000000);
    expect(() => parse(['--id', 'a', '--priority', '1', '--mark-mask', '0'], { ports: '80', markMask: true })).toThrow(/--mark-mask/);
  });

  it('adds --udp-ports only for a vendor that takes UDP, with its default, and none turns UDP off', () => {
    expect(() => parse(['--id', 'acme', '--priority', '1', '--udp-ports', '443'])).toThrow(/unknown option/);
    expect(redirectorOptionsFromCli(parse(['--id', 'acme', '--priority', '1']).options).redirector.match).toEqual({ ports: [80, 8080] });

    const defaults = { ports: '443', udpPorts: '443' };
    const byDefault = redirectorOptionsFromCli(parse(['--id', 'acme', '--priority', '1'], defaults).options);
    expect(byDefault.redirector.match).toEqual({ ports: [443], udpPorts: [443] });
    expect(byDefault.udpPorts).toEqual([443]);
    const given = redirectorOptionsFromCli(parse(['--id', 'acme', '--priority', '1', '--udp-ports', '443,4433-4435'], defaults).options);
    expect(given.redirector.match).toEqual({ ports: [443], udpPorts: [443, [4433, 4435]] });
    for (const off of ['none', '']) {
      const settings = redirectorOptionsFromCli(parse(['--id', 'acme', '--priority', '1', '--udp-ports', off], defaults).options);
      expect(settings.redirector.match).toEqual({ ports: [443] });
      expect(settings.udpPorts).toBeUndefined();
    }
    // A vendor whose UDP is off unless asked.
    expect(parse(['--id', 'acme', '--priority', '1'], { ports: '80', udpPorts: '' }).options.udpPorts).toBe('none');
  });

  it('reports a bad --udp-ports as a usage error naming --udp-ports', () => {
    expect(() => parseUdpPorts('443,quic')).toThrow(expect.objectContaining({ code: 'COPROXY_CLI_USAGE', option: '--udp-ports' }));
    expect(() => redirectorOptionsFromCli(parse(['--id', 'acme', '--priority', '1', '--udp-ports', '0'], { ports: '443', udpPorts: '443' }).options)).toThrow(
      expect.objectContaining({ option: '--udp-ports' }),
    );
  });

  it('reports a bad port list or endpoint as a usage error that names the option and the part at fault', () => {
    for (const text of ['0', '65536', '90-80', 'http', '80,,81']) {
      expect(() => parsePorts(text)).toThrow(CliUsageError);
    }
    const error = (() => {
      try {
        parsePorts('80,9x');
      } catch (caught) {
        return caught;
      }
    })();
    expect(error).toMatchObject({ name: 'CliUsageError', code: 'COPROXY_CLI_USAGE', option: '--ports', message: "'9x' is not a port or a range" });
    expect(() => parseEndpoint('localhost')).toThrow(expect.objectContaining({ option: '--metrics', message: "'localhost' is not host:port" }));
    expect(parseEndpoint('127.0.0.1:1')).toEqual({ host: '127.0.0.1', port: 1 });
  });
});
