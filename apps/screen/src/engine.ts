/**
 * engine: the enforce action's minimal SMTP engine (postscreen_smtpd.c). A client that failed a test
 * whose action is `enforce` talks to it instead of greylist: it answers EHLO/HELO/MAIL/RSET/NOOP/QUIT,
 * rejects every RCPT with the failed test's 550 reply and logs the envelope
 * (`NOQUEUE: reject: RCPT from [ip]:port: 550 ...; from=<...>, to=<...>, proto=ESMTP, helo=<...>`), never
 * accepts mail (DATA gets 554/503), never announces PIPELINING, and closes after commandCountLimit
 * commands (421 4.7.0) or when one command line takes longer than commandTimeLimit (421 4.4.2; a
 * deadline, not reset by partial input). Lines over 2048 bytes close the session (521).
 *
 * Exports Engine (the protocol, pure: a line in, replies and log lines out; unit-tested) and
 * runEngine (drives it on a socket with one deadline timer).
 */
import type net from 'node:net';
import type { Logger } from '@moat/log';
import { logText, replies } from './replies.js';

export const LINE_LIMIT = 2048;

export interface EngineOptions {
  hostname: string;
  /** `[ip]:port` of the client, for log lines. */
  who: string;
  /** The 550 reply every RCPT gets. */
  rcptReply: string;
  commandCountLimit: number;
  /** Envelope already seen on a spliced session that the engine takes over (deep tests). */
  helo?: string;
  from?: string;
  proto?: 'SMTP' | 'ESMTP';
}

export interface EngineLog {
  msg: string;
  fields: Record<string, unknown>;
}

export interface EngineStep {
  replies: string[];
  close: boolean;
  logs: EngineLog[];
}

export class Engine {
  helo: string;
  from: string | undefined;
  proto: 'SMTP' | 'ESMTP';
  rcpts = 0;
  count = 0;
  last = 'CONNECT';

  constructor(readonly o: EngineOptions) {
    this.helo = o.helo ?? '';
    this.from = o.from;
    this.proto = o.proto ?? 'SMTP';
  }

  /** One command line (without its line ending). */
  command(line: string): EngineStep {
    const sp = line.indexOf(' ');
    const verb = (sp < 0 ? line : line.slice(0, sp)).toUpperCase();
    const arg = sp < 0 ? '' : line.slice(sp + 1).trim();
    const logs: EngineLog[] = [];
    this.count++;
    if (this.count > this.o.commandCountLimit) {
      logs.push({
        msg: logText.commandCountLimit(this.o.who, this.last),
        fields: { event: 'command count limit', after: this.last },
      });
      return { replies: [replies.tooManyCommands(this.o.hostname)], close: true, logs };
    }
    this.last = verb || 'EMPTY';
    const one = (r: string, close = false): EngineStep => ({ replies: [r], close, logs });
    switch (verb) {
      case 'EHLO':
        if (!arg) return one(replies.ehloSyntax);
        this.helo = arg;
        this.proto = 'ESMTP';
        this.#reset();
        return { replies: replies.ehlo(this.o.hostname), close: false, logs };
      case 'HELO':
        if (!arg) return one(replies.heloSyntax);
        this.helo = arg;
        this.proto = 'SMTP';
        this.#reset();
        return one(replies.helo(this.o.hostname));
      case 'MAIL': {
        if (this.from !== undefined) return one(replies.nestedMail);
        const m = /^FROM:\s*<([^>]*)>/i.exec(arg);
        if (!m) return one(replies.mailSyntax);
        this.from = m[1]!;
        return one(replies.mailOk);
      }
      case 'RCPT': {
        if (this.from === undefined) return one(replies.needMail);
        const m = /^TO:\s*<([^>]*)>/i.exec(arg);
        if (!m) return one(replies.rcptSyntax);
        logs.push({
          msg: logText.noqueue(this.o.who, this.o.rcptReply, this.from, m[1]!, this.proto, this.helo),
          fields: { event: 'reject', from: this.from, to: m[1]!, helo: this.helo, reply: this.o.rcptReply },
        });
        this.rcpts++;
        return one(this.o.rcptReply);
      }
      case 'DATA':
      case 'BDAT':
        return one(
          this.from === undefined
            ? replies.needMail
            : this.rcpts === 0
              ? replies.needRcpt
              : replies.noValidRecipients,
        );
      case 'RSET':
        this.#reset();
        return one(replies.ok);
      case 'NOOP':
        return one(replies.ok);
      case 'VRFY':
        return one(replies.vrfyDisabled);
      case 'QUIT':
        return one(replies.bye, true);
      default:
        return one(replies.unknownCommand);
    }
  }

  #reset(): void {
    this.from = undefined;
    this.rcpts = 0;
  }
}

/** Time a client gets to read our last reply and close before screen closes on it. */
export const LINGER_MS = 10_000;

/**
 * Sends the last reply and closes: the client's further input is read and discarded (closing with
 * unread input would send a reset that can destroy the reply in flight), and the socket is destroyed
 * after LINGER_MS if the client does not close first.
 */
export function sendAndClose(socket: net.Socket, text: string): void {
  if (socket.destroyed) return;
  socket.end(text);
  socket.resume();
  const t = setTimeout(() => socket.destroy(), LINGER_MS);
  socket.once('close', () => clearTimeout(t));
}

export interface RunEngineOptions extends EngineOptions {
  logger: Logger;
  /** Extra fields on every log line (client, port). */
  fields: Record<string, unknown>;
  /** Send the `220 banner` line first (not to pregreeting clients, as postscreen). */
  greeting?: string;
  commandTimeLimitMs: number;
  /** Bytes already read that belong to the engine. */
  initial?: Buffer;
}

/** Runs the engine on `socket` until the client quits, hits a limit, or hangs up. */
export function runEngine(socket: net.Socket, o: RunEngineOptions): Promise<'quit' | 'limit' | 'hangup'> {
  const engine = new Engine(o);
  let buf: Buffer = Buffer.alloc(0);
  let timer: NodeJS.Timeout | undefined;
  let outcome: 'quit' | 'limit' | 'hangup' = 'hangup';
  const log = (l: EngineLog) => o.logger.info({ ...o.fields, ...l.fields }, l.msg);
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      log({ msg: logText.commandTimeLimit(o.who, engine.last), fields: { event: 'command time limit' } });
      outcome = 'limit';
      socket.removeListener('data', onData);
      sendAndClose(socket, replies.timeLimit(o.hostname) + '\r\n');
    }, o.commandTimeLimitMs);
  };
  const onData = (chunk: Buffer) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    let out = '';
    let nl: number;
    while ((nl = buf.indexOf(0x0a)) >= 0) {
      const line = buf.subarray(0, nl > 0 && buf[nl - 1] === 0x0d ? nl - 1 : nl).toString('latin1');
      buf = buf.subarray(nl + 1);
      const step = engine.command(line);
      for (const l of step.logs) log(l);
      out += step.replies.join('\r\n') + '\r\n';
      if (step.close) {
        outcome = step.replies[0]!.startsWith('221') ? 'quit' : 'limit';
        clearTimeout(timer);
        socket.removeListener('data', onData);
        sendAndClose(socket, out);
        return;
      }
      arm();
    }
    if (buf.length > LINE_LIMIT) {
      log({ msg: logText.commandLengthLimit(o.who, engine.last), fields: { event: 'command length limit' } });
      outcome = 'limit';
      clearTimeout(timer);
      socket.removeListener('data', onData);
      sendAndClose(socket, out + replies.tooLong + '\r\n');
      return;
    }
    if (out) socket.write(out);
  };
  return new Promise((resolve) => {
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(outcome);
    });
    socket.on('data', onData);
    if (o.greeting !== undefined) socket.write(replies.greeting(o.greeting) + '\r\n');
    arm();
    if (o.initial?.length) onData(o.initial);
    socket.resume();
  });
}
