import { describe, expect, it } from 'vitest';
import { startProxy } from './test-support/harness.js';
import { h2Client, startH2cOrigin } from './test-support/h2.js';

/**
 * Adversarial: HTTP/2's `:method` is any token (HTTP/1.1's parser knows a fixed list), and
 * every distinct label value is a time series prom-client keeps for the life of the
 * process: a client minting methods grows the vendor's memory and every scrape without bound.
 */
describe('h2c metrics', () => {
  it('counts methods outside the standard list under one label, not one series each', async () => {
    await using origin = await startH2cOrigin();
    await using under = await startProxy([origin.port]);
    await using client = await h2Client(under.registry, origin.port);
    for (let i = 0; i < 20; i++) await client.request({ ':method': `MINTED${i}`, ':path': '/' });
    await client.request({ ':path': '/' });

    const metrics = await under.proxy.metrics.registry.metrics();
    expect(metrics).not.toMatch(/coproxy_http_requests_total\{method="MINTED/);
    expect(metrics).toMatch(/coproxy_http_requests_total\{method="other"\} 20/);
    expect(metrics).toMatch(/coproxy_http_requests_total\{method="GET"\} 1/);
  });
});
