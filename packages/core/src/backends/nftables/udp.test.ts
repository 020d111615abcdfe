import { describe, expect, it } from 'vitest';
import { decodeEntry, encodeReplyTupleQuery } from './conntrack.js';
import { matchSelector, renderChain, type TableInfo } from './tables.js';
import { renderReject, renderUdpRules } from './udp.js';

const info: TableInfo = { id: 'acme', bit: 0x100, priority: 10, failMode: 'open', pid: 42, start: 7 };

describe('nftables UDP rules', () => {
  it('redirects the named UDP ports after the mark return, copying the mark to conntrack', () => {
    const rules = renderUdpRules(info, { udpPorts: [443, [5000, 5001]] }, 40001, new Set([4, 6]));
    expect(rules).toContain('add rule inet coproxy-acme output meta nfproto ipv4 meta l4proto udp udp dport { 443, 5000-5001 } ct mark set meta mark redirect to :40001');
    expect(rules).toContain('add rule inet coproxy-acme output meta nfproto ipv6 meta l4proto udp udp dport { 443, 5000-5001 } ct mark set meta mark redirect to :40001');
    expect(rules).toContain('add rule inet coproxy-acme input meta l4proto udp ip saddr . udp sport @rejected4 udp dport 40001 reject');
  });

  it('writes no TCP rule for a rule that names only UDP ports, and no UDP rule for a TCP rule', () => {
    expect(matchSelector({ udpPorts: [443] }, 4)).toBeUndefined();
    expect(renderChain(info, { udpPorts: [443] }, 40000, new Set([4]))).not.toContain('redirect');
    expect(matchSelector({ ports: [443] }, 4, 'udp')).toBeUndefined();
    expect(matchSelector({ ports: [80], udpPorts: [443] }, 4)).toBe('meta nfproto ipv4 meta l4proto tcp tcp dport { 80 }');
  });

  it('rejects one client flow by address and port, per family', () => {
    expect(renderReject(info, { address: '10.0.0.1', port: 5000, family: 4 })).toBe('add element inet coproxy-acme rejected4 { 10.0.0.1 . 5000 timeout 120s }');
    expect(renderReject(info, { address: 'fd00::1', port: 5000, family: 6 })).toBe('add element inet coproxy-acme rejected6 { fd00::1 . 5000 timeout 120s }');
  });
});

/** A CT_NEW message as the kernel writes it, with the given original destination and mark. */
function entryMessage(destination: Buffer, port: number, family: 4 | 6, mark?: number): Buffer {
  const attr = (type: number, value: Buffer): Buffer => {
    const out = Buffer.alloc((4 + value.length + 3) & ~3);
    out.writeUInt16LE(4 + value.length, 0);
    out.writeUInt16LE(type, 2);
    value.copy(out, 4);
    return out;
  };
  const portBytes = Buffer.from([port >> 8, port & 0xff]);
  const ip = attr(0x8001, Buffer.concat([attr(family === 6 ? 3 : 1, Buffer.alloc(destination.length, 9)), attr(family === 6 ? 4 : 2, destination)]));
  const proto = attr(0x8002, Buffer.concat([attr(1, Buffer.from([17])), attr(2, Buffer.from([0x13, 0x88])), attr(3, portBytes)]));
  const body = Buffer.concat([attr(0x8001, Buffer.concat([ip, proto])), ...(mark === undefined ? [] : [attr(8, Buffer.from([mark >>> 24, (mark >> 16) & 0xff, (mark >> 8) & 0xff, mark & 0xff]))])]);
  const header = Buffer.alloc(20);
  header.writeUInt32LE(20 + body.length, 0);
  header.writeUInt16LE(0x100, 4);
  return Buffer.concat([header, body]);
}

describe('conntrack lookup codec', () => {
  it('asks by the reply tuple: from the listener to the client, UDP', () => {
    const request = encodeReplyTupleQuery({ address: '127.0.0.1', port: 40001, family: 4 }, { address: '10.200.0.1', port: 51000, family: 4 }, 7);
    expect(request.readUInt32LE(0)).toBe(request.length);
    expect(request.readUInt16LE(4)).toBe(0x101); // CTNETLINK << 8 | IPCTNL_MSG_CT_GET
    expect(request.readUInt32LE(8)).toBe(7);
    expect(request[16]).toBe(2); // AF_INET
    expect(request.includes(Buffer.from([127, 0, 0, 1]))).toBe(true);
    expect(request.includes(Buffer.from([10, 200, 0, 1]))).toBe(true);
    expect(request.includes(Buffer.from([40001 >> 8, 40001 & 0xff]))).toBe(true);
  });

  it('reads the original destination and mark, IPv4 and IPv6', () => {
    expect(decodeEntry(entryMessage(Buffer.from([192, 0, 2, 1]), 443, 4, 0x300), 4)).toEqual({ originalDestination: { address: '192.0.2.1', port: 443, family: 4 }, mark: 0x300 });
    const v6 = Buffer.alloc(16);
    v6.writeUInt16BE(0x2001, 0);
    v6.writeUInt16BE(0xdb8, 2);
    v6.writeUInt16BE(1, 14);
    expect(decodeEntry(entryMessage(v6, 53, 6), 6)).toEqual({ originalDestination: { address: '2001:db8::1', port: 53, family: 6 }, mark: 0 });
  });

  it('answers no entry for ENOENT and a typed error for anything else', () => {
    const error = (errno: number): Buffer => {
      const message = Buffer.alloc(36);
      message.writeUInt32LE(36, 0);
      message.writeUInt16LE(2, 4); // NLMSG_ERROR
      message.writeInt32LE(-errno, 16);
      return message;
    };
    expect(decodeEntry(error(2), 4)).toBeUndefined();
    expect(() => decodeEntry(error(1), 4)).toThrow(expect.objectContaining({ code: 'COPROXY_SYSCALL_FAILED', errnoName: 'EPERM' }));
    expect(() => decodeEntry(Buffer.alloc(8), 4)).toThrow(expect.objectContaining({ code: 'COPROXY_SYSCALL_FAILED' }));
    const truncated = entryMessage(Buffer.from([192, 0, 2, 1]), 443, 4).subarray(0, 30);
    expect(() => decodeEntry(truncated, 4)).toThrow(expect.objectContaining({ code: 'COPROXY_SYSCALL_FAILED' }));
  });
});
