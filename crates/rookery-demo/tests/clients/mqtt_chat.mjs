// The demo chat flow through MQTT.js, a client nobody here wrote. Run by mqtt.rs:
//   node mqtt_chat.mjs URL      (mqtt://HOST:PORT or ws://HOST:PORT/mqtt)
// Prints one line per step it checked; any mismatch throws (exit code 1).
import assert from 'node:assert/strict';
import mqtt from 'mqtt';

const url = process.argv[2];
const WAIT = 5000;

function connect(clientId, extra = {}) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { clientId, protocolVersion: 4, reconnectPeriod: 0, ...extra });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
}

// The next message on `topic` (a response or a push), within WAIT.
function next(c, topic) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nothing on ${topic}`)), WAIT);
    const on = (t, payload, packet) => {
      if (t !== topic) return;
      clearTimeout(timer);
      c.removeListener('message', on);
      resolve({ body: JSON.parse(payload.toString() || 'null'), qos: packet.qos });
    };
    c.on('message', on);
  });
}

async function request(c, topic, body, qos = 0) {
  const answer = next(c, topic);
  c.publish(topic, JSON.stringify(body), { qos });
  return (await answer).body;
}

const alice = await connect('alice-js');
assert.deepEqual(await request(alice, 'connector/entry/login/1', { uid: 'alice' }), { uid: 'alice' });
const bob = await connect('bob-js');
// A QoS 1 request: PUBACK, then the answer.
assert.deepEqual(await request(bob, 'connector/entry/login/2', { uid: 'bob' }, 1), { uid: 'bob' });
console.log('ok login');

await alice.subscribeAsync(['onJoin', 'onMessage'], { qos: 1 });
assert.deepEqual(await request(alice, 'room/room/join/3', { room: 'lobby' }), { room: 'lobby', members: ['alice'] });
const joined = next(alice, 'onJoin');
assert.deepEqual(await request(bob, 'room/room/join/4', { room: 'lobby' }), { room: 'lobby', members: ['alice', 'bob'] });
const j = await joined;
assert.deepEqual(j.body, { room: 'lobby', uid: 'bob' });
assert.equal(j.qos, 1, 'subscribed with QoS 1');
console.log('ok join');

const said = next(alice, 'onMessage');
const bobHears = next(bob, 'onMessage');
await request(bob, 'room/room/say/5', { room: 'lobby', text: 'hi' });
const m = await said;
assert.deepEqual(m.body, { room: 'lobby', from: 'bob', text: 'hi' });
assert.equal(m.qos, 1);
assert.equal((await bobHears).qos, 0, 'without a subscription, pushes are QoS 0');
console.log('ok say');

const err = await request(bob, 'room/room/nope/6', {});
assert.equal(err.code, 'RK-404');
console.log('ok unknown route');

// mqant's topic form and envelope ([mqtt.mqant] modules: Login = "connector.entry").
const carol = await connect('carol-js');
const env = await request(carol, 'Login/HD_login/7', { uid: 'carol' });
assert.deepEqual(env, { Trace: '', Error: '', Result: { uid: 'carol' } });
const envErr = await request(carol, 'Nope/HD_x/8', {});
assert.equal(envErr.Result, null);
assert.match(envErr.Error, /RK-404/);
console.log('ok mqant');

// Duplicate login: the older session hears why, then is closed.
const closed = new Promise((resolve) => alice.once('close', resolve));
const kicked = next(alice, 'sys/kick');
const alice2 = await connect('alice-js-2');
await request(alice2, 'connector/entry/login/9', { uid: 'alice' });
assert.deepEqual((await kicked).body, { reason: 'duplicate login' });
await closed;
console.log('ok duplicate login');

for (const c of [bob, carol, alice2]) await c.endAsync();
console.log('done');
