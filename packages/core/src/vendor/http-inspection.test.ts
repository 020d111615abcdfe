import { describe, expect, it } from 'vitest';
import { type Inspector, type RequestInfo, decide } from './http-inspection.js';

const request: RequestInfo = {
  method: 'GET',
  url: '/admin',
  target: '/admin',
  path: '/admin',
  paths: ['/admin'],
  host: 'shop.example',
  port: undefined,
  authority: 'shop.example',
  httpVersion: '2.0',
  headers: {},
  connection: { id: 'tls#1', source: { address: '127.0.0.1', port: 1 }, destination: { address: '127.0.0.1', port: 443, family: 4 }, redirectedBy: ['tls'] },
  upgrade: false,
};

describe('the shared inspection contract', () => {
  it('lets a request through when no inspector objects, annotations accumulating with the later one winning', async () => {
    const a: Inspector = { name: 'a', inspectRequest: () => ({ action: 'annotate', headers: { 'X-Seen': 'a', 'x-a': '1' } }) };
    const b: Inspector = { name: 'b', inspectRequest: () => Promise.resolve({ action: 'annotate', headers: { 'x-seen': 'b' } }) };
    const silent: Inspector = { name: 'silent' };

    expect(await decide([silent], request)).toEqual({ action: 'allow', by: [] });
    expect(await decide([a, silent, b], request)).toEqual({ action: 'annotate', headers: { 'x-seen': 'b', 'x-a': '1' }, by: ['a', 'b'] });
  });

  it('stops at the first block, with 403 and a standard reason unless the inspector gives its own', async () => {
    const never: Inspector = { name: 'never', inspectRequest: () => { throw new Error('must not run after a block'); } };
    const admin: Inspector = { name: 'no-admin', inspectRequest: (r) => (r.paths.includes('/admin') ? { action: 'block' } : undefined) };
    const legal: Inspector = { name: 'legal', inspectRequest: () => ({ action: 'block', status: 451, reason: 'unavailable' }) };

    expect(await decide([admin, never], request)).toEqual({ action: 'block', status: 403, reason: '403 blocked by policy', by: ['no-admin'] });
    expect(await decide([legal], request)).toEqual({ action: 'block', status: 451, reason: 'unavailable', by: ['legal'] });
  });
});
