// The proxy in its own OS process, so a test can watch its memory alone: options as JSON
// in argv[2]; reports { ready: port } over IPC once listening, and answers 'rss' with
// { rss } (bytes). Runs the built package.
import { createHttpProxy } from '../../dist/index.js';

const proxy = createHttpProxy(JSON.parse(process.argv[2]));
const listening = await proxy.listening();
process.on('message', (message) => {
  if (message === 'rss') process.send({ rss: process.memoryUsage().rss });
});
const stop = () => void proxy.close().then(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('disconnect', stop);
process.send({ ready: listening.port });
