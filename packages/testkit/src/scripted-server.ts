/**
 * scripted-server: a next hop that answers what a test tells it to, at the stage it says, as slowly as
 * it says, and records what it was sent (commands, whether a final dot arrived). For testing how a
 * Moat hop handles a refusing, failing or slow next hop, which the real one cannot be made to do.
 */
import net from 'node:net';

export type Stage = 'greeting' | 'ehlo' | 'xforward' | 'mail' | 'rcpt' | 'data' | 'final' | 'rset';

export interface Script {
  /** Reply per stage (without CRLF). Defaults: 220/250/250/250/250/354/250/250. */
  replies?: Partial<Record<Stage, string>>;
  /** Reply to RCPT per address (as written between the brackets), before `replies.rcpt`. */
  rcptReplies?: Record<string, string>;
  /** Delay before replying at a stage, in ms. */
  delays?: Partial<Record<Stage, number>>;
  extensions?: string[];
}

export interface Session {
  commands: string[];
  /** Bodies whose final dot arrived. */
  messages: string[];
  /** True when the connection closed in the middle of a DATA. */
  abortedInData: boolean;
}

const DEFAULTS: Record<Stage, string> = {
  greeting: '220 next.test ESMTP scripted',
  ehlo: '250 next.test',
  xforward: '250 2.0.0 Ok',
  mail: '250 2.1.0 Ok',
  rcpt: '250 2.1.5 Ok',
  data: '354 End data with <CR><LF>.<CR><LF>',
  final: '250 2.0.0 Ok: queued as SCRIPTED',
  rset: '250 2.0.0 Ok',
};

export class ScriptedServer {
  readonly sessions: Session[] = [];
  readonly #sockets = new Set<net.Socket>();
  private constructor(
    readonly server: net.Server,
    readonly port: number,
    public script: Script,
  ) {}

  get commands(): string[] {
    return this.sessions.flatMap((s) => s.commands);
  }

  get messages(): string[] {
    return this.sessions.flatMap((s) => s.messages);
  }

  static async start(script: Script = {}): Promise<ScriptedServer> {
    const holder: { self?: ScriptedServer } = {};
    const server = net.createServer((socket) => holder.self!.handle(socket));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    holder.self = new ScriptedServer(server, (server.address() as net.AddressInfo).port, script);
    return holder.self;
  }

  private reply(socket: net.Socket, stage: Stage, line = ''): Promise<void> {
    const rcpt = stage === 'rcpt' ? /<([^>]*)>/.exec(line)?.[1] : undefined;
    const text =
      (rcpt !== undefined ? this.script.rcptReplies?.[rcpt] : undefined) ??
      this.script.replies?.[stage] ??
      DEFAULTS[stage];
    const delay = this.script.delays?.[stage] ?? 0;
    return new Promise((resolve) =>
      setTimeout(() => {
        if (!socket.destroyed) socket.write(text + '\r\n');
        resolve();
      }, delay),
    );
  }

  private handle(socket: net.Socket): void {
    const session: Session = { commands: [], messages: [], abortedInData: false };
    this.sessions.push(session);
    let buffer = Buffer.alloc(0);
    let inData = false;
    let queue = Promise.resolve();
    this.#sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.#sockets.delete(socket);
      if (inData) session.abortedInData = true;
    });
    queue = queue.then(() => this.reply(socket, 'greeting'));
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        if (inData) {
          const end = buffer.indexOf('\r\n.\r\n');
          const atStart = buffer.subarray(0, 3).toString() === '.\r\n';
          if (end === -1 && !atStart) return;
          const cut = atStart ? 0 : end + 2;
          session.messages.push(buffer.subarray(0, cut).toString('latin1'));
          buffer = buffer.subarray(cut + 3);
          inData = false;
          queue = queue.then(() => this.reply(socket, 'final'));
          continue;
        }
        const nl = buffer.indexOf('\n');
        if (nl === -1) return;
        const line = buffer.subarray(0, nl).toString('latin1').replace(/\r$/, '');
        buffer = buffer.subarray(nl + 1);
        session.commands.push(line);
        const verb = line.split(/[ :]/)[0]!.toUpperCase();
        const stage: Stage | 'quit' | undefined =
          verb === 'EHLO' || verb === 'HELO'
            ? 'ehlo'
            : verb === 'XFORWARD'
              ? 'xforward'
              : verb === 'MAIL'
                ? 'mail'
                : verb === 'RCPT'
                  ? 'rcpt'
                  : verb === 'DATA'
                    ? 'data'
                    : verb === 'RSET'
                      ? 'rset'
                      : verb === 'QUIT'
                        ? 'quit'
                        : undefined;
        if (stage === 'quit') {
          queue = queue.then(() => void socket.end('221 2.0.0 Bye\r\n'));
        } else if (stage === 'ehlo' && !this.script.replies?.ehlo) {
          const ext = this.script.extensions ?? [
            'PIPELINING',
            '8BITMIME',
            'SMTPUTF8',
            'XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE',
          ];
          queue = queue.then(
            () =>
              void socket.write(
                [
                  '250-next.test',
                  ...ext.slice(0, -1).map((e) => `250-${e}`),
                  `250 ${ext[ext.length - 1]}`,
                ].join('\r\n') + '\r\n',
              ),
          );
        } else if (stage) {
          if (stage === 'data') {
            const r = this.script.replies?.data ?? DEFAULTS.data;
            if (r.startsWith('354')) inData = true;
          }
          queue = queue.then(() => this.reply(socket, stage, line));
        } else {
          queue = queue.then(() => void socket.write('502 5.5.2 Error: command not recognized\r\n'));
        }
      }
    });
  }

  /** Closes every open connection from this side, as a next hop that restarts does. */
  dropConnections(): void {
    for (const s of this.#sockets) s.destroy();
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }
}
