// room.room.*: the Rookery demo's room handler, on a pinus backend server.
//   echo: answers its argument (the request-path benchmark, P3).
//   join {"room"}: adds the session's uid to the channel of the room; answers {room, members}.
//   say {"room","text"}: pushes onMessage {room, from, text} to every member (P8).
// Unlike the Rookery demo, join does not push onJoin to the others (setup cost only).
class Room {
  constructor(app) {
    this.app = app;
    this.channels = app.get('channelService');
  }

  async echo(msg, session) {
    return msg;
  }

  async join(msg, session) {
    const room = String(msg.room || '');
    const channel = this.channels.getChannel(room, true);
    if (!channel.getMember(session.uid)) {
      channel.add(session.uid, session.frontendId);
    }
    return { room, members: channel.getMembers().length };
  }

  async say(msg, session) {
    const room = String(msg.room || '');
    const channel = this.channels.getChannel(room, false);
    if (!channel) {
      return { code: 'RK-400', msg: 'not in room' };
    }
    channel.pushMessage('onMessage', { room, from: session.uid, text: msg.text });
    return {};
  }
}

exports.default = function (app) {
  return new Room(app);
};
