/* global process, console */
// A receiver in its own process for handover.test.ts (the built package: a forked child runs plain
// JavaScript): greets each handed-over client with its pid, then echoes what the client says.
import { HandoverReceiver } from '../../dist/index.js';

const r = HandoverReceiver.listen(
  process.argv[2],
  ({ socket }) => {
    socket.write(`220 pid ${process.pid}\r\n`);
    socket.pipe(socket);
  },
  (why) => console.error(why),
);
process.send?.('ready');
process.on('disconnect', () => {
  r.close();
  process.exit(0);
});
