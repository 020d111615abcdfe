import { describe, expect, it } from 'vitest';
import {
  IOC_IN,
  IOC_VENDOR,
  SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT,
  SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
  SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS,
  Win32Error,
  win32ErrorName,
  wsaIoW,
} from './ioctl-codes.js';
import { decodeSockaddr, encodeSockaddr } from './sockaddr.js';

describe('the WFP ioctl codes', () => {
  it('are _WSAIOW(IOC_VENDOR, 220/221/222), the values the Windows SDK bindings publish', () => {
    expect(IOC_IN).toBe(0x80000000);
    expect(IOC_VENDOR).toBe(0x18000000);
    expect(SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS).toBe(wsaIoW(IOC_VENDOR, 220));
    expect(SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS).toBe(0x980000dc);
    expect(SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT).toBe(0x980000dd);
    expect(SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS).toBe(0x980000de);
    // windows-sys / windows: Win32::Networking::WinSock, as unsigned decimals.
    expect([SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS]).toEqual([
      2550137052, 2550137053, 2550137054,
    ]);
  });

  it('names the Win32 and Winsock errors a caller must handle, and numbers the others', () => {
    expect(win32ErrorName(Win32Error.WSAEACCES)).toBe('WSAEACCES');
    expect(win32ErrorName(10045)).toBe('WSAEOPNOTSUPP');
    expect(win32ErrorName(534)).toBe('ERROR_ARITHMETIC_OVERFLOW');
    expect(win32ErrorName(1168)).toBe('ERROR_NOT_FOUND');
    expect(win32ErrorName(4242)).toBe('WIN32_ERROR_4242');
  });
});

describe('Windows socket addresses', () => {
  it('write IPv4 with AF_INET (2) and IPv6 with Windows AF_INET6 (23), port and address in network order', () => {
    const v4 = encodeSockaddr('203.0.113.7', 8443);
    expect(v4.length).toBe(16);
    expect([...v4.subarray(0, 8)]).toEqual([2, 0, 0x20, 0xfb, 203, 0, 113, 7]);
    const v6 = encodeSockaddr('2001:db8::1', 443);
    expect(v6.length).toBe(28);
    expect(v6.readUInt16LE(0)).toBe(23);
    expect(v6.readUInt16BE(2)).toBe(443);
    expect(decodeSockaddr(v4, 16)).toEqual({ address: '203.0.113.7', port: 8443, family: 4 });
    expect(decodeSockaddr(v6, 28)).toEqual({ address: '2001:db8::1', port: 443, family: 6 });
  });

  it('refuse what they cannot read', () => {
    const linuxV6 = encodeSockaddr('::1', 80);
    linuxV6.writeUInt16LE(10, 0); // Linux's AF_INET6 is not Windows'
    expect(decodeSockaddr(linuxV6, 28)).toBeUndefined();
    expect(decodeSockaddr(encodeSockaddr('127.0.0.1', 80), 4)).toBeUndefined();
    expect(() => encodeSockaddr('localhost', 80)).toThrow(TypeError);
  });
});
