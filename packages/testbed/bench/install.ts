import { execFileSync, spawnSync } from 'node:child_process';

/** What the comparison needs from Debian's packages, by the command that proves each is there. */
export const DEBIAN_PACKAGES = [
  { name: 'nginx', command: 'nginx' },
  { name: 'wrk', command: 'wrk' },
  { name: 'squid', command: 'squid' },
  { name: 'mitmproxy', command: 'mitmdump' },
  { name: 'haproxy', command: 'haproxy' },
  { name: 'nghttp2-client', command: 'h2load' },
  { name: 'nftables', command: 'nft' },
  { name: 'iproute2', command: 'ip' },
  { name: 'curl', command: 'curl' },
  { name: 'openssl', command: 'openssl' },
  { name: 'util-linux', command: 'setpriv' },
] as const;

export type DebianPackage = (typeof DEBIAN_PACKAGES)[number]['name'];

/** Bounds one apt-get call: a mirror that hangs must not hang the bench. */
const APT_TIMEOUT_MS = 300_000;

export function hasCommand(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore', env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` } }).status === 0;
}

/**
 * Installs the missing packages with apt-get (the caller has checked it runs as root).
 * Returns the packages it installed. Throws with apt's output when apt-get fails.
 */
export function installMissing(log: (line: string) => void): DebianPackage[] {
  const missing = DEBIAN_PACKAGES.filter((p) => !hasCommand(p.command)).map((p) => p.name);
  if (missing.length === 0) return [];
  log(`installing from Debian's packages: ${missing.join(', ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const args of [['update'], ['install', '-y', ...missing]]) {
    const result = spawnSync('apt-get', args, { env, encoding: 'utf8', timeout: APT_TIMEOUT_MS });
    if (result.status !== 0) {
      const output = `${result.stdout}${result.stderr}`.trim().split('\n').slice(-15).join('\n');
      throw new Error(`apt-get ${args[0]} failed (${result.error?.message ?? `exit ${String(result.status ?? result.signal)}`}):\n${output}`);
    }
  }
  const still = DEBIAN_PACKAGES.filter((p) => missing.includes(p.name) && !hasCommand(p.command)).map((p) => p.name);
  if (still.length > 0) throw new Error(`installed ${missing.join(', ')}, but these commands are still missing: ${still.join(', ')}`);
  return missing;
}

/** `dpkg-query` versions of the packages, for the report; `unknown` when dpkg does not know one. */
export function packageVersions(): Record<string, string> {
  const versions: Record<string, string> = {};
  for (const { name } of DEBIAN_PACKAGES) {
    try {
      versions[name] = execFileSync('dpkg-query', ['-W', '-f=${Version}', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || 'unknown';
    } catch {
      versions[name] = 'unknown';
    }
  }
  return versions;
}
