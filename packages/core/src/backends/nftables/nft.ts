import { createRequire } from 'node:module';
import type KoffiModule from 'koffi';
import { BackendUnavailableError, NftCommandError, PermissionDeniedError } from '../../model/errors.js';

/** `NFT_CTX_OUTPUT_HANDLE` (include/nftables/libnftables.h): listings show `# handle N`. */
const OUTPUT_HANDLE = 1 << 3;

type Koffi = typeof KoffiModule;

interface Libnftables {
  nft_ctx_new(flags: number): unknown;
  nft_ctx_buffer_output(ctx: unknown): number;
  nft_ctx_buffer_error(ctx: unknown): number;
  nft_ctx_get_output_buffer(ctx: unknown): string | null;
  nft_ctx_get_error_buffer(ctx: unknown): string | null;
  nft_ctx_output_set_flags(ctx: unknown, flags: number): void;
  nft_run_cmd_from_buffer(ctx: unknown, buffer: string): number;
}

/**
 * libnftables (the library behind the `nft` command) in this process, through koffi.
 *
 * One context for the life of the process, on purpose: its netlink socket owns the tables
 * created with `flags owner`, and the kernel deletes those the moment the socket closes,
 * that is when the process dies, however it dies. Running `nft` as a child process could
 * not give that, and would cost a fork per command.
 */
export interface Nft {
  /** Runs nft commands (one or several lines, applied as one transaction); returns what nft printed. */
  run(commands: string): string;
}

let shared: Nft | undefined;

export function nft(): Nft {
  shared ??= open();
  return shared;
}

function open(): Nft {
  if (process.platform !== 'linux') throw new BackendUnavailableError('nftables', `it needs Linux, this is ${process.platform}`);
  let lib: Libnftables;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as Koffi;
    const so = koffi.load('libnftables.so.1');
    lib = {
      nft_ctx_new: so.func('void *nft_ctx_new(uint32_t flags)'),
      nft_ctx_buffer_output: so.func('int nft_ctx_buffer_output(void *ctx)'),
      nft_ctx_buffer_error: so.func('int nft_ctx_buffer_error(void *ctx)'),
      nft_ctx_get_output_buffer: so.func('const char *nft_ctx_get_output_buffer(void *ctx)'),
      nft_ctx_get_error_buffer: so.func('const char *nft_ctx_get_error_buffer(void *ctx)'),
      nft_ctx_output_set_flags: so.func('void nft_ctx_output_set_flags(void *ctx, uint32_t flags)'),
      nft_run_cmd_from_buffer: so.func('int nft_run_cmd_from_buffer(void *ctx, const char *buffer)'),
    };
  } catch (error) {
    throw new BackendUnavailableError(
      'nftables',
      `libnftables.so.1 is not loadable (${(error as Error).message}); install the nftables package (Debian: apt-get install nftables)`,
    );
  }
  const ctx = lib.nft_ctx_new(0);
  if (ctx === null) throw new BackendUnavailableError('nftables', 'nft_ctx_new() failed');
  lib.nft_ctx_buffer_output(ctx);
  lib.nft_ctx_buffer_error(ctx);
  lib.nft_ctx_output_set_flags(ctx, OUTPUT_HANDLE);
  return {
    run(commands) {
      const status = lib.nft_run_cmd_from_buffer(ctx, commands);
      // The buffers are reset by each get: read both whatever the status.
      const output = lib.nft_ctx_get_output_buffer(ctx) ?? '';
      const errors = lib.nft_ctx_get_error_buffer(ctx) ?? '';
      if (status === 0) return output;
      const detail = errors.split('\n')[0]?.replace(/^Error: /, '') ?? 'unknown error';
      if (/Operation not permitted/.test(errors)) {
        throw new PermissionDeniedError('nftables', 'CAP_NET_ADMIN to change nftables (run it as root or grant the capability)', {
          cause: new NftCommandError(commands, detail),
        });
      }
      throw new NftCommandError(commands, detail);
    },
  };
}
