import { createRequire } from 'node:module';
import os from 'node:os';
import type KoffiModule from 'koffi';

export type Koffi = typeof KoffiModule;

/** koffi and Linux's libc, as the nftables backend and the kernel splice call them. */
export interface LinuxLibc {
  readonly koffi: Koffi;
  readonly lib: ReturnType<Koffi['load']>;
}

let loaded: LinuxLibc | undefined;

/**
 * libc through koffi, loaded on first use so that importing core never loads a native
 * module on a platform that does not need it. Throws a plain `Error` saying why (not
 * Linux, koffi or libc.so.6 missing); each caller turns it into what fits it.
 */
export function linuxLibc(): LinuxLibc {
  if (loaded !== undefined) return loaded;
  if (process.platform !== 'linux') throw new Error(`it needs Linux, this is ${process.platform}`);
  try {
    const koffi = createRequire(import.meta.url)('koffi') as Koffi;
    loaded = { koffi, lib: koffi.load('libc.so.6') };
  } catch (error) {
    throw new Error(`cannot load koffi or libc.so.6: ${(error as Error).message}`, { cause: error });
  }
  return loaded;
}

const errnoNames = new Map(Object.entries(os.constants.errno).map(([name, value]) => [value, name]));

/** `ECONNRESET` for 104 on Linux: the name Node gives an errno, undefined for one it does not know. */
export function errnoName(errno: number): string | undefined {
  return errnoNames.get(errno);
}
