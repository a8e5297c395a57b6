'use strict';
// dubbo2.js consumer, connected directly (no registry) to 127.0.0.1:PORT.
//   node dubbo2js_consumer.js --port 20880
//   node dubbo2js_consumer.js --port 20880 --call 'IFACE|METHOD|ARG|k=v,k=v|' [--call ...]
// With --call, runs the calls in order over its one connection and prints
// `CALL <i> OK <json>` / `CALL <i> ERR <message>` / `CALL <i> SKIP <why>`, then `DONE`
// (`sleep|MS` pauses; greet sends User(ann, 41, 7, [ARG]); one-way is not supported by dubbo2.js).
const args = require('minimist')(process.argv.slice(2));
const port = Number(args.port || 20880);
const { DirectlyDubbo } = require('dubbo2.js');
const java = require('js-to-java');

// DirectlyDubbo offers no way to pass attachments; add ours to every call's context. Calls are
// awaited one by one, so the current call's extra attachments can live in a variable.
let callAttachments = {};
const addQueue = DirectlyDubbo.prototype.addQueue;
DirectlyDubbo.prototype.addQueue = function (ctx) {
  ctx.attachments = Object.assign({ 'x-caller': 'dubbo2.js' }, callAttachments);
  return addQueue.call(this, ctx);
};

const dubbo = DirectlyDubbo.from({ dubboAddress: `127.0.0.1:${port}`, dubboVersion: '2.0.2', dubboInvokeTimeout: 5 });
const svc = dubbo.proxyService({
  dubboInterface: 'org.meltemi.demo.EchoService',
  version: '1.0.0',
  group: 'demo',
  timeout: 3000,
  methods: {
    echo(m) { return [ java.String(m) ]; },
    greet(u) {
      return [ java.combine('org.meltemi.demo.User', {
        name: java.String(u.name), age: java.int(u.age), id: java.long(u.id),
        tags: java.List(u.tags.map(t => java.String(t))),
      }) ];
    },
    fail(r) { return [ java.String(r) ]; },
  },
});

// Messages on one line: dubbo2.js leaves the Hessian length byte in error messages.
const oneLine = s => String(s).replace(/[\x00-\x1f\x7f]+/g, ' ').trim();

async function script(calls) {
  const services = {};
  const service = iface => {
    services[iface] = services[iface] || dubbo.proxyService({
      dubboInterface: iface,
      version: '1.0.0',
      group: 'demo',
      timeout: 3000,
      methods: {
        echo(m) { return [ java.String(m) ]; },
        greet(t) {
          return [ java.combine('org.meltemi.demo.User', {
            name: java.String('ann'), age: java.int(41), id: java.long(7), tags: java.List([ java.String(t) ]),
          }) ];
        },
        fail(r) { return [ java.String(r) ]; },
        attachment(k) { return [ java.String(k) ]; },
        nosuch(m) { return [ java.String(m) ]; },
      },
    });
    return services[iface];
  };
  for (const [ i, spec ] of calls.entries()) {
    const [ iface, method, arg, att, mode ] = spec.split('|');
    if (iface === 'sleep') {
      await new Promise(r => setTimeout(r, Number(method)));
      continue;
    }
    if (mode === 'oneway') {
      console.log(`CALL ${i} SKIP one-way calls are not supported by dubbo2.js`);
      continue;
    }
    callAttachments = {};
    for (const kv of (att || '').split(',').filter(Boolean)) {
      const [ k, ...v ] = kv.split('=');
      callAttachments[k] = v.join('=');
    }
    const r = await service(iface)[method](arg);
    console.log(r.err ? `CALL ${i} ERR ${oneLine(r.err.message)}` : `CALL ${i} OK ${JSON.stringify(r.res)}`);
  }
  console.log('DONE');
  process.exit(0);
}

const calls = [].concat(args.call || []);
(calls.length ? script(calls) : (async () => {
  let failures = 0;
  const check = (name, ok, what) => { console.log(`dubbo2.js ${name} -> ${what}`); if (!ok) failures++; };
  const echo = await svc.echo('hello');
  check('echo', !echo.err && /:hello$/.test(echo.res), JSON.stringify(echo) + (echo.err ? ` err=${echo.err.name}: ${echo.err.message}` : ''));
  const greet = await svc.greet({ name: 'ann', age: 41, id: 7, tags: [ 'js' ] });
  check("greet", !greet.err && greet.res && /^ann@/.test(greet.res.name), JSON.stringify(greet));
  const fail = await svc.fail('boom');
  check('fail', !!fail.err, `err=${fail.err && fail.err.message}`);
  console.log(failures === 0 ? 'dubbo2.js: all calls OK' : `dubbo2.js: ${failures} failures`);
  process.exit(failures === 0 ? 0 : 1);
})()).catch(e => { console.error('dubbo2.js consumer crashed:', e); process.exit(1); });
