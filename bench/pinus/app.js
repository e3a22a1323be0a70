// pinus peer of the Rookery benchmark suite: one connector (hybridconnector: the pomelo packet
// protocol over raw TCP, JSON bodies, no route dictionary, no protobuf) and one room backend.
// Routes match the Rookery demo: connector.entry.login, room.room.echo, room.room.join,
// room.room.say (pushes onMessage to the room's channel).
// Started by bench/run.sh from a scratch copy with node_modules installed next to it:
//   node app.js env=production
require('reflect-metadata');
const { pinus } = require('pinus');

process.on('uncaughtException', (err) => console.error('uncaughtException', err));
process.on('unhandledRejection', (err) => console.error('unhandledRejection', err));

const app = pinus.createApp();
app.set('name', 'rookery-bench-pinus');

app.configure('production|development', 'connector', () => {
  app.set('connectorConfig', {
    connector: pinus.connectors.hybridconnector,
    heartbeat: 30,
    useDict: false,
    useProtobuf: false,
    // Listen on clientHost (127.0.0.1) only, not on every interface.
    distinctHost: true,
  });
});

app.start();
