/**
 * Winsock numbers the WFP backend uses, as the Windows SDK defines them. Checked against
 * published bindings of the SDK headers (see the README's WFP section for the list):
 * retep998/winapi-rs `src/shared/mstcpip.rs` (the three codes as `_WSAIOW!(IOC_VENDOR,
 * 220/221/222)`) and `src/shared/ws2def.rs` (`IOC_IN`, `IOC_VENDOR`, `_WSAIOW`), and the
 * `windows`/`windows-sys` crates' `Win32::Networking::WinSock` constants (2550137052,
 * 2550137053, 2550137054, i.e. 0x980000DC..DE).
 */

/** `ws2def.h`: the argument is copied in. */
export const IOC_IN = 0x80000000;
/** `ws2def.h`: a vendor-defined ioctl family. */
export const IOC_VENDOR = 0x18000000;

/** `_WSAIOW(x, y)` = `IOC_IN | x | y`, as an unsigned 32-bit DWORD. */
export function wsaIoW(family: number, code: number): number {
  return (IOC_IN | family | code) >>> 0;
}

export const SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS = wsaIoW(IOC_VENDOR, 220);
export const SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT = wsaIoW(IOC_VENDOR, 221);
export const SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS = wsaIoW(IOC_VENDOR, 222);

export type WfpIoctl =
  | 'SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS'
  | 'SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT'
  | 'SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS';

export const ioctlCode: Readonly<Record<WfpIoctl, number>> = {
  SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
  SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT,
  SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS,
};

/** Win32 (`winerror.h`) and Winsock (`winsock2.h`) error codes the backend branches on or names. */
export const Win32Error = {
  ERROR_ACCESS_DENIED: 5,
  ERROR_INSUFFICIENT_BUFFER: 122,
  ERROR_MORE_DATA: 234,
  ERROR_ARITHMETIC_OVERFLOW: 534,
  WSA_OPERATION_ABORTED: 995,
  WSA_IO_PENDING: 997,
  ERROR_NOT_FOUND: 1168,
  WSAEINTR: 10004,
  WSAEBADF: 10009,
  WSAEACCES: 10013,
  WSAEFAULT: 10014,
  WSAEINVAL: 10022,
  WSAEMFILE: 10024,
  WSAEWOULDBLOCK: 10035,
  WSAEINPROGRESS: 10036,
  WSAENOTSOCK: 10038,
  WSAEMSGSIZE: 10040,
  WSAENOPROTOOPT: 10042,
  WSAEOPNOTSUPP: 10045,
  WSAEAFNOSUPPORT: 10047,
  WSAEADDRINUSE: 10048,
  WSAEADDRNOTAVAIL: 10049,
  WSAENETDOWN: 10050,
  WSAENETUNREACH: 10051,
  WSAECONNABORTED: 10053,
  WSAECONNRESET: 10054,
  WSAENOBUFS: 10055,
  WSAEISCONN: 10056,
  WSAENOTCONN: 10057,
  WSAECONNREFUSED: 10061,
  WSANOTINITIALISED: 10093,
} as const;

const names = new Map<number, string>(Object.entries(Win32Error).map(([name, value]) => [value, name]));

/** `WSAEACCES` for 10013; `WIN32_ERROR_<n>` for a code this table does not name. */
export function win32ErrorName(code: number): string {
  return names.get(code) ?? `WIN32_ERROR_${code}`;
}

/**
 * Windows values for the socket calls (`ws2def.h`, `winsock2.h`, `ws2ipdef.h`), where they
 * differ from Linux: AF_INET6 is 23, SOL_SOCKET 0xffff. `SOL_IP`/`SO_ORIGINAL_DST`
 * (0xfffb/0x300f) is how rust-lang/socket2 reads a WFP-redirected socket's original
 * destination on Windows (`src/sys/windows.rs`, `original_dst_v4`/`_v6`).
 */
export const Ws = {
  AF_INET: 2,
  AF_INET6: 23,
  SOCK_STREAM: 1,
  IPPROTO_TCP: 6,
  SOL_SOCKET: 0xffff,
  SOL_IP: 0xfffb,
  SO_EXCLUSIVEADDRUSE: ~4,
  SO_ORIGINAL_DST: 0x300f,
  /** `_IOW('f', 126, u_long)`, as the signed 32-bit `long` ioctlsocket takes. */
  FIONBIO: 0x8004667e | 0,
  POLLRDNORM: 0x0100,
  WSA_FLAG_OVERLAPPED: 0x01,
  WSA_FLAG_NO_HANDLE_INHERIT: 0x80,
  SOMAXCONN: 0x7fffffff,
} as const;
