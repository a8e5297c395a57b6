'use strict';
// EchoService provider on sofa-rpc-node + dubbo-remoting, bound to 127.0.0.1 only.
//   node sofa_provider.js --port 20880 --tag v1
const net = require('net');
const { RpcServer } = require('sofa-rpc-node').server;
const protocol = require('dubbo-remoting');

const args = require('minimist')(process.argv.slice(2));
const port = Number(args.port || 20880);
const tag = String(args.tag || 'v1');

// RpcServer#_startServer listens on every interface; this copy binds loopback only.
class LoopbackServer extends RpcServer {
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

server.addService({ interfaceName: 'org.meltemi.demo.EchoService', version: '1.0.0', group: 'demo' }, {
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
});

server.start().then(() => {
  console.log(`sofa provider ${tag} listening on 127.0.0.1:${port}`);
});
process.on('SIGTERM', () => process.exit(0));
