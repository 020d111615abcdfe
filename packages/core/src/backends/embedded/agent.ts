import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { connect } from './connect.js';

export interface CoproxyAgentOptions extends http.AgentOptions {
  /** The embedded registry to classify against. */
  readonly registry?: string;
}

type Callback = NonNullable<Parameters<http.Agent['createConnection']>[1]>;
type Duplex = Parameters<Callback>[1];

function connectFor(options: http.ClientRequestArgs, registry: string | undefined): Promise<net.Socket> {
  const host = options.host ?? options.hostname ?? 'localhost';
  const port = Number(options.port ?? options.defaultPort ?? 80);
  return connect({
    host,
    port,
    ...(options.family === 4 || options.family === 6 ? { family: options.family } : {}),
    ...(options.localAddress != null && { localAddress: options.localAddress }),
    ...(registry !== undefined && { registry }),
  });
}

/**
 * An `http.Agent` whose connections go through {@link connect}, so any Node HTTP client
 * (`http.request`, `fetch` via undici is not covered) is redirected like a raw socket.
 *
 * @example
 * ```ts
 * http.get({ host: '127.0.0.1', port: 8080, agent: createAgent() }, (res) => res.pipe(process.stdout));
 * ```
 */
export function createAgent(options: CoproxyAgentOptions = {}): http.Agent {
  const { registry, ...agentOptions } = options;
  const agent = new http.Agent(agentOptions);
  // Node's Agent accepts a socket delivered later through the callback.
  agent.createConnection = (requestOptions: http.ClientRequestArgs, callback?: Callback) => {
    connectFor(requestOptions, registry).then(
      (socket) => callback?.(null, socket),
      (error: Error) => callback?.(error, undefined as unknown as Duplex),
    );
    return undefined;
  };
  return agent;
}

export interface CoproxyHttpsAgentOptions extends https.AgentOptions {
  readonly registry?: string;
}

/** The HTTPS counterpart of {@link createAgent}: TLS runs over the redirected connection. */
export function createHttpsAgent(options: CoproxyHttpsAgentOptions = {}): https.Agent {
  const { registry, ...agentOptions } = options;
  const agent = new https.Agent(agentOptions);
  agent.createConnection = (requestOptions: http.ClientRequestArgs & tls.ConnectionOptions, callback?: Callback) => {
    connectFor(requestOptions, registry).then((socket) => {
      const host = requestOptions.host ?? requestOptions.hostname ?? undefined;
      const servername = requestOptions.servername ?? (host !== undefined && net.isIP(host) === 0 ? host : undefined);
      const secure = tls.connect({
        ...agentOptions,
        ...requestOptions,
        socket,
        ...(servername !== undefined && { servername }),
      } as tls.ConnectionOptions);
      callback?.(null, secure);
    }, (error: Error) => callback?.(error, undefined as unknown as Duplex));
    return undefined;
  };
  return agent;
}
