// Real QUIC Initials, as Debian's Chromium sends them: a UDP listener on :443 in a network
// namespace records the first datagrams of Chromium forced onto QUIC for one origin
// (--origin-to-force-quic-on). No QUIC server is needed: the client's Initials come before
// any answer, and Chromium retransmits them until it gives up. Not part of the build.
import { type ChildProcess, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NETNS_V4, type Netns } from '@coproxy/core/testing';
import { QuicInitialReader, type QuicReadResult } from '../quic-initial.js';
import { within } from './cli-process.js';

const recorder = fileURLToPath(new URL('./udp-recorder.mjs', import.meta.url));

export interface ChromiumInitials {
  /** The datagrams of the first client flow, in order, up to the one that completed the hello. */
  readonly datagrams: readonly Buffer[];
  readonly result: Extract<QuicReadResult, { done: true }>;
}

/** Chromium's first QUIC datagrams to https://<name>/ (resolved to the namespace's address). */
export async function captureChromiumInitials(netns: Netns, name: string): Promise<ChromiumInitials> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-tls-quic-'));
  const listener = netns.spawn(process.execPath, [recorder, NETNS_V4, '443'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  let browser: ChildProcess | undefined;
  try {
    const datagrams: Buffer[] = [];
    const reader = new QuicInitialReader();
    let source: string | undefined;
    const captured = new Promise<ChromiumInitials>((resolve, reject) => {
      listener.on('message', (message: { listening?: boolean; datagram?: string; from?: string }) => {
        if (message.listening === true) {
          browser = netns.spawn(
            'chromium',
            [
              ...['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
              `--user-data-dir=${path.join(dir, 'profile')}`,
              '--enable-quic',
              `--origin-to-force-quic-on=${name}:443`,
              `--host-resolver-rules=MAP ${name} ${NETNS_V4}`,
              '--virtual-time-budget=5000',
              '--dump-dom',
              `https://${name}/`,
            ],
            { stdio: 'ignore', env: { ...process.env, HOME: dir } },
          );
          return;
        }
        if (message.datagram === undefined) return;
        // One flow: Chromium's first source port (a retry would come from another).
        source ??= message.from;
        if (message.from !== source) return;
        const datagram = Buffer.from(message.datagram, 'hex');
        datagrams.push(datagram);
        try {
          const result = reader.push(datagram);
          if (result.done) resolve({ datagrams, result });
        } catch (error) {
          reject(error instanceof Error ? error : new Error(String(error)));
        }
      });
      listener.once('exit', (code) => reject(new Error(`the UDP recorder exited (${code}) before a whole hello`)));
    });
    return await within(captured, 30_000, "Chromium's QUIC Initials");
  } finally {
    browser?.kill('SIGKILL');
    listener.kill('SIGKILL');
    // Chromium's zygote and renderers outlive the browser's kill for a while and go on
    // writing to the profile (ENOTEMPTY in CI): every process of the namespace is killed,
    // and awaited, before the profile is removed.
    await killEveryProcessIn(netns);
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  }
}

/** SIGKILLs what runs in the namespace until nothing does (bounded: 5 s, then it throws). */
async function killEveryProcessIn(netns: Netns): Promise<void> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const pids = execFileSync('ip', ['netns', 'pids', netns.name], { encoding: 'utf8' }).split('\n').filter(Boolean);
    if (pids.length === 0) return;
    if (Date.now() > deadline) throw new Error(`processes ${pids.join(', ')} in ${netns.name} survive SIGKILL`);
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error; // gone meanwhile is fine
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
