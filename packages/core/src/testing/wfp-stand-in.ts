// Builds the Winsock stand-in (test-fixtures/wfp/ws2-stand-in.c) with gcc into a
// temporary directory and binds the controls the tests use to play the WFP callout. The
// Wine lane binds the same controls on its Windows stand-in (ws2-stand-in-win.c, a PE DLL
// it builds with mingw-w64 before starting the Windows build of Node).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type KoffiModule from 'koffi';
import { ioctlCode } from '../backends/wfp/ioctl-codes.js';
import { type SocketHandle, type Winsock, useWinsockLibraryForTests, winsock } from '../backends/wfp/winsock.js';

type Koffi = typeof KoffiModule;

const SOURCE = fileURLToPath(new URL('../../test-fixtures/wfp/ws2-stand-in.c', import.meta.url));

export const SizeStyle = { WSAENOBUFS: 0, ERROR_INSUFFICIENT_BUFFER: 1, WSAEINVAL_ZERO: 2 } as const;

export interface IoctlCall {
  readonly code: number;
  readonly inputLength: number;
  readonly outputLength: number;
}

export interface StandIn {
  /** The shared library, for `useWinsockLibraryForTests`. */
  readonly library: string;
  reset(): void;
  sizeStyle(style: (typeof SizeStyle)[keyof typeof SizeStyle]): void;
  /** Attach the answer to one query ioctl on one socket; an empty buffer is "attached but empty". */
  attach(socket: SocketHandle, ioctl: 'records' | 'context', bytes: Buffer): void;
  /** Make one ioctl on one socket fail with this Win32/Winsock code. */
  fail(socket: SocketHandle, ioctl: 'records' | 'context' | 'set', error: number): void;
  /** Play the callout: the connection from `clientPort` was redirected with this destination, records, context. */
  redirect(flow: {
    clientPort: number;
    originalDestination: Buffer;
    records: Buffer | undefined;
    context?: Buffer | undefined;
    contextError?: number;
  }): void;
  /** The records SET on the open socket bound to this local port, or `undefined`. */
  recordsSetOnPort(port: number): Buffer | undefined;
  /** The WSAIoctl calls since the last reset. */
  ioctlLog(): IoctlCall[];
  /** Removes the build. */
  remove(): void;
}

const codeOf = {
  records: ioctlCode.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
  context: ioctlCode.SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT,
  set: ioctlCode.SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS,
} as const;

/** gcc must be there: the tests fail, rather than skip, when it is not. */
export function buildStandIn(): StandIn {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-ws2-'));
  const library = path.join(dir, 'ws2-stand-in.so');
  execFileSync('gcc', ['-Wall', '-Wextra', '-Werror', '-O1', '-shared', '-fPIC', '-o', library, SOURCE, '-lpthread'], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  return bindStandIn(library, () => fs.rmSync(dir, { recursive: true, force: true }));
}

/**
 * The controls of a stand-in library already built: the Linux one, or the Windows one
 * (same signatures). `remove` runs when the test is done with it.
 */
export function bindStandIn(library: string, remove: () => void = () => undefined): StandIn {
  const koffi = createRequire(import.meta.url)('koffi') as Koffi;
  const lib = koffi.load(library);
  const reset = lib.func('void standin_reset(void)');
  const sizeStyle = lib.func('void standin_size_style(int style)');
  const attach = lib.func('int standin_attach(uintptr_t s, uint32_t code, const void *bytes, uint32_t len)');
  const fail = lib.func('int standin_fail(uintptr_t s, uint32_t code, int error)');
  const redirect = lib.func(
    'int standin_redirect(uint16_t port, const void *dst, int dstLen, const void *records, uint32_t recordsLen, ' +
      'const void *context, uint32_t contextLen, int contextError)',
  );
  const recordsSetOnPort = lib.func('uint32_t standin_records_set_on_port(uint16_t port, void *out, uint32_t capacity)');
  const ioctlLog = lib.func('int standin_ioctl_log(uint32_t *codes, uint32_t *ins, uint32_t *outs, int capacity)');
  const check = (rc: unknown, what: string): void => {
    if (rc !== 0) throw new Error(`stand-in: ${what} refused`);
  };
  return {
    library,
    reset: () => void reset(),
    sizeStyle: (style) => void sizeStyle(style),
    attach: (socket, ioctl, bytes) => check(attach(socket, codeOf[ioctl], bytes, bytes.length), 'attach'),
    fail: (socket, ioctl, error) => check(fail(socket, codeOf[ioctl], error), 'fail'),
    redirect: ({ clientPort, originalDestination, records, context, contextError = 0 }) =>
      check(
        redirect(
          clientPort,
          originalDestination,
          originalDestination.length,
          records ?? null,
          records?.length ?? 0,
          context ?? null,
          context === undefined ? 0xffffffff : context.length,
          contextError,
        ),
        'redirect',
      ),
    recordsSetOnPort: (port) => {
      const out = Buffer.alloc(64 * 1024);
      const length = recordsSetOnPort(port, out, out.length) as number;
      return length === 0xffffffff ? undefined : Buffer.from(out.subarray(0, length));
    },
    ioctlLog: () => {
      // Typed arrays go to C by pointer, so what the stand-in writes is visible here.
      const codes = new Uint32Array(256);
      const ins = new Uint32Array(256);
      const outs = new Uint32Array(256);
      const count = ioctlLog(codes, ins, outs, 256) as number;
      return [...codes.subarray(0, count)].map((code, i) => ({ code, inputLength: ins[i] ?? 0, outputLength: outs[i] ?? 0 }));
    },
    remove,
  };
}

/**
 * Builds the stand-in (or takes `prebuilt`, a library already built, as the Wine lane's
 * PE DLL) and makes core's Winsock bindings load it (for a test file's `beforeAll`).
 */
export function installStandIn(prebuilt?: string): { standIn: StandIn; ws: Winsock } {
  const standIn = prebuilt === undefined ? buildStandIn() : bindStandIn(prebuilt);
  useWinsockLibraryForTests(standIn.library);
  return { standIn, ws: winsock() };
}

/** Undoes `installStandIn` (for the `afterAll`). */
export function uninstallStandIn(standIn: StandIn | undefined): void {
  useWinsockLibraryForTests(undefined);
  standIn?.remove();
}
