import { type ConformanceReport, verdictLine } from './conformance.js';
import type { FlowResult, Report } from './scenario.js';

/** The terminal summary: the vendors, one line per flow kind, the verdict, and the problems. */
export function summary(report: Report): string {
  const lines: string[] = [];
  lines.push(`backend ${report.backend}, seed ${report.seed}, ${report.flows.length} flows in ${(report.durationMs / 1000).toFixed(1)} s`);
  lines.push('');
  lines.push(table([
    ['VENDOR', 'PRIORITY', 'RECORDS', 'ACCEPTED'],
    ...[...report.vendors]
      .sort((a, b) => a.priority - b.priority)
      .map((v) => [v.id, String(v.priority), v.dropsRecords ? 'dropped' : 'propagated', String(report.flows.reduce((n, f) => n + f.hops.filter((h) => h.vendor === v.id).length, 0))]),
  ]));
  lines.push('');
  // The UDP row only when the run had UDP flows (--udp).
  const kinds = report.flows.some((f) => f.kind === 'udp') ? (['http', 'https', 'tcp', 'udp'] as const) : (['http', 'https', 'tcp'] as const);
  lines.push(table([
    ['KIND', 'FLOWS', 'OK', 'EACH VENDOR ONCE', 'BYTES INTACT', 'LOOPED'],
    ...kinds.map((kind) => {
      const flows = report.flows.filter((f) => f.kind === kind);
      return [
        kind,
        String(flows.length),
        String(flows.filter((f) => f.client?.ok === true).length),
        String(flows.filter((f) => !f.looped && f.problems.every((p) => !p.includes('accepted it'))).length),
        String(flows.filter((f) => f.client?.ok === true && f.origin?.received === f.client.sent && f.origin.sent === f.client.received).length),
        String(flows.filter((f) => f.looped).length),
      ];
    }),
  ]));
  lines.push('');
  if (report.exitCode === 0) {
    lines.push(`OK: every flow was accepted once by each of ${report.vendors.length} vendors, in priority order, and arrived intact.`);
  } else if (report.exitCode === 3) {
    const looped = report.flows.filter((f) => f.looped);
    const first = looped[0];
    lines.push(`LOOP: ${looped.length} of ${report.flows.length} flows were accepted again by a vendor that had already inspected them.`);
    if (first !== undefined) lines.push(`  e.g. flow ${first.index} (${first.kind}): ${first.hops.map((h) => `${h.vendor}[${h.state}]`).join(' → ')} → origin`);
  } else {
    lines.push('FAILED: some flows broke the invariants:');
  }
  for (const note of report.notes) lines.push(`  note: ${note}`);
  for (const flow of report.flows.filter((f) => f.problems.length > 0 && !f.looped).slice(0, 10)) {
    lines.push(`  flow ${flow.index} (${flow.kind}, port ${flow.port}): ${flow.problems.join('; ')}`);
  }
  return lines.join('\n');
}

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

const STYLE = `<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } .ok { color: #176b2c; } .loop { color: #a15c00; } .failed { color: #b00020; }
pre { background: #f5f5f5; padding: 1em; overflow-x: auto; }
.flow { display: flex; align-items: center; gap: .4em; margin: .3em 0; flex-wrap: wrap; }
.node { border: 1px solid #888; border-radius: 6px; padding: .2em .6em; background: #fff; }
.node small { display: block; color: #666; font-size: .75em; }
.client { background: #e8f0fe; } .origin { background: #e6f4ea; } .again { background: #fde7e9; border-color: #b00020; }
.arrow { color: #888; } .label { width: 11em; font-family: monospace; } .bad { color: #b00020; font-size: .85em; }
.pass { color: #176b2c; } .fail { color: #b00020; } section { margin: 1.5em 0; }
</style>`;

const escape = (text: string): string => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** A self-contained page: the summary, then per flow a hop diagram (client → vendors → origin, with the state each saw). */
export function html(report: Report): string {
  const verdict = report.exitCode === 0 ? 'ok' : report.exitCode === 3 ? 'loop' : 'failed';
  const flowRows = report.flows.map((flow) => flowDiagram(flow)).join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>coproxy testbed: ${escape(verdict)}</title>
${STYLE}</head><body>
<h1 class="${verdict}">coproxy testbed: ${escape(verdict.toUpperCase())}</h1>
<pre>${escape(summary(report))}</pre>
<h2>Flows</h2>
${flowRows}
</body></html>
`;
}

/** One flow as a row: client → each vendor (with the state it saw; a second visit marked) → origin. */
export function flowDiagram(flow: FlowResult): string {
  const seen = new Set<string>();
  const hops = flow.hops
    .map((hop) => {
      const again = seen.has(hop.vendor);
      seen.add(hop.vendor);
      return `<span class="arrow">→</span><span class="node${again ? ' again' : ''}">${escape(hop.vendor)}<small>${escape(hop.state)}${again ? ' (again)' : ''}</small></span>`;
    })
    .join('');
  const intact = flow.client?.ok === true && flow.origin?.received === flow.client.sent && flow.origin.sent === flow.client.received;
  return `<div class="flow"><span class="label">#${flow.index} ${escape(flow.kind)}${flow.viaCurl ? ' (curl)' : ''}${flow.phase === undefined ? '' : ` ${escape(flow.phase)}`}</span><span class="node client">client</span>${hops}<span class="arrow">→</span><span class="node origin">origin<small>${intact ? 'bytes intact' : 'bytes differ'}</small></span>${
    flow.problems.length > 0 ? `<span class="bad">${escape(flow.problems.join('; '))}</span>` : ''
  }</div>`;
}

/** The conformance page: the verdict lines, then per check its description and, when it failed, the hop diagram of each failing flow. */
export function conformanceHtml(report: ConformanceReport): string {
  const verdict = report.passed ? 'pass' : 'fail';
  const sections = report.checks
    .map((check) => {
      const failing = check.passed ? [] : (check.report?.flows ?? []).filter((f) => f.problems.length > 0 || f.index === check.flow);
      return `<section><h2 class="${check.passed ? 'pass' : 'fail'}">${check.passed ? 'PASS' : 'FAIL'} ${escape(check.name)}</h2>
<p>${escape(check.description)}</p><p>${escape(check.reason)}</p>
${failing.map((flow) => flowDiagram(flow)).join('\n')}${check.report !== undefined && check.report.notes.length > 0 ? `<pre>${escape(check.report.notes.join('\n'))}</pre>` : ''}</section>`;
    })
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>coproxy conformance ${report.version}: ${verdict.toUpperCase()}</title>
${STYLE}</head><body>
<h1 class="${verdict}">coproxy conformance ${report.version}: ${verdict.toUpperCase()}</h1>
<p>candidate <code>${escape(report.candidate)}</code> on ${escape(report.backend)}, seed ${report.seed}, ${(report.durationMs / 1000).toFixed(1)} s</p>
<pre>${escape(report.checks.map(verdictLine).join('\n'))}</pre>
${sections}
</body></html>
`;
}
