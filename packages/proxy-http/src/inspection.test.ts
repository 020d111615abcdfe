import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { createAgent } from '@coproxy/core';
import { describe, expect, it } from 'vitest';
import { RulesError } from './errors.js';
import type { Inspector, RequestInfo, ResponseInfo } from './inspector.js';
import { createHttpProxy } from './proxy.js';
import { type HttpOrigin, request, startHttpOrigin, startProxy, tempDir, uniqueId, until } from './test-support/harness.js';

/** An origin answering with the request's method, url and headers as JSON. */
function startMirrorOrigin(): Promise<HttpOrigin> {
  return startHttpOrigin((req, res) => {
    req.resume().once('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers }));
    });
  });
}

interface Mirrored {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
}

const mirrored = (body: Buffer): Mirrored => JSON.parse(body.toString()) as Mirrored;

function writeJson(dir: string, name: string, value: unknown): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, typeof value === 'string' ? value : JSON.stringify(value, null, 2));
  return file;
}

describe('inspection', () => {
  it('blocks by a rule file read from disk, annotates by another rule, and lets the rest through', async () => {
    using dir = tempDir();
    const rules = writeJson(dir.path, 'rules.json', {
      rules: [
        { name: 'no-admin', when: { method: ['POST', 'put'], host: '*.example.com', path: '/admin/*' }, verdict: 'block', status: 403, reason: 'admin is off limits' },
        { name: 'tag-mobile', when: { header: { name: 'user-agent', matches: '^mobile/' } }, verdict: 'annotate', headers: { 'X-Inspected-By': 'acme-web', 'x-tier': 'mobile' } },
        { name: 'rest', verdict: 'allow' },
      ],
    });
    await using origin = await startMirrorOrigin();
    await using under = await startProxy([origin.port], { rules });
    const agent = createAgent({ registry: under.registry, keepAlive: true });
    try {
      const blocked = await request({ agent, port: origin.port, method: 'POST', path: '/admin/users?x=1', headers: { host: 'shop.example.com' }, body: 'name=x' });
      const notAdmin = await request({ agent, port: origin.port, method: 'POST', path: '/public', headers: { host: 'shop.example.com' }, body: 'name=x' });
      const otherHost = await request({ agent, port: origin.port, method: 'POST', path: '/admin/users', headers: { host: 'example.org' }, body: 'name=x' });
      const annotated = await request({ agent, port: origin.port, path: '/feed', headers: { 'user-agent': 'mobile/2.1', 'x-inspected-by': 'forged' } });

      expect([blocked.status, blocked.body.toString(), blocked.headers['content-type']]).toEqual([403, 'admin is off limits\n', 'text/plain; charset=utf-8']);
      expect(notAdmin.status).toBe(200);
      expect(otherHost.status).toBe(200);
      expect(annotated.status).toBe(200);
      const seen = mirrored(annotated.body);
      // The annotation replaces the client's own header of that name instead of adding a second one.
      expect(seen.headers).toMatchObject({ 'x-inspected-by': 'acme-web', 'x-tier': 'mobile', 'user-agent': 'mobile/2.1' });
      expect(mirrored(notAdmin.body).headers['x-inspected-by']).toBeUndefined();
      await until(() => under.exchanges.length === 4, 5000, 'four exchanges');
      expect(under.exchanges.map((x) => [x.request?.url, x.decision])).toEqual([
        ['/admin/users?x=1', { action: 'block', status: 403, reason: 'admin is off limits', by: ['rule:no-admin'] }],
        ['/public', { action: 'allow', by: ['rule:rest'] }],
        ['/admin/users', { action: 'allow', by: ['rule:rest'] }],
        ['/feed', { action: 'annotate', headers: { 'x-inspected-by': 'acme-web', 'x-tier': 'mobile' }, by: ['rule:tag-mobile'] }],
      ]);
      // Only the allowed and annotated requests reached the origin.
      expect(origin.connections).toHaveLength(1);
    } finally {
      agent.destroy();
    }
  });

  it('runs custom inspectors after the rules: a block ends evaluation, annotations accumulate, responses are seen', async () => {
    const responses: [string, number][] = [];
    const noTrackers: Inspector = {
      name: 'no-trackers',
      inspectRequest: (req) => (req.host?.endsWith('.tracker.example') === true ? { action: 'block', status: 451 } : undefined),
    };
    const tagger: Inspector = {
      name: 'tagger',
      inspectRequest: async (req: RequestInfo) => {
        await new Promise((resolve) => setImmediate(resolve));
        return { action: 'annotate', headers: { 'X-Seen-Path': req.path } };
      },
      inspectResponse: (req: RequestInfo, res: ResponseInfo) => void responses.push([req.url, res.status]),
    };
    await using origin = await startMirrorOrigin();
    await using under = await startProxy([origin.port], {
      rules: { rules: [{ name: 'tag-all', verdict: 'annotate', headers: { 'x-rule': 'yes' } }] },
      inspectors: [noTrackers, tagger],
    });
    const agent = createAgent({ registry: under.registry });
    try {
      const blocked = await request({ agent, port: origin.port, path: '/pixel.gif', headers: { host: 'ads.tracker.example:8080' } });
      const allowed = await request({ agent, port: origin.port, path: '/page?q=1', headers: { host: 'news.example' } });

      expect([blocked.status, blocked.body.toString()]).toEqual([451, '451 blocked by policy\n']);
      expect(allowed.status).toBe(200);
      expect(mirrored(allowed.body).headers).toMatchObject({ 'x-rule': 'yes', 'x-seen-path': '/page', host: 'news.example' });
      expect(responses).toEqual([['/page?q=1', 200]]);
      await until(() => under.exchanges.length === 2, 5000, 'two exchanges');
      expect(under.exchanges.map((x) => x.decision)).toEqual([
        { action: 'block', status: 451, reason: '451 blocked by policy', by: ['rule:tag-all', 'no-trackers'] },
        { action: 'annotate', headers: { 'x-rule': 'yes', 'x-seen-path': '/page' }, by: ['rule:tag-all', 'tagger'] },
      ]);
      expect(under.exchanges[0]?.request?.host).toBe('ads.tracker.example');
    } finally {
      agent.destroy();
    }
  });

  it('fails only the exchange whose inspector throws, with 502 and an COPROXY_HTTP_INSPECTOR_FAILED event', async () => {
    const moody: Inspector = {
      name: 'moody',
      inspectRequest: (req) => {
        if (req.path === '/throw') throw new Error('inspector bug');
        return undefined;
      },
    };
    await using origin = await startMirrorOrigin();
    await using under = await startProxy([origin.port], { inspectors: [moody] });
    const agent = createAgent({ registry: under.registry });
    try {
      const failed = await request({ agent, port: origin.port, path: '/throw' });
      const next = await request({ agent, port: origin.port, path: '/fine' });

      expect(failed.status).toBe(502);
      expect(failed.body.toString()).toContain('COPROXY_HTTP_INSPECTOR_FAILED');
      expect(next.status).toBe(200);
      expect(under.events).toContainEqual(expect.objectContaining({ type: 'exchange-failed', code: 'COPROXY_HTTP_INSPECTOR_FAILED', message: 'inspector bug', status: 502 }));
      await until(() => under.exchanges.length === 2, 5000, 'two exchanges');
      expect(under.exchanges[0]).toMatchObject({ request: { url: '/throw' }, response: { status: 502 }, error: { code: 'COPROXY_HTTP_INSPECTOR_FAILED' } });
    } finally {
      agent.destroy();
    }
  });
});

describe('rule file validation', () => {
  const malformed: [string, unknown, string[]][] = [
    ['an unknown verdict', { rules: [{ name: 'a', verdict: 'deny' }] }, ['rules[0].verdict: ']],
    ['a block status outside 400..599', { rules: [{ name: 'ok', verdict: 'allow' }, { name: 'a', verdict: 'block', status: 200 }] }, ['rules[1].status: ']],
    [
      'a header condition with two tests',
      { rules: [{ name: 'a', when: { header: { name: 'x-a', equals: 'a', contains: 'b' } }, verdict: 'allow' }] },
      ['rules[0].when.header: give exactly one of equals, contains, matches, present'],
    ],
    ['an invalid regular expression', { rules: [{ name: 'a', when: { header: { name: 'x-a', matches: '(' } }, verdict: 'allow' }] }, ['rules[0].when.header.matches: ']],
    [
      'an unknown field and a relative path at once',
      { rules: [{ name: 'a', when: { path: 'admin' }, verdict: 'allow', extra: 1 }] },
      ["rules[0].when.path: must start with '/'", 'rules[0]: Unrecognized key: "extra"'],
    ],
    ['an annotation without headers', { rules: [{ name: 'a', verdict: 'annotate', headers: {} }] }, ['rules[0].headers: add at least one header']],
    ['a file that is not JSON', '{ "rules": [ ', ['not JSON: ']],
  ];

  it.each(malformed)('refuses %s, naming where the problem is', (_what, content, expected) => {
    using dir = tempDir();
    const file = writeJson(dir.path, 'rules.json', content);

    let thrown: unknown;
    try {
      createHttpProxy({ id: uniqueId('rules'), priority: 1, registry: dir.path, rules: file });
    } catch (error) {
      thrown = error;
    }

    expect(thrown).toBeInstanceOf(RulesError);
    const error = thrown as RulesError;
    expect(error).toMatchObject({ code: 'COPROXY_HTTP_RULES_INVALID', source: file });
    expect(error.problems).toHaveLength(expected.length);
    expected.forEach((start, i) => expect(error.problems[i]).toMatch(new RegExp(`^${start.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`)));
    expect(error.message).toContain(file);
  });

  it('refuses a rule file that cannot be read', () => {
    using dir = tempDir();
    const missing = path.join(dir.path, 'missing.json');
    expect(() => createHttpProxy({ id: uniqueId('rules'), priority: 1, registry: dir.path, rules: missing })).toThrow(
      expect.objectContaining({ name: 'RulesError', source: missing, problems: [expect.stringMatching(/^cannot read: ENOENT/)] }) as Error,
    );
  });
});
