'use strict';
// sofa-rpc-node consumer speaking dubbo (dubbo-remoting), connected directly to 127.0.0.1:PORT.
//   node sofa_consumer.js --port 20880
//   node sofa_consumer.js --port 20880 --call 'IFACE|METHOD|ARG|k=v,k=v|' [--call ...]
// With --call, runs the calls in order over its one connection and prints
// `CALL <i> OK <json>` / `CALL <i> ERR <message>` / `CALL <i> SKIP <why>`, then `DONE`
// (`sleep|MS` pauses; greet sends User(ann, 41, 7, [ARG]); sofa-rpc-node has no one-way dubbo calls).
const args = require('minimist')(process.argv.slice(2));
const port = Number(args.port || 20880);
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('dubbo-remoting');

const quiet = { info() {}, warn() {}, debug() {}, error() {} };
const oneLine = s => String(s).replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
const str = s => ({ $class: 'java.lang.String', $: s });

async function script(calls) {
  // One RpcClient: its connection manager keeps one connection per address for all consumers.
  const client = new RpcClient({ logger: quiet, protocol });
  const consumers = {};
  const consumer = async iface => {
    if (!consumers[iface]) {
      consumers[iface] = client.createConsumer({
        interfaceName: iface, version: '1.0.0', group: 'demo', serverHost: `127.0.0.1:${port}`, responseTimeout: 5000,
      });
      await consumers[iface].ready();
    }
    return consumers[iface];
  };
  for (const [ i, spec ] of calls.entries()) {
    const [ iface, method, arg, att, mode ] = spec.split('|');
    if (iface === 'sleep') {
      await new Promise(r => setTimeout(r, Number(method)));
      continue;
    }
    if (mode === 'oneway') {
      console.log(`CALL ${i} SKIP one-way calls are not supported by sofa-rpc-node's dubbo client`);
      continue;
    }
    const requestProps = { 'x-caller': 'sofa-rpc-node' };
    for (const kv of (att || '').split(',').filter(Boolean)) {
      const [ k, ...v ] = kv.split('=');
      requestProps[k] = v.join('=');
    }
    const argument = method === 'greet' ? {
      $class: 'org.meltemi.demo.User',
      $: {
        name: str('ann'), age: { $class: 'int', $: 41 }, id: { $class: 'long', $: 7 },
        tags: { $class: 'java.util.List', $: [ str(arg) ] },
      },
    } : str(arg);
    try {
      const c = await consumer(iface);
      const r = await c.invoke(method, [ argument ], { requestProps });
      console.log(`CALL ${i} OK ${JSON.stringify(r)}`);
    } catch (e) {
      console.log(`CALL ${i} ERR ${e.name}: ${oneLine(e.message)}`);
    }
  }
  console.log('DONE');
  await client.close();
  process.exit(0);
}

const calls = [].concat(args.call || []);
(calls.length ? script(calls) : (async () => {
  const client = new RpcClient({ logger: quiet, protocol });
  const consumer = client.createConsumer({
    interfaceName: 'org.meltemi.demo.EchoService',
    version: '1.0.0',
    group: 'demo',
    serverHost: `127.0.0.1:${port}`,
    responseTimeout: 5000,
  });
  await consumer.ready();
  let failures = 0;
  const check = (name, ok, what) => { console.log(`sofa-rpc-node ${name} -> ${what}`); if (!ok) failures++; };
  const opts = { requestProps: { 'x-caller': 'sofa-rpc-node' } };
  try {
    const echo = await consumer.invoke('echo', [{ $class: 'java.lang.String', $: 'hello' }], opts);
    check('echo', /:hello$/.test(echo), JSON.stringify(echo));
  } catch (e) {
    check('echo', false, `error ${e.name}: ${e.message.split('\n')[0]}`);
  }
  const user = {
    $class: 'org.meltemi.demo.User',
    $: {
      name: { $class: 'java.lang.String', $: 'ann' },
      age: { $class: 'int', $: 41 },
      id: { $class: 'long', $: 7 },
      tags: { $class: 'java.util.List', $: [{ $class: 'java.lang.String', $: 'sofa' }] },
    },
  };
  try {
    const greet = await consumer.invoke('greet', [ user ], opts);
    check('greet', greet && /^ann@/.test(greet.name), JSON.stringify(greet));
  } catch (e) {
    check('greet', false, `error ${e.name}: ${e.message.split('\n')[0]}`);
  }
  try {
    const r = await consumer.invoke('fail', [{ $class: 'java.lang.String', $: 'boom' }], opts);
    check('fail', false, `no error, got ${JSON.stringify(r)}`);
  } catch (e) {
    check('fail', true, `error ${e.name}: ${e.message.split('\n')[0]}`);
  }
  console.log(failures === 0 ? 'sofa-rpc-node: all calls OK' : `sofa-rpc-node: ${failures} failures`);
  await client.close();
  process.exit(failures === 0 ? 0 : 1);
})()).catch(e => { console.error('sofa-rpc-node consumer crashed:', e); process.exit(1); });
