'use strict';
// EchoService provider on sofa-rpc-node + dubbo-remoting, bound to 127.0.0.1 only.
//   node sofa_provider.js --port 20880 --tag v1
// The same implementation is also exported as org.meltemi.demo.OtherService (routing by
// interface). Every request and heartbeat is logged to stdout, so tests can tell which
// provider served a call and that heartbeats answered by a proxy never arrived here.
const net = require('net');
const { RpcServer } = require('sofa-rpc-node').server;
const protocol = require('dubbo-remoting');
const RpcConnection = require('sofa-rpc-node/lib/server/connection');

const args = require('minimist')(process.argv.slice(2));
const port = Number(args.port || 20880);
const tag = String(args.tag || 'v1');
const slowMs = Number(args['slow-ms'] || 50);

// Log every heartbeat before dubbo-remoting answers it.
const handleHeartbeat = RpcConnection.prototype._handleHeartbeat;
RpcConnection.prototype._handleHeartbeat = function (hb) {
  console.log(`provider ${tag} <- heartbeat id=${hb && hb.packetId}`);
  return handleHeartbeat.call(this, hb);
};

// RpcServer#_startServer listens on every interface; this copy binds loopback only.
class LoopbackServer extends RpcServer {
  // The handlers' `this`: gives `attachment()` the request's attachments (requestProps).
  createContext(req) {
    return { req };
  }

  _startServer(p) {
    const server = net.createServer();
    server.once('error', err => { this.emit('error', err); });
    server.on('connection', socket => { this._handleSocket(socket); });
    server.listen(p, '127.0.0.1', () => {
      this.logger.info('[RpcServer] server start on 127.0.0.1:%s', server.address().port);
    });
    return server;
  }
}

const quiet = { info() {}, warn() {}, debug() {}, error(e) { console.error('provider error:', e && e.message); } };
const server = new LoopbackServer({ logger: quiet, port, protocol, publishAddress: '127.0.0.1' });

const impl = {
  async echo(message) {
    return `${tag}:${message}`;
  },
  async greet(user) {
    const u = user || {};
    return {
      $class: 'org.meltemi.demo.User',
      $: {
        name: { $class: 'java.lang.String', $: `${u.name}@${tag}` },
        age: { $class: 'int', $: (u.age || 0) + 1 },
        id: { $class: 'long', $: Number(u.id || 0) },
        tags: { $class: 'java.util.List', $: [ ...(u.tags || []), tag ].map(t => ({ $class: 'java.lang.String', $: t })) },
      },
    };
  },
  // echo after a delay (`--slow-ms`, default 50): concurrency through a proxy shows as calls
  // finishing together instead of one after another.
  async slow(message) {
    await new Promise(resolve => setTimeout(resolve, slowMs));
    return `${tag}:${message}`;
  },
  async fail(reason) {
    const err = new Error(`declared failure from ${tag}: ${reason}`);
    err.name = 'DemoException';
    err.ignoreLog = true;
    throw err;
  },
  async notify(event) {
    console.log(`provider ${tag} notify(${event})`);
    return null;
  },
  // Returns "<tag>:<key>=<value of attachment key>" (shows attachments a proxy added).
  async attachment(key) {
    const props = (this && this.req && this.req.data && this.req.data.requestProps) || {};
    return `${tag}:${key}=${props[key] === undefined ? '<none>' : props[key]}`;
  },
};
for (const interfaceName of [ 'org.meltemi.demo.EchoService', 'org.meltemi.demo.OtherService' ]) {
  server.addService({ interfaceName, version: '1.0.0', group: 'demo' }, impl);
}
server.on('request', ({ req }) => {
  const d = req.data || {};
  console.log(`provider ${tag} <- ${d.interfaceName}#${d.methodName} id=${req.packetId}`);
});

server.start().then(() => {
  console.log(`sofa provider ${tag} listening on 127.0.0.1:${port}`);
});
process.on('SIGTERM', () => process.exit(0));
