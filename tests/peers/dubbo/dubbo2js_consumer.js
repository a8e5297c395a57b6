'use strict';
// dubbo2.js consumer, connected directly (no registry) to 127.0.0.1:PORT.
//   node dubbo2js_consumer.js --port 20880
const args = require('minimist')(process.argv.slice(2));
const port = Number(args.port || 20880);
const { DirectlyDubbo } = require('dubbo2.js');
const java = require('js-to-java');

// DirectlyDubbo offers no way to pass attachments; add ours to every call's context.
const addQueue = DirectlyDubbo.prototype.addQueue;
DirectlyDubbo.prototype.addQueue = function (ctx) {
  ctx.attachments = { 'x-caller': 'dubbo2.js' };
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

(async () => {
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
})().catch(e => { console.error('dubbo2.js consumer crashed:', e); process.exit(1); });
