// connector.entry.login {"uid"}: binds the session to the uid (as the Rookery demo's login).
class Entry {
  constructor(app) {
    this.app = app;
  }

  async login(msg, session) {
    const uid = String((msg && msg.uid) || '');
    if (!uid) {
      return { code: 'RK-400', msg: 'uid required' };
    }
    await session.abind(uid);
    return { uid };
  }
}

exports.default = function (app) {
  return new Entry(app);
};
